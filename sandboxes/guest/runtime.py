"""Imported by code in the kernel: ``call(name, payload)`` reaches a handler on the controller.

The kernel talks only to the agent, over a Unix socket inside the box (path in the environment
variable SANDBOX_CALL_SOCKET); the agent relays to the controller. Each thread gets its own
connection, so calls from many threads never wait on one another's replies, and a forked child
opens a fresh one instead of sharing its parent's.

Also installs the per-cell output cap inside the kernel process (``install_output_cap``), so that a
cell printing a gigabyte never ships that gigabyte anywhere: only the head and the tail leave.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import socket
import sys
import threading
from typing import Any

from sandboxes.guest.protocol import MAX_LINE_BYTES

SOCKET_ENV = "SANDBOX_CALL_SOCKET"


class GuestCallError(Exception):
    """The controller answered a guest call with an error (unknown name, handler failure, limit)."""


_local = threading.local()
_ids = itertools.count(1)


class _Connection:
    def __init__(self, path: str) -> None:
        self.pid = os.getpid()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buffer = b""

    def roundtrip(self, request_id: int, line: bytes) -> dict[str, Any]:
        self.sock.sendall(line)
        while True:
            nl = self.buffer.find(b"\n")
            while nl < 0:
                if len(self.buffer) > MAX_LINE_BYTES:
                    raise GuestCallError("reply from the agent exceeds the size cap")
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    raise GuestCallError("the sandbox agent closed the call connection")
                self.buffer += chunk
                nl = self.buffer.find(b"\n")
            raw, self.buffer = self.buffer[:nl], self.buffer[nl + 1 :]
            reply = json.loads(raw)
            if reply.get("id") == request_id:
                return reply
            # A reply to a call abandoned earlier (e.g. interrupted): skip it.

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _connection() -> _Connection:
    conn = getattr(_local, "conn", None)
    if conn is not None and conn.pid == os.getpid():
        return conn
    path = os.environ.get(SOCKET_ENV)
    if not path:
        raise GuestCallError(f"{SOCKET_ENV} is not set: this code is not running in a sandbox kernel")
    conn = _Connection(path)
    _local.conn = conn
    return conn


def call(name: str, payload: Any = None) -> Any:
    """Call the controller's handler ``name`` with a JSON-serializable payload; return its value.

    Blocks until the controller answers. Raises GuestCallError when it answers with an error.
    Safe to use from many threads at once.
    """
    if not isinstance(name, str) or not name:
        raise TypeError("call name must be a non-empty string")
    request_id = next(_ids)
    line = json.dumps({"id": request_id, "name": name, "payload": payload}, ensure_ascii=True,
                      separators=(",", ":"), allow_nan=False).encode("ascii") + b"\n"
    if len(line) > MAX_LINE_BYTES:
        raise GuestCallError(f"payload of {len(line)} bytes exceeds the {MAX_LINE_BYTES}-byte cap")
    conn = _connection()
    try:
        reply = conn.roundtrip(request_id, line)
    except BaseException:
        # A broken or interrupted connection may still get the old reply later: start afresh.
        conn.close()
        _local.conn = None
        raise
    if reply.get("ok"):
        return reply.get("value")
    raise GuestCallError(str(reply.get("error") or "guest call failed"))


# --- per-cell output cap, installed into the kernel by the agent -------------------------------


class _CappedStream:
    """Wraps an ipykernel OutStream's ``write``: the first ``limit`` characters of a cell pass,
    later ones are held as a tail of at most ``limit`` characters and released at the cell's end
    behind a note of how much was left out."""

    def __init__(self, stream: Any, limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self.original_write = stream.write
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.written = 0
            self.tail: collections.deque[str] = collections.deque()
            self.tail_chars = 0
            self.dropped = 0

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            return self.original_write(text)
        size = len(text)
        with self.lock:
            room = max(0, self.limit - self.written)
            head = text[:room] if room else ""
            self.written += len(head)
            if size > room:
                # Slice only the last `limit` characters: a 1 GB write is never copied whole.
                keep_from = max(room, size - self.limit)
                self.dropped += keep_from - room
                piece = text[keep_from:]
                self.tail.append(piece)
                self.tail_chars += len(piece)
                while self.tail_chars - len(self.tail[0]) >= self.limit:
                    self.dropped += len(self.tail[0])
                    self.tail_chars -= len(self.tail.popleft())
        if head:
            self.original_write(head)
        return size

    def finish(self) -> None:
        with self.lock:
            tail = "".join(self.tail)
            dropped = self.dropped
            if len(tail) > self.limit:
                dropped += len(tail) - self.limit
                tail = tail[-self.limit :]
            self.tail.clear()
            self.tail_chars = 0
            self.dropped = 0
            self.written = 0
        if dropped:
            self.original_write(f"\n[... {dropped} characters omitted ...]\n")
        if tail:
            self.original_write(tail)


def install_output_cap(limit: int) -> None:
    """Cap what each cell may send on stdout and stderr (called once per kernel by the agent)."""
    from IPython import get_ipython  # present in every kernel; never imported on the controller

    ip = get_ipython()
    caps = []
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if hasattr(stream, "_sandbox_cap"):
            continue
        cap = _CappedStream(stream, limit)
        stream._sandbox_cap = cap
        stream.write = cap.write
        caps.append(cap)

    def before(*_: Any) -> None:
        for cap in caps:
            cap.reset()

    def after(*_: Any) -> None:
        for cap in caps:
            cap.finish()

    ip.events.register("pre_run_cell", before)
    ip.events.register("post_run_cell", after)
