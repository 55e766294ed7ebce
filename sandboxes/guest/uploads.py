"""Files uploaded by the controller (``put_file``), written chunk by chunk into the box.

Chunks of one upload arrive in order; a failed upload is answered once and its later chunks dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Awaitable, Callable

from sandboxes.guest import protocol

Send = Callable[[dict[str, Any]], Awaitable[None]]


class Uploads:
    def __init__(self, workdir: Path, send: Send) -> None:
        self.workdir = workdir
        self.send = send
        self.open: dict[str, Any] = {}
        self.failed: set[str] = set()

    def resolve(self, path: str) -> Path:
        target = Path(path)
        if not target.is_absolute():
            target = self.workdir / target
        return target

    async def put(self, message: dict[str, Any]) -> None:
        upload_id = message["id"]
        if upload_id in self.failed:
            if message["last"]:
                self.failed.discard(upload_id)
            return
        try:
            handle = self.open.get(upload_id)
            if handle is None:
                if message["offset"] != 0:
                    raise ValueError("upload must start at offset 0")
                target = self.resolve(message["path"])
                target.parent.mkdir(parents=True, exist_ok=True)
                handle = open(target, "wb")
                self.open[upload_id] = handle
            if handle.tell() != message["offset"]:
                raise ValueError(f"chunk at offset {message['offset']}, expected {handle.tell()}")
            handle.write(protocol.b64decode(message["chunk"]))
            if message["last"]:
                del self.open[upload_id]
                handle.close()
                await self.send({"type": "result", "id": upload_id, "status": "ok"})
        except (OSError, ValueError) as exc:
            handle = self.open.pop(upload_id, None)
            if handle is not None:
                handle.close()
            if not message["last"]:
                self.failed.add(upload_id)
            await self.send({
                "type": "result", "id": upload_id, "status": "error",
                "error": {"name": type(exc).__name__, "value": str(exc)[:2000], "traceback": ""},
            })
