"""The channel against a scripted, hostile peer (a mock transport): nothing it sends may crash the
controller or leave a waiter hanging."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from sandboxes import Sandbox, SandboxSpec, open_sandbox
from sandboxes.backends.memory import MemoryAgent, MemoryBackend
from sandboxes.channel import MAX_VIOLATIONS, Channel
from sandboxes.errors import SandboxLost, SandboxStartError
from sandboxes.guest import protocol
from sandboxes.results import Diagnosis
from sandboxes.transport import ByteStream


class ScriptedStream(ByteStream):
    def __init__(self) -> None:
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.sent_event = asyncio.Event()
        self.closed = False

    def push(self, data: bytes | dict[str, Any]) -> None:
        self.incoming.put_nowait(protocol.encode(data) if isinstance(data, dict) else data)

    async def read(self) -> bytes:
        return await self.incoming.get()

    async def write(self, data: bytes) -> None:
        for line in data.splitlines():
            self.sent.append(json.loads(line))
        self.sent_event.set()

    async def close(self) -> None:
        self.closed = True

    async def wait_sent(self, predicate, timeout: float = 5.0) -> dict[str, Any]:
        async def find() -> dict[str, Any]:
            while True:
                for msg in self.sent:
                    if predicate(msg):
                        return msg
                self.sent_event.clear()
                await self.sent_event.wait()
        return await asyncio.wait_for(find(), timeout)


async def test_garbage_is_rejected_and_channel_keeps_working() -> None:
    stream = ScriptedStream()
    channel = Channel(stream, box_id="t")
    channel.start()
    stream.push(b"x" * (protocol.MAX_LINE_BYTES + 10) + b"\n")       # oversized
    stream.push(b"\xff\xfe not json\n")                                # not JSON
    stream.push(b'{"type": "execute", "id": "1", "code": "", "timeout": 1}\n')  # wrong direction
    stream.push(b'{"type": "result", "id": "nobody", "status": "ok"}\n')  # an answer to no request
    stream.push(b'{"type": "result", "id": "r1", "status": "ok", "evil": "__import__(\'os\')"}\n')
    stream.push({"type": "ready", "protocol": 1, "versions": {}})
    assert (await channel.ready(5))["protocol"] == 1
    waiting = asyncio.ensure_future(channel.request({"type": "ping", "id": "p1"}, 5))
    await stream.wait_sent(lambda m: m.get("id") == "p1")
    stream.push({"type": "pong", "id": "p1"})
    assert (await waiting)["type"] == "pong"
    assert channel.violations == 5
    assert channel.lost is None
    await channel.close()


async def test_persistent_garbage_cuts_the_box_off() -> None:
    stream = ScriptedStream()
    channel = Channel(stream, box_id="t")
    channel.start()
    waiting = asyncio.ensure_future(channel.request({"type": "ping", "id": "p1"}, 30))
    for _ in range(MAX_VIOLATIONS):
        stream.push(b"{}\n")
    with pytest.raises(SandboxLost, match="malformed"):
        await asyncio.wait_for(waiting, 5)
    await channel.close()


async def test_end_of_stream_wakes_every_waiter() -> None:
    stream = ScriptedStream()
    channel = Channel(stream, box_id="t")
    channel.start()
    waiters = [asyncio.ensure_future(channel.request({"type": "ping", "id": f"p{i}"}, 30)) for i in range(5)]
    await stream.wait_sent(lambda m: m.get("id") == "p4")  # every request is out and waiting
    stream.push(b"")
    for w in waiters:
        with pytest.raises(SandboxLost, match="closed"):
            await asyncio.wait_for(w, 5)
    with pytest.raises(SandboxLost):
        await channel.send({"type": "interrupt"})
    await channel.close()


async def test_guest_call_flood_is_bounded() -> None:
    release = asyncio.Event()

    async def slow(payload: Any) -> Any:
        await release.wait()
        return payload

    stream = ScriptedStream()
    channel = Channel(stream, handlers={"slow": slow}, max_concurrent_calls=4, max_pending_calls=10, box_id="t")
    channel.start()
    for i in range(25):
        stream.push({"type": "call", "id": f"c{i}", "name": "slow", "payload": i})
    refused = await stream.wait_sent(lambda m: m.get("ok") is False)
    assert "too many guest calls" in refused["error"]
    # The 25th call is the last one read: once it is refused, every refusal is out.
    await stream.wait_sent(lambda m: m.get("to") == "c24")
    assert sum(1 for m in stream.sent if m.get("ok") is False) == 15
    release.set()
    await stream.wait_sent(lambda m: sum(1 for x in stream.sent if x.get("ok")) == 10)
    assert sorted(m["value"] for m in stream.sent if m.get("ok")) == list(range(10))
    await channel.close()


async def test_bad_handler_results_become_errors() -> None:
    async def unjsonable(payload: Any) -> Any:
        return {1, 2}

    async def huge(payload: Any) -> Any:
        return "x" * protocol.MAX_LINE_BYTES

    stream = ScriptedStream()
    channel = Channel(stream, handlers={"set": unjsonable, "huge": huge}, box_id="t")
    channel.start()
    stream.push({"type": "call", "id": "a", "name": "set"})
    stream.push({"type": "call", "id": "b", "name": "huge"})
    a = await stream.wait_sent(lambda m: m.get("to") == "a")
    b = await stream.wait_sent(lambda m: m.get("to") == "b")
    assert not a["ok"] and "not JSON" in a["error"]
    assert not b["ok"] and "too large" in b["error"]
    await channel.close()


async def test_silent_agent_times_out_and_is_destroyed() -> None:
    async def silent(peer: MemoryAgent) -> None:
        await asyncio.Event().wait()  # connected, never ready

    backend = MemoryBackend(SandboxSpec(startup_timeout_s=0.5), "silent", silent)
    with pytest.raises(SandboxStartError, match="memory sandbox did not become ready within 0.5 s"):
        await Sandbox.start(backend=backend)
    assert backend.destroyed and not backend.running


async def test_an_agent_of_another_version_is_refused_and_destroyed() -> None:
    async def stale(peer: MemoryAgent) -> None:
        await peer.say_ready(guest="0000")
        await asyncio.Event().wait()

    made: list[MemoryBackend] = []

    def factory(spec: SandboxSpec, box_id: str) -> MemoryBackend:
        made.append(MemoryBackend(spec, box_id, stale))
        return made[-1]

    with pytest.raises(SandboxStartError, match="rlm sandbox build-image"):
        await Sandbox.start(SandboxSpec(startup_timeout_s=5), backend=factory)
    assert len(made) == 1 and made[0].destroyed and not made[0].running


async def test_a_box_dying_mid_cell_is_lost_with_the_backends_diagnosis() -> None:
    async def dies_in_a_cell(peer: MemoryAgent) -> None:
        await peer.say_ready()
        async for message in peer:
            if message["type"] == "execute":
                return  # the agent goes away without an answer

    factory = MemoryBackend.factory(dies_in_a_cell, diagnosis=Diagnosis("oom", "the box ran out of memory (limit 1 MB)"))
    async with open_sandbox(SandboxSpec(), backend=factory) as box:
        result = await asyncio.wait_for(box.execute("x"), 30)
        assert result.status == "oom"
        assert "out of memory" in result.error.value
        assert (await box.execute("y")).status == "oom"  # the box stays lost
        assert box.backend.destroyed


async def test_the_status_of_a_lost_box_is_the_diagnosis_kind_never_its_words() -> None:
    async def dies_in_a_cell(peer: MemoryAgent) -> None:
        await peer.say_ready()
        async for message in peer:
            if message["type"] == "execute":
                return

    # The agent was killed, and its last words (which kernel code can write) claim an OOM.
    words = Diagnosis("killed", "the agent was killed by signal 9; its last words: out of memory (OOM)")
    async with open_sandbox(SandboxSpec(), backend=MemoryBackend.factory(dies_in_a_cell, diagnosis=words)) as box:
        result = await asyncio.wait_for(box.execute("x"), 30)
        assert result.status == "sandbox_lost", result
        assert "out of memory" in result.error.value  # kept for a human to read


async def test_a_backend_instance_and_a_different_spec_are_refused() -> None:
    backend = MemoryBackend(SandboxSpec(), "b")
    with pytest.raises(ValueError, match="carries its own spec"):
        await Sandbox.start(SandboxSpec(memory_mb=2048), backend=backend)
