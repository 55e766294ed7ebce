"""System microbenchmarks of one sandbox backend. Prints figures; asserts nothing.

    python benchmarks/sandbox_micro.py --backend local
    python benchmarks/sandbox_micro.py --backend docker --runtime runsc

Measures: cold start to first cell result, trivial-cell latency, guest-call round trip from kernel
code (handler returns at once), 1,000 guest calls from 32 kernel threads, a 100 MB upload, and a
trivial cell's latency with a 100 MB ``context`` loaded in the kernel.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from sandboxes import SandboxSpec, open_sandbox

MB = 1024 * 1024


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def echo(payload: Any) -> Any:
    return payload


async def cell_latencies(box: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = await box.execute("1")
        out.append(time.perf_counter() - t)
        assert r.status == "ok", r
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    spec = SandboxSpec(backend=args.backend, runtime=args.runtime, memory_mb=2048, disk_mb=1024,
                       image=args.image)
    figures: dict[str, Any] = {"backend": args.backend, "runtime": args.runtime}

    starts = []
    for _ in range(args.starts):
        t = time.perf_counter()
        async with open_sandbox(spec) as box:
            r = await box.execute("1")
            starts.append(time.perf_counter() - t)
            assert r.status == "ok", r
    figures["cold_start_p50_s"] = statistics.median(starts)
    figures["cold_start_max_s"] = max(starts)

    async with open_sandbox(spec, handlers={"echo": echo}) as box:
        await cell_latencies(box, 20)  # warm-up
        lat = await cell_latencies(box, args.cells)
        figures["cell_p50_ms"] = pct(lat, 50) * 1000
        figures["cell_p95_ms"] = pct(lat, 95) * 1000

        r = await box.execute(
            "import time\nfrom sandboxes.guest.runtime import call\n"
            "for _ in range(50): call('echo', 1)\n"
            "rt = []\n"
            f"for i in range({args.calls}):\n"
            "    t = time.perf_counter(); call('echo', i); rt.append(time.perf_counter() - t)\n"
            "rt.sort(); print(rt[len(rt)//2], rt[int(len(rt)*0.95)])")
        p50, p95 = map(float, r.stdout.split())
        figures["guest_call_p50_ms"] = p50 * 1000
        figures["guest_call_p95_ms"] = p95 * 1000

        r = await box.execute(
            "import time\nfrom concurrent.futures import ThreadPoolExecutor\n"
            "from sandboxes.guest.runtime import call\n"
            "t = time.perf_counter()\n"
            "with ThreadPoolExecutor(32) as pool:\n"
            "    got = list(pool.map(lambda i: call('echo', i), range(1000)))\n"
            "assert got == list(range(1000))\n"
            "print(time.perf_counter() - t)", timeout=120)
        assert r.status == "ok", r
        figures["calls_1000_x32_threads_s"] = float(r.stdout)

        data = b"0123456789abcdef" * (100 * MB // 16)
        t = time.perf_counter()
        await box.put_file("context.txt", data)
        figures["upload_100mb_s"] = time.perf_counter() - t
        r = await box.execute("context = open('context.txt').read(); print(len(context))", timeout=120)
        assert r.stdout.strip() == str(len(data)), r
        lat = await cell_latencies(box, args.cells)
        figures["cell_with_100mb_context_p50_ms"] = pct(lat, 50) * 1000
        figures["cell_with_100mb_context_p95_ms"] = pct(lat, 95) * 1000
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="local")
    parser.add_argument("--runtime", default=None, help="docker only: runc or runsc")
    parser.add_argument("--image", default=None)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--cells", type=int, default=300)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    if args.json:
        print(json.dumps(figures))
        return
    label = args.backend + (f"/{args.runtime}" if args.runtime else "")
    rows = [
        ("cold start to first result (p50 / max)", f"{figures['cold_start_p50_s']:.3f} s / {figures['cold_start_max_s']:.3f} s"),
        ("trivial cell (p50 / p95)", f"{ms(figures['cell_p50_ms'] / 1000)} / {ms(figures['cell_p95_ms'] / 1000)}"),
        ("guest-call round trip (p50 / p95)", f"{ms(figures['guest_call_p50_ms'] / 1000)} / {ms(figures['guest_call_p95_ms'] / 1000)}"),
        ("1,000 guest calls from 32 threads", f"{figures['calls_1000_x32_threads_s']:.3f} s"),
        ("upload 100 MB", f"{figures['upload_100mb_s']:.3f} s"),
        ("trivial cell, 100 MB context loaded (p50 / p95)",
         f"{ms(figures['cell_with_100mb_context_p50_ms'] / 1000)} / {ms(figures['cell_with_100mb_context_p95_ms'] / 1000)}"),
    ]
    print(f"| {label} | figure |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
