"""SandboxInterpreter on Modal and E2B, through the fakes of their SDKs in tests/cloud (the real agent
runs as a local process behind each fake): the same interpreter code works on every backend."""

from __future__ import annotations

import pytest

from tests.cloud.conftest import e2b_fake, fake_box_processes, modal_fake
from tests.integrations.dspy_support import import_dspy

dspy = import_dspy()

from dspy.primitives.code_interpreter import CodeExecutionError, FinalOutput  # noqa: E402

from rlm.integrations.dspy import SandboxInterpreter  # noqa: E402
from sandboxes import SandboxSpec  # noqa: E402

__all__ = ["e2b_fake", "modal_fake"]  # fixtures, imported for the test below


@pytest.mark.parametrize("backend", ["modal", "e2b"])
def test_interpreter_on_a_cloud_backend(backend: str, request: pytest.FixtureRequest) -> None:
    request.getfixturevalue(f"{backend}_fake")
    with SandboxInterpreter(SandboxSpec(backend=backend), tools={"double": lambda n: 2 * n},
                            output_fields=[{"name": "answer", "type": "int"}]) as interp:
        assert interp.execute("print(double(len(items)))", {"items": [1, 2, 3]}) == "6\n"
        with pytest.raises(CodeExecutionError, match="NameError"):
            interp.execute("undefined_name")
        assert interp.execute("SUBMIT(double(21))") == FinalOutput({"answer": 42})
        assert fake_box_processes() != []
    assert fake_box_processes() == []
