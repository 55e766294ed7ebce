"""Batched sub-calls fan out through a fixed set of workers in one task group: the batch size costs no
tasks, an unexpected error stops the siblings, and cancelling a run cancels (and cleans up) everything."""

from __future__ import annotations

import asyncio
import errno
import json
import threading

import pytest

from rlm import Limits, RLMLogger
from rlm.fanout import fan_out
from rlm.testing import FakeRequest, Reply, Script, is_rlm_root, split
from sandboxes.guest import protocol
from tests.conftest import box_processes

LOOK = "Let me look.\n```repl\nprint(type(context).__name__, len(context))\n```"


def sub_requests(server) -> list[FakeRequest]:
    return [r for r in server.requests if not is_rlm_root(r)]


def box_gone(environment: str, box_id: str) -> bool:
    if environment == "docker":
        from sandboxes.backends.docker.backend import CONTAINER_PREFIX
        from sandboxes.backends.docker.engine import engine_client

        return not engine_client().containers.list(all=True, filters={"name": CONTAINER_PREFIX + box_id})
    return box_processes(box_id) == []


# -- the primitive -----------------------------------------------------------------------------------


async def test_fan_out_bounds_workers_and_an_unexpected_error_cancels_the_rest():
    started: list[int] = []
    cancelled: list[int] = []
    release = asyncio.Event()

    async def job(i: int) -> None:
        started.append(i)
        if i == 3:
            raise KeyError("boom")  # not an error the job turns into an answer
        try:
            await release.wait()  # never set: only cancellation ends these
        except asyncio.CancelledError:
            cancelled.append(i)
            raise

    with pytest.raises(KeyError, match="boom"):  # the error itself, not an ExceptionGroup
        await asyncio.wait_for(fan_out(10_000, 4, job), 30)
    assert started == [0, 1, 2, 3]  # four workers: nothing past the bound was started
    assert sorted(cancelled) == [0, 1, 2]


async def test_fan_out_propagates_cancellation_to_every_worker():
    running = asyncio.Event()
    cancelled: list[int] = []

    async def job(i: int) -> None:
        if i == 2:
            running.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(i)
            raise

    task = asyncio.ensure_future(fan_out(100, 3, job))
    await asyncio.wait_for(running.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled() and sorted(cancelled) == [0, 1, 2]


# -- through the RLM ---------------------------------------------------------------------------------


class DiskFullsOnce(RLMLogger):
    """A run log whose disk fills up when it records one given sub-call: an error no handler expects."""

    def __init__(self, log_dir, index: int) -> None:
        super().__init__(log_dir)
        self.index = index

    def open(self, run_id: str):
        run_log = super().open(run_id)
        write = run_log.write

        def write_or_fail(record):
            if record["event"] == "subcall" and record.get("index") == self.index:
                raise OSError(errno.ENOSPC, "No space left on device")
            write(record)

        run_log.write = write_or_fail
        return run_log


def test_an_unexpected_error_in_a_batch_cancels_its_siblings(server, make_rlm, tmp_path):
    server.policy = split(Script([
        LOOK,
        "```repl\ntry:\n    llm_query_batched([f'p{i}' for i in range(500)])\nexcept Exception as e:\n"
        "    print('batch failed:', e)\n```",
        # The model thinks a while: siblings left running would reach the server meanwhile.
        Reply(text="```repl\nFINAL('done')\n```", delay=2.0),
    ]), lambda request: Reply(text="ok", delay=0.2))
    events: list[dict] = []
    result = make_rlm(limits=Limits(max_concurrency=4, max_wall_s=120), logger=DiskFullsOnce(tmp_path, 5),
                      on_event=events.append).completion("ctx")
    assert result.status == "final", result.message
    cells = [e for e in events if e["event"] == "cell"]
    assert "batch failed:" in cells[1]["stdout"] and "No space left on device" in cells[1]["stdout"]
    # Four workers: prompt 5's failure came about two rounds in, so about eight prompts reached the
    # server (timing moves it by a few); with the siblings left running, all 500 would have.
    assert len(sub_requests(server)) <= 16
    subcalls = [e for e in events if e["event"] == "subcall"]
    assert any(e["status"] == "cancelled" for e in subcalls)
    assert len(subcalls) <= 16


def test_the_largest_rlm_query_batched_costs_tasks_per_worker_not_per_prompt(server, make_rlm):
    # As many prompts as one guest call may carry (the guest refuses a payload of more values).
    size = protocol.MAX_CALL_VALUES - 10
    server.policy = split(Script([
        LOOK,
        f"```repl\nrs = rlm_query_batched(['q'] * {size})\nprint(len(rs))\n```",
    ], then=lambda request: "```repl\nFINAL('too late')\n```"), lambda request: "a")
    peak = 0
    children: set[str] = set()

    def sample(event: dict) -> None:
        nonlocal peak
        peak = max(peak, len(asyncio.all_tasks()))  # on the run's event loop, as every event
        if event["event"] == "rlm_start" and event["depth"] == 1:
            children.add(event["rlm_id"])

    limits = Limits(max_llm_calls=100, max_concurrency=32, max_wall_s=300)
    result = make_rlm(max_depth=1, limits=limits, on_event=sample).completion("ctx")
    assert result.status == "max_llm_calls", result.message
    # 98 children made their call (2 root calls); the rest were answered with the limit's error
    # without a node, an event or a task each. The tasks alive at once stay near the worker count.
    assert 98 <= len(children) <= 98 + 32
    assert len(sub_requests(server)) == 98
    assert peak < 200, f"{peak} tasks alive at once for a batch of {size:,}"


async def test_a_cancelled_run_is_cancelled_after_destroying_every_box(server, make_rlm, environment):
    children_waiting = threading.Event()
    asked: list[str] = []

    def loops(request: FakeRequest) -> Reply | str:
        if "Question: kid" in request.messages[0]["content"]:  # a child RLM: never answers
            asked.append(request.messages[0]["content"])
            if len(asked) >= 2:
                children_waiting.set()
            return Reply(hang=True)
        if request.turn == 0:
            return "```repl\nrs = rlm_query_batched(['kid 1', 'kid 2'], contexts=['a', 'b'])\n```"
        return "FINAL(unreachable)"

    server.policy = split(loops)
    boxes: set[str] = set()
    ready: set[str] = set()
    all_ready = asyncio.Event()

    def watch(event: dict) -> None:
        if event["event"] == "rlm_start" and event.get("box_id"):
            boxes.add(event["box_id"])
        if event["event"] == "sandbox_ready":
            ready.add(event["box_id"])
            if len(ready) == 3:
                all_ready.set()

    rlm = make_rlm(max_depth=2, limits=Limits(max_wall_s=300), on_event=watch)
    run = asyncio.ensure_future(rlm.acompletion("ctx"))
    await asyncio.wait_for(all_ready.wait(), 120)  # the root's box and both children's
    assert await asyncio.to_thread(children_waiting.wait, 120)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 120)
    assert run.cancelled()
    assert len(boxes) == 3
    gone = await asyncio.to_thread(lambda: {b: box_gone(environment, b) for b in boxes})
    assert all(gone.values()), gone
