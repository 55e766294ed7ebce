"""SandboxInterpreter: DSPy's CodeInterpreter protocol on a local sandbox, and dspy.RLM end to end.

The real dspy package drives it; its LM is the fake server on 127.0.0.1, and a guard refuses any
connection off the machine. The same end-to-end run on Docker (runc and gVisor) is in
tests/docker/test_dspy_docker.py.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
from typing import Any

import pytest

from tests.conftest import box_processes
from tests.integrations.dspy_support import (BoxRecorder, check_scripted_answer, import_dspy,
                                             no_traffic_off_machine, run_scripted_rlm, scripted_policy)

dspy = import_dspy()

from dspy.primitives.code_interpreter import (CodeExecutionError, CodeInterpreter,  # noqa: E402
                                              CodeInterpreterError, FinalOutput)
from dspy.utils.callback import BaseCallback  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from rlm.integrations.dspy import SandboxInterpreter  # noqa: E402
from rlm.testing import FakeLLMServer  # noqa: E402
from sandboxes import SandboxSpec, SandboxUnavailable  # noqa: E402

__all__ = ["no_traffic_off_machine"]  # a fixture, imported for the tests below

SPEC = SandboxSpec(backend="local", cell_timeout_s=30)
OUTPUTS = [{"name": "answer", "type": "str"}, {"name": "count", "type": "int"}]


@pytest.fixture
def interp():
    interpreter = SandboxInterpreter(SPEC)
    yield interpreter
    interpreter.shutdown()


# --- dspy.RLM end to end ------------------------------------------------------------------------


def test_dspy_rlm_answers_through_a_local_sandbox(no_traffic_off_machine: Any, caplog: Any) -> None:
    recorder = BoxRecorder()
    factory = SandboxInterpreter.factory(SPEC, callbacks=[recorder.callback])
    with FakeLLMServer(scripted_policy()) as server:
        prediction = run_scripted_rlm(dspy, server, factory)
    check_scripted_answer(prediction, server)
    # The prompt tells the model where its code runs; dspy's facade installed (no fallback warning).
    assert "Sandbox: local" in next(iter(server.requests)).system
    assert "sub-agents are unavailable" not in caplog.text
    # dspy.RLM made one interpreter and shut it down: its box has no process left.
    assert len(recorder.interpreters) == 1 and len(recorder.box_ids) == 1
    assert box_processes(recorder.box_ids.pop()) == []


def test_dspy_rlm_async_path_from_inside_a_running_event_loop(no_traffic_off_machine: Any) -> None:
    factory = SandboxInterpreter.factory(SPEC)

    async def main() -> Any:
        lm = dspy.LM("openai/fake-root", api_base=server.openai_base_url, api_key="k", cache=False, num_retries=0)
        from tests.integrations.dspy_support import CONTEXT, QUESTION, SIGNATURE, population

        rlm = dspy.RLM(SIGNATURE, max_iters=4, tools=[population], interpreter_factory=factory)
        with dspy.context(lm=lm):
            return await rlm.acall(context=CONTEXT, question=QUESTION)

    with FakeLLMServer(scripted_policy()) as server:
        prediction = asyncio.run(main())
    check_scripted_answer(prediction, server)


def test_dspy_sub_agents_built_in_the_box_run_on_the_host(no_traffic_off_machine: Any) -> None:
    """dspy's facade: `import dspy` in the box gives a stand-in whose predictors run on the host,
    reached through two of the interpreter's tools."""
    from rlm.testing import Script
    from tests.integrations.dspy_support import action, is_action

    root = Script([action("Ask a sub-agent.", "import dspy\n"
                                              "reply = dspy.Predict('question -> answer')(question='capital of Portugal?')\n"
                                              "print('sub-agent:', reply.answer)"),
                   action("Submit.", "SUBMIT(answer=reply.answer)")])

    def policy(request: Any) -> str:
        if is_action(request):
            return root(request)
        assert "capital of Portugal?" in request.last_user
        return "[[ ## answer ## ]]\nLisbon\n\n[[ ## completed ## ]]\n"

    with FakeLLMServer(policy) as server:
        lm = dspy.LM("openai/fake-root", api_base=server.openai_base_url, api_key="k", cache=False, num_retries=0)
        rlm = dspy.RLM("question -> answer", max_iters=3, interpreter_factory=SandboxInterpreter.factory(SPEC))
        with dspy.context(lm=lm):
            prediction = rlm(question="What is the capital of Portugal?")
        assert prediction.answer == "Lisbon"
        assert "sub-agent: Lisbon" in prediction.trajectory[0]["output"]
        assert server.request_count == 3


def test_the_factory_is_what_dspy_accepts() -> None:
    from dspy.primitives.code_interpreter import _validate_interpreter_factory

    factory = SandboxInterpreter.factory(SandboxSpec(backend="docker", runtime="runsc", cell_timeout_s=20))
    _validate_interpreter_factory(factory)  # raises TypeError for anything dspy.RLM would refuse
    assert "Sandbox: docker, runtime runsc" in factory.execution_instructions
    assert "20 s" in factory.execution_instructions
    made = factory()
    assert isinstance(made, CodeInterpreter) and made.box_id is None  # nothing started until used
    made.shutdown()


# --- the protocol, unit by unit -------------------------------------------------------------------


class Point(BaseModel):
    x: int
    y: int


def test_variables_round_trip_as_json(interp: SandboxInterpreter) -> None:
    variables = {"text": "héllo\n\"quoted\"", "n": 3, "ratio": 0.25, "flag": True, "nothing": None,
                 "items": [1, "two", [3]], "table": {"a": {"b": [1, 2]}}, "pair": (1, 2), "point": Point(x=1, y=2),
                 "big": "x" * 3_000_000}
    code = ("SUBMIT({name: (type(value).__name__, value if name != 'big' else len(value)) "
            "for name, value in [(n, globals()[n]) for n in " + repr(sorted(variables)) + "]})")
    result = interp.execute(code, variables)
    assert isinstance(result, FinalOutput)
    got = result.output["output"]
    assert got["text"] == ["str", "héllo\n\"quoted\""]
    assert got["n"] == ["int", 3] and got["ratio"] == ["float", 0.25] and got["flag"] == ["bool", True]
    assert got["nothing"] == ["NoneType", None] and got["items"] == ["list", [1, "two", [3]]]
    assert got["table"] == ["dict", {"a": {"b": [1, 2]}}]
    assert got["pair"] == ["list", [1, 2]]  # JSON has no tuples
    assert got["point"] == ["dict", {"x": 1, "y": 2}]
    # 3 MB: larger than a cell may be, so it travelled as a file, not inside the code.
    assert got["big"] == ["str", 3_000_000]


def test_variables_are_bound_again_on_every_execute(interp: SandboxInterpreter) -> None:
    interp.execute("context = context.upper()\nkept = 1", {"context": "abc"})
    assert interp.execute("print(context, kept)", {"context": "abc"}) == "abc 1\n"


@pytest.mark.parametrize("name", ["not an identifier", "class", "SUBMIT"])
def test_variable_names_the_repl_cannot_bind_are_refused(interp: SandboxInterpreter, name: str) -> None:
    with pytest.raises(CodeInterpreterError, match="Invalid variable name"):
        interp.execute("1", {name: 1})


def test_values_json_cannot_carry_are_refused(interp: SandboxInterpreter) -> None:
    with pytest.raises(CodeInterpreterError, match="'handle' .* cannot enter the sandbox"):
        interp.execute("1", {"handle": object()})
    assert interp.execute("print('still usable')") == "still usable\n"


def test_output_is_stdout_then_the_last_value_and_none_when_silent(interp: SandboxInterpreter) -> None:
    assert interp.execute("x = 41") is None
    assert interp.execute("print('x is', x)\nx + 1") == "x is 41\n42\n"


def test_tools_are_host_functions_called_over_the_channel_with_json_args() -> None:
    calls: list[Any] = []
    request = contextvars.ContextVar("request", default="unset")

    def lookup(key: str, limit: int = 2) -> dict:
        """Find a key."""
        calls.append((key, limit, request.get()))
        return {"key": key, "limit": limit, "seen_by": request.get()}

    async def shout(text: str) -> str:
        await asyncio.sleep(0)
        return text.upper()

    with SandboxInterpreter(SPEC, tools={"lookup": lookup}) as interp:
        interp.tools["shout"] = shout  # as dspy.RLM adds its tools: through the mutable dict
        interp.start()
        # Set after the box started: tools see the context of the execute() call, not of start().
        request.set("caller-context")
        out = interp.execute("print(lookup('a'), lookup(key='b', limit=5), shout('hi'))\nhelp(lookup)")
    assert calls == [("a", 2, "caller-context"), ("b", 5, "caller-context")]
    assert out.startswith("{'key': 'a', 'limit': 2, 'seen_by': 'caller-context'} "
                          "{'key': 'b', 'limit': 5, 'seen_by': 'caller-context'} HI\n")
    assert "lookup(key, limit=2)" in out and "Find a key." in out


def test_a_raising_tool_reaches_the_kernel_as_an_exception(interp: SandboxInterpreter) -> None:
    def lookup(key: str) -> str:
        raise KeyError(f"no entry for {key}")

    interp.tools["lookup"] = lookup
    caught = interp.execute("try:\n    lookup('zebra')\nexcept RuntimeError as e:\n    print('caught:', e)")
    assert caught == "caught: tool lookup() failed: KeyError: 'no entry for zebra'\n"
    with pytest.raises(CodeExecutionError, match="RuntimeError: tool lookup\\(\\) failed: KeyError"):
        interp.execute("lookup('zebra')")
    with pytest.raises(CodeExecutionError, match="TypeError"):  # bad arguments fail like a local call
        interp.execute("lookup('a', 'b', 'c')")


def test_an_exception_in_code_is_a_code_execution_error_and_the_session_goes_on(
        interp: SandboxInterpreter) -> None:
    interp.execute("kept = 'still here'")
    with pytest.raises(CodeExecutionError) as info:
        interp.execute("print('before')\n{}['missing']")
    assert str(info.value).startswith("KeyError: 'missing'") and "before" in str(info.value)
    with pytest.raises(SyntaxError):
        interp.execute("def broken(:\n    pass")
    assert interp.execute("print(kept)") == "still here\n"


def test_submit_returns_final_output_checked_against_output_fields(interp: SandboxInterpreter) -> None:
    interp.output_fields = OUTPUTS
    assert interp.execute("SUBMIT('yes', 3)") == FinalOutput({"answer": "yes", "count": 3})
    # SUBMIT ends the block at once, even inside `except Exception`.
    result = interp.execute("try:\n    SUBMIT(answer='a', count=1)\nexcept Exception:\n    pass\nafter = 1")
    assert result == FinalOutput({"answer": "a", "count": 1})
    assert interp.execute("print('after' in globals())") == "False\n"


def test_submit_with_a_missing_or_unknown_field_is_an_error(interp: SandboxInterpreter) -> None:
    interp.output_fields = OUTPUTS
    with pytest.raises(CodeExecutionError, match="missing a required argument: 'count'"):
        interp.execute("SUBMIT(answer='yes')")
    with pytest.raises(CodeExecutionError, match="unexpected keyword argument 'extra'"):
        interp.execute("SUBMIT(answer='yes', count=1, extra=2)")
    with pytest.raises(CodeExecutionError, match="JSON values"):
        interp.execute("SUBMIT(answer={1, 2}, count=1)")
    # The controller checks the fields itself: a call forged past the kernel's SUBMIT is refused.
    forged = interp.execute("from sandboxes.guest.runtime import call, GuestCallError\n"
                            "try:\n    call('dspy.submit', {'answer': 'x'})\nexcept GuestCallError as e:\n"
                            "    print(e)")
    assert "missing ['count']" in forged


def test_submit_without_output_fields_takes_one_output(interp: SandboxInterpreter) -> None:
    assert interp.execute("SUBMIT([1, 2])") == FinalOutput({"output": [1, 2]})


def test_a_cell_over_its_time_limit_is_interrupted_and_the_state_kept() -> None:
    with SandboxInterpreter(SandboxSpec(backend="local", cell_timeout_s=1.0, kill_grace_s=5.0)) as interp:
        interp.execute("kept = 7")
        with pytest.raises(CodeExecutionError, match="longer than 1 s and was interrupted"):
            interp.execute("import time\ntime.sleep(60)")
        assert interp.execute("print(kept)") == "7\n"


def test_a_lost_box_ends_the_session_with_a_code_interpreter_error(interp: SandboxInterpreter) -> None:
    interp.execute("x = 1")
    box_id = interp.box_id
    with pytest.raises(CodeInterpreterError) as info:
        interp.execute("import os, signal, time\nos.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(30)")
    assert not isinstance(info.value, CodeExecutionError)  # terminal, not something the code can fix
    assert "sandbox_lost" in str(info.value) and "create a new SandboxInterpreter" in str(info.value)
    with pytest.raises(CodeInterpreterError, match="sandbox_lost"):
        interp.execute("print(1)")
    assert interp.box_id is None and box_processes(box_id) == []


def test_a_box_that_cannot_start_is_a_code_interpreter_error() -> None:
    def no_engine(spec: Any, box_id: str) -> Any:
        raise SandboxUnavailable("no Docker engine answers; start one")

    interp = SandboxInterpreter(SPEC, backend=no_engine)
    with pytest.raises(CodeInterpreterError, match="could not start the local sandbox: no Docker engine"):
        interp.execute("1")


def test_shutdown_destroys_the_box_and_ends_the_session() -> None:
    interp = SandboxInterpreter(SPEC)
    interp.start()
    interp.start()  # idempotent
    box_id = interp.box_id
    assert box_id is not None and box_processes(box_id) != []
    interp.shutdown()
    assert box_processes(box_id) == []
    with pytest.raises(CodeInterpreterError, match="shut down"):
        interp.execute("1")
    interp.shutdown()  # idempotent


def test_a_forgotten_interpreter_has_its_box_destroyed_when_collected() -> None:
    interp = SandboxInterpreter(SPEC)
    interp.execute("x = 1")
    box_id = interp.box_id
    assert box_processes(box_id) != []
    del interp
    gc.collect()
    assert box_processes(box_id) == []


def test_a_tool_cannot_run_code_in_its_own_interpreter(interp: SandboxInterpreter) -> None:
    interp.tools["again"] = lambda: interp.execute("1")
    with pytest.raises(CodeExecutionError, match="cannot execute code from inside one of its own tools"):
        interp.execute("again()")


def test_a_tool_may_run_code_in_another_interpreter(interp: SandboxInterpreter) -> None:
    # As dspy's facade does for a dspy.RLM built inside the box: the nested one gets a box of its own.
    with SandboxInterpreter(SPEC) as inner:
        interp.tools["nested"] = lambda code: inner.execute(code)
        assert interp.execute("print(nested('print(6 * 7)'))") == "42\n\n"


def test_dspy_callbacks_see_start_execute_tool_calls_and_shutdown() -> None:
    events: list[str] = []

    class Recorder(BaseCallback):
        def on_interpreter_startup_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
            events.append("startup")

        def on_interpreter_execute_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
            events.append("execute " + inputs["code"])

        def on_interpreter_tool_call_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
            events.append(f"tool {inputs['tool_name']} {inputs['kwargs']}")

        def on_interpreter_shutdown_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
            events.append("shutdown")

    with SandboxInterpreter(SPEC, tools={"double": lambda n: 2 * n}, callbacks=[Recorder()]) as interp:
        interp.execute("double(4)")
    assert events == ["execute double(4)", "startup", "tool double {'n': 4}", "shutdown"]

