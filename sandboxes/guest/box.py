"""The box as a whole, as the agent sees it: the cgroup counters that tell what ended a cell (an OOM
kill of the kernel, forks refused at the process limit; None where there is no cgroup to read), and
clearing out stray processes in a box the agent owns."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

OOM_EVENTS = (("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"), "oom_kill")
PIDS_EVENTS = (("/sys/fs/cgroup/pids.events", "/sys/fs/cgroup/pids/pids.events"), "max")


def cgroup_counter(which: tuple[tuple[str, ...], str]) -> int | None:
    """A counter of the box's cgroup (v2, or v1): OOM kills, or forks refused at the pids limit.
    None where there is no cgroup to read (the local backend, some providers)."""
    paths, wanted = which
    for path in paths:
        try:
            for line in Path(path).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == wanted:
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


def rose(before: int | None, after: int | None) -> bool:
    return before is not None and after is not None and after > before


def kill_strays(keep: set[int]) -> int:
    """SIGKILL every process in the box but ``keep`` and init; sweep until none is left (a fork can
    race a sweep). Only for an agent that owns its box. Returns how many were killed."""
    keep = keep | {1, os.getpid()}
    killed = 0
    for _ in range(10):
        found = [int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and int(e.name) not in keep]
        if not found:
            break
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        time.sleep(0.02)
    return killed
