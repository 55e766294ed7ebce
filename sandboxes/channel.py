"""The controller's side of one agent connection.

Owns the stream: matches replies to requests by id, serves guest calls with bounded concurrency,
and treats every byte from the box as untrusted (size cap per line, schema check, no evaluation).
A box that breaks the protocol too often, or whose stream ends, is declared lost; every waiter is
woken with SandboxLost so nothing hangs on a dead box.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from typing import Any, Awaitable, Callable, Mapping

import structlog

from sandboxes.transport import ByteStream
from sandboxes.errors import SandboxLost
from sandboxes.guest import protocol
from sandboxes.guest.protocol import LineBuffer, ProtocolError

Handler = Callable[[Any], Awaitable[Any]] | Callable[[Any], Any]

# A box that sends this many malformed messages is treated as hostile and cut off.
MAX_VIOLATIONS = 100

log = structlog.get_logger("sandboxes.channel")


class Channel:
    def __init__(
        self,
        stream: ByteStream,
        *,
        handlers: Mapping[str, Handler] | None = None,
        max_concurrent_calls: int = 64,
        max_pending_calls: int = 1024,
        box_id: str = "",
    ) -> None:
        self.stream = stream
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.box_id = box_id
        self._ids = itertools.count(1)
        self._waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._send_lock = asyncio.Lock()
        self._call_slots = asyncio.Semaphore(max_concurrent_calls)
        self._max_pending = max_pending_calls
        self._calls: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        self.lost: str | None = None
        self.violations = 0
        self.on_lost: Callable[[str], None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read_loop(), name=f"channel-reader-{self.box_id}")

    async def ready(self, timeout: float) -> dict[str, Any]:
        """Wait for the agent's ``ready`` message."""
        return await asyncio.wait_for(asyncio.shield(self._ready), timeout)

    async def close(self) -> None:
        """Stop reading, cancel guest calls in flight, close the stream. Safe to call twice."""
        tasks = [t for t in (self._reader, *self._calls) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._fail_all("the sandbox was closed")
        await self.stream.close()

    def _declare_lost(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
            # Not logged here: the owner (Sandbox) logs the loss once, with the provider's diagnosis.
            if self.on_lost is not None:
                self.on_lost(reason)
        self._fail_all(reason)

    def _fail_all(self, reason: str) -> None:
        if not self._ready.done():
            self._ready.set_exception(SandboxLost(reason))
            self._ready.exception()  # mark retrieved: nobody may be waiting
        waiters, self._waiters = self._waiters, {}
        for fut in waiters.values():
            if not fut.done():
                fut.set_exception(SandboxLost(reason))

    # --- sending ------------------------------------------------------------------------------

    def new_id(self, prefix: str = "r") -> str:
        return f"{prefix}{next(self._ids)}"

    async def send(self, message: dict[str, Any]) -> None:
        if self.lost is not None:
            raise SandboxLost(self.lost)
        data = protocol.encode(message)
        try:
            async with self._send_lock:
                await self.stream.write(data)
        except (ConnectionError, OSError, RuntimeError) as exc:
            self._declare_lost(f"the connection to the agent broke while sending ({exc.__class__.__name__})")
            raise SandboxLost(self.lost or "connection broke") from None

    def expect(self, request_id: str) -> asyncio.Future[dict[str, Any]]:
        """Register interest in the reply to ``request_id`` (before sending, so none is missed)."""
        if self.lost is not None:
            raise SandboxLost(self.lost)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = fut
        return fut

    def forget(self, request_id: str) -> None:
        self._waiters.pop(request_id, None)

    async def request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send a message carrying an ``id`` and wait at most ``timeout`` s for its answer."""
        fut = self.expect(message["id"])
        try:
            await self.send(message)
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.forget(message["id"])

    # --- receiving ----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        buffer = LineBuffer()
        try:
            while True:
                data = await self.stream.read()
                if not data:
                    self._declare_lost("the agent's connection closed")
                    return
                for line in buffer.feed(data):
                    if line is None:
                        self._violation("a line over the size cap")
                        continue
                    try:
                        message = protocol.decode(line, protocol.TO_CONTROLLER)
                    except ProtocolError as exc:
                        self._violation(str(exc))
                        continue
                    self._dispatch(message)
                if self.lost is not None:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let a hostile box crash the controller
            log.exception("channel_reader_failed", box_id=self.box_id)
            self._declare_lost(f"reading from the agent failed ({exc.__class__.__name__})")

    def _violation(self, what: str) -> None:
        self.violations += 1
        log.warning("protocol_violation", box_id=self.box_id, what=what[:200], count=self.violations)
        if self.violations >= MAX_VIOLATIONS:
            self._declare_lost(f"the box sent {self.violations} malformed messages and was cut off")

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "ready":
            if not self._ready.done():
                self._ready.set_result(message)
            else:
                self._violation("a second ready")
        elif kind in ("result", "pong"):
            fut = self._waiters.get(message["id"])
            if fut is not None and not fut.done():
                fut.set_result(message)
        elif kind == "call":
            self._start_call(message)

    # --- guest calls --------------------------------------------------------------------------

    def _start_call(self, message: dict[str, Any]) -> None:
        if len(self._calls) >= self._max_pending:
            task = asyncio.create_task(self._reply(message["id"], False, error=(
                f"too many guest calls in flight (limit {self._max_pending}); wait for some to finish")))
        else:
            task = asyncio.create_task(self._serve_call(message))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _serve_call(self, message: dict[str, Any]) -> None:
        name = message["name"]
        handler = self.handlers.get(name)
        if handler is None:
            known = ", ".join(sorted(self.handlers)) or "none"
            await self._reply(message["id"], False, error=f"no handler named {name!r} (known: {known})")
            return
        async with self._call_slots:
            try:
                if inspect.iscoroutinefunction(handler):
                    value = await handler(message.get("payload"))
                else:  # plain functions may block: keep them off the event loop
                    value = await asyncio.to_thread(handler, message.get("payload"))
                    if inspect.isawaitable(value):  # e.g. a functools.partial of an async function
                        value = await value
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                text = str(exc) or exc.__class__.__name__
                await self._reply(message["id"], False, error=f"{exc.__class__.__name__}: {text}"[:8192])
                return
        await self._reply(message["id"], True, value=value)

    async def _reply(self, to: str, ok: bool, *, value: Any = None, error: str | None = None) -> None:
        message: dict[str, Any] = {"type": "reply", "to": to, "ok": ok}
        if ok:
            message["value"] = value
        else:
            message["error"] = error
        try:
            await self.send(message)
        except (ProtocolError, TypeError, ValueError) as exc:
            # The handler's value could not be sent (not JSON, or over the cap): say so instead.
            reason = "too large" if isinstance(exc, ProtocolError) else "not JSON-serializable"
            await self.send({"type": "reply", "to": to, "ok": False,
                             "error": f"the handler's result is {reason}: {str(exc)[:500]}"})
        except SandboxLost:
            pass

