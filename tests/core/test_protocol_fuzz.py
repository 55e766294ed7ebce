"""Fuzzing the protocol: thousands of schema-valid and schema-breaking messages, from a seeded
mutation loop (deterministic: a failure names its seed and replays), fed to ``protocol.decode``, to a
channel, and to ``execute`` through the in-memory backend.

What must hold: decoding raises nothing but ProtocolError and what it accepts is sane (numbers finite
and in range, ``error`` and ``display`` of their shape); ``execute`` returns an ExecResult or raises a
SandboxError, nothing else; and afterwards the channel either still works or was cut off as a violator.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import random
from typing import Any

from sandboxes import SandboxSpec, open_sandbox
from sandboxes.backends.memory import MemoryAgent, MemoryBackend
from sandboxes.channel import MAX_VIOLATIONS
from sandboxes.errors import SandboxError
from sandboxes.guest import protocol
from sandboxes.guest.protocol import ProtocolError
from sandboxes.results import ExecResult

SEED = 20261122
MESSAGES = 4000

VALID: list[dict[str, Any]] = [
    {"type": "result", "id": "x1", "status": "ok", "stdout": "hi\n", "stderr": "", "error": None,
     "display": [{"text/plain": "1"}], "duration": 0.25, "notice": None},
    {"type": "result", "id": "x1", "status": "error", "error": {"name": "ValueError", "value": "bad",
                                                                "traceback": "Traceback..."}},
    {"type": "result", "id": "x1", "status": "timeout", "display": [{"application/json": {"a": [1, 2]}}]},
    {"type": "call", "id": "k1", "name": "echo", "payload": {"a": [1, "two", None, True, 3.5]}},
    {"type": "pong", "id": "p1"},
    {"type": "ready", "protocol": 1, "versions": {"guest": "abc", "python": "3.11"}},
]

ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**53 + 1, 10**4200 // 10**4000, -10**30, 1e308, -1e308, 5e-324,
    0.0, -0.0, "", "x" * 70, "é✓\u2028", "\x00", "x" * 70_000, [], {}, [None], {"": None},
    {"name": 1}, {"name": "n", "value": "v", "traceback": "t", "extra": "?"}, [{"text/plain": 5}],
    [{"image/gif": "R0lG"}], [{}], [[]], ["text/plain"], {"text/plain": "x"}, [1] * 3,
]


def mutate(rng: random.Random, message: dict[str, Any]) -> dict[str, Any] | bytes:
    """One change to a valid message: a field dropped, added or replaced, a type swapped, a nested
    part broken; or bytes that are not a message at all."""
    message = copy.deepcopy(message)
    choice = rng.randrange(9)
    fields = [f for f in message if f != "type"]
    if choice == 0 and fields:
        del message[rng.choice(fields)]
    elif choice == 1:
        message[rng.choice(["evil", "__class__", "id", "to"])] = rng.choice(ODD_VALUES)
    elif choice == 2 and fields:
        message[rng.choice(fields)] = rng.choice(ODD_VALUES)
    elif choice == 3:
        message["type"] = rng.choice(["result", "call", "pong", "ready", "execute", "reply", "nope", 7])
    elif choice == 4 and isinstance(message.get("error"), dict):
        message["error"][rng.choice(["name", "value", "traceback", "other"])] = rng.choice(ODD_VALUES)
    elif choice == 5 and isinstance(message.get("display"), list):
        message["display"].append(rng.choice(ODD_VALUES))
    elif choice == 6:
        text = json.dumps(message)
        cut = rng.randrange(len(text))
        return text[:cut].encode() + rng.choice([b"", b"}", b"\xff", b"NaN", b"]"])
    elif choice == 7:
        return rng.choice([b"{}", b"[]", b"null", b'{"type": "result", "id": "x1", "status": "ok", "duration": NaN}',
                           b'{"type": "result", "id": "x1", "status": "ok", "duration": 1e999}',
                           b'{"type":"result","id":"x1","status":"ok","duration":' + b"9" * 4000 + b"}",
                           b"[" * 5000 + b"]" * 5000, b'"' + b"\\u0000" * 100 + b'"'])
    # choice 8 (and the cases above that did not apply): the valid message, unchanged
    return message


def encoded(rng: random.Random, message: dict[str, Any] | bytes) -> bytes:
    if isinstance(message, bytes):
        return message
    try:
        return protocol.encode(message)[:-1]
    except (ProtocolError, ValueError, TypeError):
        return json.dumps(message, default=str).encode()


def assert_sane(message: dict[str, Any]) -> None:
    """What a message that decoding accepted can be trusted to be."""
    for field in ("duration", "timeout", "protocol", "offset"):
        if field in message:
            value = message[field]
            assert isinstance(value, (int, float)) and not isinstance(value, bool)
            assert math.isfinite(float(value))
    if message["type"] == "result":
        error = message.get("error")
        assert error is None or all(isinstance(v, str) for v in error.values())
        for item in message.get("display", []):
            assert isinstance(item, dict) and all(k in protocol.DISPLAY_MIMES for k in item)


def test_decode_raises_only_protocol_errors_and_accepts_only_sane_messages() -> None:
    rng = random.Random(SEED)
    accepted = refused = 0
    for _ in range(MESSAGES):
        line = encoded(rng, mutate(rng, rng.choice(VALID)))
        try:
            message = protocol.decode(line, protocol.TO_CONTROLLER)
        except ProtocolError:
            refused += 1
            continue
        accepted += 1
        assert_sane(message)
    # Both sides of the line are exercised, not just one.
    assert accepted > MESSAGES // 10 and refused > MESSAGES // 4, (accepted, refused)


async def test_execute_under_fuzzed_answers_returns_results_or_sandbox_errors() -> None:
    """Each cell is answered with mutated messages (its result among them, mutated or not), then a
    valid result. Boxes cut off as violators are replaced; every outcome is one of the documented."""
    rng = random.Random(SEED + 1)
    sent = 0

    async def fuzzing_agent(peer: MemoryAgent) -> None:
        nonlocal sent
        await peer.say_ready()
        async for message in peer:
            if message["type"] == "ping":
                await peer.send({"type": "pong", "id": message["id"]})
            elif message["type"] == "execute":
                for _ in range(rng.randrange(1, 12)):
                    mutated = mutate(rng, rng.choice(VALID))
                    if isinstance(mutated, dict) and mutated.get("id") in ("x1", "p1"):
                        mutated["id"] = rng.choice([message["id"], mutated["id"]])
                    await peer.send(encoded(rng, mutated) + b"\n")
                    sent += 1
                await peer.send({"type": "result", "id": message["id"], "status": "ok", "stdout": "end"})

    async def echo(payload: Any) -> Any:
        return payload

    outcomes: dict[str, int] = {}
    boxes = cut_off = 0
    while sent < MESSAGES:
        boxes += 1
        async with open_sandbox(SandboxSpec(), handlers={"echo": echo},
                                backend=MemoryBackend.factory(fuzzing_agent)) as box:
            for _ in range(40):
                try:
                    result = await asyncio.wait_for(box.execute("cell", timeout=30), 60)
                except SandboxError as exc:
                    outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
                    continue
                assert isinstance(result, ExecResult)
                assert math.isfinite(result.duration_s)
                outcomes[result.status] = outcomes.get(result.status, 0) + 1
                if result.status == "sandbox_lost":
                    break
            if box.channel.lost is not None:
                assert box.channel.violations >= MAX_VIOLATIONS or "closed" in box.channel.lost, box.channel.lost
                cut_off += 1
            else:  # still usable: a plain cell still gets its plain answer
                assert (await box.execute("again")).stdout == "end"
    assert outcomes.get("ok", 0) > 0 and outcomes.get("sandbox_lost", 0) > 0, outcomes
    assert cut_off >= 1, (boxes, outcomes)


async def test_a_channel_fed_fuzz_answers_a_clean_request_or_is_cut_off() -> None:
    """Raw mutated lines straight at a channel, between requests: each request gets its answer, a
    ProtocolError for a malformed answer to it, or SandboxLost once the box is cut off."""
    from sandboxes.channel import Channel
    from tests.core.test_channel import ScriptedStream

    rng = random.Random(SEED + 2)
    channels = 0
    fed = 0
    while fed < MESSAGES:
        channels += 1
        stream = ScriptedStream()
        channel = Channel(stream, handlers={"echo": lambda p: p}, box_id="fuzz")
        channel.start()
        stream.push({"type": "ready", "protocol": 1, "versions": {}})
        await channel.ready(5)
        while fed < MESSAGES and channel.lost is None:
            for _ in range(20):
                stream.push(encoded(rng, mutate(rng, rng.choice(VALID))) + b"\n")
                fed += 1
            ping = channel.new_id("p")
            waiting = asyncio.ensure_future(channel.request({"type": "ping", "id": ping}, 10))
            out = asyncio.ensure_future(stream.wait_sent(lambda m, ping=ping: m.get("id") == ping))
            await asyncio.wait([waiting, out], return_when=asyncio.FIRST_COMPLETED)
            if out.done():
                stream.push({"type": "pong", "id": ping})
            else:
                out.cancel()
            try:
                assert (await waiting)["id"] == ping
            except (ProtocolError, SandboxError):  # a malformed pong of its id, or cut off
                pass
        assert channel.lost is None or channel.violations >= MAX_VIOLATIONS
        await channel.close()
    assert channels >= 2  # the fuzz cut at least one channel off, and a fresh one carried on
