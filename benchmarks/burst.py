"""A burst of runs at once: do they all wait their turn for a box and answer, or do starts fail?

    python benchmarks/burst.py --runs 100 --sandbox docker [--runtime runsc] [--start-concurrency N]
                               [--latency 0.05] [--max-wall-s 1800]

Starts ``--runs`` RLM runs at once (``asyncio.gather`` of ``acompletion``) against the fake model
server. Each run gets its own context (a few hundred random integers) and a scripted root model that
sums them in the REPL and answers with ``FINAL_VAR``, so every answer is checked against the true sum.
Box starts go through the process's start queue (``sandboxes.admission``); ``--start-concurrency``
resizes it (default: the provider's default, or RLM_SANDBOX_START_CONCURRENCY).

Prints the correct answers, the errors (with the first messages), the wall time, the waits for a box
(``box_wait`` events; a run admitted at once waited 0 s) as p50/p99/max, the box start times
(``sandbox_ready``'s ``start_s``), and the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
import random
import statistics
import time
from typing import Any

import structlog

from rlm import RLM, Limits
from rlm.testing import FakeRequest, FakeLLMServer, Reply
from sandboxes import start_queue

SUM_CELL = "```repl\ntotal = sum(int(x) for x in context.split())\nprint(total)\n```"
ANSWER = "FINAL_VAR(total)"


def root_model(request: FakeRequest) -> Reply | str:
    """Every run's root model: sum the numbers in the REPL, then answer with the variable."""
    return SUM_CELL if request.turn == 0 else ANSWER


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def burst(args: argparse.Namespace, server: FakeLLMServer) -> dict[str, Any]:
    rng = random.Random(7)
    contexts = [[rng.randrange(1_000_000) for _ in range(300)] for _ in range(args.runs)]
    waits: dict[str, float] = {}
    starts: dict[str, float] = {}
    queued_at_once = 0
    queued_now = 0

    def watch(event: dict[str, Any]) -> None:
        nonlocal queued_at_once, queued_now
        kind, run = event["event"], event["run_id"]
        if kind == "box_queued":
            queued_now += 1
            queued_at_once = max(queued_at_once, queued_now)
        elif kind == "box_wait":
            queued_now -= 1
            waits[run] = event["seconds"]
        elif kind == "sandbox_ready" and "start_s" in event:
            starts[run] = event["start_s"]

    environment_kwargs = {"runtime": args.runtime} if args.runtime else {}
    rlm = RLM(backend="openai", backend_kwargs={"model_name": "gpt-5-mini", "base_url": server.openai_base_url,
                                                "api_key": "fake"},
              environment=args.sandbox, environment_kwargs=environment_kwargs, max_depth=1, max_iterations=4,
              limits=Limits(max_wall_s=args.max_wall_s), on_event=watch)
    started = time.monotonic()
    results = await asyncio.gather(*(rlm.acompletion(" ".join(map(str, c)), root_prompt="What is the sum?")
                                     for c in contexts), return_exceptions=True)
    wall = time.monotonic() - started
    correct, errors = 0, []
    for context, result in zip(contexts, results):
        if isinstance(result, BaseException):
            errors.append(f"raised {result.__class__.__name__}: {result}")
        elif result.status != "final":
            errors.append(f"{result.status}: {result.message}")
        elif result.response == str(sum(context)):
            correct += 1
        else:
            errors.append(f"wrong answer {result.response!r}")
    run_ids = [r.run_id for r in results if not isinstance(r, BaseException)]
    wait_list = [waits.get(run, 0.0) for run in run_ids]
    return {"wall": wall, "correct": correct, "errors": errors, "waits": wait_list,
            "starts": list(starts.values()), "queued_at_once": queued_at_once}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--sandbox", default="docker")
    parser.add_argument("--runtime", default=None, help="e.g. runsc (gVisor)")
    parser.add_argument("--start-concurrency", type=int, default=None)
    parser.add_argument("--latency", type=float, default=0.05, help="fake model seconds per call")
    parser.add_argument("--max-wall-s", type=float, default=1800.0)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

    queue = start_queue(args.sandbox)
    if args.start_concurrency:
        queue.resize(args.start_concurrency)
    load_before = os.getloadavg()
    with FakeLLMServer(root_model, latency=args.latency) as server:
        report = asyncio.run(burst(args, server))
    load_after = os.getloadavg()

    waits, starts = report["waits"], report["starts"]
    where = args.sandbox + (f" ({args.runtime})" if args.runtime else "")
    print(f"{args.runs} runs at once on {where}, {os.cpu_count()} CPUs, start queue of {queue.concurrency}")
    print(f"  correct answers: {report['correct']}/{args.runs}   errors: {len(report['errors'])}")
    for kind, count in collections.Counter(e.split(":")[0] for e in report["errors"]).most_common(5):
        example = next(e for e in report["errors"] if e.startswith(kind))
        print(f"    {count} x {example[:300]}")
    print(f"  wall time: {report['wall']:.1f} s ({args.runs / report['wall']:.2f} runs/s)")
    print(f"  wait for a box: p50 {percentile(waits, 0.5):.1f} s, p99 {percentile(waits, 0.99):.1f} s, "
          f"max {max(waits, default=0):.1f} s ({sum(w > 0 for w in waits)} runs waited; "
          f"{report['queued_at_once']} queued at once at most)")
    if starts:
        print(f"  box start once admitted: p50 {statistics.median(starts):.2f} s, p99 {percentile(starts, 0.99):.2f} s, "
              f"max {max(starts):.2f} s")
    print(f"  load average (1/5/15 min): before {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}, "
          f"after {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f}")


if __name__ == "__main__":
    main()
