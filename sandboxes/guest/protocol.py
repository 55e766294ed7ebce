"""The wire protocol between the controller and the guest agent.

One JSON object per line, UTF-8, always ASCII-escaped so that providers whose SDKs carry the agent's
stdin/stdout as *text* (Modal, E2B) can never split a multi-byte character between two chunks.
Every line is capped (``MAX_LINE_BYTES``); anything larger (context files) travels in chunks.

This module is imported on both sides of the trust boundary, so it uses the standard library only and
never evaluates anything it reads: a message is parsed with ``json.loads`` and then checked against
``SCHEMAS`` before any field is used.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterator

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 8 * 1024 * 1024
# Raw bytes per put_file chunk; base64 makes it 4/3 larger, still well under MAX_LINE_BYTES.
FILE_CHUNK_BYTES = 4 * 1024 * 1024

STATUSES = ("ok", "error", "timeout", "kernel_restarted", "oom", "sandbox_lost")

# Caps on the values inside a message, so that a message that passes the schema is also sane: every
# number finite and in range (a float the size of 10**4200 would overflow where it is used), every
# free-text field of bounded length, ``error`` and ``display`` of the documented shape.
MAX_SECONDS = 10.0**7            # execute.timeout and result.duration: about 115 days
MAX_OFFSET = 2**53               # put_file.offset: the largest integer a float holds exactly
MAX_PATH_CHARS = 4096
MAX_NOTICE_CHARS = 16 * 1024
MAX_ERROR_NAME_CHARS = 1024
MAX_ERROR_TEXT_CHARS = 64 * 1024  # an error's value and traceback, and a refused call's error
MAX_VERSION_CHARS = 256
MAX_DISPLAY_ITEMS = 1024
DISPLAY_MIMES = ("text/plain", "text/html", "text/markdown", "image/png", "image/jpeg", "image/svg+xml",
                 "application/json")
# Values (containers and scalars, counted recursively) in one guest call's payload. Decoding costs
# per value, not per byte (a million small integers take tens of times longer to decode than a
# string of the same size), so the agent refuses bigger payloads inside the box, where kernel code
# pays for its own excess, before they reach the controller. Large data belongs in files, or in one
# string. At this cap a payload decodes in about 1.5 ms on the controller's event loop (50,000 took
# 8 ms idle and twice that under load: each such call held a quiet box's answer up that long).
MAX_CALL_VALUES = 10_000


class ProtocolError(ValueError):
    """A line or message that breaks the protocol (too long, not JSON, wrong shape)."""


_STR = (str,)
_INT = (int,)
_NUM = (int, float)
_BOOL = (bool,)
_ANY = None  # any JSON value

# type -> {field: (allowed python types or None for any JSON value, required)}
SCHEMAS: dict[str, dict[str, tuple[tuple[type, ...] | None, bool]]] = {
    # controller -> agent
    "execute": {"id": (_STR, True), "code": (_STR, True), "timeout": (_NUM, True)},
    "interrupt": {},
    "put_file": {
        "id": (_STR, True),
        "path": (_STR, True),
        "chunk": (_STR, True),
        "offset": (_INT, True),
        "last": (_BOOL, True),
    },
    "reply": {"to": (_STR, True), "ok": (_BOOL, True), "value": (_ANY, False), "error": (_STR, False)},
    "ping": {"id": (_STR, True)},
    "shutdown": {},
    # agent -> controller
    "ready": {"protocol": (_INT, True), "versions": ((dict,), True)},
    "result": {
        "id": (_STR, True),
        "status": (_STR, True),
        "stdout": (_STR, False),
        "stderr": (_STR, False),
        "error": ((dict, type(None)), False),
        "display": ((list,), False),
        "duration": (_NUM, False),
        "notice": ((str, type(None)), False),
    },
    "call": {"id": (_STR, True), "name": (_STR, True), "payload": (_ANY, False)},
    "pong": {"id": (_STR, True)},
}

TO_AGENT = frozenset({"execute", "interrupt", "put_file", "reply", "ping", "shutdown"})
TO_CONTROLLER = frozenset({"ready", "result", "call", "pong"})

MAX_ID_CHARS = 64
MAX_CALL_NAME_CHARS = 128


def encode(message: dict[str, Any]) -> bytes:
    """Serialize one message as a single ASCII line ending in ``\\n``.

    Raises ProtocolError when the line would exceed MAX_LINE_BYTES, so an oversized payload fails
    where it is produced instead of being cut on the way.
    """
    line = json.dumps(message, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    data = line.encode("ascii") + b"\n"
    if len(data) > MAX_LINE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the {MAX_LINE_BYTES}-byte line cap")
    return data


def decode(line: bytes | str, direction: frozenset[str] | None = None) -> dict[str, Any]:
    """Parse and schema-check one line. Never evaluates anything beyond JSON parsing.

    ``direction`` restricts the accepted message types (e.g. the controller accepts only
    TO_CONTROLLER types from a box).
    """
    message = parse(line)
    validate(message, direction)
    return message


def parse(line: bytes | str) -> Any:
    """JSON only (no NaN or Infinity), unchecked: ``decode`` is ``parse`` then ``validate``."""
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError("line exceeds the size cap")
    try:
        return json.loads(line, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"not JSON: {exc.__class__.__name__}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def validate(message: Any, direction: frozenset[str] | None = None) -> None:
    """Check a parsed message against SCHEMAS; raise ProtocolError naming the first fault."""
    if not isinstance(message, dict):
        raise ProtocolError("message is not an object")
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in SCHEMAS:
        raise ProtocolError(f"unknown message type {str(kind)[:40]!r}")
    if direction is not None and kind not in direction:
        raise ProtocolError(f"message type {kind!r} not allowed in this direction")
    schema = SCHEMAS[kind]
    for field, value in message.items():
        if field == "type":
            continue
        if field not in schema:
            raise ProtocolError(f"{kind}: unexpected field {field[:40]!r}")
        allowed, _ = schema[field]
        # bool is an int subclass; keep them apart so {"offset": true} is rejected.
        if allowed is not None and (
            not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)
        ):
            raise ProtocolError(f"{kind}: field {field!r} has the wrong type")
    for field, (_, required) in schema.items():
        if required and field not in message:
            raise ProtocolError(f"{kind}: missing field {field!r}")
    for field in ("id", "to"):
        if field in message and len(message[field]) > MAX_ID_CHARS:
            raise ProtocolError(f"{kind}: {field} too long")
    if kind == "call" and len(message["name"]) > MAX_CALL_NAME_CHARS:
        raise ProtocolError("call: name too long")
    _check_values(kind, message)


def _number(kind: str, field: str, value: int | float, low: float, high: float) -> None:
    # An int is compared as an int: float() of a huge one would overflow before the comparison.
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError(f"{kind}: {field} is not a finite number")
    if not low <= value <= high:
        raise ProtocolError(f"{kind}: {field} out of range [{low:g}, {high:g}]")


def _text(kind: str, field: str, value: Any, limit: int) -> None:
    if not isinstance(value, str):
        raise ProtocolError(f"{kind}: {field} is not a string")
    if len(value) > limit:
        raise ProtocolError(f"{kind}: {field} longer than {limit} characters")


def _check_values(kind: str, message: dict[str, Any]) -> None:
    """Ranges, lengths and nested shapes: what a type check alone does not catch."""
    if kind == "execute":
        _number(kind, "timeout", message["timeout"], 0, MAX_SECONDS)
        if message["timeout"] <= 0:
            raise ProtocolError("execute: timeout must be positive")
    elif kind == "put_file":
        _number(kind, "offset", message["offset"], 0, MAX_OFFSET)
        _text(kind, "path", message["path"], MAX_PATH_CHARS)
    elif kind == "reply":
        if "error" in message:
            _text(kind, "error", message["error"], MAX_ERROR_TEXT_CHARS)
    elif kind == "ready":
        _number(kind, "protocol", message["protocol"], 0, 2**31)
        versions = message["versions"]
        if len(versions) > 64:
            raise ProtocolError("ready: too many versions")
        for key, value in versions.items():
            _text(kind, "a versions key", key, MAX_VERSION_CHARS)
            _text(kind, f"versions[{key[:40]!r}]", value, MAX_VERSION_CHARS)
    elif kind == "result":
        if message["status"] not in STATUSES:
            raise ProtocolError(f"result: unknown status {message['status'][:40]!r}")
        if "duration" in message:
            _number(kind, "duration", message["duration"], 0, MAX_SECONDS)
        if message.get("notice") is not None:
            _text(kind, "notice", message["notice"], MAX_NOTICE_CHARS)
        if message.get("error") is not None:
            _check_error(message["error"])
        if "display" in message:
            _check_display(message["display"])


def _check_error(error: dict[str, Any]) -> None:
    """``{name, value, traceback}``, all strings (each optional), nothing else."""
    for field, value in error.items():
        if field not in ("name", "value", "traceback"):
            raise ProtocolError(f"result: error has an unexpected field {str(field)[:40]!r}")
        _text("result", f"error.{field}", value, MAX_ERROR_NAME_CHARS if field == "name" else MAX_ERROR_TEXT_CHARS)


def _check_display(display: list[Any]) -> None:
    """A list of ``{mime: data}`` items: known MIME types, data a string (any JSON for application/json)."""
    if len(display) > MAX_DISPLAY_ITEMS:
        raise ProtocolError(f"result: more than {MAX_DISPLAY_ITEMS} display items")
    for item in display:
        if not isinstance(item, dict) or not item:
            raise ProtocolError("result: a display item is not a non-empty object")
        for mime, data in item.items():
            if mime not in DISPLAY_MIMES:
                raise ProtocolError(f"result: display type {str(mime)[:40]!r} is not one of {', '.join(DISPLAY_MIMES)}")
            if mime != "application/json" and not isinstance(data, str):
                raise ProtocolError(f"result: display data for {mime} is not a string")


def count_values(value: Any, limit: int) -> int:
    """How many values (containers and scalars) ``value`` holds, counting stops past ``limit``."""
    count = 0
    stack = [value]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.values())
            count += len(item)  # the keys
        elif isinstance(item, list):
            stack.extend(item)
    return count


class LineBuffer:
    """Splits a byte stream into lines without ever holding more than the cap.

    A line longer than ``max_line`` is dropped as it arrives (the rest of it is skipped up to the next
    newline) and reported once as an ``OverflowLine`` sentinel, so a hostile peer cannot make the
    reader buffer unbounded data.
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._max = max_line
        self._parts: list[bytes] = []
        self._size = 0
        self._skipping = False

    def feed(self, data: bytes) -> Iterator[bytes | None]:
        """Yield complete lines (without newline); yield None for each oversized line dropped."""
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                rest = data[start:]
                if rest and not self._skipping:
                    self._size += len(rest)
                    if self._size > self._max:
                        self._parts.clear()
                        self._size = 0
                        self._skipping = True
                    else:
                        self._parts.append(rest)
                return
            piece = data[start:nl]
            start = nl + 1
            if self._skipping:
                self._skipping = False
                yield None
                continue
            if self._size + len(piece) > self._max:
                self._parts.clear()
                self._size = 0
                yield None
                continue
            if self._parts:
                self._parts.append(piece)
                line = b"".join(self._parts)
                self._parts.clear()
                self._size = 0
            else:
                line = piece
            if line.strip():
                yield line

    @property
    def pending(self) -> int:
        return self._size


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ProtocolError("chunk is not valid base64") from None


def guest_sources() -> list[Path]:
    """The files of the guest package: what a box runs, what its version digests, what an image copies."""
    return sorted(Path(__file__).resolve().parent.glob("*.py"))


def guest_version() -> str:
    """A digest of the guest package's source: the agent in a box must be the controller's own."""
    digest = hashlib.sha256()
    for path in guest_sources():
        digest.update(path.name.encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
