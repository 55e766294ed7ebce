"""A local box whose agent kernel code stops (SIGSTOP to its parent) is found and destroyed in time,
while a neighbour box keeps answering (see tests/stuck_agent.py)."""

from __future__ import annotations

from sandboxes import SandboxSpec
from tests.stuck_agent import STOP_FROM_KERNEL, check_stuck_report, run_stuck_agent


async def test_an_agent_stopped_by_kernel_code_is_lost_in_time_beside_a_working_neighbour() -> None:
    spec = SandboxSpec(backend="local", cell_timeout_s=5, kill_grace_s=2)
    report = await run_stuck_agent(spec, STOP_FROM_KERNEL)
    check_stuck_report(report, spec)
