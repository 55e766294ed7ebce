"""A fake of exactly the part of the `modal` SDK that sandboxes.backends.cloud.modal uses.

Same names, same keywords, same sync/async shape (blocking calls with an ``.aio`` twin); nothing else
(``tests/cloud/test_sdk_surface.py`` holds it to the backend's SDK_SURFACE table, both ways). A
sandbox runs its command as a local process (the real guest agent), with the image's files and
environment laid out in a private folder, its stdout delivered as text in random chunks. Like Modal
it enforces the stdin buffer limit between drains, the box's ``timeout`` and its ``idle_timeout``
(no stdin written for that long), and ``terminate`` kills every process in the box.

Install with ``install(monkeypatch)``, which puts this module in ``sys.modules["modal"]``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import itertools
import json
import shutil
import sys
import time
import types
from pathlib import Path
from typing import Any, AsyncGenerator, Callable

from tests.cloud.boxproc import BoxProcess

__version__ = "fake"
# Modal refuses more than this between two drains of a sandbox's stdin (modal.io_streams).
MAX_BUFFER_SIZE = 2 * 1024 * 1024

_ids = itertools.count(1)
# Every sandbox created, in order, for tests to inspect (kwargs passed, the process, ...).
created: list["Sandbox"] = []
apps: dict[tuple[str, str | None], "App"] = {}
# Knobs tests may turn: stdout chunk size, a create failure, the round trip of each stdin request.
settings: dict[str, Any] = {"max_chunk": 8192, "fail_create": None, "stdin_latency": 0.0}
# Stdin requests served (drains / send_stdin calls), for tests of how writes are batched.
counters: dict[str, int] = {"stdin_requests": 0}


class _Aio:
    """What a synchronicity-wrapped function looks like: blocking when called, async as ``.aio``."""

    def __init__(self, fn: Callable[..., Any], obj: Any, blocking: Callable[..., Any] | None) -> None:
        self._fn = fn
        self._obj = obj
        self._blocking = blocking
        self.aio = fn if obj is None else types.MethodType(fn, obj)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._blocking is None:
            raise RuntimeError(f"fake modal: blocking call to {self._fn.__name__}() inside the event loop; "
                               "use .aio")
        return self._blocking(self._obj, *args, **kwargs) if self._obj is not None else self._blocking(*args, **kwargs)


class aio_method:
    """Decorator: an async method (or static function) exposed the synchronicity way."""

    def __init__(self, fn: Callable[..., Any], blocking: Callable[..., Any] | None = None,
                 static: bool = False) -> None:
        self.fn = fn
        self.blocking = blocking
        self.static = static
        functools.update_wrapper(self, fn)

    def __get__(self, obj: Any, owner: Any) -> _Aio:
        return _Aio(self.fn, None if self.static else obj, self.blocking)


def aio_static(fn: Callable[..., Any]) -> aio_method:
    return aio_method(fn, static=True)


class NotFoundError(Exception):
    pass


class InvalidError(Exception):
    pass


class App:
    def __init__(self, name: str, environment_name: str | None) -> None:
        self.name = name
        self.environment_name = environment_name
        self.app_id = f"ap-fake{next(_ids)}"

    @aio_static
    async def lookup(name: str, *, environment_name: str | None = None, create_if_missing: bool = False) -> "App":
        key = (name, environment_name)
        if key not in apps:
            if not create_if_missing:
                raise NotFoundError(f"App {name!r} not found")
            apps[key] = App(name, environment_name)
        return apps[key]


class Image:
    """Lazy, like Modal's: layers are recorded and laid out when a sandbox starts."""

    def __init__(self, layers: tuple[tuple[str, Any], ...]) -> None:
        self._layers = layers

    def _add(self, kind: str, value: Any) -> "Image":
        return Image(self._layers + ((kind, value),))

    @staticmethod
    def debian_slim(python_version: str | None = None) -> "Image":
        if python_version is not None and not isinstance(python_version, str):
            raise InvalidError("python_version must be a string")
        return Image((("base", python_version),))

    def pip_install(self, *packages: str) -> "Image":
        for package in packages:
            if not isinstance(package, str) or not package:
                raise InvalidError(f"bad package spec {package!r}")
        return self._add("pip", packages)

    def env(self, vars: dict[str, str]) -> "Image":
        return self._add("env", dict(vars))

    def add_local_dir(self, local_path: str | Path, remote_path: str, *, copy: bool = False) -> "Image":
        if not remote_path.startswith("/"):
            raise InvalidError("remote_path must be absolute")
        if not Path(local_path).is_dir():
            raise FileNotFoundError(local_path)
        return self._add("dir", (str(local_path), remote_path))

    def _layout(self, root: Path) -> dict[str, str]:
        """Materialize the image under ``root``; returns its environment, paths mapped into ``root``."""
        env: dict[str, str] = {}
        mounts: list[str] = []
        for kind, value in self._layers:
            if kind == "env":
                env.update(value)
            elif kind == "dir":
                local, remote = value
                shutil.copytree(local, root / remote.lstrip("/"), dirs_exist_ok=True,
                                ignore=lambda d, names: [n for n in names if fnmatch.fnmatch(n, "__pycache__")])
                mounts.append(remote)
        for key, value in env.items():
            parts = []
            for part in value.split(":"):
                if any(part == m or part.startswith(m.rstrip("/") + "/") for m in mounts):
                    part = str(root / part.lstrip("/"))
                parts.append(part)
            env[key] = ":".join(parts)
        return env


class StreamWriter:
    def __init__(self, box: "Sandbox") -> None:
        self._box = box
        self._buffer = bytearray()

    def write(self, data: bytes | bytearray | memoryview | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        if len(self._buffer) + len(data) > MAX_BUFFER_SIZE:
            raise BufferError("Buffer size exceed limit. Call drain to flush the buffer.")
        self._buffer.extend(data)

    @aio_method
    async def drain(self) -> None:
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._box._terminated:
            raise ValueError("Sandbox has terminated; stdin is closed")
        counters["stdin_requests"] += 1
        if settings["stdin_latency"]:
            await asyncio.sleep(settings["stdin_latency"])
        await self._box._process.write(data)


class StreamReader:
    def __init__(self, box: "Sandbox", which: str) -> None:
        self._box = box
        self._which = which

    def __aiter__(self) -> AsyncGenerator[str, None]:
        return self._box._process.text_chunks(self._which)


io_streams = types.SimpleNamespace(StreamWriter=StreamWriter, StreamReader=StreamReader)


class Sandbox:
    def __init__(self, args: tuple[str, ...], kwargs: dict[str, Any]) -> None:
        self._args = args
        self._kwargs = kwargs
        self._object_id = f"sb-fake{next(_ids)}"
        self._root = BoxProcess.new_root()
        self._process = BoxProcess(self._object_id, self._root, max_chunk=settings["max_chunk"])
        self._stdin = StreamWriter(self)
        self._stdout = StreamReader(self, "stdout")
        self._stderr = StreamReader(self, "stderr")
        self._terminated = False
        self._watchdog: asyncio.Task[None] | None = None
        self._workdirs: list[str] = []
        self.terminated_by: str | None = None

    @aio_static
    async def create(*args: str, app: App | None = None, image: Image | None = None,
                     tags: dict[str, str] | None = None, env: dict[str, str | None] | None = None,
                     timeout: int | None = 300, idle_timeout: int | None = None,
                     cpu: float | tuple[float, float] | None = None,
                     memory: int | tuple[int, int] | None = None, block_network: bool = False,
                     runtime: str | None = None, region: str | None = None) -> "Sandbox":
        if settings["fail_create"]:
            raise settings["fail_create"]
        if app is None:
            raise InvalidError("App is required when creating a sandbox from outside a Modal container")
        if not all(isinstance(a, str) for a in args):
            raise InvalidError("command arguments must be strings")
        for name, value in (("cpu", cpu), ("memory", memory)):
            if isinstance(value, tuple) and value[1] < value[0]:
                raise InvalidError(f"Cannot specify a {name} limit lower than request")
        if runtime not in (None, "gvisor", "vm"):
            raise InvalidError(f"unknown runtime {runtime!r}")
        if tags is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
            raise InvalidError("tags must map strings to strings")
        box = Sandbox(args, {"app": app, "image": image, "tags": tags, "env": env, "timeout": timeout,
                             "idle_timeout": idle_timeout, "cpu": cpu, "memory": memory,
                             "block_network": block_network, "runtime": runtime, "region": region})
        created.append(box)
        image_env = image._layout(box._root) if image is not None else {}
        argv = list(args)
        if "--config" in argv:  # remember the agent's folder: it goes with the box
            box._workdirs.append(json.loads(argv[argv.index("--config") + 1]).get("workdir", ""))
        await box._process.start(argv, {**image_env, **{k: v for k, v in (env or {}).items() if v is not None}})
        box._watchdog = asyncio.create_task(box._watch(timeout, idle_timeout))
        return box

    async def _watch(self, timeout: int | None, idle_timeout: int | None) -> None:
        """Modal's side of a box's life: its timeout, its idle timeout, and a container's rule that the
        box ends when its main process does (taking every other process in it along)."""
        started = time.monotonic()
        while not self._terminated:
            now = time.monotonic()
            if self._process.returncode is not None:
                self.terminated_by = self.terminated_by or "exit"
                break
            if timeout is not None and now - started >= timeout:
                self.terminated_by = "timeout"
                break
            if idle_timeout is not None and now - self._process.last_stdin >= idle_timeout:
                self.terminated_by = "idle_timeout"
                break
            await asyncio.sleep(0.05)
        if not self._terminated:
            await self._terminate()

    @property
    def object_id(self) -> str:
        return self._object_id

    @property
    def stdin(self) -> StreamWriter:
        return self._stdin

    @property
    def stdout(self) -> StreamReader:
        return self._stdout

    @property
    def stderr(self) -> StreamReader:
        return self._stderr

    @property
    def returncode(self) -> int | None:
        code = self._process.returncode
        if code is None:
            return None
        return 128 - code if code < 0 else code  # a container reports a signal death as 128+N

    @aio_method
    async def poll(self) -> int | None:
        return self.returncode

    async def _terminate(self) -> None:
        self._terminated = True
        await self._process.destroy()
        self._remove_workdirs()

    def _terminate_blocking(self) -> None:
        self._terminated = True
        self._process.destroy_sync()
        self._remove_workdirs()

    @functools.partial(aio_method, blocking=_terminate_blocking)
    async def terminate(self) -> None:
        await self._terminate()

    def _remove_workdirs(self) -> None:
        for workdir in self._workdirs:
            if workdir.startswith("/tmp/rlm-box-"):
                shutil.rmtree(str(Path(workdir).parent), ignore_errors=True)

    # --- test helpers (not SDK surface) -------------------------------------------------------

    def _crash(self) -> None:
        """The box's main process dies, as on a crash inside the box."""
        self._process.kill_main()


def install(monkeypatch: Any) -> types.ModuleType:
    """Make `import modal` give this fake for the rest of a test; returns the fake module."""
    module = sys.modules[__name__]
    created.clear()
    apps.clear()
    settings.update({"max_chunk": 8192, "fail_create": None, "stdin_latency": 0.0})
    counters["stdin_requests"] = 0
    monkeypatch.setitem(sys.modules, "modal", module)
    return module
