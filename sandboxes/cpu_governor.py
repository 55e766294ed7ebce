"""Busy boxes yield to quiet ones: a box that keeps a CPU busy is demoted until it calms down.

Why: a CPU quota caps what a box uses, not when its neighbours get to run. On a host with fewer
cores than busy boxes, a box whose cell needs a few milliseconds (and the controller itself) waits
behind the busy ones at every wake-up. Measured with ``benchmarks/neighbours.py`` on 2 cores (a
neighbour running a cell every 20 ms beside four hostile boxes, Docker runc), the neighbour's p99 was
16 times its idle one with no governor, about 5 times with the busy boxes' CPU weight lowered (a
waking task of equal policy still waits for the running one's slice), 3 to 4 times with the busy
boxes only kept off one core, and 1.3 to 1.5 times with them demoted as below.

How: a thread of its own (never the event loop) samples each box's CPU time every ``SAMPLE_S``. A
box starts demoted: starting a kernel is a second of busy work that must not slow the boxes already
at work. A starting box is lowered in priority; a local one is also kept off the quiet cores
(``add(confine_start=True)``) while a quiet box is up to be protected: much of a start is work
inside the OS (exec, page faults, file reads), which a Linux built without full preemption
(PREEMPT_NONE, usual on servers) does not interrupt for a waking task, whatever the policy;
measured, a quiet local neighbour's p99 under attack went from 2.4-2.6 to 1.6-2.0 times its idle
one. At most one start per busy core is kept aside, and the others start on every core: a start is
about a core's work, and confining a burst of them left the quiet cores idle (24 local runs at once
on 2 cores took 26 s against 16 s). Docker boxes start on every core: confining them measured 40 %
off the start rate of a 100-run burst on 2 cores. Once its agent says ready a box is restored and
judged by its work: a box that used at least ``BUSY_CPUS`` of a CPU over ``BUSY_WINDOW_S`` (or more
than a core, ``SURGE_CPUS``, over the shorter ``SURGE_WINDOW_S``) is demoted; one that then stays
under ``QUIET_CPUS`` (over the same window) for ``CALM_S`` is restored. The window is long enough
that the 10 ms ticks in which Linux counts a process's CPU time do not make a quiet box look busy.
The backend does the demoting, with what its provider allows:

* the box runs at idle priority (a cgroup's ``cpu.idle`` for Docker runc boxes, ``SCHED_IDLE`` for the
  processes of a local box): any task of normal priority that wakes takes the core from it at once;
* and it is confined to the busy cores (every core but the first ``quiet_cores``), so the quiet
  cores are free for the controller and quiet boxes whatever the scheduler does.

A box whose lines cost the controller more than their share (its channel says so: ``press``) is
demoted the same way, until it has not pressed for ``CALM_S``.

A demoted box keeps its quota and still runs, on whatever its betters leave; the controller's own
work for it is demoted too (``Channel``: a fifth of the decode share). Quiet boxes are never
touched. A box that runs cells back to back without pause uses a CPU too, and is demoted like any
other busy box. What each backend can do is said where it registers its boxes (``Governed``).

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
from typing import Callable

from sandboxes.logs import get_logger

log = get_logger("sandboxes.governor")

QUIET_CORES_ENV = "RLM_SANDBOX_QUIET_CORES"
SAMPLE_S = 0.1
BUSY_WINDOW_S = 0.5
BUSY_CPUS = 0.5  # of one CPU, over BUSY_WINDOW_S: the box is demoted
QUIET_CPUS = 0.2  # of one CPU, over BUSY_WINDOW_S: a box this calm throughout CALM_S is restored
SURGE_WINDOW_S = 0.2
SURGE_CPUS = 1.25  # over SURGE_WINDOW_S: demoted at once, before a whole BUSY_WINDOW_S has passed
CALM_S = 2.0


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


def cpuset_text(cores: frozenset[int]) -> str:
    """Cores as a cpuset list (``0-3,6``), the form Docker and the kernel take."""
    runs: list[list[int]] = []
    for core in sorted(cores):
        if runs and core == runs[-1][1] + 1:
            runs[-1][1] = core
        else:
            runs.append([core, core])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


@dataclass
class BoxLoad:
    """One box's recent CPU use, as the governor sampled it, and whether it is demoted."""

    samples: deque[tuple[float, int]] = field(default_factory=deque)  # (time, CPU ns), over BUSY_WINDOW_S
    busy: bool = False
    calm_since: float | None = None

    def step(self, usage_ns: int, now: float) -> bool | None:
        """Take a sample; returns True to demote the box, False to restore it, None to leave it."""
        self.samples.append((now, usage_ns))
        while len(self.samples) > 2 and now - self.samples[1][0] >= BUSY_WINDOW_S - 1e-9:
            self.samples.popleft()
        (first_at, first_ns), (last_at, last_ns) = self.samples[0], self.samples[-1]
        if not self.busy and self._surging():
            self.busy, self.calm_since = True, None
            return True
        if now - first_at < BUSY_WINDOW_S - 1e-9:
            return None  # seen for less than the window: too soon to call it busy
        window = (last_ns - first_ns) / 1e9 / (last_at - first_at)
        if not self.busy:
            if window >= BUSY_CPUS:
                self.busy, self.calm_since = True, None
                return True
            return None
        if window >= QUIET_CPUS:
            self.calm_since = None
        elif self.calm_since is None:
            self.calm_since = now
        elif now - self.calm_since >= CALM_S:
            self.busy, self.calm_since = False, None
            return False
        return None

    def _surging(self) -> bool:
        """Over ``SURGE_CPUS`` through the last ``SURGE_WINDOW_S``: more than a core, which no box
        that mostly waits uses however its ticks fall, so it need not wait for the whole window."""
        last_at, last_ns = self.samples[-1]
        for at, ns in reversed(self.samples):
            if last_at - at >= SURGE_WINDOW_S - 1e-9:
                return (last_ns - ns) / 1e9 / (last_at - at) >= SURGE_CPUS
        return False


@dataclass(frozen=True)
class Governed:
    """How the governor handles one box, as its backend says: a reader of the box's CPU time (ns;
    None once the box is gone), and ``place(cores, busy)``, which confines the box to ``cores``
    (None: leave them) and demotes it (``busy``) or restores it."""

    read: Callable[[], int | None]
    place: Callable[[frozenset[int] | None, bool], None]


@dataclass
class _Box:
    key: str
    setup: Callable[[], Governed | None] | None  # dropped once used: it may hold the backend
    start_cores: frozenset[int] | None = None  # where it starts (None: every core)
    governed: Governed | None = None  # set up on the first sample
    load: BoxLoad = field(default_factory=BoxLoad)
    ready: bool = False  # its agent said ready: judged by its work from now on
    starting: bool = True  # demoted for its start-up until the first sample after it is ready
    pressed_at: float = float("-inf")  # when its channel last said it pressed (``press``)
    placed_busy: bool = False  # whether it is placed as demoted for its work now


@dataclass
class CpuGovernor:
    """The process's governor: boxes join as they start and leave when they are destroyed.

    ``setup`` runs once, in the governor's thread (it may block: a Docker inspect), and says how
    to read and place the box, or None to leave it alone."""

    sets: tuple[frozenset[int], frozenset[int]] | None
    boxes: dict[str, _Box] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None

    def add(self, key: str, setup: Callable[[], Governed | None],
            confine_start: bool = False) -> frozenset[int] | None:
        """Govern a box that is starting; returns the cores it starts on (None: every core).

        With ``confine_start`` (a backend whose start is OS work no priority can pre-empt) the box
        starts on the busy cores while a quiet box is up and fewer starts than busy cores are kept
        there already; the backend applies that from the first moment it can."""
        if self.sets is None:
            return None
        with self.lock:
            aside = sum(box.starting and box.start_cores is not None for box in self.boxes.values())
            cores = self.sets[1] if confine_start and aside < len(self.sets[1]) and self._protecting() else None
            self.boxes[key] = _Box(key, setup, cores)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="sandbox-cpu-governor", daemon=True)
                self.thread.start()
        return cores

    def ready(self, key: str) -> None:
        """The box is up: restore it if it was demoted for its start-up, and judge it from now on."""
        with self.lock:
            if key in self.boxes:
                self.boxes[key].ready = True

    def press(self, key: str) -> None:
        """The box's lines cost the controller more than their share (its channel says so): demote
        it as if it were busy, until it has neither pressed nor kept a CPU busy for ``CALM_S``.
        Called from the event loop: one float written, no lock."""
        box = self.boxes.get(key)
        if box is not None:
            box.pressed_at = time.monotonic()

    def demoted(self, key: str) -> bool:
        """Whether the box is demoted for keeping a CPU busy (not for pressing: its channel's share
        shrinks only for that). Read without the lock: one dict lookup."""
        box = self.boxes.get(key)
        return box is not None and box.load.busy

    def _protecting(self) -> bool:
        """Whether a box is up and quiet: a neighbour a starting box could slow. Alone, a box starts
        on every core (a start confined to some cores takes longer, for nobody's sake). Under the lock."""
        return any(box.ready and not box.starting and not box.placed_busy for box in self.boxes.values())

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
            assert box.setup is not None
            # The backend's setup is dropped once used: held here, it would keep a box that its
            # controller dropped unclosed (and the box's connection) alive as long as the governor.
            box.governed, box.setup = box.setup(), None
            if box.governed is None:
                log.debug("cpu_governor_not_governed", box=box.key[:12])
                self.remove(box.key)
                return
            if not box.ready:  # starting up is busy work
                box.governed.place(box.start_cores, True)
        if box.starting and box.ready:
            box.governed.place(self.sets[0] if box.start_cores is not None else None, False)
            box.starting = False
        if box.starting:
            return
        usage, now = box.governed.read(), time.monotonic()
        if usage is None:  # gone without being destroyed here (its agent exited): stop watching it
            log.debug("cpu_governor_gone", box=box.key[:12])
            self.remove(box.key)
            return
        box.load.step(usage, now)
        busy = box.load.busy or now - box.pressed_at < CALM_S
        if busy == box.placed_busy:
            return
        with self.lock:
            if box.key not in self.boxes:
                return  # destroyed meanwhile: nothing to move
        box.governed.place(self.sets[1] if busy else self.sets[0], busy)
        box.placed_busy = busy
        log.debug("cpu_governor_moved", box=box.key[:12], busy=busy,
                  why="cpu" if box.load.busy else "pressed" if busy else "calm")


# The cores this process may use: on a machine that gave the controller only some, the boxes get those.
governor = CpuGovernor(core_sets(frozenset(os.sched_getaffinity(0))))
