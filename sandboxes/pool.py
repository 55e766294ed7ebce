"""Warm pools: boxes started ahead of time, handed out one per run, destroyed after it.

Starting a box costs most of a second (several under gVisor); handing out a started one costs a
ping. A pool keeps ``min_idle`` boxes started, never more than ``max_total`` alive, and refills in
the background. A box is never reused: ``release`` destroys it, and the pool starts a fresh one.

    async with SandboxPool(SandboxSpec(backend="docker"), min_idle=2, max_total=8) as pool:
        async with pool.sandbox(handlers={"llm_query": ...}) as box:
            await box.execute("1 + 1")
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import TYPE_CHECKING, Any, AsyncIterator, Mapping

from sandboxes.logs import get_logger

from sandboxes.cancellation import finish
from sandboxes.channel import Handler
from sandboxes.errors import SandboxClosed, SandboxError, SandboxStartError
from sandboxes.sandbox import Sandbox
from sandboxes.spec import SandboxSpec

if TYPE_CHECKING:
    from sandboxes.backend import BackendFactory

log = get_logger("sandboxes.pool")

# An idle box must answer a ping this fast to be handed out; otherwise it is dropped.
HANDOUT_PING_S = 2.0
# After a failed start, the refill waits this long (doubling up to the maximum) before trying again.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0


class SandboxPool:
    """Started boxes of one spec, waiting to be handed out."""

    def __init__(self, spec: SandboxSpec, min_idle: int = 1, max_total: int = 8, *,
                 max_idle_s: float | None = None, parallel_starts: int = 4,
                 backend: "BackendFactory | None" = None) -> None:
        """``backend``: a factory ``(spec, box_id) -> Backend`` making each box's backend (e.g. a Backend
        class); by default the one ``spec.backend`` names."""
        if min_idle < 0 or max_total < 1 or min_idle > max_total:
            raise ValueError("need 0 <= min_idle <= max_total and max_total >= 1")
        self.spec = spec
        self.backend = backend
        self.min_idle = min_idle
        self.max_total = max_total
        # An idle box older than this is retired unused, so a handed-out box keeps most of its lifetime.
        self.max_idle_s = max_idle_s if max_idle_s is not None else spec.lifetime_s / 2
        self.pool_id = uuid.uuid4().hex[:8]
        self._idle: list[tuple[float, Sandbox]] = []
        self._in_use: set[Sandbox] = set()
        self._starting = 0
        self._start_slots = asyncio.Semaphore(parallel_starts)
        self._changed = asyncio.Event()
        self._refill: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._counter = 0
        self.last_error: BaseException | None = None
        self.handed_out = 0

    # --- counts -------------------------------------------------------------------------------

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    @property
    def total(self) -> int:
        """Boxes alive or being started."""
        return len(self._idle) + len(self._in_use) + self._starting

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> "SandboxPool":
        """Begin filling in the background; returns at once."""
        if self._closed:
            raise SandboxClosed("the pool is closed")
        if self._refill is None:
            self._refill = asyncio.create_task(self._refill_loop(), name=f"pool-refill-{self.pool_id}")
        return self

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until ``min_idle`` boxes are idle (for benchmarks and tests; serving needs no wait).

        On timeout, says why boxes are not starting when the last attempt failed.
        """
        try:
            async with asyncio.timeout(timeout):
                while True:
                    changed = self._changed
                    if self.idle >= self.min_idle:
                        return
                    if self._closed:
                        raise SandboxClosed("the pool is closed")
                    await self._wait_change(changed)
        except TimeoutError:
            if self.last_error is not None:
                raise SandboxStartError(f"the pool has {self.idle} of {self.min_idle} boxes ready after {timeout:g} s;"
                                        f" the last start failed: {self.last_error}") from self.last_error
            raise

    async def close(self) -> None:
        """Stop refilling and destroy every box of the pool, idle or handed out."""
        if self._closed:
            return
        self._closed = True
        if self._refill is not None:
            self._refill.cancel()
            await asyncio.wait([self._refill])  # its outcome is dropped; our own cancellation is not
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        boxes = [box for _, box in self._idle] + list(self._in_use)
        self._idle.clear()
        self._in_use.clear()
        await asyncio.gather(*(box.close() for box in boxes), return_exceptions=True)
        self._notify()

    async def __aenter__(self) -> "SandboxPool":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await finish(self.close())

    # --- hand-out -----------------------------------------------------------------------------

    async def acquire(self, handlers: Mapping[str, Handler] | None = None,
                      timeout: float | None = None) -> Sandbox:
        """A started box for one run, with ``handlers`` bound. Return it with ``release``.

        Takes an idle box when there is one; otherwise starts one at once if the pool has room,
        or waits (at most ``timeout`` seconds) for room.
        """
        if self._closed:
            raise SandboxClosed("the pool is closed")
        await self.start()
        async with asyncio.timeout(timeout):
            while True:
                changed = self._changed
                box = await self._take_idle()
                if box is None and self.total < self.max_total:
                    box = await self._start_one(for_handout=True)
                if box is not None:
                    box.bind(handlers or {})
                    self._in_use.add(box)
                    self.handed_out += 1
                    self._notify()
                    return box
                if self._closed:
                    raise SandboxClosed("the pool is closed")
                await self._wait_change(changed)

    async def release(self, box: Sandbox) -> None:
        """The run is over: destroy the box (never reused) and let the pool refill."""
        self._in_use.discard(box)
        try:
            await box.close()
        finally:
            self._notify()

    @contextlib.asynccontextmanager
    async def sandbox(self, handlers: Mapping[str, Handler] | None = None,
                      timeout: float | None = None) -> AsyncIterator[Sandbox]:
        """``acquire`` for the duration of a block, ``release`` after it (also on error or cancel)."""
        box = await self.acquire(handlers, timeout)
        try:
            yield box
        finally:
            await finish(self.release(box))

    async def _take_idle(self) -> Sandbox | None:
        while self._idle:
            born, box = self._idle.pop(0)
            if time.monotonic() - born > self.max_idle_s or not await self._healthy(box):
                self._spawn(box.close())
                self._notify()
                continue
            return box
        return None

    @staticmethod
    async def _healthy(box: Sandbox) -> bool:
        channel = box.channel
        if channel.lost is not None:
            return False
        try:
            reply = await channel.request({"type": "ping", "id": channel.new_id("p")}, HANDOUT_PING_S)
        except (SandboxError, TimeoutError, OSError):
            return False
        return reply.get("type") == "pong"

    # --- refill -------------------------------------------------------------------------------

    async def _start_one(self, for_handout: bool = False) -> Sandbox | None:
        """Start a box; on failure raise it to a caller waiting for a box, or log it for the refill."""
        self._starting += 1
        try:
            async with self._start_slots:
                self._counter += 1
                # The pool's starts take their turns in the provider's start queue as one owner.
                box = await Sandbox.start(self.spec, box_id=f"{self.pool_id}-{self._counter}",
                                          backend=self.backend, owner=f"pool-{self.pool_id}")
        except BaseException as exc:
            self.last_error = exc
            if for_handout or isinstance(exc, asyncio.CancelledError):
                raise
            log.warning("pool_start_failed", pool=self.pool_id, error=str(exc)[:300])
            return None
        finally:
            self._starting -= 1
            self._notify()
        self.last_error = None
        if self._closed:
            await box.close()
            return None
        return box

    async def _refill_loop(self) -> None:
        delay = RETRY_FIRST_S
        while not self._closed:
            changed = self._changed
            want = min(self.min_idle - self.idle - self._starting, self.max_total - self.total)
            if want <= 0:
                await self._wait_change(changed)
                continue
            results = await asyncio.gather(*(self._start_one() for _ in range(want)))
            failed = False
            for box in results:
                if box is None:
                    failed = True
                else:
                    self._idle.append((time.monotonic(), box))
            self._notify()
            if failed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            else:
                delay = RETRY_FIRST_S

    # --- plumbing -----------------------------------------------------------------------------

    def _notify(self) -> None:
        """Wake every waiter; each waits on the event it saw before looking at the counts."""
        self._changed.set()
        self._changed = asyncio.Event()

    @staticmethod
    async def _wait_change(changed: asyncio.Event) -> None:
        # Re-checked at least once a second anyway: a bug costs a second, never a hang.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), 1.0)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stats(self) -> dict[str, int]:
        return {"idle": self.idle, "in_use": self.in_use, "starting": self._starting, "total": self.total,
                "handed_out": self.handed_out}
