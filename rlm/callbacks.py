"""User callbacks, all fed by the one stream of run events.

``RLM(on_event=...)`` gets every event as the run log records it. The reference implementation's
hooks are consumers of that same stream, with the reference's arguments:

- ``on_iteration_start(depth, iteration)`` on ``iteration_start``;
- ``on_iteration_complete(depth, iteration, duration_s)`` on ``iteration_end``;
- ``on_subcall_start(depth, model, prompt_preview)`` on a child RLM's ``rlm_start`` (depth >= 1);
- ``on_subcall_complete(depth, model, duration_s, error_or_none)`` on its ``rlm_end``.

Iterations are numbered from 1 and fire at every depth. A "subcall" here is a child RLM
(``rlm_query``), as in the reference, including one that is a plain model call at the depth limit;
``llm_query`` calls are ``subcall`` events for ``on_event`` only. A callback that raises is logged
and never ends the run, nor stops the other callbacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from sandboxes.logs import get_logger

log = get_logger("rlm")

PROMPT_PREVIEW_CHARS = 80  # as the reference's on_subcall_start
# A child that ends so has answered; any other status is reported as its error.
ANSWERED = ("final", "max_depth")

EventHandler = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Callbacks:
    on_event: EventHandler | None = None
    on_iteration_start: Callable[[int, int], None] | None = None
    on_iteration_complete: Callable[[int, int, float], None] | None = None
    on_subcall_start: Callable[[int, str, str], None] | None = None
    on_subcall_complete: Callable[[int, str, float, str | None], None] | None = None

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable, not {type(value).__name__}")

    def __bool__(self) -> bool:
        return any(value is not None for value in vars(self).values())

    def __call__(self, event: dict[str, Any]) -> None:
        """Deliver one run event to every callback that wants it."""
        self._fire("on_event", event, event)
        kind, depth = event.get("event"), event.get("depth")
        if kind == "iteration_start":
            self._fire("on_iteration_start", event, depth, event["iteration"])
        elif kind == "iteration_end":
            self._fire("on_iteration_complete", event, depth, event["iteration"], event["seconds"])
        elif kind == "rlm_start" and depth:
            self._fire("on_subcall_start", event, depth, str(event.get("model")),
                       (event.get("prompt") or "")[:PROMPT_PREVIEW_CHARS])
        elif kind == "rlm_end" and depth:
            status = event.get("status")
            error = None if status in ANSWERED else (event.get("message") or str(status))
            self._fire("on_subcall_complete", event, depth, str(event.get("model")), event["seconds"], error)

    def _fire(self, name: str, event: dict[str, Any], *args: Any) -> None:
        callback = getattr(self, name)
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:  # a user's callback never ends a run
            log.warning("callback_failed", callback=name, run_id=event.get("run_id"), kind=event.get("event"),
                        exc_info=True)
