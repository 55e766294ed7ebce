"""The box starts while the model thinks: the start, the upload and the setup cell run during the
first model call, and a start that fails ends the run at once, costing at most that one call."""

from __future__ import annotations

import json
import threading

import pytest

from rlm import Limits
from rlm.testing import FakeRequest, Reply, Script, split

LOOK = "Let me look.\n```repl\nprint(type(context).__name__, len(context))\n```"


def refused_start(environment: str) -> dict:
    """Sandbox settings the backend refuses when the box starts (not when the RLM is built)."""
    if environment == "docker":
        return {"image": "rlm-sandbox-kernel:no-such-tag"}
    return {"memory_mb": 8}  # the local agent cannot start its interpreter under this address-space cap


def test_the_box_gets_ready_while_the_first_model_call_is_in_flight(server, make_rlm):
    box_ready = threading.Event()
    answered_before_ready: list[bool] = []

    def first(request: FakeRequest) -> str:
        # The first reply waits for the box: a box started only after this call would never be ready.
        answered_before_ready.append(not box_ready.wait(120))
        return LOOK

    def watch(event: dict) -> None:
        if event["event"] == "sandbox_ready":
            box_ready.set()

    server.policy = split(Script([first, "```repl\nFINAL(context[::-1])\n```"]))
    result = make_rlm(on_event=watch).completion("abc" * 100_000)
    assert result.status == "final", result.message
    assert result.response == ("abc" * 100_000)[::-1]
    assert answered_before_ready == [False]
    with open(result.trajectory_path) as f:
        kinds = [e["event"] for e in map(json.loads, f)]
    assert kinds.index("sandbox_ready") < kinds.index("iteration")


@pytest.mark.parametrize("model_first", [False, True], ids=["start-fails-first", "model-answers-first"])
def test_a_failed_start_ends_the_run_with_at_most_one_model_call(server, make_rlm, environment, model_first):
    delay = 0.0 if model_first else 120.0
    server.policy = split(Script([Reply(text=LOOK, delay=delay), "FINAL(never)"]))
    result = make_rlm(environment_kwargs=refused_start(environment),
                      limits=Limits(max_wall_s=300)).completion("ctx", root_prompt="q")
    assert result.status == "error"
    assert "could not start" in result.message, result.message
    assert server.request_count <= 1
    assert sum(u.calls for u in result.usage.values()) <= 1
    if not model_first:
        # The start failed while the model was still thinking: that call was cancelled, not waited for.
        assert result.execution_time < delay / 2
