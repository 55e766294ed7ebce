"""Box starts wait their turn in a start queue: a burst waits instead of failing, the start deadline
counts from the turn, waiting owners are served in turn, and a start that gives up leaves the queue."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sandboxes import SandboxSpec, StartQueue, open_sandbox, start_queue
from sandboxes.backends.memory import MemoryAgent, MemoryBackend, echo_agent
from sandboxes.sandbox import Sandbox

# A slow provider: the agent says ready this long after its box is created.
START_S = 2.0


async def slow_agent(peer: MemoryAgent) -> None:
    await asyncio.sleep(START_S)  # models the provider's start, not a wait of the test's
    await echo_agent(peer)


async def test_a_second_start_waits_its_turn_and_its_deadline_counts_from_it():
    queue = StartQueue(1)
    # Each start fits its deadline alone; the two together do not.
    spec = SandboxSpec(startup_timeout_s=START_S * 1.5)
    queued: list[tuple[str, int]] = []
    admitted: list[tuple[str, float]] = []

    async def start(name: str) -> Sandbox:
        return await Sandbox.start(spec, backend=MemoryBackend.factory(slow_agent), queue=queue,
                                   on_queued=lambda ahead: queued.append((name, ahead)),
                                   on_admitted=lambda waited: admitted.append((name, waited)))

    first, second = await asyncio.wait_for(asyncio.gather(start("first"), start("second")), 60)
    try:
        assert first.start_wait_s == 0.0
        assert queued == [("second", 0)]
        assert [name for name, _ in admitted] == ["second"]
        assert second.start_wait_s == admitted[0][1] >= START_S * 0.9
        # Measured from the request, the second start took longer than its deadline, and still succeeded.
        assert second.start_wait_s + START_S > spec.startup_timeout_s
        assert (await second.execute("x")).stdout == "x"
    finally:
        await asyncio.gather(first.close(), second.close())
    assert queue.stats() == {"concurrency": 1, "starting": 0, "waiting": 0}


async def test_waiting_owners_are_served_in_turn():
    queue = StartQueue(1)
    order: list[str] = []
    gate = asyncio.Event()

    def agent(name: str):
        async def script(peer: MemoryAgent) -> None:
            order.append(name)  # the box is being created: its start was admitted
            if name == "a0":
                await gate.wait()  # hold the only slot until everyone is queued
            await echo_agent(peer)
        return script

    async def start(owner: str, name: str) -> Sandbox:
        return await Sandbox.start(SandboxSpec(), backend=MemoryBackend.factory(agent(name)), owner=owner,
                                   queue=queue)

    # Run "a" asks for six boxes at once (a batch of children), then run "b" for its root's one.
    starts = [asyncio.ensure_future(start("a", f"a{i}")) for i in range(6)]
    starts.append(asyncio.ensure_future(start("b", "b0")))
    while queue.stats()["waiting"] < 6:
        await asyncio.sleep(0)  # let every start reach the queue (no time passes)
    gate.set()
    boxes = await asyncio.wait_for(asyncio.gather(*starts), 60)
    await asyncio.gather(*(box.close() for box in boxes))
    # "a" holds the slot and queued first, so its next start goes first; then it is "b"'s turn.
    assert order[:3] == ["a0", "a1", "b0"], order
    # First come, first served would have made "b" wait for all six of "a".


async def test_a_start_that_gives_up_while_waiting_leaves_the_queue():
    queue = StartQueue(1)
    gate = asyncio.Event()

    async def held(peer: MemoryAgent) -> None:
        await gate.wait()
        await echo_agent(peer)

    holder = asyncio.ensure_future(Sandbox.start(SandboxSpec(), backend=MemoryBackend.factory(held), queue=queue))
    queued = asyncio.Event()
    waiter = asyncio.ensure_future(Sandbox.start(SandboxSpec(), backend=MemoryBackend.factory(), queue=queue,
                                                 on_queued=lambda ahead: queued.set()))
    await asyncio.wait_for(queued.wait(), 30)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert queue.stats()["waiting"] == 0
    gate.set()
    box = await asyncio.wait_for(holder, 30)
    await box.close()
    # The slot came back: a new start is admitted at once.
    async with open_sandbox(SandboxSpec(), backend=MemoryBackend.factory(), queue=queue) as box:
        assert box.start_wait_s == 0.0
    assert queue.stats() == {"concurrency": 1, "starting": 0, "waiting": 0}


def test_one_queue_serves_event_loops_on_several_threads():
    queue = StartQueue(1)
    held = threading.Event()
    release = threading.Event()
    waits: dict[str, float] = {}

    async def holding(peer: MemoryAgent) -> None:
        held.set()
        await asyncio.to_thread(release.wait, 60)
        await echo_agent(peer)

    async def open_one(name: str, script) -> None:
        async with open_sandbox(SandboxSpec(), backend=MemoryBackend.factory(script), queue=queue) as box:
            waits[name] = box.start_wait_s

    first = threading.Thread(target=asyncio.run, args=(open_one("first", holding),))
    first.start()
    assert held.wait(60)
    second = threading.Thread(target=asyncio.run, args=(open_one("second", echo_agent),))
    second.start()
    deadline = threading.Event()
    while queue.stats()["waiting"] < 1 and not deadline.wait(0.01):
        pass  # the second start, on its own loop, is queued behind the first
    release.set()
    first.join(60)
    second.join(60)
    assert waits["first"] == 0.0 and waits["second"] > 0.0


def test_the_process_wide_queue_is_sized_from_the_environment(monkeypatch):
    import sandboxes.admission as module

    monkeypatch.setattr(module, "_queues", {})
    monkeypatch.setenv(module.ENV_VAR, "3")
    assert start_queue("docker").concurrency == 3
    assert start_queue("docker") is start_queue("docker")
    start_queue("docker").resize(5)
    assert start_queue("docker").concurrency == 5
    monkeypatch.setattr(module, "_queues", {})
    monkeypatch.setenv(module.ENV_VAR, "many")
    with pytest.raises(ValueError, match="RLM_SANDBOX_START_CONCURRENCY"):
        start_queue("docker")
    with pytest.raises(ValueError):
        StartQueue(0)
