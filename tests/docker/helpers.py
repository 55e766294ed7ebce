"""Helpers for Docker tests: a neighbour box that keeps working beside a hostile one."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from sandboxes import ExecResult, Sandbox, SandboxSpec, open_sandbox
from tests.sandbox_contract import HANDLERS


@dataclass
class Beside:
    """What the neighbour and the controller did while the hostile cell ran."""

    neighbour_results: list[ExecResult] = field(default_factory=list)
    worst_loop_lag_s: float = 0.0


def docker_spec(runtime: str | None, **changes: Any) -> SandboxSpec:
    base: dict[str, Any] = {"backend": "docker", "runtime": runtime, "memory_mb": 512, "pids": 128,
                            "disk_mb": 128, "cell_timeout_s": 10, "kill_grace_s": 1.0}
    base.update(changes)
    return SandboxSpec(**base)


@contextlib.asynccontextmanager
async def hostile_beside_neighbour(runtime: str | None, **changes: Any) -> AsyncIterator[tuple[Sandbox, Beside]]:
    """Open a hostile box and a neighbour box; while the block runs, the neighbour executes cells and
    guest calls without pause and a ticker measures how late the controller's event loop runs.

    On exit, asserts that every neighbour cell succeeded, that it ran at least a few, and that the
    event loop never stalled for long: the hostile box hurt nobody else.
    """
    hostile_spec = docker_spec(runtime, **changes)
    neighbour_spec = docker_spec(runtime)
    beside = Beside()
    stop = asyncio.Event()

    async def neighbour_work(other: Sandbox) -> None:
        count = 0
        while not stop.is_set():
            count += 1
            r = await other.execute(
                f"from sandboxes.guest.runtime import call\nn = {count}\nprint(call('echo', n))", timeout=60)
            beside.neighbour_results.append(r)
            await asyncio.sleep(0.05)

    async def ticker() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.02)
            beside.worst_loop_lag_s = max(beside.worst_loop_lag_s, time.monotonic() - before - 0.02)

    box_cm = open_sandbox(hostile_spec, handlers=HANDLERS)
    other_cm = open_sandbox(neighbour_spec, handlers=HANDLERS)
    box, other = await asyncio.gather(box_cm.__aenter__(), other_cm.__aenter__())
    try:
        work = asyncio.create_task(neighbour_work(other))
        tick = asyncio.create_task(ticker())
        try:
            yield box, beside
            # The neighbour must also go on after the attack: two more cells, whatever came before.
            goal = len(beside.neighbour_results) + 2
            deadline = time.monotonic() + 60
            while len(beside.neighbour_results) < goal and time.monotonic() < deadline and not work.done():
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await asyncio.wait_for(work, 90)
            tick.cancel()
        bad = [r for r in beside.neighbour_results if r.status != "ok"]
        assert not bad, f"the neighbour box was hurt: {bad[:2]}"
        assert len(beside.neighbour_results) >= 2, "the neighbour box made no progress"
        for i, r in enumerate(beside.neighbour_results, start=1):
            assert r.stdout == f"{i}\n", r
        assert beside.worst_loop_lag_s < 1.0, f"the controller's event loop stalled {beside.worst_loop_lag_s:.2f} s"
        final = await other.execute("print('neighbour fine')")
        assert final.status == "ok" and final.stdout == "neighbour fine\n"
    finally:
        await asyncio.gather(box_cm.__aexit__(None, None, None), other_cm.__aexit__(None, None, None))
