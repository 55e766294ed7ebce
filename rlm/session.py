"""Multi-turn sessions: what a persistent RLM (``RLM(persistent=True)``) keeps between completions.

The box with its REPL state (``rlm.workspace``), the root conversation (``rlm.compaction``), and the
session's spend. A box belongs to the event loop it was opened on (its channel's tasks run there),
so a session is bound to one loop: the caller's, when it starts with ``acompletion``; a private loop
on a thread of its own (``LoopThread``), when it starts with the blocking ``completion``, which then
submits every later call to that loop. ``acompletion`` on another loop reaches a private loop the
same way; only a blocking call on the session's own loop (it would wait on itself) and a session
whose loop has ended (its box went with it) are refused, with what to do instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from typing import Any, Callable, Coroutine, TypeVar

from sandboxes import SandboxSpec
from sandboxes.logs import get_logger

from rlm.budget import Limits, ModelUsage
from rlm.compaction import Conversation
from rlm.workspace import Workspace

log = get_logger("rlm")

T = TypeVar("T")
# Limits a session counts across its completions.
SESSION_LIMITS = ("max_llm_calls", "max_tokens", "max_cost_usd", "max_wall_s")
CLOSE_TIMEOUT_S = 120.0


class LoopThread:
    """A private event loop on a daemon thread: where a session used from blocking code keeps its box."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="rlm-session", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


class Session:
    """The box, conversation and spend of one persistent RLM, bound to one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, spec: SandboxSpec, runner: LoopThread | None = None) -> None:
        self.loop = loop
        self.runner = runner
        self.workspace = Workspace(spec)
        self.conversation = Conversation()
        self.usage: dict[str, ModelUsage] = {}
        self.seconds = 0.0  # time spent in completions, what session_limits.max_wall_s counts
        self._lock: asyncio.Lock | None = None

    @property
    def lock(self) -> asyncio.Lock:
        """One completion at a time: they share the REPL and the conversation."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    # -- running on the session's loop ---------------------------------------------------------------

    @property
    def loop_ended(self) -> bool:
        return self.loop.is_closed() or not self.loop.is_running()

    def run_blocking(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``make()`` on the session's loop from blocking code."""
        if _running_loop() is self.loop:
            raise RuntimeError("this persistent RLM's box lives on the running event loop (its session began "
                               "with acompletion), and a blocking completion() here would wait on itself: "
                               "use `await rlm.acompletion(...)`")
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result()

    async def run_async(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``make()`` on the session's loop from async code (the caller's loop, or another one)."""
        if _running_loop() is self.loop:
            return await make()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(make(), self.loop))

    # -- budgets -----------------------------------------------------------------------------------

    def limits_for(self, limits: Limits, session_limits: Limits | None) -> tuple[Limits, dict[str, str]]:
        """The limits of the next completion: its own, tightened to what the session has left.

        Returns them and, for each limit the session made tighter, the message to give if it ends the
        run (an empty dict when the session has no limits). A spent session raises SessionSpent.
        """
        if session_limits is None:
            return limits, {}
        used = {
            "max_llm_calls": sum(u.calls for u in self.usage.values()),
            "max_tokens": sum(u.input_tokens + u.output_tokens for u in self.usage.values()),
            "max_cost_usd": sum(u.cost_usd or 0.0 for u in self.usage.values()),
            "max_wall_s": self.seconds,
        }
        changes: dict[str, Any] = {}
        notes: dict[str, str] = {}
        for name in SESSION_LIMITS:
            cap = getattr(session_limits, name)
            if cap is None:
                continue
            left = cap - used[name]
            what = f"session_limits.{name}={cap:g}"
            if left <= 0:
                raise SessionSpent(name, f"the session's budget is spent ({what}; {used[name]:g} used)")
            own = getattr(limits, name)
            if own is None or left < own:
                changes[name] = int(left) if name in ("max_llm_calls", "max_tokens") else left
                notes[name] = f"the session's budget ran out ({what})"
        return dataclasses.replace(limits, **changes), notes

    def record(self, usage: dict[str, ModelUsage], seconds: float) -> None:
        self.seconds += seconds
        for model, item in usage.items():
            self.usage.setdefault(model, ModelUsage()).add(item)

    # -- ending ------------------------------------------------------------------------------------

    async def _close_here(self) -> None:
        """Destroy the box (after a completion in progress ends). Runs on the session's loop."""
        async with self.lock:
            await self.workspace.close()

    def close_blocking(self) -> None:
        """Destroy the box from blocking code, and stop the private loop if there is one."""
        try:
            if self.loop_ended:
                self.destroy_now()
            elif _running_loop() is self.loop:
                # Inside the loop that owns the box: it cannot be waited for here, so it closes in a task.
                # (In async code, `async with` or `await rlm.aclose()` waits for it.)
                task = self.loop.create_task(self._close_here())
                _PENDING_CLOSES.add(task)
                task.add_done_callback(_PENDING_CLOSES.discard)
                return
            else:
                asyncio.run_coroutine_threadsafe(self._close_here(), self.loop).result(CLOSE_TIMEOUT_S)
        finally:
            if self.runner is not None and _running_loop() is not self.loop:
                self.runner.stop()

    async def close_async(self) -> None:
        """Destroy the box from async code, on whichever loop; and stop the private loop if there is one."""
        if self.loop_ended:
            self.destroy_now()
        elif _running_loop() is self.loop:
            await self._close_here()
        else:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._close_here(), self.loop))
        if self.runner is not None:
            await asyncio.to_thread(self.runner.stop)

    def destroy_now(self) -> None:
        """The loop is gone: destroy the box without it (the backend's synchronous last resort)."""
        box, self.workspace.box = self.workspace.box, None
        if box is not None:
            from sandboxes import cleanup

            with contextlib.suppress(Exception):
                box.backend.emergency_destroy()
            cleanup.unregister(box.backend)
            log.warning("session_box_destroyed_without_its_loop", box_id=box.box_id)


class SessionSpent(Exception):
    """The session's budget has nothing left for another completion."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


_PENDING_CLOSES: set[asyncio.Task[None]] = set()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
