"""End-to-end harness overhead: wall time of whole RLM runs minus the time spent waiting on models.

    python benchmarks/overhead.py [--sandbox local|docker] [--runtime runsc] [--size-mb 50]
                                  [--root-latency 1.0] [--sub-latency 0.1] [--runs 5]

Each run is one ``RLM.completion`` over a generated context of ``--size-mb`` MB, with a scripted root
model that answers after ``--root-latency`` seconds per call and sub-calls (``llm_query_batched``)
answered after ``--sub-latency`` seconds each. The root model looks at the context, reads eight
chunks with one batched call, then answers: three root calls and eight sub-calls.

Model time is read from the run's events: every root call (``iteration`` events, ``model_seconds``),
every sub-call (``subcall`` events, ``seconds``) and every summarising call (``compaction`` events)
is an interval of time; their union is the time at least one model call was in flight. What is left
of the wall time is the harness's own overhead: starting the box, uploading and parsing the context,
the setup cell, running cells, the controller. Prints p50 (and min, max) of ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time

import structlog

from rlm import RLM, Limits, RLMLogger
from rlm.testing import FakeRequest, FakeLLMServer, Reply, Script, split

CHUNKS = 8
SCRIPT = [
    "```repl\nprint(type(context).__name__, len(context))\nprint(context[:200])\n```",
    f"```repl\nstep = len(context) // {CHUNKS}\n"
    f"parts = [context[i * step:i * step + 2000] for i in range({CHUNKS})]\n"
    "notes = llm_query_batched(['Summarise: ' + p for p in parts])\nprint(len(notes))\n```",
    "FINAL(done)",
]


def make_context(size_mb: float) -> str:
    line = "2026-05-01T12:00:00Z host-17 service=checkout level=INFO request handled in 12 ms\n"
    return line * int(size_mb * 1_000_000 / len(line))


def model_intervals(events: list[dict]) -> list[tuple[float, float]]:
    spans = []
    for event in events:
        kind, end = event["event"], event["t"]
        if kind == "iteration":
            spans.append((end - event["model_seconds"], end))
        elif kind == "subcall" and event.get("seconds") is not None:
            spans.append((end - event["seconds"], end))
        elif kind == "compaction" and event.get("model_seconds") is not None:
            spans.append((end - event["model_seconds"], end))
    return spans


def union_length(spans: list[tuple[float, float]]) -> float:
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(spans):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += cur_end - cur_start
    return total


def one_run(args: argparse.Namespace, context: str, log_dir: str) -> tuple[float, float, float]:
    def sub(request: FakeRequest) -> Reply:
        return Reply(text="note: " + request.last_user[:40], delay=args.sub_latency)

    with FakeLLMServer(split(Script(list(SCRIPT)), sub), latency=args.root_latency) as server:
        kwargs = {"runtime": args.runtime} if args.runtime else {}
        rlm = RLM(backend="openai",
                  backend_kwargs={"model_name": "bench-root", "base_url": server.openai_base_url, "api_key": "k"},
                  environment=args.sandbox, environment_kwargs=kwargs, logger=RLMLogger(log_dir),
                  limits=Limits(max_wall_s=600))
        started = time.monotonic()
        result = rlm.completion(context, root_prompt="What does the log say?")
        wall = time.monotonic() - started
    if result.status != "final":
        raise SystemExit(f"the run ended {result.status}: {result.message}")
    with open(result.trajectory_path) as f:
        events = [json.loads(line) for line in f]
    model = union_length(model_intervals(events))
    ready = next((e for e in events if e["event"] == "sandbox_ready" and e.get("depth") == 0), {})
    first_call = next(e["model_seconds"] for e in events if e["event"] == "iteration")
    return (wall, model, wall - model, first_call,
            *(ready.get(key, float("nan")) for key in ("seconds", "start_s", "upload_s", "setup_s")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sandbox", default="local", choices=["local", "docker", "modal", "e2b"])
    parser.add_argument("--runtime", default=None, help="Docker runtime, e.g. runsc")
    parser.add_argument("--size-mb", type=float, default=50.0)
    parser.add_argument("--root-latency", type=float, default=1.0)
    parser.add_argument("--sub-latency", type=float, default=0.1)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    context = make_context(args.size_mb)
    print(f"sandbox={args.sandbox}{' runtime=' + args.runtime if args.runtime else ''} "
          f"context={len(context) / 1e6:.1f} MB root latency={args.root_latency:g} s "
          f"sub latency={args.sub_latency:g} s runs={args.runs}")
    names = ("wall", "model wait", "overhead", "first call", "box ready", "  start", "  upload", "  setup")
    rows = []
    with tempfile.TemporaryDirectory() as log_dir:
        for i in range(args.runs):
            rows.append(one_run(args, context, log_dir))
            print(f"  run {i + 1}: " + "  ".join(f"{n.strip()} {v:.3f} s" for n, v in zip(names, rows[-1])), flush=True)
    for index, name in enumerate(names):
        values = [r[index] for r in rows]
        print(f"{name:>12}: p50 {statistics.median(values):.3f} s  (min {min(values):.3f}, max {max(values):.3f})")
    print("box ready: from the RLM's start to the box started, the context uploaded and set up (runs while the "
          "first model call is in flight)")

if __name__ == "__main__":
    main()
