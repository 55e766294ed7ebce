"""The RLM controller's own test suite, run once more with every sandbox a Docker box.

tests/rlm picks its sandbox backend from RLM_TEST_ENVIRONMENT; here it runs in a child pytest with
``docker``, so a Docker regression in the controller's paths (uploads, setup cell, recursion with
child boxes, the CLI) fails this run. The child inherits CI, so it cannot skip its way to green.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(1800)
def test_rlm_controller_suite_passes_on_docker() -> None:
    if not (ROOT / "tests" / "rlm").is_dir():
        pytest.fail("tests/rlm is missing: the controller's tests are expected beside these")
    env = dict(os.environ, RLM_TEST_ENVIRONMENT="docker")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "tests/rlm"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1700)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
    assert proc.returncode == 0, f"tests/rlm failed with RLM_TEST_ENVIRONMENT=docker:\n{tail}"
    assert " passed" in proc.stdout, tail
