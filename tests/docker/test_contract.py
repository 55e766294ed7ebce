"""The shared sandbox contract, run against Docker boxes under runc and under gVisor."""

from __future__ import annotations

from typing import Any

import pytest

from sandboxes import SandboxSpec
from tests.sandbox_contract import SandboxContract

pytestmark = pytest.mark.docker


class TestDockerRuncContract(SandboxContract):
    backend = "docker"
    kernel_can_signal_agent = False

    def make_spec(self, **changes: Any) -> SandboxSpec:
        return SandboxSpec(backend="docker", **changes)


class TestDockerRunscContract(SandboxContract):
    backend = "docker"
    kernel_can_signal_agent = False

    @pytest.fixture(autouse=True)
    def _needs_runsc(self, docker_client: Any) -> None:
        from tests.docker.conftest import _unavailable
        from sandboxes.backends.docker.engine import engine_runtimes

        if "runsc" not in engine_runtimes(docker_client):
            _unavailable("the Docker engine has no 'runsc' (gVisor) runtime registered")

    def make_spec(self, **changes: Any) -> SandboxSpec:
        return SandboxSpec(backend="docker", runtime="runsc", **changes)
