"""Server-Sent Events of a run's log, read from the store: live while it runs, replayed when done.

Each event goes out with ``id:`` set to its number in the run, so a client that lost its connection
sends ``Last-Event-ID`` and gets exactly what it missed. Readers wait on the hub (woken when the
run's events are written), and look at the store every few seconds anyway. Store reads are shielded:
a client that disconnects mid-read must not cancel a query and cost the pool its connection.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Awaitable, Callable

from rlm.service.models import ACTIVE_STATUSES
from rlm.service.store import Store

KEEPALIVE_S = 15.0
POLL_S = 5.0


class EventHub:
    """Wake-ups for readers of a run's events (in-process)."""

    def __init__(self) -> None:
        self._waiters: dict[str, asyncio.Event] = {}

    def waiter(self, run_id: str) -> asyncio.Event:
        event = self._waiters.get(run_id)
        if event is None:
            event = self._waiters[run_id] = asyncio.Event()
        return event

    def notify(self, run_id: str) -> None:
        event = self._waiters.pop(run_id, None)
        if event is not None:
            event.set()


def format_event(seq: int, event: str, data: str) -> bytes:
    # ``data`` is one line of JSON (json.dumps escapes newlines), so one ``data:`` field carries it.
    return f"id: {seq}\nevent: {event}\ndata: {data}\n\n".encode("utf-8")


async def run_events(store: Store, hub: EventHub, tenant_id: str, run_id: str, last_id: int,
                     stopping: Callable[[], bool], run_status: Callable[[], Awaitable[str | None]]) -> AsyncIterator[bytes]:
    """The SSE body: events after ``last_id`` until the run is over and all its events are sent
    (or the server stops)."""
    quiet_since = time.monotonic()
    while not stopping():
        waiter = hub.waiter(run_id)  # taken before reading, so a write after the read wakes us
        rows = await asyncio.shield(store.events_after(tenant_id, run_id, last_id))
        for row in rows:
            last_id = row.seq
            yield format_event(row.seq, row.event, row.data)
        if rows:
            quiet_since = time.monotonic()
            continue
        status = await asyncio.shield(run_status())
        if status is None or status not in ACTIVE_STATUSES:
            # Over: one more read catches events written between the two reads above.
            for row in await asyncio.shield(store.events_after(tenant_id, run_id, last_id)):
                yield format_event(row.seq, row.event, row.data)
            return
        try:
            await asyncio.wait_for(waiter.wait(), POLL_S)
        except TimeoutError:
            pass
        if time.monotonic() - quiet_since >= KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield b": keepalive\n\n"
