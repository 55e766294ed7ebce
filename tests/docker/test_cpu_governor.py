"""Busy Docker boxes yield the cores kept for quiet work (a cpuset Docker sets), and get them back when calm."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from sandboxes import open_sandbox
from sandboxes.backends.docker import cpu_governor
from sandboxes.backends.docker.cpu_governor import BoxLoad, cgroup_files, core_sets, cpuset_text, governor
from sandboxes.backends.docker.engine import engine_runtimes
from tests.docker.helpers import docker_spec

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


def test_a_box_moves_when_busy_and_back_only_after_a_calm_spell() -> None:
    s = cpu_governor.SAMPLE_S
    load = BoxLoad()
    used = 0
    t = 0.0

    def sample(cpus: float) -> bool | None:
        nonlocal used, t
        t += s
        used += int(cpus * s * 1e9)
        return load.step(used, t)

    assert sample(0.0) is None
    assert [sample(0.4), sample(0.0), sample(0.1), sample(0.0)] == [None] * 4  # quiet work stays
    assert [sample(0.9), sample(0.9)] == [None, None]  # a busy moment is not a busy box (window 1 s)
    assert sample(0.9) is True and load.busy  # over half a CPU through the window is
    assert sample(1.0) is None
    assert sample(0.1) is None  # calm begins
    assert sample(0.4) is None  # busy again: the calm spell starts over
    calm = [sample(0.05) for _ in range(int(cpu_governor.CALM_S / s) + 1)]
    assert calm[-1] is False and calm[:-1] == [None] * (len(calm) - 1) and not load.busy


async def until(check: Any, seconds: float) -> bool:
    """Whether ``check()`` (run in a thread: it may block) came true within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await asyncio.to_thread(check):
            return True
        await asyncio.sleep(0.1)
    return False


def _cpuset(docker_client: Any, name: str) -> str:
    return docker_client.api.inspect_container(name)["HostConfig"]["CpusetCpus"]


async def test_a_spinning_box_leaves_the_quiet_cores_and_its_neighbour_is_never_moved(docker_client: Any) -> None:
    if governor.sets is None:
        pytest.skip("a governor needs two cores or more, and RLM_SANDBOX_QUIET_CORES not 0")
    every, busy = texts(governor.sets) or ("", "")
    async with open_sandbox(docker_spec(None, cell_timeout_s=60)) as spinner, \
            open_sandbox(docker_spec(None)) as quiet:
        spin_name, quiet_name = spinner.backend.container_name, quiet.backend.container_name
        spinning = asyncio.ensure_future(spinner.execute(SPIN.format(seconds=6), timeout=60))
        assert await until(lambda: _cpuset(docker_client, spin_name) == busy, 5.0), "never moved"
        for _ in range(20):  # the quiet box works on, and stays where it was
            assert (await quiet.execute("1 + 1")).status == "ok"
        assert _cpuset(docker_client, quiet_name) == ""
        result = await spinning
        assert result.status == "ok" and result.stdout == "spun\n", result
        # Still busy right after; back on every core once calm (CALM_S), not before the spin ended.
        assert await until(lambda: _cpuset(docker_client, spin_name) == every, cpu_governor.CALM_S + 5.0)
        assert (await spinner.execute("print('still here')")).stdout == "still here\n"
        assert _cpuset(docker_client, quiet_name) == ""


async def test_a_spinning_gvisor_box_is_moved_through_its_cgroup(docker_client: Any) -> None:
    """runsc has no `update`: the governor writes the container's cpuset where it may (root on the
    engine's host, as in CI), and the box runs on."""
    if governor.sets is None or "runsc" not in engine_runtimes(docker_client):
        pytest.skip("needs gVisor, on a machine where the governor acts")
    every, busy = texts(governor.sets) or ("", "")
    async with open_sandbox(docker_spec("runsc", cell_timeout_s=60)) as spinner:
        state = docker_client.api.inspect_container(spinner.backend.container_name)
        found = cgroup_files(state["State"]["Pid"], state["Id"])
        assert found is not None, "the box's cgroup is not readable from the controller's host"
        cpuset = found[1]
        if cpuset is None:
            pytest.skip("the box's cgroup is not writable here (not root): gVisor boxes are not moved")
        spinning = asyncio.ensure_future(spinner.execute(SPIN.format(seconds=6), timeout=60))
        assert await until(lambda: cpuset.read_text().strip() == busy, 5.0), "never moved"
        result = await spinning
        assert result.status == "ok" and result.stdout == "spun\n", result
        assert await until(lambda: cpuset.read_text().strip() == every, cpu_governor.CALM_S + 5.0)
        assert _cpuset(docker_client, spinner.backend.container_name) == ""  # Docker never knew
