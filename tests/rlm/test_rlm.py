"""The RLM end to end: public API, real SDKs, the fake model server, real sandboxes."""

from __future__ import annotations

import json
import time

import pytest

from rlm import RLM, Limits
from rlm.testing import FakeRequest, Reply, Script, split

LOOK = "Let me look.\n```repl\nprint(type(context).__name__, len(context))\n```"


def sub_echo(request: FakeRequest) -> str:
    return "sub:" + request.last_user


def policy(*replies, sub=sub_echo):
    """RLM loops get ``replies`` in order; plain sub-calls get ``sub``."""
    return split(Script(list(replies)), sub)


def events(result, kind: str | None = None) -> list[dict]:
    with open(result.trajectory_path) as f:
        items = [json.loads(line) for line in f]
    return [e for e in items if kind is None or e["event"] == kind]


def root_requests(server) -> list[FakeRequest]:
    return [r for r in server.requests if "llm_query" in r.system]


# -- the basics, both backends ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_llm_query_and_the_context_stays_out_of_the_root_prompt(server, make_rlm, backend):
    needle = "NEEDLE-7f3a"
    context = ("filler text. " * 2000) + needle + (" more filler." * 2000)
    server.policy = policy(
        LOOK,
        "```repl\nhit = context.index('NEEDLE')\nreply = llm_query('Read: ' + context[hit:hit + 11])\n"
        "print(len(reply))\n```",
        "```repl\nFINAL(reply)\n```",
    )
    result = make_rlm(backend).completion(context, root_prompt="Find the needle.")
    assert result.status == "final", result.message
    assert result.response == "sub:Read: " + needle
    roots = root_requests(server)
    assert len(roots) == 3 and all(r.api == backend for r in roots)
    assert all(needle not in r.text for r in roots)
    assert "Find the needle." in roots[0].text
    assert any(needle in r.last_user for r in server.requests if r not in roots)
    model = next(iter(result.usage))
    usage = result.usage[model]
    assert usage.calls == 4 and usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.cost_usd is not None and usage.cost_usd > 0
    assert result.execution_time > 0 and result.iterations == 3


def test_list_and_dict_contexts_arrive_as_python_values(server, make_rlm):
    server.policy = policy(LOOK, "```repl\nFINAL(str(context['k'][1]) + context['name'])\n```")
    result = make_rlm().completion({"k": [1, 2, 3], "name": "é"})
    assert (result.status, result.response) == ("final", "2é")
    assert "dict 2" in root_requests(server)[1].last_user
    server.policy = policy(LOOK, "```repl\nFINAL(context[2]['x'])\n```")
    result = make_rlm().completion(["a", "b", {"x": "deep"}])
    assert (result.status, result.response) == ("final", "deep")


def test_llm_query_batched_keeps_order_returns_errors_as_values_and_bounds_concurrency(server, make_rlm):
    def sub(request):
        if "bad" in request.last_user:
            return Reply(status=400, error="refused")
        return Reply(text="ans:" + request.last_user, delay=0.05)

    prompts = [f"p{i}" for i in range(12)] + ["bad"]
    server.policy = policy(
        LOOK,
        f"```repl\nrs = llm_query_batched({prompts!r})\nprint([isinstance(r, LLMError) for r in rs])\n"
        "print(rs[-1].startswith('Error:'))\nok = [r for r in rs if not isinstance(r, LLMError)]\n```",
        "```repl\nFINAL(','.join(ok))\n```",
        sub=sub,
    )
    result = make_rlm(limits=Limits(max_concurrency=4, max_wall_s=60)).completion("ctx")
    assert result.status == "final"
    assert result.response == ",".join(f"ans:p{i}" for i in range(12))
    feedback = root_requests(server)[2].last_user
    assert "[False, False, False, False, False, False, False, False, False, False, False, False, True]" in feedback
    assert "True" in feedback.split("]")[-1]
    assert 2 <= server.max_in_flight <= 4
    assert result.usage["gpt-5-mini"].failures == 1


def test_sub_calls_go_to_the_other_backend(server, make_rlm):
    server.policy = policy(LOOK, "```repl\nr = llm_query('hi')\nr2 = llm_query('hi', model='gpt-5-mini')\n```",
                           "FINAL(done)")
    result = make_rlm(sub_model="gpt-5-nano").completion("ctx")
    assert result.status == "final"
    models = [r.model for r in server.requests if "llm_query" not in r.system]
    assert models == ["gpt-5-nano", "gpt-5-mini"]
    assert set(result.usage) == {"gpt-5-mini", "gpt-5-nano"}


def test_show_vars(server, make_rlm):
    server.policy = policy(LOOK, "```repl\nfoo = [1, 2]\nbar = 'abc'\nSHOW_VARS()\n```", "FINAL(ok)")
    result = make_rlm().completion("ctx")
    assert result.status == "final"
    feedback = root_requests(server)[2].last_user
    assert "foo: list (len 2)" in feedback and "bar: str (len 3)" in feedback
    assert "llm_query" not in feedback.split("Block")[1].split("```")[1]


# -- recursion -------------------------------------------------------------------------------------


def test_depth_two_child_has_its_own_sandbox(server, make_rlm):
    def rlm_loops(request: FakeRequest) -> str:
        first = request.messages[0]["content"]
        if "child task" in first:  # the child RLM at depth 1
            if request.turn == 0:
                return ("```repl\nprint('ctx=' + context)\nprint('parent var visible:', 'x_parent' in globals())\n"
                        "g = rlm_query('grandchild q', context='gc ctx')\nprint(g)\n```")
            return "```repl\nFINAL('child-done:' + g)\n```"
        if request.turn == 0:  # the root
            return "```repl\nx_parent = 1\nr = rlm_query('child task', context='child context data')\nprint(r)\n```"
        return "FINAL_VAR(r)"

    server.policy = split(rlm_loops, sub_echo)
    result = make_rlm(max_depth=2).completion("root context")
    assert result.status == "final", result.message
    assert result.response.startswith("child-done:sub:gc ctx")
    starts = {e["rlm_id"]: e for e in events(result, "rlm_start")}
    assert set(starts) == {"0", "0.1", "0.1.1"}
    assert starts["0"]["depth"] == 0 and starts["0.1"]["depth"] == 1 and starts["0.1.1"]["depth"] == 2
    assert starts["0"]["box_id"] and starts["0.1"]["box_id"] and starts["0"]["box_id"] != starts["0.1"]["box_id"]
    assert starts["0.1.1"]["box_id"] is None and starts["0.1.1"]["plain_call"] is True
    assert starts["0.1"]["parent"] == "0" and starts["0.1.1"]["parent"] == "0.1"
    child_cells = [e for e in events(result, "cell") if e["rlm_id"] == "0.1"]
    assert "ctx=child context data" in child_cells[0]["stdout"]
    assert "parent var visible: False" in child_cells[0]["stdout"]
    ends = {e["rlm_id"]: e["status"] for e in events(result, "rlm_end")}
    assert ends == {"0.1.1": "max_depth", "0.1": "final", "0": "final"}


def test_rlm_query_at_max_depth_is_a_plain_call_and_batched_keeps_order(server, make_rlm):
    server.policy = policy(
        LOOK,
        "```repl\none = rlm_query('q1', context='c1')\nmany = rlm_query_batched(['a', 'b'], contexts=['x', 'y'])\n"
        "print(one)\nprint(many)\n```",
        "```repl\nFINAL(one + '|' + '|'.join(many))\n```",
    )
    result = make_rlm(max_depth=1).completion("ctx")
    assert result.status == "final"
    assert result.response == "sub:c1\n\nq1|sub:x\n\na|sub:y\n\nb"
    assert {e["status"] for e in events(result, "rlm_end") if e["rlm_id"] != "0"} == {"max_depth"}


def test_a_forged_depth_claim_is_refused(server, make_rlm):
    server.policy = policy(
        LOOK,
        "```repl\ntry:\n    _rlm_call('rlm_query', {'prompt': 'x', 'context': None, 'depth': 0})\n"
        "except GuestCallError as e:\n    print('refused:', e)\n```",
        "FINAL(done)",
    )
    result = make_rlm(max_depth=3).completion("ctx")
    assert result.status == "final"
    assert "refused: ValueError: unexpected payload fields: ['depth']" in root_requests(server)[2].last_user
    assert [e["rlm_id"] for e in events(result, "rlm_start")] == ["0"]


# -- final-answer forms ----------------------------------------------------------------------------


@pytest.mark.parametrize("reply,expected", [
    ("FINAL(plain text answer)", "plain text answer"),
    ("```repl\nres = 'from a var'\n```\nFINAL_VAR(res)", "from a var"),
    ("```repl\nFINAL('from code')\n```", "from code"),
    ("```repl\nres = 'code var'\nFINAL_VAR('res')\n```", "code var"),
    ("```repl\nanswer['content'] = 'dict answer'\nanswer['ready'] = True\n```", "dict answer"),
])
def test_final_answer_forms(server, make_rlm, reply, expected):
    server.policy = policy(LOOK, reply, "```repl\nprint('should not run')\n```")
    result = make_rlm().completion("ctx")
    assert (result.status, result.response, result.iterations) == ("final", expected, 2)


def test_code_after_a_final_answer_in_the_same_reply_does_not_run(server, make_rlm):
    server.policy = policy(LOOK, "```repl\nFINAL('x')\n```\n```repl\nprint('after')\n```")
    result = make_rlm().completion("ctx")
    assert result.response == "x"
    assert all("after" not in e["stdout"] for e in events(result, "cell"))


@pytest.mark.parametrize("first", [
    "FINAL(too soon)",
    "```repl\nanswer['content'] = 'early'\nanswer['ready'] = True\n```",
    "```repl\nFINAL('early in code')\n```",
])
def test_the_first_iteration_cannot_end_the_run(server, make_rlm, first):
    server.policy = policy(first, "```repl\nprint('ready is', answer['ready'])\n```", "FINAL(checked)")
    result = make_rlm().completion("ctx")
    assert (result.status, result.response, result.iterations) == ("final", "checked", 3)
    roots = root_requests(server)
    assert "final answer was not accepted" in roots[1].last_user
    assert "ready is False" in roots[2].last_user


# -- malformed model output --------------------------------------------------------------------------


@pytest.mark.parametrize("bad,expect", [
    ("I think the answer is probably in there somewhere.", "had no ```repl block"),
    ("```repl\nprint('half')\nfor i in range(3):", "was never closed"),
    ("", "Your reply was empty"),
    ("FINAL_VAR(1 + 1)", "FINAL_VAR needs the name of a variable"),
])
def test_malformed_replies_are_explained_and_the_run_goes_on(server, make_rlm, bad, expect):
    server.policy = policy(bad, LOOK, "FINAL(recovered)")
    result = make_rlm().completion("ctx")
    assert (result.status, result.response) == ("final", "recovered")
    assert expect in root_requests(server)[1].last_user
    assert all("half" not in e["stdout"] for e in events(result, "cell"))


def test_a_failing_cell_is_reported_with_its_traceback(server, make_rlm):
    server.policy = policy(LOOK, "```repl\n1/0\n```", "FINAL(after error)")
    result = make_rlm().completion("ctx")
    assert result.status == "final"
    feedback = root_requests(server)[2].last_user
    assert "ZeroDivisionError" in feedback and "\x1b[" not in feedback


def test_a_dead_kernel_is_set_up_again_and_the_model_is_told(server, make_rlm):
    server.policy = policy(LOOK, "```repl\nkeep = 1\nimport os\nos._exit(1)\n```",
                           "```repl\nprint(len(context), 'keep' in globals())\n```", "FINAL(survived)")
    result = make_rlm().completion("twelve chars")
    assert (result.status, result.response) == ("final", "survived")
    roots = root_requests(server)
    assert "every variable you defined is gone" in roots[2].last_user
    assert "12 False" in roots[3].last_user


# -- limits ------------------------------------------------------------------------------------------


def test_max_iterations_asks_once_for_a_best_answer(server, make_rlm):
    server.policy = policy(LOOK, LOOK, "FINAL(best guess)")
    result = make_rlm(max_iterations=2).completion("ctx")
    assert (result.status, result.response, result.iterations) == ("max_iterations", "best guess", 2)
    assert "out of replies" in root_requests(server)[-1].last_user


def test_max_iterations_returns_the_draft_answer(server, make_rlm):
    server.policy = policy(LOOK, "```repl\nanswer['content'] = 'draft'\n```")
    result = make_rlm(max_iterations=2).completion("ctx")
    assert (result.status, result.response) == ("max_iterations", "draft")
    assert server.request_count == 2


def test_max_depth_zero_is_a_plain_call(server, make_rlm):
    server.policy = lambda r: Reply(text=f"plain:{r.last_user}")
    result = make_rlm(max_depth=0).completion("some context", root_prompt="question?")
    assert result.status == "max_depth"
    assert result.response == "plain:some context\n\nquestion?"
    assert server.request_count == 1


def test_max_llm_calls_ends_the_run_and_no_call_overspends(server, make_rlm):
    server.policy = policy(LOOK, "```repl\nanswer['content'] = 'partial'\nrs = llm_query_batched([str(i) for i in "
                                 "range(10)])\nprint(sum(isinstance(r, LLMError) for r in rs))\n```")
    result = make_rlm(limits=Limits(max_llm_calls=5, max_wall_s=60)).completion("ctx")
    assert result.status == "max_llm_calls"
    assert result.response == "partial"
    # The limit is never exceeded. The two root calls always arrive; the batch's calls that were
    # reserved when the limit tripped are cancelled with the cell, before or after they reach the
    # server (which of the two is timing), and the run log says which were cancelled.
    assert 2 <= server.request_count <= 5
    assert sum(u.calls for u in result.usage.values()) <= 5
    events = [json.loads(line) for line in open(result.trajectory_path)]
    subcalls = [e for e in events if e["event"] == "subcall"]
    # The three reserved calls and the one that tripped the limit are logged; prompts reached after the
    # trip are answered with the limit's error, without a call or an event each.
    assert 4 <= len(subcalls) <= 10
    assert all(e["status"] in ("ok", "cancelled", "max_llm_calls") for e in subcalls)
    reserved = [e for e in subcalls if e["status"] in ("ok", "cancelled")]
    assert len(reserved) <= 3
    # Every answered sub-call reached the server.
    assert sum(e["status"] == "ok" for e in subcalls) <= server.request_count - 2


def test_max_tokens_ends_the_run_within_budget(server, make_rlm):
    server.policy = policy(*([LOOK] * 30))
    limits = Limits(max_tokens=8000, max_output_tokens=300, max_wall_s=60)
    result = make_rlm(limits=limits).completion("ctx")
    assert result.status == "max_tokens", result.message
    spent = sum(u.input_tokens + u.output_tokens for u in result.usage.values())
    assert 0 < spent <= 8000


def test_max_cost_usd_ends_the_run_within_budget(server, make_rlm):
    server.policy = policy(*([LOOK] * 30))
    limits = Limits(max_cost_usd=5.0, max_output_tokens=300, prices={"gpt-5-mini": (1000.0, 1000.0)}, max_wall_s=60)
    result = make_rlm(limits=limits).completion("ctx")
    assert result.status == "max_cost_usd", result.message
    assert 0 < result.cost_usd <= 5.0
    assert result.usage["gpt-5-mini"].calls >= 2


def test_max_wall_s_ends_a_long_cell(server, make_rlm):
    server.policy = policy(LOOK, "```repl\nanswer['content'] = 'so far'\nimport time\ntime.sleep(60)\n```")
    started = time.monotonic()
    result = make_rlm(limits=Limits(max_wall_s=10, cell_timeout_s=30)).completion("ctx")
    assert (result.status, result.response) == ("max_wall_s", "so far")
    assert time.monotonic() - started < 40


def test_max_wall_s_ends_a_slow_model(server, make_rlm):
    server.policy = policy(LOOK, Reply(text="late", delay=30))
    started = time.monotonic()
    result = make_rlm(limits=Limits(max_wall_s=3, model_timeout_s=60)).completion("ctx")
    assert result.status == "max_wall_s"
    assert time.monotonic() - started < 15


def test_a_timed_out_cell_is_reported_and_the_run_goes_on(server, make_rlm):
    server.policy = policy(LOOK, "```repl\nanswer['content'] = 'partial'\nimport time\ntime.sleep(30)\n```",
                           "FINAL(recovered)")
    started = time.monotonic()
    result = make_rlm(limits=Limits(cell_timeout_s=2, max_wall_s=60)).completion("ctx")
    assert (result.status, result.response) == ("final", "recovered"), result.message
    assert time.monotonic() - started < 20
    told = root_requests(server)[-1].messages[-1]["content"]
    assert "[timeout" in told and "ran past the 2 s limit" in told


def test_repeated_cell_timeouts_end_the_run(server, make_rlm):
    slow = "```repl\nanswer['content'] = 'partial'\nimport time\ntime.sleep(30)\n```"
    server.policy = policy(LOOK, slow, slow)
    started = time.monotonic()
    result = make_rlm(limits=Limits(cell_timeout_s=2, max_cell_timeouts=1, max_wall_s=60)).completion("ctx")
    assert result.status == "cell_timeout_s", result.message
    assert result.response == "partial"
    assert time.monotonic() - started < 20


def test_a_provider_that_never_answers_ends_on_its_timeout(server, make_rlm):
    server.hang_next(100)
    started = time.monotonic()
    result = make_rlm(limits=Limits(model_timeout_s=0.5, max_retries=1, max_wall_s=60)).completion("ctx")
    assert result.status == "model_timeout_s", result.message
    assert result.response is None
    assert time.monotonic() - started < 20
    assert server.request_count == 2
    assert result.usage["gpt-5-mini"].failures == 1 and result.usage["gpt-5-mini"].retries == 1


def test_a_provider_that_answers_429_twice_then_succeeds(server, make_rlm):
    server.fail_next(2, status=429, retry_after=0.05)
    server.policy = policy(LOOK, "FINAL(after retries)")
    result = make_rlm().completion("ctx")
    assert (result.status, result.response) == ("final", "after retries")
    assert result.usage["gpt-5-mini"].retries == 2 and result.usage["gpt-5-mini"].calls == 2
    assert [e["status"] for e in events(result, "retry")] == [429, 429]


def test_children_share_the_budget_and_cannot_overspend(server, make_rlm):
    def loops(request: FakeRequest) -> str:
        if "Question: kid" in request.messages[0]["content"]:
            return "```repl\nprint(llm_query('more'))\n```"  # children never finish
        if request.turn == 0:
            return "```repl\nrs = rlm_query_batched(['kid 1', 'kid 2', 'kid 3'], contexts=['a', 'b', 'c'])\nprint(rs)\n```"
        return "FINAL(root done)"

    server.policy = split(loops, sub_echo)
    result = make_rlm(max_depth=2, limits=Limits(max_llm_calls=9, max_wall_s=60)).completion("ctx")
    assert result.status == "max_llm_calls"
    assert server.request_count == 9
    assert sum(u.calls for u in result.usage.values()) == 9


# -- API surface ------------------------------------------------------------------------------------


async def test_acompletion_and_completion_inside_a_running_loop(server, make_rlm):
    server.policy = policy(LOOK, "FINAL(async)", LOOK, "FINAL(sync in loop)")
    rlm = make_rlm()
    result = await rlm.acompletion("ctx")
    assert result.response == "async"
    result = rlm.completion("ctx")  # called with a loop running: runs on its own thread
    assert result.response == "sync in loop"


def test_run_log_has_config_without_secrets_and_every_event(server, make_rlm):
    server.policy = policy(LOOK, "```repl\nx = llm_query('q')\n```", "FINAL(logged)")
    result = make_rlm().completion("ctx")
    items = events(result)
    kinds = [e["event"] for e in items]
    assert kinds[0] == "run_start" and kinds[-1] == "final"
    for kind in ("rlm_start", "iteration", "cell", "subcall", "rlm_end"):
        assert kind in kinds
    assert "test-key" not in open(result.trajectory_path).read()
    start = items[0]["config"]
    assert start["backend_kwargs"]["model_name"] == "gpt-5-mini" and "api_key" not in start["backend_kwargs"]
    sub = next(e for e in items if e["event"] == "subcall")
    assert sub["parent"] == "0" and sub["depth"] == 1 and sub["kind"] == "llm_query"
    cell = next(e for e in items if e["event"] == "cell")
    assert cell["code"] and cell["status"] == "ok" and "seconds" in cell
    assert items[-1]["status"] == "final" and items[-1]["response"] == "logged"


def test_bad_arguments_fail_early_with_advice(server):
    with pytest.raises(ValueError, match="Limits"):
        RLM(backend_kwargs={"model_name": "m", "api_key": "k"}, environment_kwargs={"cell_timeout_s": 3})
    with pytest.raises(ValueError, match="SandboxSpec takes"):
        RLM(backend_kwargs={"model_name": "m", "api_key": "k"}, environment_kwargs={"memroy_mb": 3})
    with pytest.raises(ValueError, match="unknown sandbox backend"):
        RLM(backend_kwargs={"model_name": "m", "api_key": "k"}, environment="vm")
    rlm = RLM(backend_kwargs={"model_name": "m", "api_key": "k", "base_url": server.openai_base_url})
    with pytest.raises(TypeError, match="str, a list or a dict"):
        rlm.completion(b"bytes")
