"""The agent's end of the controller stream: a Unix socket the controller listens on, or the agent's
own stdin/stdout (for providers that carry a process's standard streams), as protocol lines."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from sandboxes.guest import protocol


class Link:
    """The agent's end of the controller stream: a reader and a writer of protocol lines."""

    def __init__(self, reader: asyncio.StreamReader, writer: Any) -> None:
        self.reader = reader
        self.writer = writer
        self.lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        data = protocol.encode(message)
        async with self.lock:
            self.writer.write(data)
            await self.writer.drain()


async def open_link(connect: str | None) -> Link:
    """Connect to the controller: the Unix socket ``connect``, or stdin/stdout when it is None."""
    if connect is None:
        loop = asyncio.get_running_loop()
        # The protocol owns fd 0 and fd 1. Anything else printing (warnings, a library) goes to stderr.
        proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
        proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        reader = asyncio.StreamReader(limit=protocol.MAX_LINE_BYTES)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), proto_in)
        transport, proto = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, proto_out)
        writer = asyncio.StreamWriter(transport, proto, None, loop)
        return Link(reader, writer)
    reader, writer = await asyncio.open_unix_connection(connect, limit=protocol.MAX_LINE_BYTES)
    return Link(reader, writer)
