"""A fake of exactly the part of the `e2b` SDK that sandboxes.backends.cloud.e2b uses.

Same names, same keywords, same async shape; nothing else (``tests/cloud/test_sdk_surface.py`` holds
it to the backend's SDK_SURFACE table, both ways). A background command runs as a local process (the
real guest agent) under ``bash -c`` as E2B runs it under ``bash -l -c``; its stdout reaches
``on_stdout`` as text in random chunks, awaited when the callback is async, as the SDK does. Like E2B
it ends a command's stream after the command ``timeout`` (60 s unless 0 is given), kills the box at
its lifetime ``timeout``, refuses ``send_stdin`` to a command started without ``stdin=True``, and
keeps all output in memory unless ``retain_output=False``.

Files written into the box must be under /tmp (the fake's writable area); they go with the box.
Install with ``install(monkeypatch)``, which puts this module in ``sys.modules["e2b"]``.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import shutil
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable

from tests.cloud.boxproc import BoxProcess

__version__ = "fake"
DEFAULT_TEMPLATE = "base"

_ids = itertools.count(1)
_pids = itertools.count(1000)
# Every sandbox created, in order, for tests to inspect.
created: list["AsyncSandbox"] = []
boxes: dict[str, "AsyncSandbox"] = {}
# Knobs tests may turn: stdout chunk size, a create failure, the round trip of each stdin request.
settings: dict[str, Any] = {"max_chunk": 8192, "fail_create": None, "stdin_latency": 0.0}
# Stdin requests served (drains / send_stdin calls), for tests of how writes are batched.
counters: dict[str, int] = {"stdin_requests": 0}


class SandboxException(Exception):
    pass


class CommandExitException(SandboxException):
    def __init__(self, exit_code: int, error: str | None) -> None:
        super().__init__(f"Command exited with code {exit_code} and error:\n{error or ''}")
        self.exit_code = exit_code
        self.error = error


class TimeoutException(SandboxException):
    pass


class AsyncCommandHandle:
    def __init__(self, box: "AsyncSandbox", process: BoxProcess, pid: int, on_stdout: Callable[[str], Any] | None,
                 on_stderr: Callable[[str], Any] | None, stdin: bool, timeout: float | None,
                 retain_output: bool) -> None:
        self._box = box
        self._process = process
        self._pid = pid
        self._stdin = stdin
        self._stdout_chunks: list[str] | None = [] if retain_output else None
        self._exit_code: int | None = None
        self._error: str | None = None
        self._timed_out = False
        self._events = asyncio.create_task(self._handle_events(on_stdout, on_stderr, timeout))

    async def _deliver(self, which: str, callback: Callable[[str], Any] | None) -> None:
        async for text in self._process.text_chunks(which):
            if which == "stdout" and self._stdout_chunks is not None:
                self._stdout_chunks.append(text)
            if callback is not None:
                result = callback(text)
                if inspect.isawaitable(result):
                    await result

    async def _handle_events(self, on_stdout: Any, on_stderr: Any, timeout: float | None) -> None:
        streams = asyncio.gather(self._deliver("stdout", on_stdout), self._deliver("stderr", on_stderr))
        try:
            await asyncio.wait_for(streams, timeout if timeout else None)
        except TimeoutError:
            self._timed_out = True
            return
        code = await self._process.wait()
        self._exit_code = 128 - code if code < 0 else code
        self._error = "signal: killed" if code == -9 else (None if code == 0 else f"exit status {code}")

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def exit_code(self) -> int | None:
        return self._exit_code

    @property
    def error(self) -> str | None:
        return self._error

    async def wait(self) -> Any:
        await asyncio.shield(self._events)
        if self._timed_out:
            raise TimeoutException("context deadline exceeded: the command's stream reached its timeout")
        if self._exit_code is None:
            raise SandboxException("Command ended without an end event")
        if self._exit_code != 0:
            raise CommandExitException(self._exit_code, self._error)
        return self._exit_code

    async def kill(self) -> bool:
        if self._process.returncode is not None:
            return False
        self._process.kill_main()
        return True


class Commands:
    def __init__(self, box: "AsyncSandbox") -> None:
        self._box = box
        self._handles: dict[int, AsyncCommandHandle] = {}

    async def run(self, cmd: str, background: bool | None = None, envs: dict[str, str] | None = None,
                  cwd: str | None = None, on_stdout: Callable[[str], Any] | None = None,
                  on_stderr: Callable[[str], Any] | None = None, stdin: bool | None = None,
                  timeout: float | None = 60, *, retain_output: bool = True) -> AsyncCommandHandle:
        self._box._check_alive()
        if not background:
            raise NotImplementedError("the fake runs background commands only (the backend uses no other)")
        process = BoxProcess(self._box._sandbox_id, self._box._root, max_chunk=settings["max_chunk"])
        # E2B runs `/bin/bash -l -c CMD`; a login shell here would read the host's profile instead.
        await process.start(["/bin/bash", "-c", cmd], dict(envs or {}), cwd=cwd)
        pid = next(_pids)
        handle = AsyncCommandHandle(self._box, process, pid, on_stdout, on_stderr, bool(stdin), timeout,
                                    retain_output)
        self._handles[pid] = handle
        self._box._processes.append(process)
        self._box.run_calls.append({"cmd": cmd, "background": background, "envs": envs, "cwd": cwd,
                                    "stdin": stdin, "timeout": timeout, "retain_output": retain_output})
        return handle

    async def send_stdin(self, pid: int, data: str | bytes) -> None:
        self._box._check_alive()
        handle = self._handles.get(pid)
        if handle is None or handle._process.returncode is not None:
            raise SandboxException(f"process with pid {pid} not found")
        if not handle._stdin:
            raise SandboxException("the command was started without stdin=True")
        counters["stdin_requests"] += 1
        if settings["stdin_latency"]:
            await asyncio.sleep(settings["stdin_latency"])
        await handle._process.write(data.encode() if isinstance(data, str) else data)


class Filesystem:
    def __init__(self, box: "AsyncSandbox") -> None:
        self._box = box

    async def write_files(self, files: list[dict[str, Any]]) -> list[Any]:
        self._box._check_alive()
        infos = []
        for entry in files:
            path = Path(entry["path"])
            if not path.is_absolute() or not str(path).startswith("/tmp/"):
                raise SandboxException(f"fake e2b: writes must go under /tmp, got {path}")
            parts = path.parts  # ("/", "tmp", "<top>", ...): the top folder goes with the box
            self._box._written.add(Path(*parts[:3]))
            path.parent.mkdir(parents=True, exist_ok=True)
            data = entry["data"]
            path.write_bytes(data.encode() if isinstance(data, str) else data)
            infos.append(types.SimpleNamespace(path=str(path), name=path.name))
        return infos


filesystem_module = types.SimpleNamespace(Filesystem=Filesystem)


class AsyncSandbox:
    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.create_kwargs = kwargs
        self._sandbox_id = f"fake{next(_ids)}"
        self._root = BoxProcess.new_root()
        self._commands = Commands(self)
        self._files = Filesystem(self)
        self._processes: list[BoxProcess] = []
        self._written: set[Path] = set()
        self._killed = False
        self._deadline = time.monotonic() + (kwargs["timeout"] or 300)
        self._watchdog: asyncio.Task[None] | None = None
        self.run_calls: list[dict[str, Any]] = []
        self.killed_by: str | None = None

    @classmethod
    async def create(cls, template: str | None = None, timeout: int | None = None,
                     metadata: dict[str, str] | None = None, allow_internet_access: bool | None = None,
                     network: dict[str, Any] | None = None) -> "AsyncSandbox":
        if settings["fail_create"]:
            raise settings["fail_create"]
        if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise SandboxException("metadata must map strings to strings")
        if timeout is not None and not isinstance(timeout, int):
            raise SandboxException("timeout must be an integer number of seconds")
        if network is not None and not set(network) <= {"allow_out", "deny_out", "allow_public_traffic",
                                                          "mask_request_host", "rules", "dns_servers"}:
            raise SandboxException(f"unknown network options {sorted(network)}")
        box = cls({"template": template or DEFAULT_TEMPLATE, "timeout": timeout, "metadata": metadata,
                   "allow_internet_access": allow_internet_access, "network": network})
        created.append(box)
        boxes[box._sandbox_id] = box
        box._watchdog = asyncio.create_task(box._watch())
        return box

    async def _watch(self) -> None:
        while not self._killed:
            if time.monotonic() >= self._deadline:
                self.killed_by = "timeout"
                await self._destroy()
                return
            await asyncio.sleep(0.05)

    def _check_alive(self) -> None:
        if self._killed or time.monotonic() >= self._deadline:
            raise SandboxException(f"sandbox {self._sandbox_id} is not running")

    @property
    def sandbox_id(self) -> str:
        return self._sandbox_id

    @property
    def files(self) -> Filesystem:
        return self._files

    @property
    def commands(self) -> Commands:
        return self._commands

    async def is_running(self) -> bool:
        return not self._killed and time.monotonic() < self._deadline

    async def kill(self) -> bool:
        if self._killed:
            return False
        self.killed_by = self.killed_by or "kill"
        await self._destroy()
        return True

    async def _destroy(self) -> None:
        self._killed = True
        for process in self._processes:
            await process.destroy()
        self._remove_files()

    def _remove_files(self) -> None:
        shutil.rmtree(self._root, ignore_errors=True)
        for top in self._written:
            shutil.rmtree(top, ignore_errors=True)

    # --- test helpers (not SDK surface) -------------------------------------------------------

    def _crash(self) -> None:
        """The agent process dies, as on a crash inside the box."""
        for process in self._processes:
            process.kill_main()


class Sandbox:
    """The synchronous client; the backend uses only its class-level kill, at interpreter exit."""

    @staticmethod
    def kill(sandbox_id: str, /) -> bool:
        box = boxes.get(sandbox_id)
        if box is None or box._killed:
            return False
        box._killed = True
        box.killed_by = "sync kill"
        for process in box._processes:
            process.destroy_sync()
        box._remove_files()
        return True


sandbox_async = types.SimpleNamespace(
    filesystem=types.SimpleNamespace(filesystem=filesystem_module),
    commands=types.SimpleNamespace(
        command=types.SimpleNamespace(Commands=Commands),
        command_handle=types.SimpleNamespace(AsyncCommandHandle=AsyncCommandHandle),
    ),
)


def install(monkeypatch: Any) -> types.ModuleType:
    """Make `import e2b` give this fake for the rest of a test; returns the fake module."""
    module = sys.modules[__name__]
    created.clear()
    boxes.clear()
    settings.update({"max_chunk": 8192, "fail_create": None, "stdin_latency": 0.0})
    counters["stdin_requests"] = 0
    monkeypatch.setitem(sys.modules, "e2b", module)
    return module
