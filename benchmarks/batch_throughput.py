"""`rlm batch` throughput with the fake model: prints figures; asserts nothing.

    python benchmarks/batch_throughput.py --tasks 200 --concurrency 16 --sandbox local
    python benchmarks/batch_throughput.py --tasks 200 --concurrency 16 --sandbox docker --kill-at 0.5

Each task is a real RLM run (two model turns, one REPL cell over its context) against the fake model
server on 127.0.0.1, in its own sandbox. With ``--kill-at F`` the batch is SIGKILLed once that fraction
of results is on disk and then resumed, and the figures cover both runs. Reported: wall time, tasks per
minute, per-task time percentiles (from the results file), and for a resume how many tasks ran again.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rlm.testing import FakeLLMServer, FakeRequest

ROOT = Path(__file__).resolve().parents[1]


def policy(request: FakeRequest) -> str:
    match = re.search(r"TASK=(\w+)", request.text)
    if request.turn == 0:
        return "```repl\nprint(len(context), context[:20])\n```"
    return f"FINAL(done {match.group(1) if match else '?'})"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sandbox", default="local")
    parser.add_argument("--context-kb", type=int, default=64, help="context size per task")
    parser.add_argument("--kill-at", type=float, default=None, help="SIGKILL at this fraction done, then resume")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    tasks = work / "tasks.jsonl"
    with open(tasks, "w") as f:
        for i in range(args.tasks):
            f.write(json.dumps({"id": f"t{i:05d}", "question": f"How long is it? TASK=t{i:05d}",
                                "context": "lorem ipsum " * (args.context_kb * 1024 // 12)}) + "\n")
    out = work / "results.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    env.update({"OPENAI_API_KEY": "bench", "PYTHONPATH": str(ROOT)})
    with FakeLLMServer(policy) as server:
        command = [sys.executable, "-m", "rlm.cli", "batch", str(tasks), "--out", str(out),
                   "--concurrency", str(args.concurrency), "--sandbox", args.sandbox, "--model", "gpt-5-mini",
                   "--sub-model", "gpt-5-nano", "--base-url", server.openai_base_url, "--max-iterations", "4",
                   "--summary-json", str(work / "summary.json")]
        started = time.monotonic()
        killed_after = None
        first_s = None
        if args.kill_at is not None:
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            target = int(args.tasks * args.kill_at)
            while proc.poll() is None and (not out.exists() or out.read_bytes().count(b"\n") < target):
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            first_s = time.monotonic() - started
            killed_after = out.read_bytes().count(b"\n")
        resumed = time.monotonic()
        subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        wall = time.monotonic() - started
        second_s = time.monotonic() - resumed
    results = [json.loads(line) for line in out.read_text().splitlines()]
    summary = json.loads((work / "summary.json").read_text())
    times = [r["execution_time"] for r in results]
    keys = [r["key"] for r in results]
    print(f"| rlm batch, {args.tasks} tasks, {args.sandbox}, concurrency {args.concurrency} | figure |")
    print("| --- | --- |")
    print(f"| results / unique ids | {len(keys)} / {len(set(keys))} |")
    print(f"| statuses | {summary['all_statuses']} |")
    print(f"| wall time | {wall:.1f} s ({len(keys) / wall * 60:.0f} tasks/min) |")
    print(f"| task time p50 / p95 / max | {statistics.median(times):.2f} / {pct(times, 95):.2f} / {max(times):.2f} s |")
    print(f"| cost (fake model at gpt-5-mini prices) | ${summary['all_cost_usd']:.4f} |")
    if killed_after is not None:
        print(f"| killed after | {killed_after} results, {first_s:.1f} s |")
        print(f"| resume ran | {summary['ran']} tasks in {second_s:.1f} s |")


if __name__ == "__main__":
    main()
