"""The CPU governor's policy (which core sets, when a box is demoted and restored), and the local
backend's demotion: a spinning local box is confined to the busy cores and, where the controller may
restore it, runs at idle priority; its quiet neighbour is never touched."""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import time
import weakref
from typing import Any

import pytest

from sandboxes import SandboxSpec, open_sandbox
from sandboxes import cpu_governor
from sandboxes.backends import local
from sandboxes.cpu_governor import BoxLoad, core_sets, cpuset_text, governor
from tests.polling import until

SPIN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\nprint('spun')"


def cores(count: int) -> frozenset[int]:
    return frozenset(range(count))


def texts(sets: tuple[frozenset[int], frozenset[int]] | None) -> tuple[str, str] | None:
    return None if sets is None else (cpuset_text(sets[0]), cpuset_text(sets[1]))


def test_core_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cpu_governor.QUIET_CORES_ENV, raising=False)  # the defaults, whatever this shell set
    assert texts(core_sets(cores(1), None)) is None  # nothing to keep aside
    assert texts(core_sets(cores(2), None)) == ("0-1", "1")
    assert texts(core_sets(cores(8), None)) == ("0-7", "2-7")
    assert texts(core_sets(cores(8), 3)) == ("0-7", "3-7")
    assert texts(core_sets(cores(4), 0)) is None  # turned off
    assert texts(core_sets(cores(2), 5)) == ("0-1", "1")  # a busy box always keeps a core
    assert texts(core_sets(frozenset({2, 3, 5, 6}), 1)) == ("2-3,5-6", "3,5-6")  # the cores it was given
    assert cpuset_text(frozenset({0, 1, 2, 5, 7, 8})) == "0-2,5,7-8"


def test_quiet_cores_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_governor.QUIET_CORES_ENV, "0")
    assert core_sets(cores(8)) is None
    monkeypatch.setenv(cpu_governor.QUIET_CORES_ENV, "3")
    assert texts(core_sets(cores(8))) == ("0-7", "3-7")
    monkeypatch.setenv(cpu_governor.QUIET_CORES_ENV, "lots")
    assert texts(core_sets(cores(8))) == ("0-7", "2-7")  # the default, with a warning


def test_a_box_is_demoted_when_busy_and_restored_only_after_a_calm_spell() -> None:
    s = cpu_governor.SAMPLE_S
    window = round(cpu_governor.BUSY_WINDOW_S / s)
    load = BoxLoad()
    used = 0
    t = 0.0

    def sample(cpus: float) -> bool | None:
        nonlocal used, t
        t += s
        used += int(cpus * s * 1e9)
        return load.step(used, t)

    assert [sample(0.0) for _ in range(window + 1)] == [None] * (window + 1)
    assert [sample(0.3) for _ in range(2 * window)] == [None] * (2 * window)  # quiet work stays
    assert sample(1.0) is None  # a busy moment is not a busy box
    rest = [sample(1.0) for _ in range(window)]
    assert True in rest and load.busy  # over half a CPU through the window is
    assert sample(1.0) is None
    assert [sample(0.0) for _ in range(window)] == [None] * window  # calm begins once the window is
    assert [sample(0.6) for _ in range(2)] == [None, None]  # busy again: the calm spell starts over
    calm = [sample(0.0) for _ in range(window + round(cpu_governor.CALM_S / s) + 1)]
    assert False in calm and not load.busy
    assert calm.index(False) * s >= cpu_governor.CALM_S


def test_a_box_using_more_than_a_core_is_demoted_before_the_whole_window() -> None:
    load, used, t = BoxLoad(), 0, 0.0
    steps = []
    while not load.busy:
        t += cpu_governor.SAMPLE_S
        used += int(2.0 * cpu_governor.SAMPLE_S * 1e9)  # two cores' worth
        steps.append(load.step(used, t))
    assert steps[-1] is True and cpu_governor.SURGE_WINDOW_S <= t - cpu_governor.SAMPLE_S < cpu_governor.BUSY_WINDOW_S
    # A core's worth (cells back to back) is not a surge: it waits for the whole window.
    load, used, t = BoxLoad(), 0, 0.0
    for _ in range(round(cpu_governor.BUSY_WINDOW_S / cpu_governor.SAMPLE_S)):
        t += cpu_governor.SAMPLE_S
        used += int(1.0 * cpu_governor.SAMPLE_S * 1e9) + 10_000_000  # and a tick falls its way
        assert load.step(used, t) is None


def test_a_paced_box_is_never_demoted() -> None:
    """A third of a CPU (a trivial cell every 20 ms), even counted in 10 ms ticks, is quiet."""
    load, used, t = BoxLoad(), 0, 0.0
    for i in range(600):
        t += cpu_governor.SAMPLE_S
        used += 10_000_000 * (3 + (i % 3 == 0))  # 30 or 40 ms in each 100 ms: ticks fall unevenly
        assert load.step(used, t) is None


async def test_a_start_is_kept_off_the_quiet_cores_only_beside_a_quiet_box_and_one_per_busy_core() -> None:
    """Every start is demoted; one that may be confined starts on the busy cores only while a box that
    is up and quiet could be slowed by it, and only while those cores have a start fewer than they
    number (the rest of a burst starts on every core); each gets every core back once ready."""
    every, busy = cores(4), frozenset({1, 2, 3})
    own = cpu_governor.CpuGovernor((every, busy))
    placements: dict[str, list[tuple[frozenset[int] | None, bool]]] = collections.defaultdict(list)

    def start(key: str, confine: bool = True) -> frozenset[int] | None:
        record = placements[key].append
        return own.add(key, lambda: cpu_governor.Governed(lambda: 0, lambda c, b: record((c, b))), confine)

    async def up(key: str, restored: tuple[frozenset[int] | None, bool]) -> None:
        own.ready(key)
        assert await until(lambda: placements[key][-1:] == [restored], 3.0), placements[key]

    try:
        assert start("first") is None  # alone: nobody to protect
        assert await until(lambda: placements["first"] == [(None, True)], 3.0)
        await up("first", (None, False))
        assert [start(f"burst{i}") for i in range(4)] == [busy, busy, busy, None]  # one per busy core
        assert start("docker-like", confine=False) is None
        assert await until(lambda: placements["burst0"] == [(busy, True)] and placements["burst3"] == [(None, True)]
                           and placements["docker-like"] == [(None, True)], 3.0), dict(placements)
        await up("burst0", (every, False))  # its place on the busy cores is free again
        assert start("next") == busy
        for key in ("first", "burst0"):
            own.press(key)  # the quiet boxes turned busy: nobody left to protect
        assert await until(lambda: own.boxes["first"].placed_busy and own.boxes["burst0"].placed_busy, 3.0)
        own.remove("next")
        assert start("last") is None
    finally:
        for key in list(own.boxes):
            own.remove(key)


async def test_a_box_the_controller_holds_back_is_demoted_until_it_stops_pressing() -> None:
    """A box whose lines the controller paused reading (``press``) is demoted though its own CPU is
    quiet, stays so while it presses, and is restored ``CALM_S`` after its last press."""
    every, busy = cores(2), frozenset({1})
    own = cpu_governor.CpuGovernor((every, busy))
    placements: list[tuple[frozenset[int] | None, bool]] = []
    own.add("box", lambda: cpu_governor.Governed(lambda: 0, lambda c, b: placements.append((c, b))))
    try:
        own.ready("box")
        assert await until(lambda: placements[-1:] == [(None, False)], 3.0), placements  # up: restored
        own.press("box")
        assert await until(lambda: placements[-1:] == [(busy, True)], 3.0), placements
        assert not own.demoted("box")  # its CPU is quiet: the channel does not shrink its share for this
        pressed_until = time.monotonic() + cpu_governor.CALM_S
        while time.monotonic() < pressed_until:
            own.press("box")
            await asyncio.sleep(0.2)
        assert placements[-1] == (busy, True)
        last_press = time.monotonic()
        assert await until(lambda: placements[-1] == (every, False), cpu_governor.CALM_S + 3.0), placements
        assert time.monotonic() - last_press >= cpu_governor.CALM_S - 0.2
    finally:
        own.remove("box")


async def test_the_governor_holds_no_backend_and_forgets_a_box_that_is_gone() -> None:
    """A box its controller dropped unclosed must not be kept alive by the governor (the backend
    holds the box's connection, whose end is what tells its agent to exit), and once its reader says
    it is gone, the governor stops watching it."""

    class Backend:
        alive = True

        def governed(self) -> cpu_governor.Governed:
            return cpu_governor.Governed(lambda: 0 if Backend.alive else None, lambda c, b: None)

    own = cpu_governor.CpuGovernor((cores(2), frozenset({1})))
    backend = Backend()
    held = weakref.ref(backend)
    own.add("box", backend.governed)
    own.ready("box")
    del backend
    assert await until(lambda: own.boxes["box"].governed is not None, 3.0)
    gc.collect()
    assert held() is None
    Backend.alive = False
    assert await until(lambda: "box" not in own.boxes, 3.0)
    assert await until(lambda: own.thread is None, 3.0)  # nothing left to watch: the thread ends


def box_threads(box: Any) -> list[int]:
    found = []
    for pid in local.tree(box.backend.proc.pid, local.process_table()):
        try:
            found += [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            pass
    return found


def placed(box: Any, cores: frozenset[int], policy: int) -> bool:
    """Every thread of the box on ``cores`` under ``policy`` (where the controller changes policies)."""
    threads = box_threads(box)
    try:
        return bool(threads) and all(
            os.sched_getaffinity(tid) == cores
            and (not local.RESTORABLE or os.sched_getscheduler(tid) == policy) for tid in threads)
    except OSError:
        return False  # a thread ended meanwhile: look again


async def test_a_spinning_local_box_is_demoted_and_its_quiet_neighbour_is_not() -> None:
    if governor.sets is None:
        pytest.skip("a governor needs two cores or more, and RLM_SANDBOX_QUIET_CORES not 0")
    every, busy = governor.sets
    spec = SandboxSpec(backend="local", cell_timeout_s=60)
    async with open_sandbox(spec) as spinner, open_sandbox(spec) as quiet:
        # Once ready, a box is restored from its start-up demotion.
        assert await until(lambda: placed(spinner, every, os.SCHED_OTHER) and placed(quiet, every, os.SCHED_OTHER),
                           3.0), "not restored after start-up"
        spinning = asyncio.ensure_future(spinner.execute(SPIN.format(seconds=4), timeout=60))
        assert await until(lambda: placed(spinner, busy, os.SCHED_IDLE), 3.0), "never demoted"
        for _ in range(20):
            assert (await quiet.execute("1 + 1")).status == "ok"
            await asyncio.sleep(0.02)  # paced: cells back to back keep a CPU busy, and that is demoted
        assert placed(quiet, every, os.SCHED_OTHER)
        result = await spinning
        assert result.status == "ok" and result.stdout == "spun\n", result
        assert await until(lambda: placed(spinner, every, os.SCHED_OTHER), cpu_governor.CALM_S + 3.0), "never restored"
        assert (await spinner.execute("print('still here')")).stdout == "still here\n"
        assert placed(quiet, every, os.SCHED_OTHER)
