"""A ByteStream over a provider's process stdin/stdout, for SDKs that carry those as text.

Modal and E2B give no socket into a box; what they give is the stdin and stdout of a process in it,
as an API: stdin takes bytes in requests of bounded size, stdout arrives as text chunks cut wherever
the provider's buffering happens to cut them (mid-line, and possibly mid-message). The protocol
makes this safe: every line is pure ASCII (``protocol.encode`` escapes everything else), so a chunk
boundary can never split a character, and encoding the chunks back to bytes and concatenating them
gives exactly the bytes the agent wrote. Line reassembly is the channel's LineBuffer, as for any
other stream.

Also here: ``OutputTail``, the last few kilobytes of the agent's stderr, which is what a provider can
tell us when a box dies.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Awaitable, Callable

from sandboxes.cancellation import stop
from sandboxes.transport import ByteStream

Send = Callable[[bytes], Awaitable[None]]

# Largest single stdin request. Modal's stdin buffer refuses more than 2 MiB between drains; E2B
# sends each piece as one RPC. A protocol line (up to 8 MiB) is sent as several pieces in a row.
DEFAULT_MAX_WRITE = 1 << 20
# Written but not yet sent; past this ``write`` waits (backpressure on the channel).
DEFAULT_MAX_PENDING = 8 << 20
# Stdout read but not yet consumed by the channel; past this the feeder waits (backpressure).
DEFAULT_MAX_BUFFERED = 32 << 20
# On close, how long queued messages (the agent's ``shutdown``) get to go out.
CLOSE_FLUSH_S = 2.0


class TextStream(ByteStream):
    """Bytes out through ``send`` in bounded pieces; text in through ``feed``, out of ``read``.

    Outbound, ``write`` queues a message and returns (waiting only while much is queued), and one
    sender task sends the queue: whole messages, several at once when they fit in one piece, one
    piece at a time. Every piece is a request to the provider, a network round trip, so joining the
    replies to a thousand guest calls into a few pieces is what keeps a busy box fast. A message is
    never sent in part and pieces never interleave, whoever cancels what.

    Inbound, the stream is fed by whoever reads the provider's stdout (a pump task, or an SDK
    callback) and ended with ``feed_eof`` when that stdout ends.

    ``keepalive``: when set, a bare newline is sent after that many seconds with nothing sent. The
    agent skips blank lines; providers that reap boxes whose stdin has gone quiet (Modal's
    idle_timeout) then reap exactly the boxes whose controller is gone.
    """

    def __init__(self, send: Send, *, max_write: int = DEFAULT_MAX_WRITE,
                 max_pending: int = DEFAULT_MAX_PENDING, max_buffered: int = DEFAULT_MAX_BUFFERED,
                 keepalive: float | None = None) -> None:
        if max_write <= 0 or max_pending <= 0 or max_buffered <= 0:
            raise ValueError("max_write, max_pending and max_buffered must be positive")
        if keepalive is not None and keepalive <= 0:
            raise ValueError("keepalive must be positive")
        self._send = send
        self._max_write = max_write
        self._max_pending = max_pending
        self._max_buffered = max_buffered
        self._keepalive = keepalive
        # inbound
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._eof = False
        self._changed = asyncio.Condition()
        # outbound
        self._outbox: collections.deque[bytes] = collections.deque()
        self._pending = 0
        self._sending = False
        self._out_changed = asyncio.Condition()
        self._failure: str | None = None
        self._closed = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.sends = 0
        self._sender = asyncio.create_task(self._send_loop(), name="textstream-sender")

    # --- inbound: provider stdout -> channel --------------------------------------------------

    async def feed(self, text: str | bytes) -> None:
        """Take one stdout chunk, as the provider delivered it. Waits while the buffer is full."""
        if not text:
            return
        data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._closed or self._buffered < self._max_buffered)
            if self._closed or self._eof:
                return
            self._chunks.append(data)
            self._buffered += len(data)
            self.bytes_in += len(data)
            self._changed.notify_all()

    async def feed_eof(self) -> None:
        """The provider's stdout ended: ``read`` returns what is left, then b""."""
        async with self._changed:
            self._eof = True
            self._changed.notify_all()

    async def read(self) -> bytes:
        async with self._changed:
            await self._changed.wait_for(lambda: self._chunks or self._eof or self._closed)
            if not self._chunks:
                return b""
            data = b"".join(self._chunks)
            self._chunks.clear()
            self._buffered = 0
            self._changed.notify_all()
            return data

    # --- outbound: channel -> provider stdin --------------------------------------------------

    def delivered(self) -> int:
        return self.bytes_out

    async def write(self, data: bytes) -> None:
        async with self._out_changed:
            await self._out_changed.wait_for(
                lambda: self._closed or self._failure is not None or self._pending < self._max_pending)
            if self._failure is not None:
                raise ConnectionResetError(self._failure)
            if self._closed:
                raise ConnectionResetError("the stream to the agent is closed")
            if data:
                self._outbox.append(bytes(data))
                self._pending += len(data)
                self._out_changed.notify_all()

    def _take_batch(self) -> bytes:
        """Whole queued messages, as many as fit in one piece (at least one)."""
        parts = [self._outbox.popleft()]
        size = len(parts[0])
        while self._outbox and size + len(self._outbox[0]) <= self._max_write:
            size += len(self._outbox[0])
            parts.append(self._outbox.popleft())
        return b"".join(parts)

    async def _send_loop(self) -> None:
        while True:
            async with self._out_changed:
                try:
                    async with asyncio.timeout(self._keepalive):
                        await self._out_changed.wait_for(lambda: self._outbox or self._closed)
                except TimeoutError:
                    pass
                if self._closed and not self._outbox:
                    return
                batch = self._take_batch() if self._outbox else b"\n"  # nothing queued: keepalive
                self._sending = True
            try:
                view = memoryview(batch)
                for start in range(0, len(view), self._max_write):
                    await self._send(bytes(view[start : start + self._max_write]))
                    self.sends += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = str(exc) or exc.__class__.__name__
                async with self._out_changed:
                    self._failure = f"sending to the agent failed: {reason}"
                    self._outbox.clear()
                    self._pending = 0
                    self._sending = False
                    self._out_changed.notify_all()
                return
            async with self._out_changed:
                self.bytes_out += len(batch)
                if batch != b"\n":
                    self._pending -= len(batch)
                self._sending = False
                self._out_changed.notify_all()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything written has been sent (or sending failed). False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                async with self._out_changed:
                    await self._out_changed.wait_for(
                        lambda: self._failure is not None or (not self._outbox and not self._sending))
        except TimeoutError:
            return False
        return self._failure is None

    async def close(self) -> None:
        if not self._closed and self._failure is None:
            await self.flush(CLOSE_FLUSH_S)  # e.g. the agent's shutdown message
        self._closed = True
        await stop(self._sender)
        async with self._out_changed:
            self._outbox.clear()
            self._pending = 0
            self._out_changed.notify_all()
        async with self._changed:
            self._chunks.clear()
            self._buffered = 0
            self._changed.notify_all()


class OutputTail:
    """Keeps the last ``limit`` characters of a text stream (the agent's stderr)."""

    def __init__(self, limit: int = 16 * 1024) -> None:
        self.limit = limit
        self._parts: collections.deque[str] = collections.deque()
        self._size = 0

    def add(self, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if not text:
            return
        self._parts.append(text)
        self._size += len(text)
        while self._size - len(self._parts[0]) >= self.limit:
            self._size -= len(self._parts.popleft())

    def text(self) -> str:
        return "".join(self._parts)[-self.limit :]

    def last_lines(self, count: int = 20) -> str:
        """The tail's last lines, stripped: short enough to put in an error message."""
        lines = [line for line in self.text().splitlines() if line.strip()]
        return "\n".join(lines[-count:])
