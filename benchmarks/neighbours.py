"""Does a hostile box slow its neighbours? Prints figures; asserts nothing.

    python benchmarks/neighbours.py --backend local
    python benchmarks/neighbours.py --backend docker [--runtime runsc] [--hostile 4] [--attack-s 30]
    python benchmarks/neighbours.py --backend docker --runtime runsc --restarts 10

One neighbour box runs trivial cells, one every ``--pace-ms`` (20 ms), first alone (idle) and then
while ``--hostile`` boxes attack the controller they share, each with one of:

* ``calls``: four kernel threads sending guest calls without pause, each alternating a list of a
  million integers (refused inside the box: over the value cap) and one at the cap
  (``MAX_CALL_VALUES``: a list and its integers, decoded by the controller, then handled);
* ``flood``: cells that each print 8 MB, back to back (every result the largest the output cap lets
  through);
* ``stop``: kernel code stops its agent (SIGSTOP to its parent). Where the kernel cannot signal the
  agent (Docker: another user) the cell gets PermissionError and the box carries on; where it can
  (local), the box is found lost and a new one takes its place, again and again.

Prints the neighbour's cell latency p50/p99 idle and under attack and the ratio of the p99s, the
event loop's worst lag (a ticker), the share of a core the controller process used, its peak memory
above idle (VmHWM), and what each attack achieved. On a machine with fewer cores than busy boxes the
neighbour also waits for a CPU: run the controller at a higher priority (``nice -n -10``) to see
what the controller itself costs it. ``--restarts N`` also measures a kernel restart after the grace period (the part of
a cell's deadline that RESTART_ALLOWANCE_S in sandboxes/sandbox.py covers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from typing import Any

from sandboxes import Sandbox, SandboxSpec, open_sandbox
from sandboxes.errors import SandboxError
from sandboxes.guest.protocol import MAX_CALL_VALUES

CALLS = (
    "import threading\n"
    "from sandboxes.guest.runtime import call, GuestCallError\n"
    f"big, capped = list(range(10**6)), list(range(10**6, 10**6 + {MAX_CALL_VALUES - 1}))\n"
    "counts = {'refused': 0, 'served': 0}\n"
    "def attack():\n"
    "    while True:\n"
    "        for payload in (big, capped):\n"
    "            try:\n"
    "                call('sink', payload)\n"
    "                counts['served'] += 1\n"
    "            except GuestCallError:\n"
    "                counts['refused'] += 1\n"
    "for _ in range(4):\n"
    "    threading.Thread(target=attack, daemon=True).start()\n"
    "import time; time.sleep({seconds})\n"
)
FLOOD = "s = 'z' * (1 << 20)\nfor _ in range(8): print(s)"
STOP = "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\nimport time; time.sleep(60)"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def memory_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_memory() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS


async def sink(payload: Any) -> int:
    return len(payload) if isinstance(payload, list) else 0


class Lag:
    """The event loop's worst lateness, by a ticker that asks to wake every 10 ms."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.perf_counter() - before - 0.01)

    def take(self) -> float:
        worst, self.worst = self.worst, 0.0
        return worst

    def stop(self) -> None:
        self._task.cancel()


async def neighbour_cells(box: Sandbox, *, count: int | None = None, until: asyncio.Event | None = None,
                          pace_s: float = 0.0) -> list[float]:
    latencies = []
    while (count is not None and len(latencies) < count) or (until is not None and not until.is_set()):
        if pace_s and latencies:
            await asyncio.sleep(pace_s)
        began = time.perf_counter()
        result = await box.execute("1 + 1", timeout=60)
        latencies.append(time.perf_counter() - began)
        if result.status != "ok":
            raise RuntimeError(f"the neighbour's cell ended {result.status}: {result}")
    return latencies


async def attacker(kind: str, spec: SandboxSpec, stop: asyncio.Event, seconds: float, tally: Counter) -> None:
    """One hostile box (or, for ``stop`` where the box is lost each time, a series of them)."""
    while not stop.is_set():
        async with open_sandbox(spec, handlers={"sink": sink}) as box:
            tally["boxes opened"] += 1
            while not stop.is_set():
                if kind == "calls":
                    result = await box.execute(CALLS.replace("{seconds}", f"{seconds:g}"), timeout=seconds + 30)
                    tally["calls: cells"] += 1
                    tally[f"calls: cell {result.status}"] += 1
                    counts = await box.execute("print(counts)")
                    tally["calls: kernel saw " + counts.stdout.strip()] += 1
                    return
                if kind == "flood":
                    result = await box.execute(FLOOD, timeout=60)
                    tally[f"flood: cell {result.status}"] += 1
                    continue
                result = await box.execute(STOP, timeout=10)
                outcome = result.error.name if result.status == "error" and result.error else result.status
                tally[f"stop: {outcome}"] += 1
                if result.status == "sandbox_lost":
                    break  # a new box, and again


async def measure_restarts(spec: SandboxSpec, count: int) -> list[float]:
    """Seconds a cell that ignores its interrupt takes beyond timeout + grace: the kernel's restart."""
    spent = []
    async with open_sandbox(spec.replace(kill_grace_s=1.0)) as box:
        for _ in range(count):
            began = time.perf_counter()
            result = await box.execute(
                "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(600)", timeout=1)
            took = time.perf_counter() - began
            if result.status != "kernel_restarted":
                raise RuntimeError(f"expected a restart, got {result.status}")
            spent.append(took - 1.0 - 1.0)
    return spent


async def run(args: argparse.Namespace) -> dict[str, Any]:
    spec = SandboxSpec(backend=args.backend, runtime=args.runtime, memory_mb=1024, image=args.image)
    hostile_spec = spec.replace(cpus=args.hostile_cpus) if args.hostile_cpus else spec
    figures: dict[str, Any] = {"backend": args.backend, "runtime": args.runtime, "hostile_boxes": args.hostile,
                               "hostile_cpus": hostile_spec.cpus, "neighbour_pause_ms": args.pace_ms}
    lag = Lag()
    async with open_sandbox(spec) as neighbour:
        await neighbour_cells(neighbour, count=20, pace_s=args.pace_ms / 1000)  # warm, as it will run
        lag.take()
        cpu, wall = time.process_time(), time.perf_counter()
        idle = await neighbour_cells(neighbour, count=args.idle_cells, pace_s=args.pace_ms / 1000)
        figures["controller_cpu_share_idle"] = (time.process_time() - cpu) / (time.perf_counter() - wall)
        figures["idle_loop_lag_worst_ms"] = lag.take() * 1000

        reset_peak_memory()
        idle_rss_kb = memory_kb("VmRSS")
        kinds = [args.attacks[i % len(args.attacks)] for i in range(args.hostile)]
        stop, tally = asyncio.Event(), Counter()
        attackers = [asyncio.ensure_future(attacker(kind, hostile_spec, stop, args.attack_s, tally)) for kind in kinds]
        ready = time.perf_counter()
        # Give every attacker its box before the clock starts: the attack, not box starts, is measured.
        while (tally["boxes opened"] < len(attackers) and time.perf_counter() - ready < 120
               and not any(a.done() for a in attackers)):
            await neighbour_cells(neighbour, count=1)
            await asyncio.sleep(args.pace_ms / 1000)
        lag.take()
        timer = asyncio.get_running_loop().call_later(args.attack_s, stop.set)
        cpu, wall = time.process_time(), time.perf_counter()
        attacked = await neighbour_cells(neighbour, until=stop, pace_s=args.pace_ms / 1000)
        figures["controller_cpu_share_attack"] = (time.process_time() - cpu) / (time.perf_counter() - wall)
        timer.cancel()
        figures["attack_loop_lag_worst_ms"] = lag.take() * 1000
        figures["controller_peak_above_idle_mb"] = (memory_kb("VmHWM") - idle_rss_kb) / 1024
        results = await asyncio.gather(*attackers, return_exceptions=True)
        figures["attacker_errors"] = [repr(r)[:200] for r in results if isinstance(r, BaseException)]
    lag.stop()

    figures.update({
        "idle_cells": len(idle), "idle_p50_ms": pct(idle, 50) * 1000, "idle_p99_ms": pct(idle, 99) * 1000,
        "attack_cells": len(attacked), "attack_p50_ms": pct(attacked, 50) * 1000,
        "attack_p99_ms": pct(attacked, 99) * 1000,
    })
    figures["p99_ratio"] = figures["attack_p99_ms"] / figures["idle_p99_ms"]
    figures["attacks"] = dict(sorted(tally.items()))
    if args.restarts:
        restarts = await measure_restarts(spec, args.restarts)
        figures["kernel_restart_p50_s"] = pct(restarts, 50)
        figures["kernel_restart_max_s"] = max(restarts)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="local", choices=["local", "docker"])
    parser.add_argument("--runtime", default=None, choices=[None, "runc", "runsc"])
    parser.add_argument("--image", default=None)
    parser.add_argument("--hostile", type=int, default=4, help="hostile boxes (0: measure the neighbour alone)")
    parser.add_argument("--hostile-cpus", type=float, default=None,
                        help="CPU quota of each hostile box (Docker; default the spec's 1.0)")
    parser.add_argument("--idle-cells", type=int, default=400)
    parser.add_argument("--attack-s", type=float, default=30.0)
    parser.add_argument("--attacks", type=lambda text: text.split(","), default=["calls", "flood", "stop"],
                        help="attacks given to the hostile boxes in turn (default calls,flood,stop)")
    parser.add_argument("--restarts", type=int, default=0)
    parser.add_argument("--pace-ms", type=float, default=20.0,
                        help="the neighbour's pause between cells (default 20: a box that mostly waits, as one "
                             "in an RLM run does; 0: back to back, a CPU's worth of work in itself, which the "
                             "CPU governor demotes like any other busy box)")
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    for key, value in figures.items():
        shown = f"{value:.2f}" if isinstance(value, float) else json.dumps(value) if isinstance(value, (dict, list)) else value
        print(f"{key:32s} {shown}")


if __name__ == "__main__":
    try:
        main()
    except SandboxError as exc:
        raise SystemExit(f"neighbours: {exc}") from None
