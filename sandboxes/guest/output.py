"""Caps on what one cell sends back: stream text (head and tail kept), rich display items, and the
whole result, which must fit one protocol line."""

from __future__ import annotations

from typing import Any

from sandboxes.guest import protocol
from sandboxes.guest.protocol import ProtocolError

TRACEBACK_LIMIT = protocol.MAX_ERROR_TEXT_CHARS
DISPLAY_LIMIT = 2 * 1024 * 1024
DISPLAY_MIMES = protocol.DISPLAY_MIMES


def display_item(data: Any) -> dict[str, Any]:
    """The parts of a kernel's display data the protocol carries: known MIME types, text (any JSON
    for application/json). Kernel code may send anything; the rest is dropped here."""
    if not isinstance(data, dict):
        return {}
    return {mime: value for mime, value in data.items()
            if mime in DISPLAY_MIMES and (mime == "application/json" or isinstance(value, str))}


class CappedText:
    """Collects one cell's stream text: keeps the head and the tail, counts what was cut.

    A second line of defence behind the in-kernel cap (kernel code can undo that one)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.head: list[str] = []
        self.head_len = 0
        self.tail = ""
        self.cut = 0

    def add(self, text: str) -> None:
        room = self.limit - self.head_len
        if room > 0:
            self.head.append(text[:room])
            self.head_len += min(room, len(text))
        if len(text) > max(room, 0):
            keep_from = max(room, len(text) - self.limit, 0)
            self.cut += keep_from - max(room, 0)
            self.tail += text[keep_from:]
            if len(self.tail) > self.limit:
                self.cut += len(self.tail) - self.limit
                self.tail = self.tail[-self.limit :]

    def value(self) -> str:
        text = "".join(self.head)
        if self.cut:
            text += f"\n[... {self.cut} characters omitted ...]\n"
        return text + self.tail


def fit_result(result: dict[str, Any]) -> dict[str, Any]:
    """Make sure a result fits one protocol line, shrinking outputs if it would not."""
    try:
        protocol.encode(result)
        return result
    except ProtocolError:
        pass
    result["display"] = []
    for field in ("stdout", "stderr"):
        text = result.get(field) or ""
        if len(text) > 65536:
            result[field] = text[:32768] + "\n[... output cut to fit the message cap ...]\n" + text[-32768:]
    result["notice"] = ((result.get("notice") or "") + " Output was cut further to fit the message cap.").strip()
    return result
