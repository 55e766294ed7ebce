"""A scripted RLM run that exercises everything the run page shows, for the browser tests and the
README's screenshot.

The root model (depth 0) looks at the context and calls a custom tool, sends a batch of ``llm_query``
sub-calls (one slow, one with a long prompt), writes a cell that fails, hands a sub-task to a child RLM
(depth 1, its own sandbox and its own sub-call) and answers. One reply holds ``<script>alert(1)</script>``, which the
page must show as text. Real SDK, real HTTP (``FakeLLMServer``), real kernels (local backend).

    python -m tests.viewer.scripted_run OUT_DIR      # prints the run log's path
"""

from __future__ import annotations

import sys
from pathlib import Path

from rlm import RLM, Limits, RLMLogger, RLMResult
from rlm.testing import FakeLLMServer, FakeRequest, Reply, split

QUESTION = "Which city had the most outages in March, and what caused them?"
ANSWER = "Lisbon: 3 outages in March, all caused by a failing cooling unit in rack B7."
CONTEXT = "\n".join(
    [f"2025-03-{d:02d} {city}: outage {n}, cause: {cause}" for d, city, n, cause in [
        (2, "Lisbon", 1, "cooling unit in rack B7 over temperature"),
        (5, "Oslo", 1, "power feed A dropped"),
        (9, "Lisbon", 2, "cooling unit in rack B7 failed again"),
        (14, "Porto", 1, "fibre cut by road works"),
        (21, "Lisbon", 3, "cooling unit in rack B7 replaced after failure"),
    ]] + [f"2025-02-{d:02d} routine check, nothing to report" for d in range(1, 28)]
)
SCRIPT_REPLY = "Careful: the log may contain markup such as <script>alert(1)</script>; I only read it as text."
# A long sub-call prompt, so the page has one to collapse.
LONG_NOTE = "Summarise every line below in one sentence each.\n" + "\n".join(
    f"line {i}: the quick brown fox jumps over the lazy dog near the data centre" for i in range(40))


def root_turn(turn: int) -> str:
    if turn == 0:
        return ("First I look at the shape of the context.\n```repl\n"
                "print(type(context).__name__, len(context))\n"
                "lines = context.splitlines()\n"
                "print(lines[0])\n"
                "# outages only\n"
                "outages = [l for l in lines if 'outage' in l]\n"
                "print(len(outages), 'outage lines')\n"
                "print(site_info('Lisbon'))\n```")
    if turn == 1:
        return (f"{SCRIPT_REPLY}\nI ask a sub-model to extract the city of each outage line.\n```repl\n"
                "cities = llm_query_batched([f'City in: {l}' for l in outages])\n"
                "print(cities)\n"
                f"note = llm_query({LONG_NOTE!r})\n```")
    if turn == 2:
        return ("Now I count them per city.\n```repl\n"
                "counts = {}\nfor c in cities:\n    counts[c] = counts[c] + 1\nprint(counts)\n```")
    if turn == 3:
        return ("That failed: the dict had no entries yet. I use a Counter, and ask a child model to explain "
                "the causes for the top city.\n```repl\n"
                "from collections import Counter\n"
                "counts = Counter(cities)\n"
                "top, n = counts.most_common(1)[0]\n"
                "print(top, n)\n"
                "cause = rlm_query('What caused the outages? Answer in one sentence.',\n"
                "                  context='\\n'.join(l for l in outages if top in l))\n"
                "print(cause)\n```")
    return ("```repl\n"
            "result = f\"{top}: {n} outages in March, all caused by {cause}\"\n"
            "print(result)\n```\nFINAL_VAR(result)")


def child_turn(turn: int) -> str:
    if turn == 0:
        return ("```repl\nprint(context)\n"
                "cause = llm_query('Name the common cause in a few words:\\n' + context)\n"
                "print(cause)\n```")
    return "```repl\nFINAL(cause)\n```"


def model(request: FakeRequest) -> str:
    first = request.messages[0]["content"]
    if "What caused the outages" in first:
        return child_turn(request.turn)
    return root_turn(request.turn)


def sub_model(request: FakeRequest) -> Reply:
    prompt = request.last_user
    if prompt.startswith("City in: "):
        city = prompt.split(" ", 3)[3].split(":")[0]
        # Oslo's line is slow to answer: the page must point at it as the slowest step.
        return Reply(text=city, delay=0.6 if city == "Oslo" else 0.05)
    if prompt.startswith("Name the common cause"):
        return Reply(text="a failing cooling unit in rack B7.", delay=0.1)
    return Reply(text="Forty lines about a fox and a dog near the data centre.", delay=0.05)


def site_info(city: str) -> str:
    """The data centre of a city (a custom tool: runs on the host, called from the REPL)."""
    return f"{city}: 2 halls, racks A1 to B9"


def run(log_dir: Path) -> RLMResult:
    """Run the scripted RLM on the local backend; the result's ``trajectory_path`` is the run log."""
    with FakeLLMServer(split(model, sub_model), latency=0.02) as server:
        rlm = RLM(backend="openai",
                  backend_kwargs={"model_name": "gpt-5-mini", "base_url": server.openai_base_url,
                                  "api_key": "test-key"},
                  other_backends=["openai"],
                  other_backend_kwargs=[{"model_name": "gpt-5-nano", "base_url": server.openai_base_url,
                                         "api_key": "test-key"}],
                  custom_tools={"site_info": site_info},
                  environment="local", max_depth=2, max_iterations=8, logger=RLMLogger(log_dir),
                  limits=Limits(max_wall_s=120, cell_timeout_s=30))
        return rlm.completion(CONTEXT, root_prompt=QUESTION)


if __name__ == "__main__":
    result = run(Path(sys.argv[1] if len(sys.argv) > 1 else "rlm_logs"))
    print(result.status, result.response, file=sys.stderr)
    print(result.trajectory_path)
