"""Busy boxes yield cores: a Docker box that keeps a CPU busy is moved off the cores kept for quiet work.

Why: a CPU quota caps what a box uses, not when its neighbours get to run. On a host with fewer
cores than busy boxes, a box whose cell needs a few milliseconds (and the controller itself) waits
behind the busy ones at every wake-up. Measured with ``benchmarks/neighbours.py --pace-ms 20`` on
2 cores (a neighbour running a cell every 20 ms beside four hostile boxes), the neighbour's p99 was
16 times its idle one; with the busy boxes kept off one core, 3 to 4 times. Lowering the busy boxes'
CPU weight instead left it at about 5 times: the wait is for a core, not for a share.

How: a thread of its own (never the event loop) samples each box's CPU time every ``SAMPLE_S``,
from ``START_S`` after its agent connected (its kernel's start-up is not a busy box). A box that
used at least ``BUSY_CPUS`` of a CPU over ``BUSY_WINDOW_S`` is restricted to the busy cores (every
core but the first ``quiet_cores``); one that then stays under ``QUIET_CPUS`` for ``CALM_S`` gets
every core back. A busy box keeps its quota and still runs: only where it may run changes. Quiet
boxes are never touched. CPU time comes from the container's cgroup; the cores are a cpuset the box
cannot change, set through Docker's update API, or for gVisor (runsc has no ``update``) written
into the container's cgroup where this process may (as root on the engine's host). A box that runs
cells back to back without pause uses a CPU too, and is moved like any other busy box.

Not governed: boxes of an engine whose cgroups are not readable from here (a remote engine), gVisor
boxes where the cgroup is not writable, and local boxes (kernel code could widen its own CPU
affinity again; measured, moving them did not help, as their neighbours wait mostly on box restarts).

With fewer than two cores nothing can be kept aside and the governor does nothing.
``RLM_SANDBOX_QUIET_CORES`` sets how many cores are kept for quiet work (default: a quarter of the
cores, at least one); ``0`` turns the governor off.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sandboxes.logs import get_logger

log = get_logger("sandboxes.docker")

QUIET_CORES_ENV = "RLM_SANDBOX_QUIET_CORES"
SAMPLE_S = 0.25
START_S = 1.5
BUSY_WINDOW_S = 1.0
BUSY_CPUS = 0.5  # of one CPU, over BUSY_WINDOW_S: the box is moved to the busy cores
QUIET_CPUS = 0.2  # of one CPU: a box this calm for CALM_S gets every core back
CALM_S = 2.0
CGROUP_ROOT = Path("/sys/fs/cgroup")


def core_sets(cores: frozenset[int], quiet_cores: int | None = None) -> tuple[frozenset[int], frozenset[int]] | None:
    """(every core, the busy cores: all but the first ``quiet_cores``), or None where no core can be
    kept aside."""
    if quiet_cores is None:
        setting = os.environ.get(QUIET_CORES_ENV, "").strip()
        quiet_cores = max(1, len(cores) // 4)
        if setting.isdigit():
            quiet_cores = int(setting)
        elif setting:
            log.warning("cpu_governor_bad_setting", variable=QUIET_CORES_ENV, value=setting[:40],
                        using=quiet_cores, hint="a whole number of cores; 0 turns the governor off")
    if len(cores) < 2 or quiet_cores <= 0:
        return None
    ordered = sorted(cores)
    return cores, frozenset(ordered[min(quiet_cores, len(ordered) - 1):])


@dataclass
class BoxLoad:
    """One box's recent CPU use, as the governor sampled it, and whether it is on the busy cores."""

    samples: deque[tuple[float, int]] = field(default_factory=deque)  # (time, CPU ns), over BUSY_WINDOW_S
    busy: bool = False
    calm_since: float | None = None

    def step(self, usage_ns: int, now: float) -> bool | None:
        """Take a sample; returns True to move the box to the busy cores, False to give it every
        core back, None to leave it where it is."""
        self.samples.append((now, usage_ns))
        while len(self.samples) > 2 and now - self.samples[1][0] >= BUSY_WINDOW_S:
            self.samples.popleft()
        (first_at, first_ns), (last_at, last_ns) = self.samples[0], self.samples[-1]
        if now - first_at < BUSY_WINDOW_S:
            return None  # seen for less than the window: too soon to call it busy
        window = (last_ns - first_ns) / 1e9 / (last_at - first_at)
        previous_at, previous_ns = self.samples[-2]
        latest = (last_ns - previous_ns) / 1e9 / (last_at - previous_at)
        if not self.busy:
            if window >= BUSY_CPUS:
                self.busy, self.calm_since = True, None
                return True
            return None
        if latest >= QUIET_CPUS:
            self.calm_since = None
        elif self.calm_since is None:
            self.calm_since = now
        elif now - self.calm_since >= CALM_S:
            self.busy, self.calm_since = False, None
            return False
        return None


def cgroup_files(pid: int, container_id: str) -> tuple[Callable[[], int | None], Path | None] | None:
    """The container's cgroup, found through its first process: a reader of its CPU time (ns), and
    its ``cpuset.cpus`` file where this process may write it (else None). None when that cgroup is
    not the container's or not readable here (a remote engine, another PID namespace)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    read: Callable[[], int | None] | None = None
    cpuset: Path | None = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if container_id not in path:
            continue
        names = controllers.split(",")
        if controllers == "":  # cgroup v2: one folder for every controller
            folder = CGROUP_ROOT / path.lstrip("/")
            if (folder / "cpu.stat").exists():
                read = _v2_usage(folder / "cpu.stat")
            if (folder / "cpuset.cpus").exists():
                cpuset = folder / "cpuset.cpus"
        elif "cpuacct" in names:  # cgroup v1
            for mount in ("cpuacct", "cpu,cpuacct", "cpuacct,cpu"):
                usage = CGROUP_ROOT / mount / path.lstrip("/") / "cpuacct.usage"
                if usage.exists():
                    read = lambda usage=usage: int(usage.read_text())  # noqa: E731
                    break
        elif "cpuset" in names:
            cpuset = CGROUP_ROOT / "cpuset" / path.lstrip("/") / "cpuset.cpus"
    if read is None:
        return None
    return read, cpuset if cpuset is not None and os.access(cpuset, os.W_OK) else None


def _v2_usage(stat: Path) -> Callable[[], int | None]:
    def read() -> int | None:
        for entry in stat.read_text().splitlines():
            if entry.startswith("usage_usec "):
                return int(entry.split()[1]) * 1000
        return None
    return read


def cpuset_text(cores: frozenset[int]) -> str:
    """Cores as a cpuset list (``0-3,6``), the form Docker and the kernel take."""
    runs: list[list[int]] = []
    for core in sorted(cores):
        if runs and core == runs[-1][1] + 1:
            runs[-1][1] = core
        else:
            runs.append([core, core])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


# How a box is governed: a reader of its CPU time in ns, and a way to restrict it to some cores.
Governed = tuple[Callable[[], int | None], Callable[[frozenset[int]], None]]


@dataclass
class _Box:
    key: str
    setup: Callable[[], Governed | None]
    governed: Governed | None = None  # set up on the first sample
    load: BoxLoad = field(default_factory=BoxLoad)
    added_at: float = field(default_factory=time.monotonic)


@dataclass
class CpuGovernor:
    """The process's governor: boxes join when they start and leave when they are destroyed.

    ``setup`` runs once, in the governor's thread (it may block: a Docker inspect), and says how
    to read and place the box, or None to leave it alone."""

    sets: tuple[frozenset[int], frozenset[int]] | None
    boxes: dict[str, _Box] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None

    def add(self, key: str, setup: Callable[[], Governed | None]) -> None:
        if self.sets is None:
            return
        with self.lock:
            self.boxes[key] = _Box(key, setup)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="sandbox-cpu-governor", daemon=True)
                self.thread.start()

    def remove(self, key: str | None) -> None:
        with self.lock:
            self.boxes.pop(key or "", None)

    def _run(self) -> None:
        while True:
            with self.lock:
                boxes = list(self.boxes.values())
                if not boxes:
                    self.thread = None
                    return
            for box in boxes:
                try:
                    self._sample(box)
                except Exception as exc:  # a box going away mid-sample, an engine hiccup
                    log.debug("cpu_governor_dropped", box=box.key[:12], error=repr(exc)[:200])
                    self.remove(box.key)
            time.sleep(SAMPLE_S)

    def _sample(self, box: _Box) -> None:
        assert self.sets is not None
        if box.governed is None:
            box.governed = box.setup()
            if box.governed is None:
                log.debug("cpu_governor_not_governed", box=box.key[:12])
                self.remove(box.key)
                return
        if time.monotonic() - box.added_at < START_S:
            return
        read, place = box.governed
        usage, now = read(), time.monotonic()
        if usage is None:
            return
        move = box.load.step(usage, now)
        if move is None:
            return
        with self.lock:
            if box.key not in self.boxes:
                return  # destroyed meanwhile: nothing to move
        place(self.sets[1] if move else self.sets[0])
        log.debug("cpu_governor_moved", box=box.key[:12], busy=move)


# The cores this process may use: on a machine that gave the controller only some, the boxes get those.
governor = CpuGovernor(core_sets(frozenset(os.sched_getaffinity(0))))
