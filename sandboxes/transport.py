"""Byte streams to an agent: the ``ByteStream`` every backend hands the channel, the asyncio one over
a socket, and a listening Unix socket in a box's own folder (the local and Docker backends' stream).

The controller listens and the agent connects, so start-up needs no polling for a socket to appear:
the agent's connection arrives as soon as it is up, and ``accept`` bounds the wait.
"""

from __future__ import annotations

import abc
import asyncio
import os
from pathlib import Path

from sandboxes.cancellation import cancelling
from sandboxes.guest.protocol import MAX_LINE_BYTES

class ByteStream(abc.ABC):
    """A duplex byte stream to one agent. ``read`` returns b"" at end of stream.

    ``write`` takes a whole message at once, so concurrent writes never interleave, and returns once
    the stream can take more; cancelling it never leaves part of a message sent.
    """

    @abc.abstractmethod
    async def read(self) -> bytes: ...

    @abc.abstractmethod
    async def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    def delivered(self) -> int | None:
        """Bytes the other end has taken so far, when the stream can tell (None otherwise): while it
        grows, a peer that sends nothing is still reading."""
        return None


class AsyncioStream(ByteStream):
    """A ByteStream over an asyncio (reader, writer) pair, e.g. a Unix socket connection."""

    READ_SIZE = 1 << 20

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._written = 0

    async def read(self) -> bytes:
        try:
            return await self._reader.read(self.READ_SIZE)
        except (ConnectionError, OSError):
            return b""

    async def write(self, data: bytes) -> None:
        self._writer.write(data)  # all of it, into the transport's buffer: no partial message
        self._written += len(data)
        await self._writer.drain()

    def delivered(self) -> int:
        return self._written - self._writer.transport.get_write_buffer_size()

    async def close(self) -> None:
        """Close at once. What is still buffered for a peer that stopped reading is dropped (a
        graceful close would wait for it forever), which also wakes a write waiting on ``drain``."""
        transport = self._writer.transport
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)
        except asyncio.CancelledError:
            if cancelling():
                raise
        except Exception:
            pass


# sun_path holds 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107


class UnixListener:
    """Accepts exactly one connection (the agent's); later ones are refused."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._server: asyncio.base_events.Server | None = None
        self._accepted: asyncio.Future[AsyncioStream] | None = None

    @classmethod
    async def open(cls, path: str | os.PathLike[str], mode: int = 0o666) -> "UnixListener":
        path = Path(path)
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise ValueError(f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes; use a shorter folder")
        listener = cls(path)
        loop = asyncio.get_running_loop()
        listener._accepted = loop.create_future()

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert listener._accepted is not None
            if listener._accepted.done():
                writer.close()
                return
            listener._accepted.set_result(AsyncioStream(reader, writer))

        listener._server = await asyncio.start_unix_server(on_connect, path=str(path), limit=MAX_LINE_BYTES)
        os.chmod(path, mode)
        return listener

    async def accept(self, timeout: float) -> AsyncioStream:
        """The agent's connection; raises TimeoutError when none arrives in ``timeout`` seconds."""
        assert self._accepted is not None
        return await asyncio.wait_for(asyncio.shield(self._accepted), timeout)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        try:
            self.path.unlink()
        except OSError:
            pass
