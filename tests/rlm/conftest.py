"""Fixtures for the controller tests: a fake LLM server and RLMs pointed at it.

The sandbox backend comes from RLM_TEST_ENVIRONMENT (default "local"), so the same tests run against
Docker with RLM_TEST_ENVIRONMENT=docker.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from rlm import RLM, Limits, RLMLogger
from rlm.testing import FakeLLMServer

ENVIRONMENT = os.environ.get("RLM_TEST_ENVIRONMENT", "local")


@pytest.fixture
def environment() -> str:
    return ENVIRONMENT


@pytest.fixture
def server():
    with FakeLLMServer() as fake:
        yield fake


@pytest.fixture
def make_rlm(server, tmp_path, environment):
    """Build an RLM whose models are all served by the fake server."""

    def build(backend: str = "openai", model: str = "gpt-5-mini", *, limits: Limits | None = None,
              sub_model: str | None = None, **kwargs: Any) -> RLM:
        base_url = server.base_url_for(backend)
        if sub_model is not None:
            kwargs.setdefault("other_backends", [backend])
            kwargs.setdefault("other_backend_kwargs",
                              [{"model_name": sub_model, "base_url": base_url, "api_key": "test-key"}])
        kwargs.setdefault("logger", RLMLogger(tmp_path / "logs"))
        return RLM(backend=backend,
                   backend_kwargs={"model_name": model, "base_url": base_url, "api_key": "test-key"},
                   environment=environment, limits=limits or Limits(max_wall_s=120, cell_timeout_s=30),
                   **kwargs)

    return build
