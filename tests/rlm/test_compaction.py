"""Context windows through the public API: a provider's "context length exceeded" is its own status,
output caps fit the window, and compaction summarises the conversation so the run goes on."""

from __future__ import annotations

import json

import pytest

from rlm import Limits
from rlm.testing import FakeRequest, estimate_tokens, split

WINDOW = 4000  # tokens, as the fake server counts them (4 characters a token)
LOOK = "Let me look.\n```repl\nprint(type(context).__name__, len(context))\n```"
KEEP = "```repl\nkept = 7\nprint('a' * 2600)\n```"
BIG = "```repl\nprint('b' * 2600)\n```"
CHECK = ("```repl\nsummaries = [m for m in history if m.get('summary')]\n"
         "FINAL('kept=%d history=%d summaries=%d first=%s'\n"
         "      % (kept, len(history), len(summaries), history[1]['role']))\n```")


def scripted(replies: list[str]):
    """The root model's replies in order; a request to summarise gets a summary instead."""
    queue = list(replies)

    def root(request: FakeRequest) -> str:
        if "Summarise your progress so far" in request.last_user:
            return "Summary: looked at the context, set kept = 7, printed long outputs; next: check and answer."
        return queue.pop(0) if queue else "FINAL(out of script)"

    return split(root)


def events(result, kind: str) -> list[dict]:
    with open(result.trajectory_path) as f:
        return [e for e in map(json.loads, f) if e["event"] == kind]


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_without_compaction_an_outgrown_window_ends_with_its_own_status(server, make_rlm, backend):
    server.context_window = WINDOW
    server.policy = scripted([LOOK, KEEP] + [BIG] * 8 + ["FINAL(never)"])
    result = make_rlm(backend, limits=Limits(max_wall_s=120, context_windows={"gpt-5-mini": WINDOW})).completion(
        "ctx", root_prompt="Print a lot.")
    assert result.status == "context_window", (result.status, result.message)
    assert "context window" in result.message and "compaction=True" in result.message
    # The last request was the one the provider refused; every earlier one fitted, its cap included.
    requests = list(server.requests)
    assert all(estimate_tokens(r.text) + r.max_tokens <= WINDOW for r in requests[:-1])
    assert estimate_tokens(requests[-1].text) + requests[-1].max_tokens > WINDOW
    assert max(r.max_tokens for r in requests) < WINDOW  # never the default 16,384-token cap


def test_compaction_summarises_keeps_the_repl_and_the_run_answers(server, make_rlm):
    server.context_window = WINDOW
    server.policy = scripted([LOOK, KEEP] + [BIG] * 8 + [CHECK])
    rlm = make_rlm(compaction=True, limits=Limits(max_wall_s=120, context_windows={"gpt-5-mini": WINDOW}))
    result = rlm.completion("ctx", root_prompt="Print a lot.")
    assert result.status == "final", (result.status, result.message)
    compactions = events(result, "compaction")
    assert compactions, "no compaction happened"
    assert result.response.startswith("kept=7 history=")
    assert result.response.endswith(f"summaries={len(compactions)} first=user")
    for event in compactions:
        assert event["tokens_before"] >= 0.85 * WINDOW and event["tokens_after"] < event["tokens_before"]
        assert event["window"] == WINDOW and event["input_tokens"] > 0
    # Every request fitted; the summaries were model calls counted like any other.
    requests = list(server.requests)
    assert all(estimate_tokens(r.text) + r.max_tokens <= WINDOW for r in requests)
    summaries = [r for r in requests if "Summarise your progress so far" in r.last_user]
    assert len(summaries) == len(compactions)
    assert result.usage["gpt-5-mini"].calls == len(requests) and result.usage["gpt-5-mini"].failures == 0
    # After a compaction the model sees the summary, not the old turns.
    after = requests[requests.index(summaries[0]) + 1]
    assert "Summary: looked at the context" in after.text and "a" * 2600 not in after.text


def test_compaction_on_a_provider_refusal_when_the_window_is_unknown(server, make_rlm):
    # No declared window: the estimate cannot trigger compaction, so the provider's refusal does.
    server.context_window = WINDOW
    server.policy = scripted([LOOK, KEEP] + [BIG] * 8 + [CHECK])
    result = make_rlm(compaction=True, limits=Limits(max_wall_s=120, max_output_tokens=256)).completion("ctx")
    assert result.status == "final", (result.status, result.message)
    compactions = events(result, "compaction")
    assert compactions and all(e["forced"] for e in compactions)
    assert result.response.startswith("kept=7")
    assert result.usage["gpt-5-mini"].failures == len(compactions)  # each refusal, then its retry
