"""Box starts wait their turn: one start queue per provider, shared by the whole controller process.

Why: starting a box is the heaviest thing a controller asks of its provider. A Docker engine on a
small machine starts a few containers (each an agent and a Jupyter kernel coming up) in well under a
second, but a hundred at once all crawl together, and every one misses its start deadline: a burst
fails although each start alone would have succeeded. So starts are admitted a few at a time, and a
start's deadline (``SandboxSpec.startup_timeout_s``) counts from its admission, not from the request.
Waiting has no deadline of its own: the caller's (a run's wall clock, a pool's acquire timeout)
bounds it, and cancelling the caller leaves the queue.

Shared: everything that opens boxes in one process (runs, their children, pools, plain
``open_sandbox`` calls, on any event loop and thread) takes its turn in the same queue of its
provider. ``start_queue("docker")`` is that queue; its size comes from ``RLM_SANDBOX_START_CONCURRENCY``
when set, else from the provider (``DEFAULT_CONCURRENCY``: starts on this machine's engine are bound
by its cores; cloud providers start boxes on their own machines), and ``resize`` changes it at run time.

Fair: waiting starts are served by owner in turn (round-robin), so a run whose fifty children queue
for boxes delays another run's root by at most one start per other owner waiting. Starts without an
owner are each an owner of their own, which makes them first come, first served.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Hashable

ENV_VAR = "RLM_SANDBOX_START_CONCURRENCY"
# Starts at once per provider when the environment does not say. Docker and local starts spend this
# machine's CPU (engine, container runtime, agent, kernel): measured with benchmarks/burst.py on two
# cores, one start per core gave the best throughput (24 runs: 0.43 runs/s with 1 at once, 0.78 with 2,
# 0.63 with 4, 0.49 with 8). Modal and E2B start boxes on their own machines.
PER_CORE = 1
DEFAULT_CONCURRENCY = {"modal": 32, "e2b": 32}


@dataclass(eq=False)
class _Ticket:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    granted: bool = field(default=False)


class StartQueue:
    """At most ``concurrency`` starts at once; the others wait, served by owner in turn.

    Thread-safe: waiters on several event loops (a session's loop thread, ``asyncio.run`` per call)
    share one queue, and each is woken on its own loop.
    """

    def __init__(self, concurrency: int, name: str = "") -> None:
        self.name = name
        self._concurrency = _checked(concurrency)
        self._lock = threading.Lock()
        self._active = 0
        self._waiting = 0
        # Owner -> its waiting tickets; owners in the order of their next turn.
        self._turns: collections.OrderedDict[Hashable, collections.deque[_Ticket]] = collections.OrderedDict()

    @property
    def concurrency(self) -> int:
        return self._concurrency

    def resize(self, concurrency: int) -> None:
        """Admit up to ``concurrency`` starts at once from now on (starts under way finish as they are)."""
        with self._lock:
            self._concurrency = _checked(concurrency)
            self._grant()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"concurrency": self._concurrency, "starting": self._active, "waiting": self._waiting}

    @contextlib.asynccontextmanager
    async def slot(self, owner: Hashable | None = None,
                   on_queued: Callable[[int], None] | None = None) -> AsyncIterator[float]:
        """Hold one start slot for the block; yields the seconds waited for it (0.0 when there was room).

        ``on_queued(ahead)`` is called when the start has to wait, with the number of starts waiting
        before it.
        """
        waited = await self._acquire(owner, on_queued)
        try:
            yield waited
        finally:
            self._release()

    async def _acquire(self, owner: Hashable | None, on_queued: Callable[[int], None] | None) -> float:
        loop = asyncio.get_running_loop()
        ticket = _Ticket(loop, loop.create_future())
        key = ticket if owner is None else owner
        with self._lock:
            if self._active < self._concurrency and not self._waiting:
                self._active += 1
                return 0.0
            self._turns.setdefault(key, collections.deque()).append(ticket)
            self._waiting += 1
            ahead = self._waiting - 1
        started = time.monotonic()
        try:
            if on_queued is not None:
                on_queued(ahead)
            await ticket.future
        except BaseException:
            with self._lock:
                if ticket.granted:  # admitted as we gave up: pass the slot on
                    self._active -= 1
                    self._grant()
                else:
                    self._withdraw(key, ticket)
            raise
        return time.monotonic() - started

    def _release(self) -> None:
        with self._lock:
            self._active -= 1
            self._grant()

    def _grant(self) -> None:
        """Admit waiters while there is room, one per owner in turn (the lock is held)."""
        while self._active < self._concurrency and self._turns:
            owner, tickets = next(iter(self._turns.items()))
            ticket = tickets.popleft()
            del self._turns[owner]
            if tickets:  # its next start waits for every other owner's turn
                self._turns[owner] = tickets
            self._waiting -= 1
            ticket.granted = True
            self._active += 1
            try:
                ticket.loop.call_soon_threadsafe(_wake, ticket.future)
            except RuntimeError:  # its event loop is closed: nobody will use the slot
                self._active -= 1

    def _withdraw(self, owner: Hashable, ticket: _Ticket) -> None:
        tickets = self._turns.get(owner)
        if tickets is not None and ticket in tickets:
            tickets.remove(ticket)
            self._waiting -= 1
            if not tickets:
                del self._turns[owner]


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _checked(concurrency: int) -> int:
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ValueError(f"start concurrency must be a positive integer, not {concurrency!r}")
    return concurrency


_queues: dict[str, StartQueue] = {}
_queues_lock = threading.Lock()


def default_concurrency(provider: str) -> int:
    """Starts at once for ``provider``: ``RLM_SANDBOX_START_CONCURRENCY``, else the provider's default."""
    value = os.environ.get(ENV_VAR, "").strip()
    if value:
        try:
            return _checked(int(value))
        except ValueError:
            raise ValueError(f"{ENV_VAR}={value!r}: give a positive integer (box starts at once)") from None
    return DEFAULT_CONCURRENCY.get(provider, PER_CORE * (os.cpu_count() or 1))


def start_queue(provider: str) -> StartQueue:
    """The process-wide start queue of one provider (a backend's ``name``: "docker", "local", ...)."""
    with _queues_lock:
        queue = _queues.get(provider)
        if queue is None:
            queue = _queues[provider] = StartQueue(default_concurrency(provider), provider)
        return queue
