"""A Docker box whose agent is stopped (SIGSTOP from outside the kernel: kernel code, another user,
cannot) is found and destroyed in time while a neighbour box keeps answering (see
tests/stuck_agent.py). An agent can still wedge, so detection stays where the kernel cannot touch it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sandboxes import Sandbox
from tests.docker.helpers import docker_spec
from tests.stuck_agent import check_stuck_report, run_stuck_agent

pytestmark = pytest.mark.docker

SLEEP_AFTER_SAYING_SO = (
    "import time\n"
    "from sandboxes.guest.runtime import call\n"
    "call('stopping')\n"
    "time.sleep(600)\n"
)
# Run in the container as its root (which holds CAP_KILL): SIGSTOP the agent, whatever its uid.
STOP_AGENT = (
    "import os, signal\n"
    "stopped = 0\n"
    "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
    "    try:\n"
    "        argv = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
    "    except OSError:\n"
    "        continue\n"
    "    if b'sandboxes.guest' in argv and int(pid) != os.getpid():\n"
    "        os.kill(int(pid), signal.SIGSTOP)\n"
    "        stopped += 1\n"
    "print('stopped', stopped)\n"
)


async def test_a_frozen_box_is_lost_in_time_beside_a_working_neighbour(runtime: str | None, docker_client: Any) -> None:
    spec = docker_spec(runtime, cell_timeout_s=5, kill_grace_s=2)

    async def stop_the_agent(box: Sandbox) -> None:
        container = docker_client.containers.get(box.backend.container_name)
        code, output = await asyncio.to_thread(container.exec_run, ["/opt/kernel/bin/python", "-c", STOP_AGENT])
        assert code == 0 and output.split()[:1] == [b"stopped"] and int(output.split()[1]) >= 1, (code, output)

    report = await run_stuck_agent(spec, SLEEP_AFTER_SAYING_SO, stop_the_agent)
    check_stuck_report(report, spec)
