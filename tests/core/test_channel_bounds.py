"""What one box may cost the controller, against scripted agents (the in-memory backend): deadlines on
every write and wait, a budget on decoding, and bounds on calls and bytes in flight."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from sandboxes import SandboxSpec, open_sandbox
from sandboxes.backends.memory import MemoryAgent, MemoryBackend
from sandboxes.channel import MAX_CALL_BYTES, MAX_VIOLATIONS, Channel, write_timeout
from sandboxes.errors import SandboxLost
from sandboxes.guest import protocol
from tests.core.test_channel import ScriptedStream
from tests.polling import until

MB = 1 << 20


def stops_in_a_cell(started: asyncio.Event):
    """An agent that answers until a cell starts, then reads and answers nothing (a stopped process)."""

    async def script(peer: MemoryAgent) -> None:
        await peer.say_ready()
        async for message in peer:
            if message["type"] == "ping":
                await peer.send({"type": "pong", "id": message["id"]})
            elif message["type"] == "execute":
                started.set()
                await asyncio.Event().wait()

    return script


async def test_an_agent_that_stops_is_lost_within_timeout_grace_and_seconds() -> None:
    started = asyncio.Event()
    spec = SandboxSpec(cell_timeout_s=3, kill_grace_s=2)
    factory = MemoryBackend.factory(stops_in_a_cell(started), agent_buffer=64 * 1024)
    async with open_sandbox(spec, backend=factory) as box:
        begun = time.monotonic()
        cell = asyncio.ensure_future(box.execute("stop"))
        await asyncio.wait_for(started.wait(), 10)
        # Stuck box: interrupt returns at once (the message fits the box's buffer), and an upload
        # that cannot be taken raises within its deadline instead of holding the channel.
        await asyncio.wait_for(box.interrupt(), 5)
        with pytest.raises(SandboxLost):
            await asyncio.wait_for(box.put_file("big.bin", b"\0" * (64 * MB)), 30)
        result = await asyncio.wait_for(cell, 30)
        took = time.monotonic() - begun
        assert result.status == "sandbox_lost", result
        # Found by the liveness check long before the upload's deadline could have said so.
        assert took < spec.cell_timeout_s + spec.kill_grace_s + 5, took
        assert box.backend.destroyed
        closing = time.monotonic()
    assert time.monotonic() - closing < 5


async def test_a_stuck_upload_is_lost_by_its_write_deadline() -> None:
    """An agent that stops reading while nothing waits on a cell: the write deadline alone finds it."""

    async def stops_reading(peer: MemoryAgent) -> None:
        await peer.say_ready()
        await asyncio.Event().wait()

    factory = MemoryBackend.factory(stops_reading, agent_buffer=64 * 1024)
    async with open_sandbox(SandboxSpec(), backend=factory) as box:
        begun = time.monotonic()
        with pytest.raises(SandboxLost, match="stopped reading"):
            await asyncio.wait_for(box.put_file("big.bin", b"\0" * (64 * MB)), 30)
        # The first 4 MiB chunk (base64: 5.6 MB) could not be written: its deadline, not the file's.
        assert time.monotonic() - begun < write_timeout(6 * MB) + 5
        assert (await box.execute("1")).status == "sandbox_lost"
        closing = time.monotonic()
    assert time.monotonic() - closing < 5


async def test_a_live_agent_in_a_long_cell_is_not_taken_for_stopped() -> None:
    """Pings are answered while the cell runs past several liveness checks: the box stays."""
    release = asyncio.Event()

    async def slow_cell(peer: MemoryAgent) -> None:
        await peer.say_ready()
        pings = 0
        async for message in peer:
            if message["type"] == "ping":
                pings += 1
                await peer.send({"type": "pong", "id": message["id"]})
                if pings == 3:
                    release.set()
            elif message["type"] == "execute":
                async def answer_later(request_id: str) -> None:
                    await release.wait()
                    await peer.send({"type": "result", "id": request_id, "status": "ok", "stdout": "done"})
                asyncio.ensure_future(answer_later(message["id"]))

    async with open_sandbox(SandboxSpec(), backend=MemoryBackend.factory(slow_cell)) as box:
        result = await asyncio.wait_for(box.execute("slow", timeout=60), 60)
        assert result.status == "ok" and result.stdout == "done"
        assert box.channel.violations == 0


async def test_refusals_create_no_task() -> None:
    release = asyncio.Event()

    async def slow(payload: Any) -> Any:
        await release.wait()
        return payload

    tasks_seen: list[int] = []

    class CountingStream(ScriptedStream):
        async def write(self, data: bytes) -> None:
            tasks_seen.append(len(asyncio.all_tasks()))
            await super().write(data)

    stream = CountingStream()
    channel = Channel(stream, handlers={"slow": slow}, max_concurrent_calls=4, max_pending_calls=10, box_id="t")
    channel.start()
    before = len(asyncio.all_tasks())
    for i in range(2000):
        stream.push({"type": "call", "id": f"c{i}", "name": "slow", "payload": i})
    await stream.wait_sent(lambda m: m.get("to") == "c1999", timeout=60)
    assert sum(1 for m in stream.sent if m.get("ok") is False) == 1990
    # Ten calls being served, their tasks (and the test's own waiter), and nothing for 1,990 refusals.
    assert channel.calls_in_flight == 10
    assert max(tasks_seen) <= before + 10 + 1, (before, max(tasks_seen))
    release.set()
    await stream.wait_sent(lambda m: sum(1 for x in stream.sent if x.get("ok")) == 10)
    await channel.close()


async def test_bytes_of_calls_in_flight_are_bounded() -> None:
    release = asyncio.Event()

    async def slow(payload: Any) -> Any:
        await release.wait()
        return len(payload)

    stream = ScriptedStream()
    channel = Channel(stream, handlers={"slow": slow}, box_id="t")
    channel.start()
    blob = "x" * MB
    for i in range(40):
        stream.push({"type": "call", "id": f"c{i}", "name": "slow", "payload": blob})
    await stream.wait_sent(lambda m: m.get("to") == "c39", timeout=60)
    refused = [m for m in stream.sent if m.get("ok") is False]
    served = 40 - len(refused)
    assert refused and all("too much guest-call data" in m["error"] for m in refused)
    assert served == channel.calls_in_flight and 8 <= served <= MAX_CALL_BYTES // MB
    assert channel.call_bytes <= MAX_CALL_BYTES
    release.set()
    await stream.wait_sent(lambda m: sum(1 for x in stream.sent if x.get("ok")) == served)
    assert all(m["value"] == MB for m in stream.sent if m.get("ok"))
    assert await until(lambda: channel.call_bytes == 0, 10)
    await channel.close()


async def test_unknown_handlers_and_unasked_answers_are_violations() -> None:
    stream = ScriptedStream()
    channel = Channel(stream, handlers={"echo": lambda p: p}, box_id="t")
    channel.start()
    stream.push({"type": "call", "id": "a", "name": "nope", "payload": 1})
    refusal = await stream.wait_sent(lambda m: m.get("to") == "a")
    assert refusal["ok"] is False and "no handler named 'nope'" in refusal["error"] and "echo" in refusal["error"]
    assert channel.violations == 1
    asked = asyncio.ensure_future(channel.request({"type": "ping", "id": "p1"}, 5))
    await stream.wait_sent(lambda m: m.get("id") == "p1")
    stream.push({"type": "pong", "id": "p1"})
    stream.push({"type": "pong", "id": "p1"})  # answered twice
    await asyncio.wait_for(asked, 5)
    assert await until(lambda: channel.violations == 2, 5)
    # A request given up on may still be answered, once, without counting against the box.
    with pytest.raises(TimeoutError):
        await channel.request({"type": "ping", "id": "p2"}, 0.05)
    stream.push({"type": "pong", "id": "p2"})
    stream.push({"type": "pong", "id": "p3"})  # marks that everything before it was read
    assert await until(lambda: channel.violations == 3, 5)
    await channel.close()


async def test_a_box_calling_unknown_handlers_is_cut_off() -> None:
    async def caller(peer: MemoryAgent) -> None:
        await peer.say_ready()
        async for message in peer:
            if message["type"] == "execute":
                for i in range(MAX_VIOLATIONS):
                    await peer.send({"type": "call", "id": f"k{i}", "name": "launch", "payload": None})
                await asyncio.Event().wait()

    async with open_sandbox(SandboxSpec(), backend=MemoryBackend.factory(caller)) as box:
        result = await asyncio.wait_for(box.execute("x"), 30)
        assert result.status == "sandbox_lost" and "malformed messages" in result.error.value


def _costly_line(values: int) -> dict[str, Any]:
    return {"type": "call", "id": "c", "name": "sink", "payload": list(range(10**6, 10**6 + values))}


def _decode_cost(message: dict[str, Any]) -> float:
    """The CPU time one decode of ``message``'s line takes here."""
    line = protocol.encode(message)
    started = time.thread_time()
    for _ in range(5):
        protocol.decode(line, protocol.TO_CONTROLLER)
    return (time.thread_time() - started) / 5


async def _paced(lines: int, demoted: Any = lambda: False) -> tuple[float, float]:
    """(seconds a box took to get ``lines`` costly guest calls served at a decode share of 0.2, the
    CPU time their decoding alone costs)."""
    served = 0

    async def sink(payload: Any) -> int:
        nonlocal served
        served += 1
        return len(payload)

    message = _costly_line(protocol.MAX_CALL_VALUES)
    cost = _decode_cost(message) * lines

    stream = ScriptedStream()
    channel = Channel(stream, handlers={"sink": sink}, decode_share=0.2, decode_burst_s=0.01, box_id="t",
                      demoted=demoted)
    channel.start()
    begun = time.monotonic()
    for i in range(lines):
        stream.push(dict(message, id=f"c{i}"))
    await stream.wait_sent(lambda m: m.get("to") == f"c{lines - 1}", timeout=120)
    took = time.monotonic() - begun
    assert served == lines
    await channel.close()
    return took, cost


async def test_decoding_is_paced_to_the_boxs_share() -> None:
    """A box that sends costly lines back to back gets at most its share of the loop: the decoding
    of 40 lines at the value cap is spread over several times its own CPU time."""
    took, cost = await _paced(40)
    # At a share of 0.2 the 40 decodes take five times their cost; unpaced, about their cost.
    assert took > 2.5 * cost, (took, cost)


async def test_a_demoted_box_is_slowed_while_it_presses() -> None:
    """A box the CPU governor demoted gets a fifth of its share, and keeps that while it goes on
    running out of it, even once the governor restores it (held back, it looks calm)."""
    asked = 0

    def demoted_at_first() -> bool:
        nonlocal asked
        asked += 1
        return asked <= 3  # restored after its first lines

    took, cost = await _paced(24, demoted_at_first)
    # At a fifth of 0.2 the 24 decodes take 25 times their cost; restored after three, about 7.5 times.
    assert took > 15 * cost, (took, cost)


async def test_a_box_whose_decoding_outruns_a_small_share_is_reported_as_pressing_early() -> None:
    """Lines at a tenth of a core (over the 5 % share, but a second from spending the burst) make
    the channel report the box to the CPU governor within a fraction of a second; lines at half a
    percent of a core, as a box that mostly waits sends, never do."""
    message = _costly_line(protocol.MAX_CALL_VALUES)
    cost = _decode_cost(message)

    async def sink(payload: Any) -> int:
        return len(payload)

    async def first_press(share: float, seconds: float) -> float | None:
        pressed: list[float] = []
        stream = ScriptedStream()
        channel = Channel(stream, handlers={"sink": sink}, box_id="t", pressing=lambda: pressed.append(time.monotonic()))
        channel.start()
        begun, i = time.monotonic(), 0
        while time.monotonic() - begun < seconds and not pressed:
            stream.push(dict(message, id=f"c{i}"))
            i += 1
            await asyncio.sleep(cost / share)
        await channel.close()
        return pressed[0] - begun if pressed else None

    assert await first_press(0.005, 2.0) is None
    took = await first_press(0.1, 3.0)
    assert took is not None and took < 0.7, took


async def test_a_malformed_answer_ends_the_wait_for_it() -> None:
    async def bad_result(peer: MemoryAgent) -> None:
        await peer.say_ready()
        async for message in peer:
            if message["type"] == "execute":
                await peer.send({"type": "result", "id": message["id"], "status": "ok", "duration": 10**4200 // 10**4000})

    async with open_sandbox(SandboxSpec(), backend=MemoryBackend.factory(bad_result)) as box:
        result = await asyncio.wait_for(box.execute("x", timeout=600), 10)
        assert result.status == "error" and result.error.name == "SandboxProtocolError"
        assert "duration" in result.error.value
