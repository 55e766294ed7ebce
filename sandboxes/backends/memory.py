"""An in-memory backend: no box, no process; the agent's side of the stream is a script of the caller's.

For unit tests of the channel, the sandbox and the pool, and for anyone testing code built on
``open_sandbox``, the way httpx's ``MockTransport`` serves tests of an HTTP client:

    async def agent(peer: MemoryAgent) -> None:
        await peer.say_ready()
        async for message in peer:
            if message["type"] == "execute":
                await peer.send({"type": "result", "id": message["id"], "status": "ok", "stdout": "hi\\n"})

    async with open_sandbox(SandboxSpec(), backend=MemoryBackend.factory(agent)) as box:
        assert (await box.execute("anything")).stdout == "hi\\n"

The script sees the protocol exactly as an agent does (decoded, checked messages; it may also send
raw bytes, garbage included) and the box ends when the script returns or ``destroy`` runs.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, AsyncIterator, Awaitable, Callable

from sandboxes.backends.base import Backend, BackendFactory
from sandboxes.cancellation import stop
from sandboxes.guest import protocol
from sandboxes.guest.protocol import LineBuffer
from sandboxes.results import Diagnosis
from sandboxes.spec import SandboxSpec
from sandboxes.transport import ByteStream

AgentScript = Callable[["MemoryAgent"], Awaitable[None]]


class _Direction:
    """One direction of a pipe: chunks in order, and a writer that waits while ``capacity`` bytes are
    unread (as a socket's buffer fills when its reader stops), or never when capacity is None."""

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self.chunks: collections.deque[bytes] = collections.deque()
        self.unread = 0
        self.taken = 0
        self.writer_closed = False
        self.reader_gone = False
        self.changed = asyncio.Condition()

    def _room(self) -> bool:
        return self.capacity is None or self.unread < self.capacity

    async def put(self, data: bytes) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.writer_closed or self.reader_gone or self._room())
            if self.writer_closed or self.reader_gone:
                raise ConnectionResetError("the in-memory stream is closed")
            self.chunks.append(data)
            self.unread += len(data)
            self.changed.notify_all()

    async def get(self) -> bytes:
        """The next chunk; b"" once the writer closed and everything was read, or the reader left."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.chunks or self.writer_closed or self.reader_gone)
            if self.reader_gone or not self.chunks:
                return b""
            data = self.chunks.popleft()
            self.unread -= len(data)
            self.taken += len(data)
            self.changed.notify_all()
            return data

    async def close(self, *, reader: bool) -> None:
        async with self.changed:
            if reader:
                self.reader_gone = True
                self.chunks.clear()
                self.unread = 0
            else:
                self.writer_closed = True
            self.changed.notify_all()


class MemoryStream(ByteStream):
    """One end of an in-memory duplex pipe (see ``memory_pipe``)."""

    def __init__(self, incoming: _Direction, outgoing: _Direction) -> None:
        self._incoming = incoming
        self._outgoing = outgoing
        self.closed = False

    async def read(self) -> bytes:
        if self.closed:
            return b""
        return await self._incoming.get()

    def delivered(self) -> int:
        return self._outgoing.taken

    async def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("the in-memory stream is closed")
        if data:
            await self._outgoing.put(bytes(data))

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self._outgoing.close(reader=False)  # the other end reads end of stream
            await self._incoming.close(reader=True)  # wakes a read of our own, and the other end's writes


def memory_pipe(agent_buffer: int | None = None) -> tuple[MemoryStream, MemoryStream]:
    """Two connected streams, the controller's and the agent's: what one writes, the other reads.
    ``agent_buffer``: bytes the agent may leave unread before the controller's writes wait."""
    to_agent = _Direction(agent_buffer)
    to_controller = _Direction(None)
    return MemoryStream(to_controller, to_agent), MemoryStream(to_agent, to_controller)


class MemoryAgent:
    """The agent's end of a memory box, for a script to drive."""

    def __init__(self, stream: MemoryStream) -> None:
        self.stream = stream
        self._buffer = LineBuffer()
        self._pending: list[bytes | None] = []

    async def receive(self) -> dict[str, Any] | None:
        """The controller's next message, checked as the agent checks it; None at end of stream."""
        while not self._pending:
            data = await self.stream.read()
            if not data:
                return None
            self._pending.extend(self._buffer.feed(data))
        line = self._pending.pop(0)
        if line is None:
            raise protocol.ProtocolError("a line over the size cap")
        return protocol.decode(line, protocol.TO_AGENT)

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        while (message := await self.receive()) is not None:
            yield message

    async def send(self, message: dict[str, Any] | bytes) -> None:
        """Send a message (encoded as the agent would), or raw bytes (anything at all)."""
        await self.stream.write(protocol.encode(message) if isinstance(message, dict) else message)

    async def say_ready(self, guest: str | None = None) -> None:
        """The ``ready`` a real agent sends: this controller's protocol and guest version by default."""
        await self.send({"type": "ready", "protocol": protocol.PROTOCOL_VERSION,
                         "versions": {"guest": guest or protocol.guest_version(), "workdir": "/memory"}})

    async def close(self) -> None:
        await self.stream.close()


async def echo_agent(peer: MemoryAgent) -> None:
    """A well-behaved agent: ready, then every cell succeeds printing its own code, pings are answered,
    files are accepted, and ``shutdown`` ends the box."""
    await peer.say_ready()
    async for message in peer:
        kind = message["type"]
        if kind == "execute":
            await peer.send({"type": "result", "id": message["id"], "status": "ok", "stdout": message["code"]})
        elif kind == "ping":
            await peer.send({"type": "pong", "id": message["id"]})
        elif kind == "put_file" and message["last"]:
            await peer.send({"type": "result", "id": message["id"], "status": "ok"})
        elif kind == "shutdown":
            return


class MemoryBackend(Backend):
    """A box whose agent is ``script`` running in this event loop. ``start_error`` makes start fail
    with it; ``diagnosis`` is what ``diagnose`` says after the stream ends; ``agent_buffer`` is how
    many bytes the script may leave unread before the controller's writes wait (unbounded by
    default), so a script that stops reading is a box that stops reading."""

    name = "memory"

    def __init__(self, spec: SandboxSpec, box_id: str, script: AgentScript = echo_agent, *,
                 start_error: BaseException | None = None, diagnosis: Diagnosis | None = None,
                 agent_buffer: int | None = None) -> None:
        super().__init__(spec, box_id)
        self.script = script
        self.start_error = start_error
        self.diagnosis = diagnosis
        self.agent_buffer = agent_buffer
        self.agent: MemoryAgent | None = None
        self._ours: MemoryStream | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def factory(cls, script: AgentScript = echo_agent, **options: Any) -> BackendFactory:
        """A factory for ``open_sandbox(..., backend=...)`` or a pool: one MemoryBackend per box."""
        return lambda spec, box_id: cls(spec, box_id, script, **options)

    async def start(self) -> ByteStream:
        if self.start_error is not None:
            raise self.start_error
        ours, theirs = memory_pipe(self.agent_buffer)
        self._ours = ours
        self.agent = MemoryAgent(theirs)
        self._task = asyncio.create_task(self._run(self.agent), name=f"memory-agent-{self.box_id}")
        return ours

    async def _run(self, agent: MemoryAgent) -> None:
        try:
            await self.script(agent)
        finally:
            await agent.close()  # a script that returns ends the box, as an agent that exits does

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _destroy(self) -> None:
        if self._task is not None:
            await stop(self._task)
        if self._ours is not None:
            await self._ours.close()

    async def diagnose(self) -> Diagnosis | None:
        return self.diagnosis


BACKEND = MemoryBackend
