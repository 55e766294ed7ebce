"""SandboxPool: warm boxes handed out one per run, destroyed after it, refilled in the background.

Runs on the local backend (every test run); tests/docker/test_pool_docker.py runs the same pool on
Docker boxes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sandboxes import SandboxSpec
from sandboxes.errors import SandboxClosed, SandboxStartError
from sandboxes.backends.memory import MemoryBackend
from sandboxes.pool import RETRY_FIRST_S, SandboxPool
from tests.conftest import box_processes

SPEC = SandboxSpec(backend="local")


async def echo(payload: Any) -> Any:
    return payload


async def test_fills_to_min_idle_and_hands_out_warm_boxes() -> None:
    async with SandboxPool(SPEC, min_idle=2, max_total=4) as pool:
        await pool.wait_ready(timeout=60)
        assert pool.idle == 2
        async with pool.sandbox(handlers={"echo": echo}) as box:
            assert pool.in_use == 1
            r = await box.execute("from sandboxes.guest.runtime import call\nprint(call('echo', 'bound'))")
            assert r.status == "ok" and r.stdout == "bound\n"
        assert pool.in_use == 0
        await pool.wait_ready(timeout=60)  # refilled in the background
        assert pool.idle == 2


async def test_a_box_serves_one_run_and_is_destroyed_after_it() -> None:
    async with SandboxPool(SPEC, min_idle=1, max_total=2) as pool:
        await pool.wait_ready(timeout=60)
        async with pool.sandbox() as first:
            await first.execute("secret = 'run one'")
            first_id = first.box_id
        assert box_processes(first_id) == []
        with pytest.raises(SandboxClosed):
            await first.execute("1")
        async with pool.sandbox() as second:
            assert second.box_id != first_id
            r = await second.execute("print('secret' in globals())")
            assert r.stdout == "False\n"


async def test_never_more_than_max_total_and_waiters_get_freed_slots() -> None:
    async with SandboxPool(SPEC, min_idle=0, max_total=2) as pool:
        a = await pool.acquire()
        b = await pool.acquire()
        assert pool.total == 2
        with pytest.raises(TimeoutError):
            await pool.acquire(timeout=0.5)
        waiter = asyncio.create_task(pool.acquire(timeout=60))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        await pool.release(a)
        c = await asyncio.wait_for(waiter, 60)
        assert c.box_id not in (a.box_id, b.box_id)
        assert pool.total <= 2
        await pool.release(b)
        await pool.release(c)


async def test_close_destroys_idle_and_handed_out_boxes() -> None:
    pool = SandboxPool(SPEC, min_idle=2, max_total=3)
    await pool.start()
    await pool.wait_ready(timeout=60)
    held = await pool.acquire()
    ids = [held.box_id]
    await pool.close()
    assert pool.total == 0
    for box_id in ids:
        assert box_processes(box_id) == []
    with pytest.raises(SandboxClosed):
        await pool.acquire()


async def test_dead_idle_box_is_not_handed_out() -> None:
    async with SandboxPool(SPEC, min_idle=1, max_total=3) as pool:
        await pool.wait_ready(timeout=60)
        victim = pool._idle[0][1]
        await victim.backend.destroy()  # the box dies while waiting
        async with pool.sandbox() as box:
            assert box is not victim
            assert (await box.execute("1 + 1")).display == [{"text/plain": "2"}]


async def test_start_failures_reach_the_caller_and_the_refill_backs_off() -> None:
    attempts: list[float] = []
    attempted = asyncio.Event()

    def failing(spec: SandboxSpec, box_id: str) -> MemoryBackend:
        attempts.append(asyncio.get_running_loop().time())
        attempted.set()
        return MemoryBackend(spec, box_id, start_error=SandboxStartError("the engine is down (test)"))

    async with SandboxPool(SPEC, min_idle=1, max_total=2, backend=failing) as pool:
        async with asyncio.timeout(60):
            while len(attempts) < 4:  # the refill's first try and three retries
                attempted.clear()
                await attempted.wait()
        assert isinstance(pool.last_error, SandboxStartError)
        assert pool.idle == 0 and pool.in_use == 0  # (a fifth start may be under way)
        # Backing off: each wait at least the first retry delay, doubling (a timer never fires early).
        gaps = [later - earlier for earlier, later in zip(attempts, attempts[1:])]
        assert gaps[0] >= 0.9 * RETRY_FIRST_S and gaps[1] >= 1.8 * RETRY_FIRST_S and gaps[2] >= 3.6 * RETRY_FIRST_S, gaps
        with pytest.raises(SandboxStartError, match="engine is down"):
            await pool.acquire(timeout=30)


async def test_pool_boxes_come_from_the_backend_factory_given() -> None:
    made: list[MemoryBackend] = []

    def factory(spec: SandboxSpec, box_id: str) -> MemoryBackend:
        made.append(MemoryBackend(spec, box_id))
        return made[-1]

    async with SandboxPool(SPEC, min_idle=1, max_total=2, backend=factory) as pool:
        async with pool.sandbox() as box:
            assert box.backend is made[0]
            assert (await box.execute("print('hi')")).stdout == "print('hi')"  # the echo agent answered
        assert made[0].destroyed


def test_rejects_nonsense_sizes() -> None:
    with pytest.raises(ValueError):
        SandboxPool(SPEC, min_idle=3, max_total=2)
    with pytest.raises(ValueError):
        SandboxPool(SPEC, min_idle=0, max_total=0)


async def test_wait_ready_says_why_boxes_do_not_start() -> None:
    failing = SandboxSpec(backend="local", startup_timeout_s=0.05)  # no kernel starts that fast
    async with SandboxPool(failing, min_idle=1, max_total=1) as pool:
        with pytest.raises(SandboxStartError, match="the last start failed: .*did not become ready"):
            await pool.wait_ready(timeout=3)
