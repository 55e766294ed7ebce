"""Cancellation is never swallowed, and cleanup finishes first: a caller cancelled while a box is being
closed or destroyed gets its CancelledError once the box is gone, not before and not never."""

from __future__ import annotations

import asyncio

import pytest

from sandboxes import SandboxSpec
from sandboxes.backends.memory import MemoryAgent, MemoryBackend, echo_agent
from sandboxes.cancellation import finish, stop
from sandboxes.pool import SandboxPool
from sandboxes.sandbox import Sandbox


async def test_a_cancelled_close_raises_after_the_box_is_destroyed():
    made: list[MemoryBackend] = []

    def factory(spec: SandboxSpec, box_id: str) -> MemoryBackend:
        made.append(MemoryBackend(spec, box_id, echo_agent))
        return made[-1]

    box = await Sandbox.start(SandboxSpec(), backend=factory)
    closing = asyncio.ensure_future(box.close())
    await asyncio.sleep(0)  # closing has begun (no time passes)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert made[0].destroyed and not made[0].running


async def test_a_start_cancelled_while_the_agent_comes_up_leaves_no_box():
    made: list[MemoryBackend] = []
    started = asyncio.Event()

    async def slow(peer: MemoryAgent) -> None:
        started.set()
        await asyncio.Event().wait()  # never ready

    def factory(spec: SandboxSpec, box_id: str) -> MemoryBackend:
        made.append(MemoryBackend(spec, box_id, slow))
        return made[-1]

    start = asyncio.ensure_future(Sandbox.start(SandboxSpec(), backend=factory))
    await asyncio.wait_for(started.wait(), 30)
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    assert made[0].destroyed and not made[0].running


async def test_a_pool_closed_by_a_cancelled_task_still_destroys_its_boxes():
    made: list[MemoryBackend] = []

    def factory(spec: SandboxSpec, box_id: str) -> MemoryBackend:
        made.append(MemoryBackend(spec, box_id, echo_agent))
        return made[-1]

    pool = SandboxPool(SandboxSpec(), min_idle=2, max_total=2, backend=factory)
    await pool.start()
    await pool.wait_ready(timeout=30)
    closing = asyncio.ensure_future(pool.__aexit__(None, None, None))
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert len(made) == 2 and all(b.destroyed and not b.running for b in made)


async def test_finish_and_stop_let_the_callers_cancellation_through():
    release = asyncio.Event()
    cleaned: list[str] = []

    async def cleanup() -> str:
        await release.wait()
        cleaned.append("done")
        return "ok"

    release.set()
    assert await finish(cleanup()) == "ok"
    release.clear()
    cleaned.clear()
    outer = asyncio.ensure_future(finish(cleanup()))
    await asyncio.sleep(0)
    outer.cancel()
    await asyncio.sleep(0)
    assert not outer.done()  # still cleaning up
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert cleaned == ["done"]

    # stop(): the stopped task's cancellation is dropped, the caller's is not.
    helper = asyncio.ensure_future(asyncio.Event().wait())
    await stop(helper)
    assert helper.cancelled()
    stubborn_release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await stubborn_release.wait()

    helper = asyncio.ensure_future(stubborn())
    await asyncio.sleep(0)
    stopper = asyncio.ensure_future(stop(helper))
    await asyncio.sleep(0)
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    stubborn_release.set()
    await asyncio.wait([helper])
