"""dspy.RLM with SandboxInterpreter on Docker, under runc and gVisor: the scripted question answered by
code in a hardened container, tools called over the channel, and no container left afterwards.

The protocol's unit tests run on the local backend (tests/integrations/test_dspy.py); what differs
here is the box, so these check what only a container shows.
"""

from __future__ import annotations

from typing import Any

import pytest

from sandboxes.box_tags import BOX_ID_LABEL
from tests.docker.helpers import docker_spec
from tests.integrations.dspy_support import (BoxRecorder, check_scripted_answer, import_dspy,
                                             no_traffic_off_machine, run_scripted_rlm, scripted_policy)

dspy = import_dspy()

from dspy.primitives.code_interpreter import CodeExecutionError, FinalOutput  # noqa: E402

from rlm.integrations.dspy import SandboxInterpreter  # noqa: E402
from rlm.testing import FakeLLMServer  # noqa: E402

__all__ = ["no_traffic_off_machine"]  # a fixture, imported for the tests below

pytestmark = pytest.mark.docker


def _containers(docker_client: Any, box_id: str) -> list[Any]:
    return docker_client.containers.list(all=True, filters={"label": f"{BOX_ID_LABEL}={box_id}"})


def test_dspy_rlm_answers_through_a_docker_sandbox(runtime: str | None, docker_client: Any,
                                                   no_traffic_off_machine: Any) -> None:
    recorder = BoxRecorder()
    factory = SandboxInterpreter.factory(docker_spec(runtime, cell_timeout_s=60), callbacks=[recorder.callback])
    with FakeLLMServer(scripted_policy()) as server:
        prediction = run_scripted_rlm(dspy, server, factory)
    check_scripted_answer(prediction, server)
    assert "Sandbox: docker" in next(iter(server.requests)).system
    assert len(recorder.box_ids) == 1
    assert _containers(docker_client, recorder.box_ids.pop()) == []


def test_the_code_runs_in_the_container_and_shutdown_removes_it(runtime: str | None, docker_client: Any) -> None:
    seen: list[Any] = []
    interp = SandboxInterpreter(docker_spec(runtime), tools={"note": lambda value: seen.append(value) or len(seen)},
                                output_fields=[{"name": "answer"}])
    try:
        # No network in the box, a non-root user, and the tool's value came back from the host.
        out = interp.execute("import os\nprint(sorted(os.listdir('/sys/class/net')), os.getuid() != 0, note(data))",
                             {"data": {"from": "host"}})
        assert out == "['lo'] True 1\n"
        assert seen == [{"from": "host"}]
        with pytest.raises(CodeExecutionError, match="ZeroDivisionError"):
            interp.execute("1 / 0")
        result = interp.execute("SUBMIT(answer=os.getuid())")
        assert isinstance(result, FinalOutput) and result.output["answer"] != 0
        box_id = interp.box_id
        assert box_id is not None and len(_containers(docker_client, box_id)) == 1
    finally:
        interp.shutdown()
    assert _containers(docker_client, box_id) == []
