"""What a backend is: a transport. It creates a box, starts the guest agent in it, hands back a
byte stream to that agent, and destroys the box. Everything else (protocol, timeouts, output caps,
guest calls) lives in ``sandboxes.guest`` and ``sandboxes.channel`` and is the same for all backends.
"""

from __future__ import annotations

import abc
import asyncio
import json
from typing import Any

from sandboxes.spec import SandboxSpec


class ByteStream(abc.ABC):
    """A duplex byte stream to one agent. ``read`` returns b"" at end of stream."""

    @abc.abstractmethod
    async def read(self) -> bytes: ...

    @abc.abstractmethod
    async def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...


class AsyncioStream(ByteStream):
    """A ByteStream over an asyncio (reader, writer) pair, e.g. a Unix socket connection."""

    READ_SIZE = 1 << 20

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self) -> bytes:
        try:
            return await self._reader.read(self.READ_SIZE)
        except (ConnectionError, OSError):
            return b""

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)
        except (Exception, asyncio.CancelledError):
            pass


class Backend(abc.ABC):
    """One box on one provider. Instances are single-use: start once, destroy once."""

    name: str = "?"

    def __init__(self, spec: SandboxSpec, box_id: str) -> None:
        self.spec = spec
        self.box_id = box_id

    @abc.abstractmethod
    async def start(self) -> ByteStream:
        """Create the box, start the agent in it and return a stream connected to the agent.

        The caller bounds this with ``spec.startup_timeout_s`` and calls ``destroy`` on any failure,
        so a backend may leave partial state for ``destroy`` to clean. Raise SandboxUnavailable with
        a message that says what to do when the provider itself is missing or misconfigured.
        """

    @abc.abstractmethod
    async def destroy(self) -> None:
        """Destroy the box and everything in it. Idempotent; never raises; always finishes."""

    def emergency_destroy(self) -> None:
        """Synchronous best-effort destroy, for interpreter exit and SIGTERM (no event loop there)."""

    async def diagnose(self) -> str | None:
        """After the stream ended unexpectedly: why the box died, if the provider can say.

        Return e.g. "the box ran out of memory (limit 1024 MB)" or None when unknown. A text saying
        "out of memory" or "OOM" makes the lost cell's status ``oom``.
        """
        return None

    def describe(self) -> dict[str, Any]:
        """Identifiers worth logging (container id, sandbox id...)."""
        return {"backend": self.name, "box_id": self.box_id}


def agent_config(spec: SandboxSpec, workdir: str, owns_box: bool = False) -> dict[str, Any]:
    """The settings the agent needs, passed to it as one JSON argument."""
    return {
        "workdir": workdir,
        "output_limit": spec.output_limit_bytes,
        "kill_grace": spec.kill_grace_s,
        "memory_mb": spec.memory_mb,
        "owns_box": owns_box,
    }


def agent_argv(python: str, spec: SandboxSpec, workdir: str, connect: str | None,
               owns_box: bool = False) -> list[str]:
    """The agent's command line. ``connect`` is a Unix socket path, or None to speak on stdin/stdout.

    ``owns_box``: the box holds nothing but the agent and what it starts (a container), so the agent
    may kill every other process in it when it restarts the kernel. Never for the local backend.
    """
    argv = [python, "-m", "sandboxes.guest", "--config",
            json.dumps(agent_config(spec, workdir, owns_box))]
    if connect is None:
        argv.append("--stdio")
    else:
        argv += ["--connect", connect]
    return argv
