"""Multi-turn sessions (``RLM(persistent=True)``) through the public API, on the test environment's
backend: one box and one conversation across completions, contexts as context_N, budgets, a lost box."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest

from rlm import Limits
from rlm.testing import FakeRequest, Script, split
from sandboxes.backends.docker.channel_dirs import CONTAINER_PREFIX
from tests.conftest import box_processes

LOOK = "Let me look.\n```repl\nprint(type(context).__name__, len(context))\n```"


def events(result, kind: str) -> list[dict]:
    with open(result.trajectory_path) as f:
        return [e for e in map(json.loads, f) if e["event"] == kind]


def roots(server) -> list[FakeRequest]:
    return [r for r in server.requests if "llm_query" in r.system]


def assert_box_gone(environment: str, box_id: str) -> None:
    if environment == "local":
        assert box_processes(box_id) == [], f"box {box_id} still has processes"


def test_three_turn_session_keeps_variables_and_sees_each_new_context(server, make_rlm, environment):
    server.policy = split(Script([
        LOOK, "```repl\nkept = context.upper()\nprint(kept)\n```", "FINAL_VAR(kept)",
        LOOK, "```repl\nFINAL(kept + '+' + context + '+' + context_1 + '+' + context_0)\n```",
        LOOK, "```repl\nFINAL('%s|%s|%d' % (kept, context['k'], len([context_0, context_1, context_2])))\n```",
    ]))
    with make_rlm(persistent=True) as rlm:
        first = rlm.completion("alpha", root_prompt="Shout the context.")
        second = rlm.completion("beta", root_prompt="Join them.")
        third = rlm.completion({"k": "gamma"}, root_prompt="And now?")
        usage = rlm.session_usage
    assert (first.status, first.response) == ("final", "ALPHA")
    assert (second.status, second.response) == ("final", "ALPHA+beta+beta+alpha")
    assert (third.status, third.response) == ("final", "ALPHA|gamma|3")
    # One box for the whole session, set up once; later turns only add their context.
    ready = [e for r in (first, second, third) for e in events(r, "sandbox_ready")]
    assert [e["new"] for e in ready] == [True, False, False]
    assert len({e["box_id"] for e in ready}) == 1
    assert [e["contexts"] for e in ready] == [1, 2, 3]
    # One conversation: the second turn's requests carry the first turn's, and name the new variable.
    second_turn = roots(server)[3]
    assert "Shout the context." in second_turn.text and "Join them." in second_turn.last_user
    assert "`context_1`" in second_turn.last_user and "`context` now points at it" in second_turn.last_user
    assert usage["gpt-5-mini"].calls == sum(r.usage["gpt-5-mini"].calls for r in (first, second, third))
    assert_box_gone(rlm.environment, ready[0]["box_id"])


def test_a_session_budget_is_shared_by_its_completions(server, make_rlm):
    server.policy = split(Script([LOOK, "FINAL(one)", LOOK, "```repl\nx = 1\n```", "FINAL(two)"]))
    with make_rlm(persistent=True, session_limits=Limits(max_llm_calls=4)) as rlm:
        first = rlm.completion("a")
        second = rlm.completion("b")
        third = rlm.completion("c")
    assert (first.status, first.response) == ("final", "one")
    assert second.status == "max_llm_calls" and "session_limits.max_llm_calls=4" in second.message
    assert second.usage["gpt-5-mini"].calls == 2
    assert third.status == "max_llm_calls" and "spent" in third.message and third.usage == {}
    assert server.request_count == 4


async def test_an_async_session_uses_the_callers_loop_and_refuses_a_blocking_call_there(server, make_rlm):
    server.policy = split(Script([LOOK, "```repl\nn = len(context)\nFINAL(str(n))\n```",
                                  LOOK, "```repl\nFINAL(str(n + len(context)))\n```"]))
    async with make_rlm(persistent=True) as rlm:
        first = await rlm.acompletion("four")
        with pytest.raises(RuntimeError, match="acompletion"):
            rlm.completion("refused")
        second = await rlm.acompletion("seven!!")
        box_id = events(second, "sandbox_ready")[0]["box_id"]
    assert (first.response, second.response) == ("4", "11")
    assert_box_gone(rlm.environment, box_id)


def test_a_blocking_session_also_serves_acompletion_from_another_loop(server, make_rlm):
    server.policy = split(Script([LOOK, "```repl\nn = 5\nFINAL('ok')\n```",
                                  LOOK, "```repl\nFINAL(str(n) + context)\n```"]))
    with make_rlm(persistent=True) as rlm:
        assert rlm.completion("x").response == "ok"
        result = asyncio.run(rlm.acompletion("y"))  # another loop: the call goes to the session's own
    assert (result.status, result.response) == ("final", "5y")


def test_a_session_whose_event_loop_ended_is_refused_and_its_box_destroyed(server, make_rlm, environment):
    server.policy = split(Script([LOOK, "FINAL(one)", LOOK, "FINAL(two)"]))
    rlm = make_rlm(persistent=True)
    first = asyncio.run(rlm.acompletion("a"))  # the session's loop ends with this asyncio.run
    [ready] = events(first, "sandbox_ready")
    with pytest.raises(RuntimeError, match="asyncio.run"):
        asyncio.run(rlm.acompletion("b"))
    assert_box_gone(environment, ready["box_id"])
    second = rlm.completion("c")  # a new session
    assert (first.response, second.response) == ("one", "two")
    assert events(second, "sandbox_ready")[0]["box_id"] != ready["box_id"]
    rlm.close()


def kill_box(environment: str, box_id: str) -> None:
    """The box dies from outside (a crash, the host's OOM killer, an operator), as a fault would."""
    if environment == "docker":
        import docker

        client = docker.from_env()
        try:
            client.containers.get(f"{CONTAINER_PREFIX}{box_id}").kill()
        finally:
            client.close()
    else:
        for pid in box_processes(box_id):
            os.kill(pid, signal.SIGKILL)


def test_a_lost_box_is_reported_and_the_next_completion_starts_again_and_says_so(server, make_rlm, environment):
    boxes: list[str] = []

    def watch(event: dict) -> None:
        if event["event"] == "sandbox_ready":
            boxes.append(event["box_id"])

    def kill_then_code(request: FakeRequest) -> str:
        kill_box(environment, boxes[-1])  # dies while the model thinks: the next cell finds it gone
        return "```repl\nprint('after the kill')\n```"

    server.policy = split(Script([
        LOOK, "```repl\nkept = 1\n```", kill_then_code,
        LOOK, "```repl\ntry:\n    kept\nexcept NameError:\n    print('kept is gone')\nkept = 2\n"
              "print(context_0, context_1, context)\n```", "FINAL(recovered)",
        LOOK, "```repl\nprint(sorted(k for k in globals() if k.startswith('context_')))\n```", "FINAL(again)",
    ]))
    with make_rlm(persistent=True, on_event=watch) as rlm:
        lost = rlm.completion("zero")
        recovered = rlm.completion("one")
        kill_box(environment, boxes[-1])  # dies between completions: found when the next one begins
        third = rlm.completion("two")
    # Lost during a completion: that completion ends with an error that says so, and an event.
    assert lost.status == "error"
    assert "sandbox was lost" in lost.message and "next completion" in lost.message
    [gone] = events(lost, "sandbox_lost")
    assert gone["box_id"] == boxes[0]
    # The next completion starts a new box with every context, and the model is told up front.
    assert (recovered.status, recovered.response) == ("final", "recovered")
    [ready] = events(recovered, "sandbox_ready")
    assert ready["new"] is True and ready["box_id"] == boxes[1] != boxes[0] and ready["contexts"] == 2
    opening = roots(server)[3].last_user  # the second completion's first request
    assert "every variable you defined is gone" in opening
    cell = events(recovered, "cell")[1]
    assert "kept is gone" in cell["stdout"] and "zero one one" in cell["stdout"]
    # Lost between completions: found while the third one begins; the model is told after its first cell.
    assert (third.status, third.response) == ("final", "again")
    [ready] = events(third, "sandbox_ready")
    assert ready["new"] is True and ready["box_id"] == boxes[2] and ready["contexts"] == 3
    notices = [e["text"] for e in events(third, "notice")]
    assert any("every variable you defined is gone" in n for n in notices)
    assert "['context_0', 'context_1', 'context_2']" in events(third, "cell")[1]["stdout"]
    for box_id in boxes:
        assert_box_gone(environment, box_id)


def test_session_settings_are_checked(make_rlm):
    with pytest.raises(ValueError, match="persistent=True"):
        make_rlm(session_limits=Limits(max_llm_calls=3))
    with pytest.raises(ValueError, match="compaction_threshold_pct"):
        make_rlm(compaction=True, compaction_threshold_pct=1.5)
