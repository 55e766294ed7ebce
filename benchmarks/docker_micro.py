"""Docker-specific system figures. Prints figures; asserts nothing.

    python benchmarks/docker_micro.py [--runtime runsc] [--boxes 50] [--handouts 30] [--idle 10]

Measures what only a container backend has (the per-cell and guest-call figures of any backend come
from benchmarks/sandbox_micro.py --backend docker):
1. cold start to first result (open a box, run one cell);
2. warm-pool hand-out: ``SandboxPool.acquire`` with idle boxes waiting (a ping included);
3. memory per idle box: the container's cgroup memory after start-up, as the host accounts it;
4. N boxes open at once: started concurrently, each running a cell, then all closed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from sandboxes import Sandbox, SandboxSpec, open_sandbox
from sandboxes.backends.docker.engine import engine_client
from sandboxes.pool import SandboxPool


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def container_memory_bytes(name: str) -> int | None:
    """The box's memory use as charged to its cgroup on the host (v1 or v2 layouts)."""
    cid = engine_client().api.inspect_container(name)["Id"]
    for path in (f"/sys/fs/cgroup/memory/docker/{cid}/memory.usage_in_bytes",
                 f"/sys/fs/cgroup/docker/{cid}/memory.current",
                 f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/memory.current"):
        try:
            with open(path) as f:
                return int(f.read())
        except OSError:
            continue
    return None


async def cold_starts(spec: SandboxSpec, n: int) -> dict[str, float]:
    totals = []
    for _ in range(n):
        t = time.perf_counter()
        async with open_sandbox(spec) as box:
            r = await box.execute("1")
            totals.append(time.perf_counter() - t)
            assert r.status == "ok", r
    return {"cold_start_p50_s": statistics.median(totals), "cold_start_min_s": min(totals),
            "cold_start_max_s": max(totals)}


async def handouts(spec: SandboxSpec, n: int) -> dict[str, float]:
    times = []
    async with SandboxPool(spec, min_idle=2, max_total=4) as pool:
        for _ in range(n):
            await pool.wait_ready(timeout=120)
            t = time.perf_counter()
            box = await pool.acquire()
            times.append(time.perf_counter() - t)
            await pool.release(box)
    return {"handout_p50_ms": statistics.median(times) * 1000, "handout_p90_ms": pct(times, 90) * 1000,
            "handout_max_ms": max(times) * 1000}


async def idle_memory(spec: SandboxSpec, n: int) -> dict[str, float]:
    boxes = await asyncio.gather(*(Sandbox.start(spec) for _ in range(n)))
    try:
        await asyncio.gather(*(b.execute("1") for b in boxes))
        await asyncio.sleep(2.0)
        used = [container_memory_bytes(b.backend.container_name) for b in boxes]
        values = [u / 2**20 for u in used if u is not None]
    finally:
        await asyncio.gather(*(b.close() for b in boxes))
    if not values:
        return {"idle_box_memory_mb": float("nan")}
    return {"idle_box_memory_p50_mb": statistics.median(values), "idle_box_memory_max_mb": max(values)}


async def many_at_once(spec: SandboxSpec, n: int) -> dict[str, Any]:
    t = time.perf_counter()
    started = await asyncio.gather(*(Sandbox.start(spec) for _ in range(n)), return_exceptions=True)
    boxes = [b for b in started if isinstance(b, Sandbox)]
    errors = [repr(e)[:200] for e in started if not isinstance(e, Sandbox)]
    all_open_s = time.perf_counter() - t
    try:
        results = await asyncio.gather(*(b.execute("import os\nos.getpid()") for b in boxes))
        ok = sum(r.status == "ok" for r in results)
        cell_s = time.perf_counter() - t - all_open_s
    finally:
        t2 = time.perf_counter()
        await asyncio.gather(*(b.close() for b in boxes))
        close_s = time.perf_counter() - t2
    return {"boxes_requested": n, "boxes_open_at_once": len(boxes), "cells_ok": ok,
            "time_to_open_all_s": all_open_s, "one_cell_in_each_s": cell_s, "time_to_close_all_s": close_s,
            "start_errors": errors[:3]}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    spec = SandboxSpec(backend="docker", runtime=args.runtime, memory_mb=512, image=args.image)
    figures: dict[str, Any] = {"runtime": args.runtime or "runc"}
    figures.update(await cold_starts(spec, args.starts))
    figures.update(await handouts(spec, args.handouts))
    figures.update(await idle_memory(spec, args.idle))
    if args.boxes:
        figures.update(await many_at_once(spec.replace(memory_mb=256), args.boxes))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", choices=["runc", "runsc"], default=None)
    parser.add_argument("--image", default=None)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--handouts", type=int, default=30)
    parser.add_argument("--idle", type=int, default=10)
    parser.add_argument("--boxes", type=int, default=50, help="boxes open at once (0 to skip)")
    args = parser.parse_args()
    if args.runtime == "runc":
        args.runtime = None
    figures = asyncio.run(run(args))
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()}, indent=2))


if __name__ == "__main__":
    main()
