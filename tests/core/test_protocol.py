from __future__ import annotations

import pytest

from sandboxes.guest import protocol
from sandboxes.guest.protocol import LineBuffer, ProtocolError


def test_roundtrip_is_ascii_and_one_line() -> None:
    msg = {"type": "result", "id": "x1", "status": "ok", "stdout": "héllo\nwörld ✓", "display": []}
    line = protocol.encode(msg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    line.decode("ascii")
    assert protocol.decode(line, protocol.TO_CONTROLLER) == msg


@pytest.mark.parametrize("bad, why", [
    (b"[1, 2]", "not an object"),
    (b'{"type": "launch_missiles"}', "unknown message type"),
    (b'{"type": "result", "id": "a"}', "missing field"),
    (b'{"type": "result", "id": "a", "status": "pwned"}', "unknown status"),
    (b'{"type": "result", "id": 5, "status": "ok"}', "wrong type"),
    (b'{"type": "put_file", "id": "a", "path": "p", "chunk": "", "offset": true, "last": true}', "wrong type"),
    (b'{"type": "call", "id": "a", "name": "x", "extra": 1}', "unexpected field"),
    (b'{"type": "call", "id": "' + b"a" * 100 + b'", "name": "x"}', "too long"),
    (b"{not json", "not JSON"),
    (b'{"type": "result", "id": "a", "status": "ok", "duration": NaN}', "not JSON"),
])
def test_decode_rejects(bad: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        protocol.decode(bad)


def test_direction_is_enforced() -> None:
    line = protocol.encode({"type": "execute", "id": "1", "code": "x", "timeout": 1})
    with pytest.raises(ProtocolError, match="not allowed"):
        protocol.decode(line, protocol.TO_CONTROLLER)
    assert protocol.decode(line, protocol.TO_AGENT)["code"] == "x"


def test_encode_refuses_oversized() -> None:
    with pytest.raises(ProtocolError, match="cap"):
        protocol.encode({"type": "call", "id": "1", "name": "x", "payload": "y" * protocol.MAX_LINE_BYTES})


def test_line_buffer_splits_anywhere_and_drops_oversized() -> None:
    buf = LineBuffer(max_line=10)
    stream = b'abc\nde' + b'f\n' + b'x' * 25 + b'\nok\n\n' + b'y' * 7 + b'y' * 7 + b'\nlast'
    got = []
    for i in range(0, len(stream), 3):
        got.extend(buf.feed(stream[i:i + 3]))
    assert got == [b"abc", b"def", None, b"ok", None]
    assert buf.pending == 4
    assert list(buf.feed(b"\n")) == [b"last"]


def test_b64_rejects_garbage() -> None:
    assert protocol.b64decode(protocol.b64encode(b"\x00\xff")) == b"\x00\xff"
    with pytest.raises(ProtocolError):
        protocol.b64decode("not base64!")


def test_guest_version_is_stable() -> None:
    assert protocol.guest_version() == protocol.guest_version()
    assert len(protocol.guest_version()) == 16
