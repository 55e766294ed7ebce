"""Busy Docker boxes yield to quiet ones: idle priority through their cgroup's ``cpu.idle`` where the
controller may write it, off the cores kept for quiet work (a cpuset), and all back when calm."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from sandboxes import open_sandbox
from sandboxes import cpu_governor
from sandboxes.backends.docker.cgroups import box_cgroup
from sandboxes.cpu_governor import governor
from sandboxes.backends.docker.engine import engine_runtimes
from tests.core.test_cpu_governor import texts
from tests.polling import until
from tests.docker.helpers import docker_spec

SPIN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\nprint('spun')"


def _cpuset(docker_client: Any, name: str) -> str:
    return docker_client.api.inspect_container(name)["HostConfig"]["CpusetCpus"]


def _idle_file(docker_client: Any, name: str) -> Any:
    """The box's ``cpu.idle``, where the controller may write it (root on the engine's host, as in CI)."""
    state = docker_client.api.inspect_container(name)
    cgroup = box_cgroup(state["State"]["Pid"], state["Id"])
    assert cgroup is not None, "the box's cgroup is not readable from the controller's host"
    if os.environ.get("CI") == "true" and os.geteuid() == 0:
        assert cgroup.idle is not None, "CI runs as root: the box's cpu.idle should be writable"
    return cgroup.idle


def _read(path: Any) -> str:
    return path.read_text().strip()


async def test_a_spinning_box_leaves_the_quiet_cores_and_its_neighbour_is_never_moved(docker_client: Any) -> None:
    if governor.sets is None:
        pytest.skip("a governor needs two cores or more, and RLM_SANDBOX_QUIET_CORES not 0")
    every, busy = texts(governor.sets) or ("", "")
    async with open_sandbox(docker_spec(None, cell_timeout_s=60)) as spinner, \
            open_sandbox(docker_spec(None)) as quiet:
        spin_name, quiet_name = spinner.backend.container_name, quiet.backend.container_name
        spin_idle, quiet_idle = _idle_file(docker_client, spin_name), _idle_file(docker_client, quiet_name)
        if spin_idle is not None:  # restored from its start-up demotion once ready
            assert await until(lambda: _read(spin_idle) == "0" and _read(quiet_idle) == "0", 3.0)
        spinning = asyncio.ensure_future(spinner.execute(SPIN.format(seconds=6), timeout=60))
        assert await until(lambda: _cpuset(docker_client, spin_name) == busy, 5.0), "never moved"
        if spin_idle is not None:
            assert _read(spin_idle) == "1"
        for _ in range(20):  # the quiet box works on, and stays where it was
            assert (await quiet.execute("1 + 1")).status == "ok"
            await asyncio.sleep(0.02)  # paced: cells back to back keep a CPU busy, and that is demoted
        assert _cpuset(docker_client, quiet_name) == "" and (quiet_idle is None or _read(quiet_idle) == "0")
        result = await spinning
        assert result.status == "ok" and result.stdout == "spun\n", result
        # Still busy right after; back on every core once calm (CALM_S), not before the spin ended.
        assert await until(lambda: _cpuset(docker_client, spin_name) == every, cpu_governor.CALM_S + 5.0)
        assert spin_idle is None or _read(spin_idle) == "0"
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
        found = box_cgroup(state["State"]["Pid"], state["Id"])
        assert found is not None, "the box's cgroup is not readable from the controller's host"
        cpuset, idle = found.cpuset, found.idle
        if cpuset is None:
            pytest.skip("the box's cgroup is not writable here (not root): gVisor boxes are not moved")
        spinning = asyncio.ensure_future(spinner.execute(SPIN.format(seconds=6), timeout=60))
        assert await until(lambda: cpuset.read_text().strip() == busy, 5.0), "never moved"
        assert idle is None or _read(idle) == "0"  # cores only: its agent must stay able to interrupt
        result = await spinning
        assert result.status == "ok" and result.stdout == "spun\n", result
        assert await until(lambda: cpuset.read_text().strip() == every, cpu_governor.CALM_S + 5.0)
        assert _cpuset(docker_client, spinner.backend.container_name) == ""  # Docker never knew
