"""Files uploaded by the controller (``put_file``), written chunk by chunk into the box.

Chunks of one upload arrive in order; a failed upload is answered once and its later chunks dropped.

An upload lands inside the working folder and nowhere else: a path is relative to it (or absolute
and inside it), never climbs out with ``..``, and is opened one folder at a time without following a
symbolic link, so a link that kernel code planted (``ln -s ~/.bashrc ctx.txt``, or a folder swapped
for a link while the upload runs) cannot redirect the write outside the folder.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath, PurePosixPath
from typing import Any, Awaitable, Callable

from sandboxes.guest import protocol

Send = Callable[[dict[str, Any]], Awaitable[None]]


def inside_parts(workdir: PurePath, path: str) -> list[str]:
    """The parts of ``path`` below ``workdir``; ValueError if it names anything outside it."""
    pure = PurePosixPath(path)
    if pure.is_absolute():
        try:
            pure = pure.relative_to(workdir)
        except ValueError:
            raise ValueError(f"{path} is outside the working folder {workdir}") from None
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"{path!r} does not name a file inside the working folder {workdir}")
    return parts


def open_inside(workdir: Path, path: str) -> Any:
    """Create (or truncate) ``path`` under ``workdir`` for writing, making its folders, following no
    symbolic link on the way (each folder is opened relative to the one before, with O_NOFOLLOW)."""
    parts = inside_parts(workdir, path)
    folder = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in parts[:-1]:
            try:
                os.mkdir(name, 0o777, dir_fd=folder)
            except FileExistsError:
                pass
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder)
            os.close(folder)
            folder = inner
        fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666, dir_fd=folder)
    finally:
        os.close(folder)
    return os.fdopen(fd, "wb")


class Uploads:
    def __init__(self, workdir: Path, send: Send) -> None:
        self.workdir = workdir
        self.send = send
        self.open: dict[str, Any] = {}
        self.failed: set[str] = set()

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
                handle = open_inside(self.workdir, message["path"])
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
