"""Custom tools, the reference's callbacks and sampling args, through the public API.

Tools are host functions: the kernel calls them over the sandbox's channel with JSON, so these tests
run unchanged on every sandbox backend (RLM_TEST_ENVIRONMENT).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading

import pytest

from rlm import RLM, Limits
from rlm.testing import FakeRequest, Script, split

LOOK = "Let me look.\n```repl\nprint(type(context).__name__, len(context))\n```"


def sub_echo(request: FakeRequest) -> str:
    return "sub:" + request.last_user


def policy(*replies, sub=sub_echo):
    return split(Script(list(replies)), sub)


def events(result, kind: str | None = None) -> list[dict]:
    with open(result.trajectory_path) as f:
        items = [json.loads(line) for line in f]
    return [e for e in items if kind is None or e["event"] == kind]


def root_requests(server) -> list[FakeRequest]:
    return [r for r in server.requests if "llm_query" in r.system]


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


# -- custom tools ----------------------------------------------------------------------------------


def test_a_tool_called_from_sixteen_kernel_threads_answers_right_counted_and_bounded(server, make_rlm):
    in_flight = 0
    most = 0
    lock = threading.Lock()
    # Each call waits for three others: proves the calls do run side by side, up to the bound.
    together = threading.Barrier(4, timeout=60)

    def square(x: int) -> int:
        """Square a number."""
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        try:
            together.wait()
            return x * x
        finally:
            with lock:
                in_flight -= 1

    server.policy = policy(
        LOOK,
        repl("from concurrent.futures import ThreadPoolExecutor\nwith ThreadPoolExecutor(16) as pool:\n"
             "    got = list(pool.map(square, range(100)))\nprint(got == [i * i for i in range(100)], sum(got))"),
        "FINAL_VAR(got)",
    )
    limits = Limits(max_wall_s=120, cell_timeout_s=90, max_concurrent_tools=4)
    result = make_rlm(limits=limits, custom_tools={"square": square}).completion("ctx")
    assert result.status == "final", result.message
    assert result.response == str([i * i for i in range(100)])
    assert "True 328350" in root_requests(server)[2].last_user
    assert most == 4
    calls = events(result, "tool_call")
    assert len(calls) == 100
    assert {(e["name"], e["status"], e["rlm_id"], e["depth"]) for e in calls} == {("square", "ok", "0", 0)}
    assert sorted(json.loads(e["args"])[0][0] for e in calls) == list(range(100))
    assert result.tool_usage["square"].calls == 100 and result.tool_usage["square"].failures == 0
    assert result.to_dict()["tool_usage"]["square"]["calls"] == 100
    # Tool calls have their own cap; model calls are counted apart.
    assert result.totals.calls == 3


def test_tool_calls_past_max_tool_calls_end_the_run(server, make_rlm):
    def ping() -> str:
        return "pong"

    server.policy = policy(
        LOOK,
        repl("out = []\nfor _ in range(10):\n    try:\n        out.append(ping())\n    except ToolError as e:\n"
             "        out.append(str(e))\n        break\nprint(out)"),
        "FINAL(should not be reached)",
    )
    limits = Limits(max_wall_s=120, cell_timeout_s=30, max_tool_calls=5)
    result = make_rlm(limits=limits, custom_tools={"ping": ping}).completion("ctx")
    assert result.status == "max_tool_calls", result.message
    assert "5 tool calls" in result.message
    assert result.tool_usage["ping"].calls == 5
    statuses = [e["status"] for e in events(result, "tool_call")]
    assert statuses == ["ok"] * 5 + ["max_tool_calls"]


def test_a_raising_tool_reaches_the_kernel_as_tool_error_with_its_message(server, make_rlm):
    def lookup(key: str) -> str:
        raise ValueError(f"no such key: {key}")

    server.policy = policy(
        LOOK,
        repl("try:\n    lookup('k9')\nexcept ToolError as e:\n    print('caught:', e)"),
        repl("lookup('k10')"),
        "FINAL(done)",
    )
    result = make_rlm(custom_tools={"lookup": lookup}).completion("ctx")
    assert result.status == "final", result.message
    roots = root_requests(server)
    assert "caught: lookup raised ValueError: no such key: k9" in roots[2].last_user
    assert "ToolError: lookup raised ValueError: no such key: k10" in roots[3].last_user
    calls = events(result, "tool_call")
    assert [e["status"] for e in calls] == ["error", "error"]
    assert calls[0]["error"] == "lookup raised ValueError: no such key: k9"
    assert result.tool_usage["lookup"].failures == 2


def test_async_tools_work_and_a_tool_past_its_timeout_is_a_tool_error(server, make_rlm):
    never = asyncio.Event()  # created here, never set: the stuck tool waits on it until its timeout

    async def fetch(n: int, *, tag: str = "t") -> dict:
        """Fetch a record."""
        await asyncio.sleep(0)
        return {"n": n, "tag": tag, "items": list(range(n))}

    async def stuck() -> None:
        await never.wait()

    def bad_result() -> object:
        return object()

    server.policy = policy(
        LOOK,
        repl("r = fetch(3, tag='x')\nprint(r)\ntry:\n    stuck()\nexcept ToolError as e:\n    print('stuck:', e)\n"
             "try:\n    bad_result()\nexcept ToolError as e:\n    print('bad:', e)\n"
             "try:\n    fetch(object())\nexcept TypeError as e:\n    print('args:', e)"),
        "FINAL(done)",
    )
    limits = Limits(max_wall_s=120, cell_timeout_s=60, tool_timeout_s=1.0)
    result = make_rlm(limits=limits, custom_tools={"fetch": fetch, "stuck": stuck, "bad_result": bad_result}
                      ).completion("ctx")
    assert result.status == "final", result.message
    feedback = root_requests(server)[2].last_user
    assert "{'n': 3, 'tag': 'x', 'items': [0, 1, 2]}" in feedback
    assert "stuck: stuck did not return within 1 s (Limits.tool_timeout_s)" in feedback
    assert "bad: bad_result returned a object, which is not JSON data" in feedback
    assert "args: fetch: arguments must be JSON data" in feedback
    assert [(e["name"], e["status"]) for e in events(result, "tool_call")] == [
        ("fetch", "ok"), ("stuck", "timeout"), ("bad_result", "error")]


@pytest.mark.parametrize("name", ["llm_query", "rlm_query_batched", "FINAL_VAR", "answer", "context", "history",
                                  "SHOW_VARS", "ToolError", "context_1", "_rlm_call", "class", "1st", "a-b", ""])
def test_a_bad_tool_name_is_refused_at_construction(make_rlm, name):
    with pytest.raises(ValueError, match="custom_tools") as info:
        make_rlm(custom_tools={name: len})
    assert repr(name) in str(info.value)
    with pytest.raises(ValueError, match="custom_sub_tools"):
        make_rlm(custom_tools={}, custom_sub_tools={name: len})


def test_values_that_are_not_json_and_callbacks_that_are_not_callable_are_refused(make_rlm):
    with pytest.raises(ValueError, match=r"custom_tools\['handle'\] is neither callable nor plain JSON"):
        make_rlm(custom_tools={"handle": object()})
    with pytest.raises(TypeError, match="on_iteration_start must be callable"):
        make_rlm(on_iteration_start="print")


def test_plain_values_are_variables_and_tools_are_listed_in_the_system_prompt(server, make_rlm):
    def search(query: str, limit: int = 10) -> list[str]:
        """Search the document index.

        Returns the titles of the best matches."""
        return [f"{query}-{i}" for i in range(limit)]

    server.policy = policy(
        LOOK,
        repl("print(rates['EUR'] * cutoff, search('q', limit=2))\nprint(search.__doc__.splitlines()[0])\nSHOW_VARS()"),
        "FINAL(done)",
    )
    tools = {"search": search, "rates": {"EUR": 1.5}, "cutoff": {"tool": 4, "description": "the year cutoff"}}
    result = make_rlm(custom_tools=tools).completion("ctx")
    assert result.status == "final", result.message
    roots = root_requests(server)
    system = roots[0].system
    assert "- `search(query: str, limit: int = 10) -> list[str]`: Search the document index." in system
    assert "Returns the titles of the best matches." in system
    assert "- `rates`: a dict of length 1" in system and "- `cutoff`: the year cutoff" in system
    feedback = roots[2].last_user
    assert "6.0 ['q-0', 'q-1']" in feedback
    assert "search(query: str, limit: int = 10) -> list[str]" in feedback
    # SHOW_VARS lists the values, not the tool functions.
    listed = feedback.split("```")[1].strip().splitlines()[2:]
    assert "rates: dict (len 1)" in listed and "cutoff: int" in listed
    assert not any(line.startswith("search") for line in listed)


def test_child_rlms_get_custom_sub_tools(server, make_rlm):
    def root_tool() -> str:
        """Only for the root."""
        return "root"

    def child_tool() -> str:
        """Only for children."""
        return "child"

    def loops(request: FakeRequest) -> str:
        if "child task" in request.messages[0]["content"]:
            if request.turn == 0:
                return repl("print(child_tool(), 'root_tool' in globals())")
            return repl("FINAL(child_tool())")
        if request.turn == 0:
            return repl("r = rlm_query('child task', context='c')\nprint(r, root_tool())")
        return "FINAL_VAR(r)"

    server.policy = split(loops, sub_echo)
    result = make_rlm(max_depth=2, custom_tools={"root_tool": root_tool},
                      custom_sub_tools={"child_tool": child_tool}).completion("ctx")
    assert result.status == "final", result.message
    assert result.response == "child"
    systems = {("child task" in r.messages[0]["content"]): r.system for r in root_requests(server)}
    assert "root_tool()" in systems[False] and "child_tool" not in systems[False]
    assert "child_tool()" in systems[True] and "root_tool" not in systems[True]
    child_cell = next(e for e in events(result, "cell") if e["rlm_id"] == "0.1")
    assert "child False" in child_cell["stdout"]
    assert {(e["name"], e["depth"]) for e in events(result, "tool_call")} == {("child_tool", 1), ("root_tool", 0)}


# -- callbacks -------------------------------------------------------------------------------------


def test_the_reference_callbacks_fire_in_order_with_the_reference_arguments(server, make_rlm):
    seen: list[tuple] = []
    kinds: list[str] = []
    question = "Summarise part two of the text, please, in one line of plain words only, and keep it short"

    def loops(request: FakeRequest) -> str:
        if "Summarise part two" in request.messages[0]["content"]:
            return LOOK if request.turn == 0 else "FINAL(part two done)"
        return [LOOK, repl(f"r = rlm_query({question!r}, context='part two')"), "FINAL_VAR(r)"][request.turn]

    server.policy = split(loops, sub_echo)
    rlm = make_rlm(
        max_depth=2, sub_model="gpt-5-nano",
        on_event=lambda e: kinds.append(e["event"]),
        on_iteration_start=lambda depth, i: seen.append(("iteration_start", depth, i)),
        on_iteration_complete=lambda depth, i, s: seen.append(("iteration_complete", depth, i, type(s))),
        on_subcall_start=lambda depth, model, preview: seen.append(("subcall_start", depth, model, preview)),
        on_subcall_complete=lambda depth, model, s, err: seen.append(("subcall_complete", depth, model, type(s), err)),
    )
    result = rlm.completion("ctx")
    assert result.status == "final", result.message
    preview = question[:80]  # the reference's prompt_preview
    assert seen == [
        ("iteration_start", 0, 1), ("iteration_complete", 0, 1, float),
        ("iteration_start", 0, 2),
        ("subcall_start", 1, "gpt-5-nano", preview),
        ("iteration_start", 1, 1), ("iteration_complete", 1, 1, float),
        ("iteration_start", 1, 2), ("iteration_complete", 1, 2, float),
        ("subcall_complete", 1, "gpt-5-nano", float, None),
        ("iteration_complete", 0, 2, float),
        ("iteration_start", 0, 3), ("iteration_complete", 0, 3, float),
    ]
    # on_event saw the same stream the run log holds, in the same order.
    assert kinds == [e["event"] for e in events(result)]


def test_a_child_that_fails_is_reported_to_on_subcall_complete_with_its_error(server, make_rlm):
    done: list[tuple] = []

    def loops(request: FakeRequest) -> str:
        if "doomed" in request.messages[0]["content"]:
            return "no code here"  # the child runs out of iterations with no answer
        return [LOOK, repl("try:\n    rlm_query('doomed task', context='c')\nexcept Exception as e:\n    print(e)"),
                "FINAL(ok)"][request.turn]

    server.policy = split(loops, sub_echo)
    result = make_rlm(max_depth=2, max_iterations=3,
                      on_subcall_complete=lambda *args: done.append(args)).completion("ctx")
    assert result.status == "final", result.message
    [(depth, model, seconds, error)] = done
    assert (depth, model) == (1, "gpt-5-mini") and seconds > 0
    assert error == "no final answer after 3 iterations"


def test_callbacks_that_raise_are_logged_and_never_break_the_run(server, make_rlm, caplog):
    caplog.set_level(logging.WARNING, logger="rlm")
    completed: list[int] = []

    def boom(*args):
        raise RuntimeError("callback bug")

    server.policy = policy(LOOK, "FINAL(fine)")
    result = make_rlm(on_event=boom, on_iteration_start=boom,
                      on_iteration_complete=lambda depth, i, s: completed.append(i)).completion("ctx")
    assert (result.status, result.response) == ("final", "fine")
    assert completed == [1, 2]
    failures = [r.getMessage() for r in caplog.records if "callback_failed" in r.getMessage()]
    assert {"on_event", "on_iteration_start"} == {m.split("callback='")[1].split("'")[0] for m in failures}
    assert all("RuntimeError: callback bug" in m for m in failures)


# -- sampling args ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_sampling_args_reach_the_request_body_of_root_and_sub_calls(server, make_rlm, backend):
    server.policy = policy(LOOK, repl("r = llm_query('hi')"), "FINAL(done)")
    rlm = make_rlm(backend, sampling_args={"temperature": 0.25, "seed": 7, "extra_body": {"top_k": 3}},
                   sub_sampling_args={"temperature": 0.9})
    result = rlm.completion("ctx")
    assert result.status == "final", result.message
    roots = root_requests(server)
    subs = [r for r in server.requests if r not in roots]
    assert len(roots) == 3 and len(subs) == 1
    for request in roots:
        assert (request.body["temperature"], request.body["seed"], request.body["top_k"]) == (0.25, 7, 3)
        assert request.model == "gpt-5-mini"
    assert (subs[0].body["temperature"], subs[0].body["seed"]) == (0.9, 7)
    assert subs[0].messages == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("field", ["model", "messages", "max_tokens", "max_completion_tokens", "stream"])
def test_sampling_args_can_never_replace_the_model_messages_or_output_cap(make_rlm, field):
    with pytest.raises(ValueError, match="cannot be passed in backend_kwargs or sampling_args"):
        make_rlm(sampling_args={field: 1})
    with pytest.raises(ValueError, match=field):
        make_rlm(sampling_args={"extra_body": {field: 1}})
    with pytest.raises(ValueError, match=field):
        make_rlm(sub_model="gpt-5-nano", sub_sampling_args={field: 1})


def test_sampling_args_are_the_reference_shape_in_backend_kwargs_too(server, environment):
    rlm = RLM(backend="anthropic", environment=environment, backend_kwargs={"model_name": "claude-haiku-4-5", "api_key": "k",
                                                   "base_url": server.anthropic_base_url,
                                                   "sampling_args": {"temperature": 0.1}},
              sampling_args={"top_p": 0.5})
    server.policy = policy(LOOK, "FINAL(x)")
    result = rlm.completion("ctx")
    assert result.status == "final", result.message
    body = root_requests(server)[0].body
    assert (body["temperature"], body["top_p"], body["model"]) == (0.1, 0.5, "claude-haiku-4-5")
