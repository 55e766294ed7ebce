"""Busy Docker boxes yield the cores kept for quiet work (a cpuset Docker sets), and get them back when calm."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sandboxes import open_sandbox
from sandboxes.backends import cpu_governor
from sandboxes.backends.cpu_governor import governor
from sandboxes.backends.docker.engine import engine_runtimes
from tests.core.test_cpu_governor import SPIN, texts, until
from tests.docker.helpers import docker_spec


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


async def test_a_gvisor_box_is_left_alone(docker_client: Any) -> None:
    """runsc has no `update`: the governor does not try, and the box runs on."""
    if governor.sets is None or "runsc" not in engine_runtimes(docker_client):
        pytest.skip("needs gVisor, on a machine where the governor acts")
    async with open_sandbox(docker_spec("runsc", cell_timeout_s=60)) as spinner:
        result = await spinner.execute(SPIN.format(seconds=2), timeout=60)
        assert result.status == "ok", result
        assert _cpuset(docker_client, spinner.backend.container_name) == ""
