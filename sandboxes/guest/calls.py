"""Guest calls from kernel code: the kernel's connections to the agent's call socket, each call
forwarded to the controller under an id of the agent's, and each reply routed back to its caller.

Kernel code may be hostile: a malformed or oversized request is answered with an error (so is a
payload of more values than the controller decodes, ``protocol.MAX_CALL_VALUES``: refused here, its
cost stays in the box), a connection can wait only for the calls it made, and the number of
connections is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any, Awaitable, Callable

from sandboxes.guest import protocol
from sandboxes.guest.protocol import LineBuffer, ProtocolError

MAX_KERNEL_CALL_CONNECTIONS = 256

Send = Callable[[dict[str, Any]], Awaitable[None]]


class CallRelay:
    def __init__(self, send: Send) -> None:
        self.send = send
        self.ids = itertools.count(1)
        self.calls: dict[str, tuple[asyncio.StreamWriter, Any]] = {}
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= MAX_KERNEL_CALL_CONNECTIONS:
            writer.close()
            return
        self.connections += 1
        mine: set[str] = set()
        buffer = LineBuffer()
        try:
            while True:
                data = await reader.read(1 << 20)
                if not data:
                    return
                for line in buffer.feed(data):
                    await self.forward(line, writer, mine)
        except (ConnectionError, OSError):
            return
        finally:
            self.connections -= 1
            for call_id in mine:
                self.calls.pop(call_id, None)
            writer.close()

    async def forward(self, line: bytes | None, writer: asyncio.StreamWriter, mine: set[str]) -> None:
        try:
            if line is None:
                raise ProtocolError("call exceeds the size cap")
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("name"), str):
                raise ProtocolError("malformed call")
            kernel_id = request.get("id")
            if protocol.count_values(request.get("payload"), protocol.MAX_CALL_VALUES) > protocol.MAX_CALL_VALUES:
                writer.write(json.dumps({"id": kernel_id, "ok": False, "error": (
                    f"the payload holds more than {protocol.MAX_CALL_VALUES} values (lists, dicts, numbers and "
                    "strings counted one by one): write large data to a file and pass its name")}).encode() + b"\n")
                return
        except (ValueError, ProtocolError) as exc:
            writer.write(json.dumps({"id": None, "ok": False, "error": str(exc)}).encode() + b"\n")
            return
        call_id = f"k{next(self.ids)}"
        try:
            await self.send({"type": "call", "id": call_id, "name": request["name"][:protocol.MAX_CALL_NAME_CHARS],
                                  "payload": request.get("payload")})
        except (ProtocolError, ValueError) as exc:
            writer.write(json.dumps({"id": kernel_id, "ok": False, "error": str(exc)}).encode() + b"\n")
            return
        self.calls[call_id] = (writer, kernel_id)
        mine.add(call_id)

    def reply(self, message: dict[str, Any]) -> None:
        target = self.calls.pop(message["to"], None)
        if target is None:
            return
        writer, kernel_id = target
        reply = {"id": kernel_id, "ok": message["ok"]}
        if message["ok"]:
            reply["value"] = message.get("value")
        else:
            reply["error"] = message.get("error") or "guest call failed"
        try:
            writer.write(json.dumps(reply, ensure_ascii=True, separators=(",", ":")).encode() + b"\n")
        except (ConnectionError, OSError, RuntimeError):
            pass
