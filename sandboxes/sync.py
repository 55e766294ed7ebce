"""A blocking wrapper for callers without an event loop (scripts, notebooks, sync web handlers).

The sandbox runs on a private event loop in a background thread; each method blocks on it.
Handlers may still be async (they run on that loop) or plain functions (run in worker threads).
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Coroutine, Mapping, TypeVar

from sandboxes.channel import Handler
from sandboxes.results import ExecResult
from sandboxes.sandbox import Sandbox
from sandboxes.spec import SandboxSpec

T = TypeVar("T")


class SyncSandbox:
    def __init__(self, spec: SandboxSpec | None = None, handlers: Mapping[str, Handler] | None = None, *,
                 backend: Any = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sandbox-loop", daemon=True)
        self._thread.start()
        try:
            self._box: Sandbox = self._run(Sandbox.start(spec, handlers, backend=backend))
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def box_id(self) -> str:
        return self._box.box_id

    def execute(self, code: str, timeout: float | None = None) -> ExecResult:
        return self._run(self._box.execute(code, timeout))

    def put_file(self, path: str, data: bytes | os.PathLike[str]) -> None:
        self._run(self._box.put_file(path, data))

    def interrupt(self) -> None:
        self._run(self._box.interrupt())

    def bind(self, handlers: Mapping[str, Handler]) -> None:
        self._box.bind(handlers)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._run(self._box.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> "SyncSandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_sandbox_sync(spec: SandboxSpec | None = None, handlers: Mapping[str, Handler] | None = None, *,
                      backend: Any = None) -> SyncSandbox:
    """Blocking counterpart of ``open_sandbox``: ``with open_sandbox_sync(spec) as box: box.execute(...)``.
    ``backend`` is as for ``open_sandbox``."""
    return SyncSandbox(spec, handlers, backend=backend)
