"""A listening Unix socket in a box's own folder: the byte stream for the local and Docker backends.

The controller listens and the agent connects, so start-up needs no polling for a socket to appear:
the agent's connection arrives as soon as it is up, and ``accept`` bounds the wait.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from sandboxes.backends.base import AsyncioStream
from sandboxes.guest.protocol import MAX_LINE_BYTES

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
