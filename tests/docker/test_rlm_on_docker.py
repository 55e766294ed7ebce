"""The RLM controller's own test suite, run once more with every sandbox a Docker box.

tests/rlm picks its sandbox backend from RLM_TEST_ENVIRONMENT; here it runs in a child pytest with
``docker``, so a Docker regression in the controller's paths (uploads, setup cell, recursion with
child boxes, the CLI) fails this run. The child inherits CI, so it cannot skip its way to green.
It runs on two workers (pytest-xdist): its tests mostly wait on box starts, and two at a time take
the run from about 180 s to about 100 s on two cores.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sandboxes.box_tags import MANAGED_LABEL, OWNER_LABEL

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(1800)
def test_rlm_controller_suite_passes_on_docker(docker_client: Any) -> None:
    if not (ROOT / "tests" / "rlm").is_dir():
        pytest.fail("tests/rlm is missing: the controller's tests are expected beside these")
    env = dict(os.environ, RLM_TEST_ENVIRONMENT="docker")
    before = {c.id for c in _managed(docker_client)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-n", "2", "tests/rlm"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=1700)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    tail = "\n".join(output.splitlines()[-40:])
    assert proc.returncode == 0, f"tests/rlm failed with RLM_TEST_ENVIRONMENT=docker:\n{tail}"
    assert " passed" in output, tail
    # Every box the controller's tests opened is gone: no container is left that this process did not
    # open (its tests run one at a time, so any other new one is the child's workers').
    mine = f"{socket.gethostname()}:{os.getpid()}:"
    left = [c.name for c in _managed(docker_client)
            if c.id not in before and not (c.labels or {}).get(OWNER_LABEL, "").startswith(mine)]
    assert left == [], f"the controller's tests left containers behind: {left}"


def _managed(docker_client: Any) -> list[Any]:
    return docker_client.containers.list(all=True, filters={"label": MANAGED_LABEL})
