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
import contextlib
from typing import Awaitable, Callable

from sandboxes.backends.base import ByteStream

Send = Callable[[bytes], Awaitable[None]]

# Largest single stdin request. Modal's stdin buffer refuses more than 2 MiB between drains; E2B
# sends each piece as one RPC. A protocol line (up to 8 MiB) is sent as several pieces in a row.
DEFAULT_MAX_WRITE = 1 << 20
# Stdout read but not yet consumed by the channel; past this the feeder waits (backpressure).
DEFAULT_MAX_BUFFERED = 32 << 20


class TextStream(ByteStream):
    """Bytes out through ``send`` in bounded pieces; text in through ``feed``, out of ``read``.

    ``send`` is called with one piece at a time, never concurrently, so pieces of two messages never
    interleave. The inbound side is fed by whoever reads the provider's stdout (a pump task, or an
    SDK callback) and ended with ``feed_eof`` when that stdout ends.

    ``keepalive``: when set, a bare newline is sent after that many seconds without a write. The agent
    skips blank lines; providers that reap boxes whose stdin has gone quiet (Modal's idle_timeout)
    then reap exactly the boxes whose controller is gone.
    """

    def __init__(self, send: Send, *, max_write: int = DEFAULT_MAX_WRITE,
                 max_buffered: int = DEFAULT_MAX_BUFFERED, keepalive: float | None = None) -> None:
        if max_write <= 0 or max_buffered <= 0:
            raise ValueError("max_write and max_buffered must be positive")
        self._send = send
        self._max_write = max_write
        self._max_buffered = max_buffered
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._eof = False
        self._closed = False
        self._changed = asyncio.Condition()
        self._write_lock = asyncio.Lock()
        self._at_line_start = True
        self._last_write = asyncio.get_running_loop().time()
        self._keepalive_task: asyncio.Task[None] | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        if keepalive is not None:
            if keepalive <= 0:
                raise ValueError("keepalive must be positive")
            self._keepalive_task = asyncio.create_task(self._keepalive(keepalive))

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

    @property
    def at_eof(self) -> bool:
        return self._eof

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

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionResetError("the stream to the agent is closed")
        view = memoryview(data)
        async with self._write_lock:
            for start in range(0, len(view), self._max_write):
                piece = bytes(view[start : start + self._max_write])
                await self._send(piece)
                self.bytes_out += len(piece)
            if len(view):
                self._at_line_start = view[-1] == 0x0A
            self._last_write = asyncio.get_running_loop().time()

    async def _keepalive(self, every: float) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            quiet = loop.time() - self._last_write
            if quiet < every:
                await asyncio.sleep(every - quiet)
                continue
            async with self._write_lock:
                # Only between lines: a newline inside a message would cut it in two.
                if self._at_line_start and not self._closed:
                    try:
                        await self._send(b"\n")
                    except Exception:
                        return  # the box is gone; the reader side reports it
                self._last_write = loop.time()

    async def close(self) -> None:
        self._closed = True
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._keepalive_task
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
