"""Controller microbenchmarks: what the RLM controller itself costs, measured against the fake model.

    python benchmarks/rlm_micro.py [--sandbox local|docker] [--iterations 200] [--calls 500]

Prints:
1. controller overhead per iteration, excluding model and cell time (p50, p90), from the run log;
2. ``llm_query`` round trip from kernel code at zero model latency (p50, p90);
3. 256 ``llm_query_batched`` prompts at 100 ms simulated latency with concurrency 64: wall time, failures;
4. 10,000 sub-calls in one run: the controller's resident memory after each 1,000.

The root model is scripted by an in-process fake server; sub-calls go to a second fake server in a
separate process (as a real provider would be), so the controller does not share its interpreter lock
with the server that answers it.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog

from rlm import RLM, Limits, RLMLogger
from rlm.testing import FakeLLMServer, FakeRequest, Script, split


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class SubServer:
    """An echo fake server in its own process."""

    def __init__(self, latency: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "rlm.testing", "--latency", str(latency)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def make_rlm(root: FakeLLMServer, sub_url: str, sandbox: str, log_dir: str, **limits) -> RLM:
    return RLM(backend="openai",
               backend_kwargs={"model_name": "bench-root", "base_url": root.openai_base_url, "api_key": "k"},
               other_backends=["openai"],
               other_backend_kwargs=[{"model_name": "bench-sub", "base_url": sub_url + "/v1", "api_key": "k"}],
               environment=sandbox, max_iterations=limits.pop("max_iterations", 30), logger=RLMLogger(log_dir),
               limits=Limits(max_wall_s=900, **limits))


def run_log(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def bench_overhead(sandbox: str, log_dir: str, iterations: int) -> None:
    replies = ["```repl\nprint(len(context))\n```"] + ["```repl\nx = 1\n```"] * (iterations - 1) + ["FINAL(done)"]
    with FakeLLMServer(split(Script(replies))) as root:
        sub = SubServer(0.0)
        try:
            result = make_rlm(root, sub.url, sandbox, log_dir, max_iterations=iterations + 1).completion("x" * 1000)
        finally:
            sub.stop()
    assert result.status == "final", result.message
    events = run_log(result.trajectory_path)
    its = [e for e in events if e["event"] == "iteration"]
    cells: dict[int, float] = {}
    for e in events:
        if e["event"] == "cell":
            cells[e["iteration"]] = cells.get(e["iteration"], 0.0) + e["wall_seconds"]
    overhead = []
    for prev, nxt in zip(its, its[1:]):
        gap = nxt["t"] - prev["t"] - cells.get(prev["iteration"], 0.0) - nxt["model_seconds"]
        overhead.append(gap * 1000)
    print(f"1. controller overhead per iteration (excl. model and cell): p50 {pct(overhead, .5):.2f} ms, "
          f"p90 {pct(overhead, .9):.2f} ms over {len(overhead)} iterations")


def bench_round_trip(sandbox: str, log_dir: str, calls: int) -> None:
    code = ("```repl\nimport time, json\nts = []\n"
            f"for i in range({calls}):\n    t = time.perf_counter(); llm_query('ping'); ts.append(time.perf_counter() - t)\n"
            "ts.sort()\nprint(json.dumps({'p50': ts[len(ts)//2] * 1000, 'p90': ts[int(len(ts)*.9)] * 1000}))\n```")
    with FakeLLMServer(split(Script(["```repl\nprint(len(context))\n```", code, "FINAL(done)"]))) as root:
        sub = SubServer(0.0)
        try:
            result = make_rlm(root, sub.url, sandbox, log_dir).completion("ctx")
        finally:
            sub.stop()
    cell = [e for e in run_log(result.trajectory_path) if e["event"] == "cell"][-1]
    figures = json.loads(cell["stdout"].strip().splitlines()[-1])
    print(f"2. llm_query round trip from kernel code, zero model latency: p50 {figures['p50']:.2f} ms, "
          f"p90 {figures['p90']:.2f} ms over {calls} calls")


def bench_fanout(sandbox: str, log_dir: str) -> None:
    code = ("```repl\nimport time, json\nt = time.perf_counter()\n"
            "rs = llm_query_batched([f'prompt {i}' for i in range(256)])\nelapsed = time.perf_counter() - t\n"
            "print(json.dumps({'s': elapsed, 'failed': sum(isinstance(r, LLMError) for r in rs),"
            " 'ordered': all(r.endswith(f'prompt {i}') for i, r in enumerate(rs))}))\n```")
    runs = []
    for _ in range(3):
        with FakeLLMServer(split(Script(["```repl\nprint(len(context))\n```", code, "FINAL(done)"]))) as root:
            sub = SubServer(0.1)
            try:
                result = make_rlm(root, sub.url, sandbox, log_dir, max_concurrency=64).completion("ctx")
            finally:
                sub.stop()
        cell = [e for e in run_log(result.trajectory_path) if e["event"] == "cell"][-1]
        runs.append(json.loads(cell["stdout"].strip().splitlines()[-1]))
    best = min(r["s"] for r in runs)
    print(f"3. 256 llm_query_batched prompts, 100 ms latency, concurrency 64: {best:.3f} s best of 3 "
          f"({', '.join(format(r['s'], '.3f') for r in runs)}); failures {sum(r['failed'] for r in runs)}; "
          f"order kept {all(r['ordered'] for r in runs)}")


def bench_memory(sandbox: str, log_dir: str, total: int = 10_000, step: int = 1_000) -> None:
    samples: list[tuple[int, float]] = []
    cell = (f"```repl\nrs = llm_query_batched([f'q {{i}}' for i in range({step})])\n"
            "print(sum(isinstance(r, LLMError) for r in rs))\n```")

    def root(request: FakeRequest) -> str:
        samples.append((request.turn - 1, rss_mb()))
        if request.turn == 0:
            return "```repl\nprint(len(context))\n```"
        if request.turn <= total // step:
            return cell
        return "FINAL(done)"

    with FakeLLMServer(split(root)) as server:
        sub = SubServer(0.0)
        try:
            result = make_rlm(server, sub.url, sandbox, log_dir, max_iterations=total // step + 2,
                              max_llm_calls=total + 100, max_concurrency=64).completion("ctx")
        finally:
            sub.stop()
    assert result.status == "final", result.message
    calls = result.usage["bench-sub"].calls
    series = [(n * step, mb) for n, mb in samples if n >= 1]
    first, last = series[0][1], series[-1][1]
    print(f"4. {calls:,} sub-calls in one run, {result.usage['bench-sub'].failures} failed: controller RSS "
          f"{first:.1f} MB after {series[0][0]:,} -> {last:.1f} MB after {series[-1][0]:,} "
          f"(+{last - first:.1f} MB); series: " + ", ".join(f"{mb:.0f}" for _, mb in series))
    size = Path(result.trajectory_path).stat().st_size
    print(f"   run log on disk: {size / 1e6:.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sandbox", default="local")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--only", type=int, default=None, help="run only benchmark N")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    with tempfile.TemporaryDirectory() as log_dir:
        started = time.monotonic()
        benches = [lambda: bench_overhead(args.sandbox, log_dir, args.iterations),
                   lambda: bench_round_trip(args.sandbox, log_dir, args.calls),
                   lambda: bench_fanout(args.sandbox, log_dir),
                   lambda: bench_memory(args.sandbox, log_dir)]
        for n, bench in enumerate(benches, 1):
            if args.only in (None, n):
                bench()
        print(f"(sandbox {args.sandbox}, {time.monotonic() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
