"""Sandbox: one box, its agent, and the channel to it; the public face of the sandbox layer.

Every wait has a deadline derived from the spec, every failure path destroys the box, and a
cancelled caller still gets its box destroyed (closing runs in a task of its own, shielded).

Which backend makes the box: the one named by ``spec.backend``, looked up among the installed
backends when a box starts (``sandboxes.backend.backend_class``: this shared core imports no
backend module), or the one passed as ``backend=``, as httpx takes ``transport=``: a ``Backend`` instance
for one box, or a factory ``(spec, box_id) -> Backend`` such as a Backend class.
``MemoryBackend`` (in the backends package) is the in-memory one for unit tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, AsyncIterator, Callable, Hashable, Mapping, Union

from sandboxes.logs import get_logger

from sandboxes import cleanup
from sandboxes.backend import Backend, BackendFactory, backend_class
from sandboxes.cancellation import finish
from sandboxes.channel import PROBE_INTERVAL_S, Channel, Handler, write_timeout
from sandboxes.cpu_governor import governor
from sandboxes.errors import SandboxClosed, SandboxError, SandboxLost, SandboxStartError
from sandboxes.guest import protocol
from sandboxes.guest.kernel import KERNEL_READY_TIMEOUT
from sandboxes.guest.protocol import ProtocolError
from sandboxes.guest.uploads import inside_parts
from sandboxes.results import ExecError, ExecResult
from sandboxes.spec import SandboxSpec
from sandboxes.admission import StartQueue, start_queue

BackendArg = Union[Backend, BackendFactory, None]

log = get_logger("sandboxes")

# How long after its timeout and grace period a cell's answer may take: the agent's own bounds on a
# kernel restart (waiting for the killed kernel, then the new one to answer and to run its setup,
# each bounded by KERNEL_READY_TIMEOUT) and slack. Measured with benchmarks/neighbours.py --restarts on
# a two-core machine under heavy load, a restart took 1.4-1.5 s on local, 2.5 s (at most 3.9) under
# runc and 4.2 s (at most 4.7) under gVisor: well inside. This is only a backstop: while it waits, the channel
# checks that the agent answers, so a stopped or wedged agent is found within seconds, whatever the
# deadline (Channel.wait_alive).
RESTART_ALLOWANCE_S = 5.0 + 2 * KERNEL_READY_TIMEOUT + 5.0
SHUTDOWN_WAIT_S = 1.0


class Sandbox:
    """A started box. Use ``open_sandbox`` (or ``Sandbox.start`` and ``close``) to get one."""

    def __init__(self, spec: SandboxSpec, backend: "Backend", channel: Channel, ready: dict[str, Any]) -> None:
        self.spec = spec
        self.backend = backend
        self.channel = channel
        self.versions: dict[str, Any] = ready.get("versions", {})
        self.workdir: str = str(self.versions.get("workdir", ""))
        self.started_at = time.monotonic()
        self.start_wait_s = 0.0  # seconds the start waited for its turn in the start queue
        self._exec_lock = asyncio.Lock()
        self._closing: asyncio.Future[None] | None = None
        self._loss: tuple[str, str] | None = None  # (status, reason)
        self._loss_task: asyncio.Task[None] | None = None
        self._lifetime = asyncio.get_running_loop().call_later(spec.lifetime_s, self._expire)
        channel.on_lost = self._on_lost

    @property
    def box_id(self) -> str:
        return self.backend.box_id

    # --- start --------------------------------------------------------------------------------

    @classmethod
    async def start(cls, spec: SandboxSpec | None = None, handlers: Mapping[str, Handler] | None = None,
                    box_id: str | None = None, *, backend: "BackendArg" = None, owner: Hashable | None = None,
                    on_queued: Callable[[int], None] | None = None,
                    on_admitted: Callable[[float], None] | None = None,
                    queue: StartQueue | None = None) -> "Sandbox":
        """Wait for a turn in the provider's start queue, then create the box, start its agent and wait
        for ``ready``, all within startup_timeout_s of the turn.

        ``backend``: a Backend instance (used for this one box; its spec is the default), or a factory
        ``(spec, box_id) -> Backend``; by default the backend ``spec.backend`` names.
        ``owner`` (e.g. a run id) is whose turn the start takes in the queue (see
        ``sandboxes.admission``); ``on_queued(ahead)`` is called if the start has to wait, and
        ``on_admitted(seconds_waited)`` when its turn comes after a wait. ``queue`` replaces the
        process-wide queue of the provider.
        """
        backend = make_backend(spec, box_id, backend)
        spec = backend.spec
        queue = queue or start_queue(backend.name)
        async with queue.slot(owner, on_queued) as waited:
            if waited and on_admitted is not None:
                on_admitted(waited)
            cleanup.register(backend)
            channel: Channel | None = None
            try:
                async with asyncio.timeout(spec.startup_timeout_s):
                    stream = await backend.start()
                    channel = Channel(stream, handlers=handlers, max_concurrent_calls=spec.max_concurrent_calls,
                                      max_pending_calls=spec.max_pending_calls, box_id=backend.box_id,
                                      demoted=functools.partial(governor.demoted, backend.box_id),
                                      pressing=functools.partial(governor.press, backend.box_id))
                    channel.start()
                    ready = await channel.ready(spec.startup_timeout_s)
                _check_versions(ready)
                backend.on_ready()
            except BaseException as exc:
                reason = await _abort_start(backend, channel)
                if isinstance(exc, TimeoutError):
                    raise SandboxStartError(
                        f"the {backend.name} sandbox did not become ready within {spec.startup_timeout_s:g} s"
                        + (f": {reason}" if reason else "")) from None
                if isinstance(exc, SandboxLost):
                    raise SandboxStartError(f"the {backend.name} sandbox died while starting: "
                                            f"{reason or exc}") from None
                raise
        box = cls(spec, backend, channel, ready)
        box.start_wait_s = waited
        return box

    def bind(self, handlers: Mapping[str, Handler]) -> None:
        """Attach the guest-call handlers (e.g. when a pool hands a started box to a run)."""
        self.channel.handlers = dict(handlers)

    # --- cells --------------------------------------------------------------------------------

    async def execute(self, code: str, timeout: float | None = None) -> ExecResult:
        """Run one cell. Never raises for what the cell does: the status says how it ended."""
        self._check_open()
        timeout = float(timeout if timeout is not None else self.spec.cell_timeout_s)
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if len(code) > protocol.MAX_LINE_BYTES // 8:
            raise ValueError(f"a cell of {len(code)} characters is too large to send; put large data in a "
                             "file with put_file and read it in the cell")
        async with self._exec_lock:
            if self._loss is not None:
                return await self._lost_result()
            request_id = self.channel.new_id("x")
            wait = timeout + self.spec.kill_grace_s + RESTART_ALLOWANCE_S
            try:
                message = await self.channel.request(
                    {"type": "execute", "id": request_id, "code": code, "timeout": timeout}, wait,
                    watch=min(timeout, PROBE_INTERVAL_S))
            except TimeoutError:
                self._on_lost(f"the agent did not answer within {wait:g} s of the cell's start")
                return await self._lost_result()
            except SandboxLost:
                return await self._lost_result()
            except ProtocolError as exc:
                return ExecResult(status="error", error=ExecError("SandboxProtocolError", str(exc), ""),
                                  notice="The box's answer to this cell broke the protocol and was dropped; "
                                         "the cell's output is unknown.")
            except asyncio.CancelledError:
                # The caller gave up: stop the cell rather than leave it running.
                if self._loss is None:
                    asyncio.ensure_future(self._quiet_send({"type": "interrupt"}))
                raise
        error = message.get("error")
        return ExecResult(
            status=message["status"],
            stdout=message.get("stdout", ""),
            stderr=message.get("stderr", ""),
            error=ExecError(str(error.get("name", "")), str(error.get("value", "")),
                            str(error.get("traceback", ""))) if isinstance(error, dict) else None,
            display=[d for d in message.get("display", []) if isinstance(d, dict)],
            duration_s=float(message.get("duration", 0.0)),
            notice=message.get("notice"),
        )

    async def interrupt(self) -> None:
        """Interrupt the running cell (it ends with an error, KeyboardInterrupt)."""
        self._check_open()
        await self._quiet_send({"type": "interrupt"})

    async def put_file(self, path: str, data: bytes | bytearray | memoryview | os.PathLike[str]) -> None:
        """Write ``data`` (bytes, or a local file given as a Path) to ``path`` in the box.

        Relative paths are relative to the kernel's working folder; a path outside it (absolute
        elsewhere, or climbing out with ``..``) is refused with ValueError, here and again by the agent,
        which also follows no symbolic link. Sent in chunks, so size is bounded only by the box's disk.
        """
        self._check_open()
        if isinstance(data, str):
            raise TypeError("put_file takes bytes, or a pathlib.Path naming a local file to upload")
        try:
            inside_parts(PurePosixPath(self.workdir or "/"), path)
        except ValueError as exc:
            raise ValueError(f"put_file writes only inside the box's working folder: {exc}; give a path "
                             "relative to it") from None
        if self._loss is not None:
            raise SandboxLost(self._loss[1])
        upload_id = self.channel.new_id("f")
        # Base64 makes the bytes sent 4/3 of the file's; each chunk's write has its own deadline too.
        deadline = write_timeout(_size(data) * 4 // 3)
        done = self.channel.expect(upload_id)
        try:
            async with asyncio.timeout(deadline):
                for offset, chunk, last in _chunks(data):
                    await self.channel.send({"type": "put_file", "id": upload_id, "path": path,
                                             "chunk": protocol.b64encode(chunk), "offset": offset, "last": last})
                    if done.done():  # the agent refused early
                        break
                reply = await self.channel.wait_alive(done)
        except TimeoutError:
            self._on_lost(f"uploading {path} did not finish within {deadline:g} s")
            raise SandboxLost(self._loss[1] if self._loss else "the upload timed out") from None
        except ProtocolError as exc:
            raise SandboxError(f"uploading {path}: {exc}") from None
        finally:
            self.channel.forget(upload_id)
            if done.done() and not done.cancelled():
                done.exception()  # retrieved: a send that failed first already said why
        if reply["status"] != "ok":
            err = reply.get("error") or {}
            raise SandboxError(f"could not write {path} in the box: {err.get('name')}: {err.get('value')}")

    async def stage_file(self, name: str, data: bytes | bytearray | memoryview) -> str:
        """Hand the box a read-only file called ``name``; return its path in the box.

        Where the backend shares a folder with the box (local, Docker: ``Backend.shared_folder``) the
        file is written there on the host, which costs a local write instead of a trip through the
        channel (a 50 MB context: tens of milliseconds instead of a second or more); elsewhere it is
        uploaded with ``put_file`` into the kernel's working folder. Either way it goes when the box goes.
        """
        self._check_open()
        if not _STAGED_NAME.fullmatch(name):
            raise ValueError(f"a staged file's name is a plain file name (letters, digits, '.', '_', '-'), not {name!r}")
        shared = self.backend.shared_folder()
        if shared is None:
            await self.put_file(name, data)
            return name
        host_dir, box_dir = shared
        await asyncio.to_thread(_write_readable, Path(host_dir) / f"staged-{name}", data)
        return f"{box_dir}/staged-{name}"

    # --- loss, expiry and closing -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing is not None:
            raise SandboxClosed(f"sandbox {self.box_id} is closed; open a new one")

    def _expire(self) -> None:
        self._on_lost(f"the box reached its lifetime of {self.spec.lifetime_s:g} s and was destroyed")

    def _on_lost(self, reason: str) -> None:
        if self._closing is not None:  # closing already destroys the box: only record why it failed
            self._loss = self._loss or ("sandbox_lost", reason)
            return
        if self._loss_task is None:
            self._loss = ("sandbox_lost", reason)
            self._loss_task = asyncio.ensure_future(self._handle_loss(reason))

    async def _handle_loss(self, reason: str) -> None:
        try:
            why = await asyncio.wait_for(self.backend.diagnose(), 10.0)
        except Exception:
            why = None
        if why is not None:  # the status is the diagnosis's kind, a fact; its text is for humans
            self._loss = (why.status, f"{reason}: {why.detail}")
        log.warning("sandbox_lost", box_id=self.box_id, status=self._loss[0], reason=self._loss[1])
        await self.channel.close()
        await self.backend.destroy()

    async def _lost_result(self) -> ExecResult:
        if self._loss_task is not None:
            await asyncio.shield(self._loss_task)
        status, reason = self._loss or ("sandbox_lost", "the sandbox is gone")
        return ExecResult(status=status,  # type: ignore[arg-type]
                          error=ExecError("SandboxLost", reason, ""),
                          notice=f"{reason}. The box and its state are gone; open a new sandbox.")

    async def _quiet_send(self, message: dict[str, Any]) -> None:
        try:
            await self.channel.send(message)
        except (SandboxLost, OSError):
            pass

    async def close(self) -> None:
        """Shut the agent down and destroy the box. Idempotent; finishes even if the caller is cancelled."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await finish(self._closing)

    async def _close(self) -> None:
        self._lifetime.cancel()
        try:
            if self._loss is None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.channel.send({"type": "shutdown"}), SHUTDOWN_WAIT_S)
            if self._loss_task is not None:
                with contextlib.suppress(Exception):
                    await self._loss_task
            await self.channel.close()
        finally:
            await self.backend.destroy()
            cleanup.unregister(self.backend)

    async def __aenter__(self) -> "Sandbox":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


@contextlib.asynccontextmanager
async def open_sandbox(spec: SandboxSpec | None = None, handlers: Mapping[str, Handler] | None = None, *,
                       box_id: str | None = None, backend: "BackendArg" = None, owner: Hashable | None = None,
                       queue: StartQueue | None = None) -> AsyncIterator[Sandbox]:
    """Open a sandbox for the duration of a block; it is destroyed on exit, error or cancellation.

    ``backend`` replaces the backend ``spec.backend`` names; ``owner`` and ``queue`` are the start
    queue's (see ``Sandbox.start``)."""
    box = await Sandbox.start(spec, handlers, box_id, backend=backend, owner=owner, queue=queue)
    try:
        yield box
    finally:
        await box.close()


def make_backend(spec: SandboxSpec | None, box_id: str | None, backend: "BackendArg" = None) -> "Backend":
    """The backend for one new box: ``backend`` itself when it is an instance, else made by the factory
    given, else by the registry's class for ``spec.backend``."""
    if backend is not None and not callable(backend):
        if spec is not None and spec != backend.spec:
            raise ValueError("a backend instance carries its own spec: pass the spec to the backend, not both")
        return backend
    spec = spec or SandboxSpec()
    if backend is None:
        backend = backend_class(spec.backend)
    return backend(spec, box_id or uuid.uuid4().hex[:12])


def _check_versions(ready: dict[str, Any]) -> None:
    if ready.get("protocol") != protocol.PROTOCOL_VERSION:
        raise SandboxStartError(f"the agent speaks protocol {ready.get('protocol')!r}, the controller "
                                f"{protocol.PROTOCOL_VERSION}: rebuild the kernel image (rlm sandbox build-image)")
    theirs = ready.get("versions", {}).get("guest")
    ours = protocol.guest_version()
    if theirs != ours:
        raise SandboxStartError(f"the agent in the box is version {theirs!r} but this controller's is {ours!r}: "
                                "the kernel image is stale; rebuild it with `rlm sandbox build-image`")


async def _abort_start(backend: "Backend", channel: Channel | None) -> str | None:
    """Tear down a box that failed to start; return what the provider says went wrong."""

    async def teardown() -> str | None:
        reason = None
        with contextlib.suppress(Exception):
            why = await asyncio.wait_for(backend.diagnose(), 5.0)
            reason = why.detail if why is not None else None
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()
        await backend.destroy()
        cleanup.unregister(backend)
        return reason

    return await finish(teardown())


_STAGED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _write_readable(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Write ``path`` whole (a temporary file renamed over it), readable by the box's user."""
    temporary = path.with_name(path.name + ".part")
    with open(temporary, "wb") as handle:
        handle.write(data)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def _size(data: bytes | bytearray | memoryview | os.PathLike[str]) -> int:
    return os.stat(data).st_size if isinstance(data, os.PathLike) else memoryview(data).nbytes


def _chunks(data: bytes | bytearray | memoryview | os.PathLike[str]):  # type: ignore[no-untyped-def]
    """Yield (offset, chunk, last) pieces of at most FILE_CHUNK_BYTES; an empty file is one piece."""
    size = protocol.FILE_CHUNK_BYTES
    if isinstance(data, os.PathLike):
        with open(Path(data), "rb") as handle:
            offset = 0
            chunk = handle.read(size)
            while True:
                following = handle.read(size)
                yield offset, chunk, not following
                if not following:
                    return
                offset += len(chunk)
                chunk = following
    view = memoryview(data).cast("B")
    if len(view) == 0:
        yield 0, b"", True
        return
    for offset in range(0, len(view), size):
        yield offset, view[offset : offset + size], offset + size >= len(view)
