"""TextStream: protocol lines over text chunks cut anywhere, and bounded stdin writes."""

from __future__ import annotations

import asyncio
import random

import pytest

from sandboxes.guest import protocol
from sandboxes.guest.protocol import LineBuffer
from sandboxes.backends.cloud.textstream import OutputTail, TextStream


async def test_lines_cut_anywhere_reassemble_exactly() -> None:
    rng = random.Random(7)
    messages = [{"type": "call", "id": f"k{i}", "name": "echo", "payload": {"s": "é€😀\n\u2028" * (i % 50), "i": i}}
                for i in range(500)]
    wire = b"".join(protocol.encode(m) for m in messages)
    assert wire.isascii()  # what makes cutting a text stream anywhere harmless
    text = wire.decode("ascii")

    async def nothing(piece: bytes) -> None:
        return None

    stream = TextStream(nothing)

    async def feeder() -> None:
        pos = 0
        while pos < len(text):
            size = rng.choice([1, 2, 3, 17, 4096, 70000])
            await stream.feed(text[pos : pos + size])
            pos += size
        await stream.feed_eof()

    task = asyncio.create_task(feeder())
    buffer = LineBuffer()
    got = []
    while data := await stream.read():
        got += [protocol.decode(line) for line in buffer.feed(data)]
    await task
    assert got == messages


async def test_writes_are_split_and_never_interleave() -> None:
    sent: list[bytes] = []

    async def send(piece: bytes) -> None:
        sent.append(piece)
        await asyncio.sleep(0)  # let the other writer try to get in between

    stream = TextStream(send, max_write=1000)
    a = b"A" * 4500 + b"\n"
    b = b"B" * 3000 + b"\n"
    await asyncio.gather(stream.write(a), stream.write(b))
    assert await stream.flush(5)
    assert all(len(p) <= 1000 for p in sent)
    joined = b"".join(sent)
    assert joined in (a + b, b + a)
    await stream.close()


async def test_small_messages_are_coalesced_into_few_sends() -> None:
    """Each send is a provider round trip: a burst of replies must not cost one round trip each."""
    sent: list[bytes] = []

    async def slow_send(piece: bytes) -> None:
        sent.append(piece)
        await asyncio.sleep(0.01)

    stream = TextStream(slow_send, max_write=64 * 1024)
    messages = [protocol.encode({"type": "reply", "to": f"k{i}", "ok": True, "value": i}) for i in range(1000)]
    for message in messages:
        await stream.write(message)
    assert await stream.flush(10)
    assert b"".join(sent) == b"".join(messages)
    assert len(sent) <= 5, len(sent)
    assert all(piece.endswith(b"\n") for piece in sent)  # whole messages per send when they fit
    await stream.close()


async def test_a_failed_send_fails_later_writes() -> None:
    async def broken(piece: bytes) -> None:
        raise RuntimeError("sandbox terminated")

    stream = TextStream(broken)
    await stream.write(b"first\n")
    assert not await stream.flush(1)
    with pytest.raises(ConnectionError, match="sandbox terminated"):
        await stream.write(b"second\n")
    await stream.close()


async def test_close_flushes_what_was_written() -> None:
    sent: list[bytes] = []

    async def send(piece: bytes) -> None:
        await asyncio.sleep(0.05)
        sent.append(piece)

    stream = TextStream(send)
    await stream.write(b'{"type":"shutdown"}\n')
    await stream.close()
    assert sent == [b'{"type":"shutdown"}\n']


async def test_feed_waits_when_the_reader_falls_behind() -> None:
    async def nothing(piece: bytes) -> None:
        return None

    stream = TextStream(nothing, max_buffered=10)
    await stream.feed("x" * 10)
    blocked = asyncio.create_task(stream.feed("y"))
    await asyncio.sleep(0.05)
    assert not blocked.done()  # backpressure reaches the provider's reader
    assert await stream.read() == b"x" * 10
    await asyncio.wait_for(blocked, 1)
    assert await stream.read() == b"y"
    await stream.close()
    assert await stream.read() == b""


async def test_keepalive_only_between_lines() -> None:
    sent: list[bytes] = []
    gate = asyncio.Event()

    keepalives = asyncio.Event()

    async def send(piece: bytes) -> None:
        sent.append(piece)
        if piece == b"\n" and sent.count(b"\n") >= 2:
            keepalives.set()
        if piece.startswith(b"{"):
            await gate.wait()

    stream = TextStream(send, keepalive=0.05)
    await asyncio.wait_for(keepalives.wait(), 30)
    assert set(sent) == {b"\n"}  # idle: newlines go out
    sent.clear()
    await stream.write(b'{"a":1}\n')
    await asyncio.sleep(0.2)  # four keepalive periods with the send stuck mid-message: no newline may slip in
    assert sent == [b'{"a":1}\n']
    gate.set()
    assert await stream.flush(1)
    await stream.close()


async def test_write_after_close_is_a_connection_error() -> None:
    async def nothing(piece: bytes) -> None:
        return None

    stream = TextStream(nothing)
    await stream.close()
    with pytest.raises(ConnectionError):
        await stream.write(b"x\n")


def test_output_tail_keeps_the_end() -> None:
    tail = OutputTail(limit=100)
    for i in range(1000):
        tail.add(f"line {i}\n")
    assert tail.text().endswith("line 999\n") and len(tail.text()) <= 100
    assert tail.last_lines(2) == "line 998\nline 999"
