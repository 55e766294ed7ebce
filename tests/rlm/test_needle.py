"""A needle in a 50 MB haystack (about 12M tokens): a scripted root model finds it through code, and
the root model's prompts stay a few thousand tokens however large the context."""

from __future__ import annotations

import pytest

from rlm import Limits
from rlm.demo import make_haystack
from rlm.testing import FakeRequest, Script, split

pytestmark = pytest.mark.slow


def test_needle_in_a_50_mb_context(server, make_rlm):
    haystack = make_haystack(50 * 1024 * 1024, seed=3)
    assert len(haystack.text) >= 50 * 1024 * 1024 and haystack.text.count(haystack.answer) == 1
    vault = haystack.question.split("vault ")[1].rstrip("?")

    def sub(request: FakeRequest) -> str:
        # The sub-model really reads: it answers only from the text it was given.
        words = request.last_user.split()
        return words[words.index("is") + 1].rstrip(".") if "access code for vault" in request.last_user else "NONE"

    root = Script([
        "```repl\nprint(type(context).__name__, len(context))\nprint(context[:200])\n```",
        "```repl\n"
        f"hits = sorted({{line for line in context.splitlines() if 'vault {vault}' in line}})\n"
        "print(len(hits))\n"
        "replies = llm_query_batched(['Give the access code, or NONE:\\n' + h for h in hits])\n"
        "codes = [r for r in replies if r != 'NONE']\nprint(codes)\n```",
        "FINAL_VAR(codes)",  # a list variable: its str() is the answer
    ])
    server.policy = split(root, sub)
    result = make_rlm(limits=Limits(max_wall_s=240, cell_timeout_s=120)).completion(
        haystack.text, root_prompt=haystack.question)
    assert result.status == "final", result.message
    assert haystack.answer in result.response
    roots = [r for r in server.requests if "llm_query" in r.system]
    assert len(roots) == 3
    # "A few thousand tokens": at 4 characters per token, every root prompt is under 4,000 tokens.
    assert max(len(r.text) for r in roots) < 16_000
    assert all(haystack.answer not in r.text for r in roots[:2])
    assert result.usage["gpt-5-mini"].input_tokens < 20_000
