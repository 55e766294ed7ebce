"""The channel against a scripted, hostile peer (a mock transport): nothing it sends may crash the
controller or leave a waiter hanging."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from sandboxes import SandboxSpec
from sandboxes.backends.base import Backend, ByteStream
from sandboxes.channel import MAX_VIOLATIONS, Channel
from sandboxes.errors import SandboxLost, SandboxStartError
from sandboxes.guest import protocol


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
    stream.push(b'{"type": "result", "id": "nobody", "status": "ok"}\n')  # unknown id: ignored
    stream.push(b'{"type": "result", "id": "r1", "status": "ok", "evil": "__import__(\'os\')"}\n')
    stream.push({"type": "ready", "protocol": 1, "versions": {}})
    assert (await channel.ready(5))["protocol"] == 1
    waiting = asyncio.ensure_future(channel.request({"type": "ping", "id": "p1"}, 5))
    await stream.wait_sent(lambda m: m.get("id") == "p1")
    stream.push({"type": "pong", "id": "p1"})
    assert (await waiting)["type"] == "pong"
    assert channel.violations == 4
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
    await asyncio.sleep(0.05)
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
    await asyncio.sleep(0.1)
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


class SilentBackend(Backend):
    """A box whose agent connects but never says ready, or says the wrong version."""

    name = "silent"
    version: str | None = None

    def __init__(self, spec: SandboxSpec, box_id: str) -> None:
        super().__init__(spec, box_id)
        self.stream = ScriptedStream()
        self.destroyed = False

    async def start(self) -> ByteStream:
        if self.version is not None:
            self.stream.push({"type": "ready", "protocol": 1, "versions": {"guest": self.version}})
        return self.stream

    async def destroy(self) -> None:
        self.destroyed = True


async def test_silent_agent_times_out_and_is_destroyed(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[SilentBackend] = []

    def factory(name: str):
        def build(spec: SandboxSpec, box_id: str) -> SilentBackend:
            made.append(SilentBackend(spec, box_id))
            return made[-1]
        return build

    from sandboxes import sandbox
    monkeypatch.setattr(sandbox, "backend_class", factory)
    with pytest.raises(SandboxStartError, match="did not become ready within 0.5 s"):
        await sandbox.Sandbox.start(SandboxSpec(startup_timeout_s=0.5))
    assert made[-1].destroyed

    SilentBackend.version = "0000"
    try:
        with pytest.raises(SandboxStartError, match="rlm sandbox build-image"):
            await sandbox.Sandbox.start(SandboxSpec(startup_timeout_s=5))
        assert made[-1].destroyed
    finally:
        SilentBackend.version = None
