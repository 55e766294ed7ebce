"""The fair queue: which queued run starts next.

Limits nest: a global cap on running runs and on sandboxes (each run counts its worst case of boxes
open at once), and inside it a cap per tenant. Tenants are served in turn (whoever was served
least recently goes next; a tenant new to the queue first), each tenant's runs in arrival order, so
a tenant with a thousand queued runs does not delay another tenant's first run past the next free
slot.

The scheduler is plain in-memory bookkeeping; starting a run is a callback, and the owner reports
back with ``finished`` (the store keeps the durable truth, see ``runs.RunManager``).
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Job:
    run_id: str
    tenant_id: str
    box_slots: int = 1


class FairScheduler:
    def __init__(self, *, max_running: int, max_boxes: int, start: Callable[[Job], None]) -> None:
        self.max_running = max_running
        self.max_boxes = max_boxes
        self._start = start
        self._queues: dict[str, collections.deque[Job]] = {}
        # Tenants with queued runs (and when each joined the line), and when each was last served.
        self._turns: dict[str, int] = {}
        self._served: dict[str, int] = {}
        self._clock = itertools.count()
        self._limits: dict[str, int] = {}
        self._running: dict[str, int] = collections.defaultdict(int)
        self._jobs: dict[str, Job] = {}  # running
        self.boxes_in_use = 0
        self.paused = False

    # -- state ---------------------------------------------------------------------------------

    def set_tenant_limit(self, tenant_id: str, max_running: int) -> None:
        changed = self._limits.get(tenant_id) != max_running
        self._limits[tenant_id] = max_running
        if changed:
            self.dispatch()

    def queued(self, tenant_id: str | None = None) -> int:
        if tenant_id is None:
            return sum(len(q) for q in self._queues.values())
        return len(self._queues.get(tenant_id, ()))

    def running(self, tenant_id: str | None = None) -> int:
        if tenant_id is None:
            return len(self._jobs)
        return self._running.get(tenant_id, 0)

    def queued_runs(self, tenant_id: str) -> list[str]:
        return [job.run_id for job in self._queues.get(tenant_id, ())]

    def running_runs(self, tenant_id: str) -> list[str]:
        return [job.run_id for job in self._jobs.values() if job.tenant_id == tenant_id]

    # -- changes -------------------------------------------------------------------------------

    def enqueue(self, job: Job) -> None:
        queue = self._queues.setdefault(job.tenant_id, collections.deque())
        self._turns.setdefault(job.tenant_id, next(self._clock))
        queue.append(job)
        self.dispatch()

    def remove(self, run_id: str) -> bool:
        """Take a queued run out of the queue (it was cancelled). False if it is not queued."""
        for tenant_id, queue in self._queues.items():
            for job in queue:
                if job.run_id == run_id:
                    queue.remove(job)
                    if not queue:
                        self._forget(tenant_id)
                    return True
        return False

    def finished(self, run_id: str) -> None:
        """A started run ended (or could not start): free its slots and start what fits."""
        job = self._jobs.pop(run_id, None)
        if job is None:
            return
        self._running[job.tenant_id] -= 1
        self.boxes_in_use -= job.box_slots
        self.dispatch()

    def _forget(self, tenant_id: str) -> None:
        self._queues.pop(tenant_id, None)
        self._turns.pop(tenant_id, None)

    def dispatch(self) -> None:
        """Start queued runs while slots allow: each time, the tenant served least recently among
        those that may start one (a tenant new to the queue goes first)."""
        while not self.paused and len(self._jobs) < self.max_running and self._turns:
            for tenant_id in sorted(self._turns, key=lambda t: (self._served.get(t, -1), self._turns[t])):
                queue = self._queues[tenant_id]
                job = queue[0]
                if self._running[tenant_id] >= self._limits.get(tenant_id, 1):
                    continue
                if self.boxes_in_use + job.box_slots > self.max_boxes and self._jobs:
                    continue  # waits for boxes (a run alone may always start, or it would wait forever)
                queue.popleft()
                if not queue:
                    self._forget(tenant_id)
                self._served[tenant_id] = next(self._clock)
                self._jobs[job.run_id] = job
                self._running[tenant_id] += 1
                self.boxes_in_use += job.box_slots
                self._start(job)
                break
            else:
                return
