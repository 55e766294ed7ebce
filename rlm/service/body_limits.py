"""Request bodies with a size cap and a deadline (ASGI middleware).

A body larger than its cap is refused with 413 as soon as that is known (from Content-Length, or
while it streams in); a body that does not arrive in full within the deadline (a client dripping a
byte at a time to hold a connection) is refused with 408. Uploads get their own, larger cap.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimits:
    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout_s: float, overrides: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.overrides = dict(overrides or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        import anyio

        cap = self.overrides.get(scope.get("path", ""), self.max_bytes)
        deadline = time.monotonic() + self.timeout_s
        received = 0
        declared = _content_length(scope)

        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # later calls wait for the client to disconnect (streaming responses): no deadline
                return await receive()
            if declared is not None and declared > cap:
                raise HTTPException(413, f"the request body is larger than this server accepts ({cap:,} bytes)")
            remaining = deadline - time.monotonic()
            message: Any = None
            with anyio.move_on_after(max(remaining, 0)):
                message = await receive()
            if message is None:
                raise HTTPException(408, f"the request body did not arrive within {self.timeout_s:g} s")
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    raise HTTPException(413, f"the request body is larger than this server accepts ({cap:,} bytes)")
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
