"""The RLM controller's own test suite, run once more with every sandbox a Docker box.

tests/rlm picks its sandbox backend from RLM_TEST_ENVIRONMENT; here it runs in a child pytest with
``docker``, so a Docker regression in the controller's paths (uploads, setup cell, recursion with
child boxes, the CLI) fails this run. The child inherits CI, so it cannot skip its way to green.
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
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "tests/rlm"],
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
    # Every box the controller's tests opened is gone (their owner label names the child's pid).
    owner_prefix = f"{socket.gethostname()}:{proc.pid}:"
    left = [c.name for c in docker_client.containers.list(all=True, filters={"label": MANAGED_LABEL})
            if (c.labels or {}).get(OWNER_LABEL, "").startswith(owner_prefix)]
    assert left == [], f"the controller's tests left containers behind: {left}"
