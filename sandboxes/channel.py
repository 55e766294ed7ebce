"""The controller's side of one agent connection.

Owns the stream: matches answers to requests by id, serves guest calls, and treats every byte from
the box as untrusted (size cap per line, schema and value checks, no evaluation). One controller
drives many boxes on one event loop, so the design's aim is that no box can hang the controller or
slow its neighbours, whatever its agent or kernel does.

Nothing hangs
    Every write has a deadline: a floor plus the time the message takes at a slow but live rate
    (``write_timeout``). A write that cannot finish by its deadline means the box stopped reading;
    the box is declared lost. The send lock is held only while a write is under way, and a write
    cannot outlive its deadline, so the lock is never held forever. ``request`` puts the write and
    the wait for the answer under one deadline, and while it waits it checks that the agent still
    answers: a ``ping`` every few seconds, written by a task of its own so it may queue behind a
    large write; the check fails when for ``PROBE_TIMEOUT_S`` no byte arrives and the agent takes
    none of what is written (``ByteStream.delivered``). A stopped or wedged agent is so found within
    seconds, not at the deadline, even while an upload to it holds the send lock. Losing the box
    wakes every waiter with SandboxLost. Every lock and counter here belongs to one box, so nothing
    held for one box can delay another.

No box slows the controller
    Decoding is the one cost a box imposes on the event loop, and it grows with the number of
    values in a line more than with its bytes (a line of a million small integers decodes some
    forty times slower than a string of the same size). Handing a decode to a thread does not help:
    ``json.loads`` holds the GIL for the whole line (measured on a loaded machine, a million-integer
    line decoding in 0.38 s stalled the loop 0.67 s from a thread, 1.09 s inline). So the cost is
    bounded at two places instead:

    * the agent refuses, inside the box, a guest call whose payload holds more than
      ``protocol.MAX_CALL_VALUES`` values, so no single line from a well-behaved agent costs more
      than a few milliseconds to decode, whatever kernel code sends;
    * each box has a decode budget, a share of one core (``DECODE_SHARE``, with a burst of
      ``DECODE_BURST_S``): each line is charged to its box, the CPU time of its decode plus its
      bytes at ``BYTE_COST_S`` (reading and copying it), and a box over budget is not read until the
      budget refills. Its bytes wait in its own socket, its agent's writes block, and kernel code
      calling in a loop is slowed at its source. A compromised agent that skips the value cap can
      still make one decode long; it then pays for it with its reading time.
    * a box over budget, or whose decoding takes more than ``PRESS_SHARE`` of a core on average, is
      reported to the CPU governor (``pressing``), which demotes it as if it kept a CPU busy: a box
      flooding output or calls uses well under half a CPU itself while it makes the controller work,
      and at normal priority it slowed a quiet neighbour through the first seconds of its attack
      (neighbours.py, local: p99 2.1-2.7 times idle; 1.3-1.9 with this, in 19 runs of 20).
    * a box the CPU governor has demoted for keeping a CPU busy (``demoted``) gets a fifth of that
      share and burst (``DEMOTED_FACTOR``), for as long as it keeps running out of them
      (``SLOWED_CALM_S``). The controller shares a core with the quiet boxes it serves, and a box
      flooding cell output costs it about 2.5 ms of CPU per 512 KB result: four such boxes at the
      full share took a fifth of a core, and a quiet neighbour's cells waited behind it (p99 2.6
      times its idle one on a 2-core machine; 1.4 times with their results capped at 16 KB, 1.9
      times slowed like this).
    * a box's reader takes turns: reading bytes already buffered does not suspend, so after each
      chunk, and after ``DECODE_TURN_S`` of decoding within one, it yields to the event loop. A
      neighbour's answer waits for at most one line per busy box, not for a busy box's whole
      burst.

    What a box has in flight is bounded too: at most ``max_pending_calls`` guest calls (each one
    task; ``max_concurrent_calls`` of them running a handler at once) and ``max_call_bytes`` bytes
    of their lines. A call over a bound, or to a handler that does not exist, is refused without
    creating a task: its refusal goes to a bounded queue that one writer task sends, and when that
    queue is full the reader waits, which slows the box, not the controller.

Protocol violations
    Malformed lines, calls to unknown handlers, answers to requests never made (or answered twice)
    and a second ``ready`` each count as a violation; ``MAX_VIOLATIONS`` of them cut the box off as
    hostile. A malformed answer to a request still wakes its waiter (with ProtocolError), so
    nothing waits for the deadline on an answer that already came.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import itertools
import math
import time
from typing import Any, Awaitable, Callable, Mapping

from sandboxes.logs import get_logger

from sandboxes.errors import SandboxLost
from sandboxes.guest import protocol
from sandboxes.guest.protocol import LineBuffer, ProtocolError
from sandboxes.transport import ByteStream

Handler = Callable[[Any], Awaitable[Any]] | Callable[[Any], Any]

# A box that sends this many malformed messages is treated as hostile and cut off.
MAX_VIOLATIONS = 100
# A write gets WRITE_FLOOR_S plus its size at MIN_WRITE_RATE bytes per second; later, the box is lost.
WRITE_FLOOR_S = 10.0
MIN_WRITE_RATE = 1e6
# While waiting for an answer: a liveness check after this long without one, and then again after
# each check; a check fails when neither its answer nor any byte arrives within PROBE_TIMEOUT_S.
PROBE_INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 4.0
PROBE_POLL_S = 0.5
# Per box: the share of one core its decoding may take over time, the burst it may take at once,
# and the longest pause in reading that one burst costs it. The burst is a few maximal lines (a
# guest call at the value cap, about 1.5 ms; a 512 KB result, about 2.5 ms). At 0.25 s, a box that
# began to flood could take a quarter of a second of the controller's loop before the CPU governor
# had judged it (neighbours.py, flood only, local: p99 1.5-3.8 times idle; 1.6-1.8 at 0.05 s).
DECODE_SHARE = 0.05
DECODE_BURST_S = 0.05
MAX_DECODE_PAUSE_S = 1.0
# What a byte of a line costs beyond its decode (reading it off the socket, copying it: measured
# about 3 ns), and the part of its share and burst a box demoted by the CPU governor keeps.
BYTE_COST_S = 3e-9
DEMOTED_FACTOR = 0.2
# A box whose decoding has taken more than this share of a core, averaged over about
# PRESS_WINDOW_S, is reported to the CPU governor as pressing: a box that mostly waits (an RLM's
# cells and sub-calls) stays well under it, a flood of results or calls is over it within a few
# tenths of a second, long before it has used up its budget (at 6 % against a 5 % share, seconds).
PRESS_SHARE = 0.02
PRESS_WINDOW_S = 0.5
# A slowed box that keeps running out of its smaller budget stays slowed until this long after it
# last did, even once the governor restores it (held back by its reader, it no longer looks busy).
SLOWED_CALM_S = 2.0
# Decoding in one turn of the event loop: past this, a box's reader lets the other boxes run.
DECODE_TURN_S = 0.001
# Per box: bytes of guest-call lines being served or queued (a decoded payload takes a few times its
# line), and refusals waiting to be sent.
MAX_CALL_BYTES = 16 << 20
MAX_QUEUED_REFUSALS = 256
# Ids of requests given up on without an answer, kept so a late answer is not taken for a forgery.
LATE_IDS_KEPT = 1024

log = get_logger("sandboxes.channel")


def write_timeout(size: int) -> float:
    """The deadline for writing ``size`` bytes to a box that is alive but slow."""
    return WRITE_FLOOR_S + size / MIN_WRITE_RATE


class Channel:
    def __init__(
        self,
        stream: ByteStream,
        *,
        handlers: Mapping[str, Handler] | None = None,
        max_concurrent_calls: int = 64,
        max_pending_calls: int = 1024,
        max_call_bytes: int = MAX_CALL_BYTES,
        decode_share: float = DECODE_SHARE,
        decode_burst_s: float = DECODE_BURST_S,
        box_id: str = "",
        demoted: Callable[[], bool] = lambda: False,
        pressing: Callable[[], None] = lambda: None,
    ) -> None:
        self.stream = stream
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.box_id = box_id
        loop = asyncio.get_running_loop()
        self._ids = itertools.count(1)
        # request id -> (its waiter, the type of message that answers it)
        self._waiters: dict[str, tuple[asyncio.Future[dict[str, Any]], str]] = {}
        self._late: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._ready: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._send_lock = asyncio.Lock()
        self._call_slots = asyncio.Semaphore(max_concurrent_calls)
        self._max_pending = max_pending_calls
        self._max_call_bytes = max_call_bytes
        self.call_bytes = 0
        self._calls: set[asyncio.Task[None]] = set()
        self._refusals: asyncio.Queue[bytes] = asyncio.Queue(MAX_QUEUED_REFUSALS)
        self._reader: asyncio.Task[None] | None = None
        self._refuser: asyncio.Task[None] | None = None
        self._heard_at = loop.time()
        self._share = decode_share
        self._burst = decode_burst_s
        self._demoted = demoted
        self._pressing = pressing
        self._slowed_until = 0.0
        self._budget = decode_burst_s
        self._budget_at = loop.time()
        self._rate = 0.0  # decode cost per second, averaged over about PRESS_WINDOW_S
        self._rate_at = loop.time()
        self.lost: str | None = None
        self.violations = 0
        self.on_lost: Callable[[str], None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read_loop(), name=f"channel-reader-{self.box_id}")
        self._refuser = asyncio.create_task(self._send_refusals(), name=f"channel-refusals-{self.box_id}")

    async def ready(self, timeout: float) -> dict[str, Any]:
        """Wait for the agent's ``ready`` message."""
        return await asyncio.wait_for(asyncio.shield(self._ready), timeout)

    @property
    def calls_in_flight(self) -> int:
        """Guest calls being served or waiting for a handler slot (one task each)."""
        return len(self._calls)

    async def close(self) -> None:
        """Stop reading, cancel guest calls in flight, close the stream. Safe to call twice."""
        tasks = [t for t in (self._reader, self._refuser, *self._calls) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._fail_all("the sandbox was closed")
        await self.stream.close()

    def _declare_lost(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
            # Not logged here: the owner (Sandbox) logs the loss once, with the provider's diagnosis.
            if self.on_lost is not None:
                self.on_lost(reason)
        self._fail_all(reason)

    def _fail_all(self, reason: str) -> None:
        if not self._ready.done():
            self._ready.set_exception(SandboxLost(reason))
            self._ready.exception()  # mark retrieved: nobody may be waiting
        waiters, self._waiters = self._waiters, {}
        for fut, _ in waiters.values():
            if not fut.done():
                fut.set_exception(SandboxLost(reason))

    # --- sending ------------------------------------------------------------------------------

    def new_id(self, prefix: str = "r") -> str:
        return f"{prefix}{next(self._ids)}"

    async def send(self, message: dict[str, Any], timeout: float | None = None) -> None:
        """Write one message within ``timeout`` s (default ``write_timeout`` of its size).

        Raises SandboxLost when the box is gone or did not take the message in time (it is then
        declared lost), and ProtocolError when the message cannot be encoded.
        """
        if self.lost is not None:
            raise SandboxLost(self.lost)
        await self._write(protocol.encode(message), timeout)

    async def _write(self, data: bytes, timeout: float | None = None) -> None:
        limit = write_timeout(len(data)) if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                async with self._send_lock:
                    if self.lost is not None:
                        raise SandboxLost(self.lost)
                    await self.stream.write(data)
        except TimeoutError:
            self._declare_lost(f"the agent did not take a {len(data)}-byte message within {limit:g} s: "
                               "it stopped reading")
            raise SandboxLost(self.lost or "the agent stopped reading") from None
        except (ConnectionError, OSError, RuntimeError) as exc:
            self._declare_lost(f"the connection to the agent broke while sending ({exc.__class__.__name__})")
            raise SandboxLost(self.lost or "connection broke") from None

    def expect(self, request_id: str, answer: str = "result") -> asyncio.Future[dict[str, Any]]:
        """Register interest in the answer to ``request_id``, a message of type ``answer`` (before
        sending, so none is missed)."""
        if self.lost is not None:
            raise SandboxLost(self.lost)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = (fut, answer)
        return fut

    def forget(self, request_id: str) -> None:
        """No longer wait for ``request_id``; an answer that still comes is dropped quietly."""
        if self._waiters.pop(request_id, None) is not None:  # still there: never answered
            self._late[request_id] = None
            while len(self._late) > LATE_IDS_KEPT:
                self._late.popitem(last=False)

    async def request(self, message: dict[str, Any], timeout: float, *,
                      watch: float | None = None) -> dict[str, Any]:
        """Send a message carrying an ``id`` and wait at most ``timeout`` s (writing included) for its
        answer. ``watch``: check while waiting that the agent still answers, first after that many
        seconds (see ``wait_alive``).

        Raises TimeoutError at the deadline, SandboxLost when the box is (or is found) gone.
        """
        fut = self.expect(message["id"], "pong" if message["type"] == "ping" else "result")
        try:
            async with asyncio.timeout(timeout):
                await self.send(message)
                return await (fut if watch is None else self.wait_alive(fut, watch))
        finally:
            self.forget(message["id"])

    async def wait_alive(self, answer: asyncio.Future[dict[str, Any]],
                         first_check: float = PROBE_INTERVAL_S) -> dict[str, Any]:
        """Wait for ``answer`` while checking that the agent answers a ping (the first after
        ``first_check`` s, then every PROBE_INTERVAL_S); the box is declared lost (and ``answer``
        fails with SandboxLost) when a check goes unanswered and nothing else arrives either for
        PROBE_TIMEOUT_S. Bound the wait from outside."""
        pause = first_check
        while True:
            await asyncio.wait([answer], timeout=pause)
            pause = PROBE_INTERVAL_S
            if answer.done():
                return answer.result()
            await self._probe(answer)

    async def _probe(self, answer: asyncio.Future[dict[str, Any]]) -> None:
        loop = asyncio.get_running_loop()
        ping_id = self.new_id("p")
        pong = self.expect(ping_id, "pong")
        # The ping is written by a task of its own: it may wait behind a large write, and whether
        # that write moves is part of the verdict.
        sending = asyncio.ensure_future(self.send({"type": "ping", "id": ping_id}))
        alive_at = loop.time()
        delivered = self.stream.delivered()
        try:
            while not (pong.done() or answer.done()):
                # Life is any byte arriving (the reader may be behind, or paused by the budget) or
                # the agent taking what we write; silence both ways for PROBE_TIMEOUT_S is death.
                now_delivered = self.stream.delivered()
                if now_delivered != delivered:
                    delivered, alive_at = now_delivered, loop.time()
                deadline = max(alive_at, self._heard_at) + PROBE_TIMEOUT_S
                if loop.time() >= deadline:
                    self._declare_lost(f"the agent stopped answering: nothing came back, and nothing sent was "
                                       f"taken, within {PROBE_TIMEOUT_S:g} s of a liveness check")
                    break
                await asyncio.wait([pong, answer], timeout=min(deadline - loop.time(), PROBE_POLL_S))
        finally:
            self.forget(ping_id)
            if not sending.done():
                sending.cancel()
            for fut in (pong, sending):
                if fut.done() and not fut.cancelled():
                    fut.exception()  # retrieved: a lost box fails both

    # --- receiving ----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        buffer = LineBuffer()
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await self.stream.read()
                if not data:
                    self._declare_lost("the agent's connection closed")
                    return
                self._heard_at = loop.time()
                turn = 0.0
                for line in buffer.feed(data):
                    if line is None:
                        self._violation("a line over the size cap")
                    else:
                        started = time.thread_time()
                        message = self._decode(line)
                        cost = time.thread_time() - started + len(line) * BYTE_COST_S
                        if message is not None:
                            await self._dispatch(message, len(line))
                        await self._pace(cost)
                        turn += cost
                    if self.lost is not None:
                        return
                    if turn >= DECODE_TURN_S:  # the other boxes' turn
                        turn = 0.0
                        await asyncio.sleep(0)
                await asyncio.sleep(0)  # a read of buffered bytes does not suspend: one chunk, one turn
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let a hostile box crash the controller
            log.exception("channel_reader_failed", box_id=self.box_id)
            self._declare_lost(f"reading from the agent failed ({exc.__class__.__name__})")

    async def _pace(self, cost: float) -> None:
        """Charge ``cost`` s of decoding to this box; over budget, stop reading it until it refills."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        share, burst = self._share, self._burst
        slowed = now < self._slowed_until or self._demoted()
        if slowed:
            share, burst = share * DEMOTED_FACTOR, burst * DEMOTED_FACTOR
        self._budget = min(burst, self._budget + (now - self._budget_at) * share) - cost
        self._budget_at = now
        self._rate = self._rate * math.exp((self._rate_at - now) / PRESS_WINDOW_S) + cost / PRESS_WINDOW_S
        self._rate_at = now
        if self._rate > PRESS_SHARE or self._budget < 0:
            self._pressing()
        if self._budget < 0:
            if slowed:  # held back, it looks calm to the governor: it stays slowed while it presses
                self._slowed_until = now + SLOWED_CALM_S
            pause = min(-self._budget / share, MAX_DECODE_PAUSE_S)
            await asyncio.sleep(pause)
            self._budget = min(0.0, self._budget + pause * share)
            self._budget_at = self._heard_at = loop.time()

    def _decode(self, line: bytes) -> dict[str, Any] | None:
        """The checked message on ``line``, or None after counting a violation."""
        try:
            message = protocol.parse(line)
        except ProtocolError as exc:
            self._violation(str(exc))
            return None
        try:
            protocol.validate(message, protocol.TO_CONTROLLER)
        except ProtocolError as exc:
            self._violation(str(exc))
            # An answer to a request, however malformed, ends the wait for it.
            request_id = message.get("id") if isinstance(message, dict) else None
            waiter = self._waiters.get(request_id) if isinstance(request_id, str) else None
            if waiter is not None and message.get("type") == waiter[1]:
                del self._waiters[request_id]
                if not waiter[0].done():
                    waiter[0].set_exception(ProtocolError(f"the agent's answer broke the protocol: {exc}"))
            return None
        return message

    async def _dispatch(self, message: dict[str, Any], size: int) -> None:
        kind = message["type"]
        if kind == "ready":
            if not self._ready.done():
                self._ready.set_result(message)
            else:
                self._violation("a second ready")
        elif kind in ("result", "pong"):
            request_id = message["id"]
            waiter = self._waiters.get(request_id)
            if waiter is not None and waiter[1] == kind:
                del self._waiters[request_id]
                if not waiter[0].done():
                    waiter[0].set_result(message)
            elif waiter is not None:
                self._violation(f"a {kind} answering {request_id[:40]!r}, which a {waiter[1]} answers")
            elif request_id in self._late:
                del self._late[request_id]  # late, but asked for: not a forgery
            else:
                self._violation(f"an answer to {request_id[:40]!r}, which was never asked or already answered")
        elif kind == "call":
            await self._start_call(message, size)

    def _violation(self, what: str) -> None:
        self.violations += 1
        log.warning("protocol_violation", box_id=self.box_id, what=what[:200], count=self.violations)
        if self.violations >= MAX_VIOLATIONS:
            self._declare_lost(f"the box sent {self.violations} malformed messages and was cut off")

    # --- guest calls --------------------------------------------------------------------------

    async def _start_call(self, message: dict[str, Any], size: int) -> None:
        name = message["name"]
        handler = self.handlers.get(name)
        if handler is None:
            self._violation(f"a call to no handler ({name[:40]!r})")
            known = ", ".join(sorted(self.handlers)) or "none"
            await self._refuse(message["id"], f"no handler named {name!r} (known: {known})")
        elif len(self._calls) >= self._max_pending:
            await self._refuse(message["id"], f"too many guest calls in flight (limit {self._max_pending}); "
                                              "wait for some to finish")
        elif self._calls and self.call_bytes + size > self._max_call_bytes:
            await self._refuse(message["id"], f"too much guest-call data in flight (limit {self._max_call_bytes} "
                                              "bytes); wait for some calls to finish")
        else:
            self.call_bytes += size
            task = asyncio.create_task(self._serve_call(message, handler))
            self._calls.add(task)
            task.add_done_callback(lambda done: self._call_done(done, size))

    def _call_done(self, task: asyncio.Task[None], size: int) -> None:
        self._calls.discard(task)
        self.call_bytes -= size

    async def _refuse(self, to: str, error: str) -> None:
        """Queue a refusal for the refusal writer; a full queue makes the reader (this box) wait."""
        await self._refusals.put(protocol.encode({"type": "reply", "to": to, "ok": False, "error": error}))

    async def _send_refusals(self) -> None:
        while True:
            data = await self._refusals.get()
            try:
                await self._write(data)
            except SandboxLost:
                return

    async def _serve_call(self, message: dict[str, Any], handler: Handler) -> None:
        async with self._call_slots:
            try:
                if inspect.iscoroutinefunction(handler):
                    value = await handler(message.get("payload"))
                else:  # plain functions may block: keep them off the event loop
                    value = await asyncio.to_thread(handler, message.get("payload"))
                    if inspect.isawaitable(value):  # e.g. a functools.partial of an async function
                        value = await value
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                text = str(exc) or exc.__class__.__name__
                await self._reply(message["id"], False, error=f"{exc.__class__.__name__}: {text}"[:8192])
                return
        await self._reply(message["id"], True, value=value)

    async def _reply(self, to: str, ok: bool, *, value: Any = None, error: str | None = None) -> None:
        message: dict[str, Any] = {"type": "reply", "to": to, "ok": ok}
        if ok:
            message["value"] = value
        else:
            message["error"] = error
        try:
            await self.send(message)
        except (ProtocolError, TypeError, ValueError) as exc:
            # The handler's value could not be sent (not JSON, or over the cap): say so instead.
            reason = "too large" if isinstance(exc, ProtocolError) else "not JSON-serializable"
            try:
                await self.send({"type": "reply", "to": to, "ok": False,
                                 "error": f"the handler's result is {reason}: {str(exc)[:500]}"})
            except SandboxLost:
                pass
        except SandboxLost:
            pass
