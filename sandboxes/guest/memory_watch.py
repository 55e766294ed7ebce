"""Stop the kernel before the box as a whole runs out of memory, where the box cannot do it itself.

Under runc a box is a memory cgroup of ordinary processes: at its limit the host's OOM killer takes the
biggest one, the kernel, and the agent carries on with a new kernel. Under gVisor the whole box is one
host process in that cgroup, so the same OOM kill takes the box, agent and all. gVisor, though, shows
the box its own memory: in its /proc/meminfo, MemTotal is the box's limit and MemTotal - MemAvailable
what the box uses (processes, tmpfs files, caches), within a few MB of what the host's cgroup counts.

So where /proc/meminfo describes the box (MemTotal no larger than the box's limit: gVisor, and any
provider that runs boxes as VMs), a thread of the agent reads it and, once the box uses
``threshold_mb`` (90 % of its limit, leaving at least 48 MB), kills the kernel side: the kernel's
process group, or in a box the agent owns every process but the agent and init. The agent then reports
the cell ``oom`` and starts a new kernel, as under runc.

The next read comes no later than the box could take to reach the threshold at ``FILL_MB_PER_S``
(twice the 1 GB/s a Python memory bomb writes, measured under runc and gVisor), between 5 and 100 ms:
an idle box far from its limit costs ten reads a second, and a bomb is read ever more often as it
nears the threshold, so it overshoots by a few MB at most, well inside the margin.

The watch is armed again only once usage falls below the threshold, so memory held by files in the
box's tmpfs (which killing the kernel cannot free) does not kill every new kernel in turn. Where
/proc/meminfo is the host's (runc, the local backend), there is no watch: the cgroup, or rlimits, act.
Reading it costs about 35 us under gVisor (one pread on a file kept open).
"""

from __future__ import annotations

import os
import threading
from typing import Callable

MEMINFO = "/proc/meminfo"
FILL_MB_PER_S = 2000.0
MIN_INTERVAL_S = 0.005
MAX_INTERVAL_S = 0.1
MIN_MARGIN_MB = 48
# MemTotal may exceed the configured limit by a little (page rounding); more means it is not the box's.
TOTAL_SLACK_MB = 16


def threshold_mb(memory_mb: int) -> float:
    """The box's usage at which the kernel is stopped: 90 % of the limit, leaving at least 48 MB."""
    return min(0.9 * memory_mb, memory_mb - MIN_MARGIN_MB)


def _used_and_total_mb(fd: int) -> tuple[float, float]:
    fields: dict[bytes, int] = {}
    for line in os.pread(fd, 8192, 0).splitlines():
        key, _, rest = line.partition(b":")
        if key in (b"MemTotal", b"MemAvailable"):
            fields[key] = int(rest.split()[0])
    total = fields[b"MemTotal"] / 1024
    return total - fields[b"MemAvailable"] / 1024, total


class MemoryWatch:
    """A thread that kills the kernel side when the box nears its memory limit (see the module)."""

    def __init__(self, fd: int, memory_mb: int, kill: Callable[[], None]) -> None:
        self.fd = fd
        self.limit_mb = threshold_mb(memory_mb)
        self.kill = kill
        self.fired = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="memory-watch", daemon=True)

    @classmethod
    def for_box(cls, memory_mb: int | None, kill: Callable[[], None]) -> MemoryWatch | None:
        """A watch, if /proc/meminfo describes this box (its total within the box's limit); else None."""
        if not memory_mb or memory_mb <= MIN_MARGIN_MB:
            return None
        try:
            fd = os.open(MEMINFO, os.O_RDONLY)
        except OSError:
            return None
        try:
            _, total = _used_and_total_mb(fd)
        except (OSError, KeyError, ValueError):
            total = float("inf")
        if total > memory_mb + TOTAL_SLACK_MB:
            os.close(fd)
            return None
        return cls(fd, memory_mb, kill)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def take_fired(self) -> bool:
        """Whether the watch killed the kernel since last asked."""
        fired = self.fired.is_set()
        self.fired.clear()
        return fired

    def _run(self) -> None:
        armed = True
        interval = MIN_INTERVAL_S
        try:
            while not self.stopping.wait(interval):
                used, _ = _used_and_total_mb(self.fd)
                interval = min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, (self.limit_mb - used) / FILL_MB_PER_S))
                if used < self.limit_mb:
                    armed = True
                elif armed:
                    armed = False
                    self.fired.set()  # before the kill: the agent may see the kernel dead at once
                    self.kill()
        finally:
            os.close(self.fd)
