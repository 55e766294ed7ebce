"""The box an RLM works in, made ready in the background while the model thinks.

Starting a sandbox, uploading the context and running the setup cell take from a fraction of a second
(a local box, a small context) to seconds (Docker with a 50 MB context, gVisor, a cloud box). The
first model call needs none of it: its prompt holds only the context's type and size. So an RLM
starts its workspace in a task the moment it begins, and waits for it only before its first cell.

That task has one owner (the RLM, or the session of a persistent RLM), a deadline (the run's wall
clock; start, upload and setup each have their own timeout below it), and is cancelled, with its
box destroyed, on every exit path: ``close`` is the only way a workspace ends.

A session's workspace outlives one completion: each new context is uploaded beside the others and
bound as the next ``context_N``. When the box was lost (or dies while the next context is loaded), a
new one is started with every context of the session, and ``notice`` tells the model its variables
are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from typing import Any, Callable, Mapping

from sandboxes import Sandbox, SandboxSpec
from sandboxes.errors import SandboxClosed, SandboxError, SandboxLost
from sandboxes.results import ExecResult

from rlm.repl_setup import HISTORY_JSON, context_file, contexts_code, history_code, setup_code

# The setup cell loads every context; a large one takes a while to parse.
SETUP_TIMEOUT_S = 300.0

Emit = Callable[..., None]
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def sandbox_spec(environment: str, environment_kwargs: Mapping[str, Any], cell_timeout_s: float) -> SandboxSpec:
    """The spec of an RLM's boxes: ``RLM(environment=, environment_kwargs=)`` and the cell timeout."""
    return SandboxSpec(backend=environment, cell_timeout_s=cell_timeout_s, **environment_kwargs)


class BoxGone(Exception):
    """The workspace's box is lost; a new one is needed."""


def encode_context(context: Any) -> tuple[bool, bytes]:
    """(is_json, bytes) of one context: a str as UTF-8 text, a list or dict as JSON."""
    if isinstance(context, str):
        return False, context.encode("utf-8")
    return True, json.dumps(context, ensure_ascii=False, default=str).encode("utf-8")


class Workspace:
    """One box with its contexts and setup; ``begin`` makes it ready in a task, ``ready`` waits for it."""

    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec
        self.contexts: list[Any] = []
        self.box: Sandbox | None = None
        self.setup_cell = ""
        self.has_history = False
        self._history = b""
        self._paths: list[str] = []  # where each context is, in the box
        # Told to the model once the box is ready: its REPL state is gone (a new box, a new kernel).
        self.notice: str | None = None
        self._lost: str | None = None
        self._extra_files: tuple[tuple[str, bytes], ...] = ()
        self._extra_code = ""
        self._owner: str | None = None
        self._emit: Emit = lambda event, **fields: None
        self._task: asyncio.Task[Sandbox] | None = None

    @property
    def count(self) -> int:
        return len(self.contexts)

    # -- getting ready -------------------------------------------------------------------------------

    def begin(self, context: Any, handlers: Mapping[str, Any], *, emit: Emit, deadline: float | None,
              extra_files: tuple[tuple[str, bytes], ...] = (), extra_code: str = "", owner: str | None = None) -> str:
        """Add ``context`` as the next ``context_N`` and start getting the box ready in a task.

        Returns the id of the box the task will use (a new one unless a live box is kept), so events
        can name it before it exists. ``extra_files`` and ``extra_code`` (custom tools) are uploaded
        and run with the setup cell of a new box. ``owner`` (the run id) is whose turn a new box's
        start takes in the process's start queue; a start that has to wait says so with the events
        ``box_queued`` and ``box_wait``.
        """
        if self._task is not None and not self._task.done():
            raise RuntimeError("the workspace is already getting ready")
        self.contexts.append(context)
        self._owner, self._emit = owner, emit
        self._extra_files, self._extra_code = extra_files, extra_code
        if self._lost is not None and self.box is not None:
            self.notice = self._state_gone(self._lost)
        fresh = self.box is None or self._lost is not None
        box_id = uuid.uuid4().hex[:12] if fresh else self.box.box_id  # type: ignore[union-attr]
        self._task = asyncio.ensure_future(self._prepare(handlers, emit, deadline, box_id))
        return box_id

    async def _prepare(self, handlers: Mapping[str, Any], emit: Emit, deadline: float | None,
                       box_id: str) -> Sandbox:
        started = time.monotonic()
        async with asyncio.timeout_at(deadline):
            timings: dict[str, float] = {}
            box = self.box
            if box is not None and self._lost is None:
                box.bind(handlers)
                try:
                    await self._add_context(box, timings)
                    emit("sandbox_ready", box_id=box.box_id, new=False, seconds=_round(time.monotonic() - started),
                         contexts=self.count, **timings)
                    return box
                except BoxGone as exc:
                    self._lost = str(exc)
                    self.notice = self._state_gone(str(exc))
                    box_id = uuid.uuid4().hex[:12]
            if self.box is not None:
                await self._discard()
            box = await self._start(handlers, box_id, timings)
            emit("sandbox_ready", box_id=box.box_id, new=True, seconds=_round(time.monotonic() - started),
                 contexts=self.count, **timings)
            return box

    def _state_gone(self, reason: str) -> str:
        return (f"The sandbox was lost ({reason}): every variable you defined is gone. A new one holds "
                f"context_0 to context_{self.count - 1} and the REPL functions.")

    async def _start(self, handlers: Mapping[str, Any], box_id: str, timings: dict[str, float]) -> Sandbox:
        mark = time.monotonic()
        # Encode the contexts (a large JSON context takes seconds) while the box starts.
        encoding = asyncio.ensure_future(asyncio.to_thread(lambda: [encode_context(c) for c in self.contexts]))
        try:
            box = await Sandbox.start(
                self.spec, handlers, box_id, owner=self._owner,
                on_queued=lambda ahead: self._emit("box_queued", box_id=box_id, ahead=ahead),
                on_admitted=lambda waited: self._emit("box_wait", box_id=box_id, seconds=_round(waited)))
        except BaseException as exc:
            encoding.cancel()  # the thread finishes on its own; its result is dropped
            if isinstance(exc, SandboxError):
                raise SandboxError(f"the {self.spec.backend} sandbox could not start: {exc}") from None
            raise
        timings["start_s"] = _round(time.monotonic() - mark - box.start_wait_s)
        if box.start_wait_s:
            timings["wait_s"] = _round(box.start_wait_s)
        try:
            mark = time.monotonic()
            self._paths = []
            for index, encoded in enumerate(await encoding):
                await self._stage(box, index, encoded)
            for name, data in self._extra_files:
                await box.put_file(name, data)
            if self.has_history:
                await box.put_file(HISTORY_JSON, self._history)
            timings["upload_s"] = _round(time.monotonic() - mark)
            mark = time.monotonic()
            await self._run(box, self._full_setup())
            timings["setup_s"] = _round(time.monotonic() - mark)
        except BaseException:
            await box.close()
            raise
        self.box, self._lost = box, None
        return box

    async def _add_context(self, box: Sandbox, timings: dict[str, float]) -> None:
        """A live session box: upload the newest context and bind it; a box found dead raises BoxGone."""
        index = self.count - 1
        try:
            mark = time.monotonic()
            path = await self._stage(box, index, await asyncio.to_thread(encode_context, self.contexts[index]))
            timings["upload_s"] = _round(time.monotonic() - mark)
            mark = time.monotonic()
            result = await box.execute(contexts_code([path], first=index), timeout=SETUP_TIMEOUT_S)
            timings["setup_s"] = _round(time.monotonic() - mark)
        except (SandboxLost, SandboxClosed) as exc:
            raise BoxGone(str(exc)) from None
        if result.status == "sandbox_lost":
            raise BoxGone(result.notice or "the box is gone")
        if result.status in ("kernel_restarted", "oom"):
            # The box lives on with a new kernel: set everything up again; the model must know.
            await self._run(box, self._full_setup())
            self.notice = ("The REPL kernel was restarted: every variable you defined is gone. context_0 to "
                           f"context_{index} and the REPL functions are defined again.")
        elif not result.ok:
            raise SandboxError(f"loading context_{index} failed ({result.status}): {error_text(result)}")
        self._full_setup()

    async def _stage(self, box: Sandbox, index: int, encoded: tuple[bool, bytes]) -> str:
        """Hand the box context ``index`` as a read-only file (``Sandbox.stage_file``); return its path."""
        is_json, data = encoded
        path = await box.stage_file(context_file(index, is_json), data)
        self._paths.append(path)
        return path

    def _full_setup(self) -> str:
        """The setup cell of every context so far (and ``history``, and the tools); kept for restarts."""
        self.setup_cell = setup_code(self._paths, history=self.has_history) + self._extra_code
        return self.setup_cell

    async def _run(self, box: Sandbox, code: str, timeout: float = SETUP_TIMEOUT_S) -> None:
        result = await box.execute(code, timeout=timeout)
        if result.status == "sandbox_lost":
            self._lost = result.notice or "the box is gone"
        if not result.ok:
            raise SandboxError(f"the REPL setup cell failed ({result.status}): {error_text(result)}")

    async def ready(self) -> Sandbox:
        """The box, once ready; raises what getting ready raised (SandboxError, LimitExceeded...)."""
        if self._task is None:
            raise RuntimeError("begin() was not called")
        return await asyncio.shield(self._task)

    @property
    def task(self) -> asyncio.Task[Sandbox] | None:
        return self._task

    def take_notice(self) -> str | None:
        notice, self.notice = self.notice, None
        return notice

    # -- during a run ----------------------------------------------------------------------------------

    async def setup_again(self, timeout: float) -> None:
        """After a kernel restart: the setup cell again (every context, the functions, ``history``)."""
        assert self.box is not None
        await self._run(self.box, self.setup_cell, timeout)

    async def put_history(self, history: list[dict[str, Any]], timeout: float) -> None:
        """Upload the full root conversation and bind it as ``history`` (a file, never a code string)."""
        assert self.box is not None
        self._history = json.dumps(history, ensure_ascii=False).encode("utf-8")
        await self.box.put_file(HISTORY_JSON, self._history)
        await self._run(self.box, history_code(), timeout)
        if not self.has_history:
            self.has_history = True
            self.setup_cell += history_code()

    def mark_lost(self, reason: str) -> None:
        """A cell found the box gone: a session replaces it on its next completion."""
        self._lost = reason

    # -- ending -------------------------------------------------------------------------------------

    async def abandon(self) -> None:
        """End getting ready if it has not finished (its box is destroyed); keep a ready box."""
        task = self._task
        if task is None:
            return
        if not task.done():
            task.cancel()
        # Wait for it to end (its own cleanup destroys a box it started) and consume its outcome.
        await asyncio.gather(task, return_exceptions=True)
        if (task.cancelled() or task.exception() is not None) and self.box is not None and self._lost is None:
            # A context was not (fully) loaded into the kept box: the next completion starts a new one.
            self._lost = "the previous completion ended before its context was loaded"

    async def close(self) -> None:
        """Cancel getting ready and destroy the box. Idempotent; finishes even if the caller is cancelled."""
        try:
            await self.abandon()
        finally:
            await self._discard()

    async def _discard(self) -> None:
        box, self.box = self.box, None
        if box is not None:
            with contextlib.suppress(Exception):
                await box.close()


def _round(seconds: float) -> float:
    return round(seconds, 4)


def error_text(result: ExecResult) -> str:
    """A failed cell's traceback without terminal colours (or its notice, or its status)."""
    if result.error is None:
        return result.notice or result.status
    trace = _ANSI.sub("", result.error.traceback or "")
    return trace.strip() or str(result.error)
