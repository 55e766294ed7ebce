"""A box whose agent stops (its process stopped or frozen: it neither reads nor answers) beside a
neighbour box that keeps working: the scenario, written once for every backend that can stop an agent.

What must hold: the stuck box's cell ends ``sandbox_lost`` within its timeout + grace + 5 s; an
interrupt returns at once; a 64 MB upload to it returns or raises within 30 s; close returns promptly;
and the neighbour answers every cell throughout, none of them slowly.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from sandboxes import Sandbox, SandboxSpec, open_sandbox
from sandboxes.errors import SandboxError

MB = 1 << 20
UPLOAD_BYTES = 64 * MB

# Kernel code that tells the controller it is about to stop its agent, then does (local backend: the
# agent is the kernel's parent). SIGINT is ignored first so an interrupt cannot race the stop.
STOP_FROM_KERNEL = (
    "import os, signal, time\n"
    "from sandboxes.guest.runtime import call\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "call('stopping')\n"
    "os.kill(os.getppid(), signal.SIGSTOP)\n"
    "time.sleep(600)\n"
)


@dataclass
class StuckReport:
    cell_status: str = ""
    cell_s: float = 0.0
    interrupt_s: float = 0.0
    upload_s: float = 0.0
    upload_outcome: str = ""
    close_s: float = 0.0
    neighbour_latencies_s: list[float] = field(default_factory=list)
    neighbour_statuses: set[str] = field(default_factory=set)


async def run_stuck_agent(spec: SandboxSpec, code: str,
                          stop_agent: Callable[[Sandbox], Awaitable[None]] | None = None) -> StuckReport:
    """Run ``code`` in a box (it stops the agent itself, calling 'stopping' first, or ``stop_agent``
    stops it from outside once 'stopping' was called) while a neighbour of the same spec runs cells."""
    report = StuckReport()
    stopping = asyncio.Event()
    done = asyncio.Event()

    async def on_stopping(payload: object) -> None:
        stopping.set()

    async def neighbour_work(box: Sandbox) -> None:
        while not done.is_set():
            began = time.monotonic()
            result = await box.execute("1 + 1", timeout=60)
            report.neighbour_latencies_s.append(time.monotonic() - began)
            report.neighbour_statuses.add(result.status)

    async with open_sandbox(spec) as neighbour:
        assert (await neighbour.execute("1")).status == "ok"
        watcher = asyncio.ensure_future(neighbour_work(neighbour))
        stuck = await Sandbox.start(spec, {"stopping": on_stopping})
        try:
            began = time.monotonic()
            cell = asyncio.ensure_future(stuck.execute(code))
            await asyncio.wait_for(stopping.wait(), 60)
            if stop_agent is not None:
                await stop_agent(stuck)

            t = time.monotonic()
            await stuck.interrupt()
            report.interrupt_s = time.monotonic() - t

            async def upload() -> None:
                t = time.monotonic()
                try:
                    await stuck.put_file("big.bin", bytes(UPLOAD_BYTES))
                    report.upload_outcome = "returned"
                except SandboxError as exc:
                    report.upload_outcome = type(exc).__name__
                report.upload_s = time.monotonic() - t

            uploading = asyncio.ensure_future(upload())
            result = await asyncio.wait_for(cell, spec.cell_timeout_s + spec.kill_grace_s + 120)
            report.cell_s = time.monotonic() - began
            report.cell_status = result.status
            await asyncio.wait_for(uploading, 120)
        finally:
            t = time.monotonic()
            await stuck.close()
            report.close_s = time.monotonic() - t
            done.set()
            await asyncio.wait_for(watcher, 120)
    return report


def check_stuck_report(report: StuckReport, spec: SandboxSpec) -> None:
    assert report.cell_status == "sandbox_lost", report
    assert report.cell_s <= spec.cell_timeout_s + spec.kill_grace_s + 5, report
    assert report.interrupt_s < 5, report
    assert report.upload_s < 30 and report.upload_outcome, report
    assert report.close_s < 10, report
    assert report.neighbour_statuses == {"ok"}, report
    assert len(report.neighbour_latencies_s) >= 3, report
    # Generous: a loaded 2-core machine, but a neighbour waiting on the stuck box would take far longer.
    assert max(report.neighbour_latencies_s) < 5, report
