"""The run tree: what every RLM of one ``completion`` shares.

The budget, one client per model (on the run's single event loop), the run log and every other
consumer of run events, and the concurrency bounds. The loop (``rlm.loop``) and the sub-call
handlers (``rlm.recursion``) both work on it; it knows neither: the handlers for a node's sandbox
come from ``handler_factory``, which the RLM sets to ``rlm.recursion``'s.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from sandboxes.logs import get_logger

from rlm.budget import Budget, Limits
from rlm.clients.base import ModelCallError, ModelClient, ModelResponse, RetryPolicy
from rlm.tools import Toolbox, ToolRunner
from rlm.trajectory import RunLog, make_event

log = get_logger("rlm")

Handlers = dict[str, Callable[[Any], Awaitable[Any]]]


@dataclass
class TreeConfig:
    """The settings every RLM in a tree shares."""

    environment: str
    environment_kwargs: dict[str, Any]
    max_depth: int
    max_iterations: int
    limits: Limits
    custom_system_prompt: str | None = None
    # Custom tools of the root RLM, and of every child RLM (the reference's custom_sub_tools).
    tools: Toolbox = field(default_factory=Toolbox)
    sub_tools: Toolbox = field(default_factory=Toolbox)

    # Summarise the conversation of an RLM loop when it reaches this share of the model's window.
    compaction: bool = False
    compaction_threshold_pct: float = 0.85

    def tools_at(self, depth: int) -> Toolbox:
        return self.tools if depth == 0 else self.sub_tools


@dataclass
class RunTree:
    run_id: str
    config: TreeConfig
    budget: Budget
    root_client: ModelClient
    # Where sub-calls go: other_backends[0] when given, else the root model.
    sub_client: ModelClient
    # Every configured model by name, for llm_query(prompt, model="...").
    clients: dict[str, ModelClient]
    run_log: RunLog | None = None
    progress: Callable[[str, dict[str, Any]], None] | None = None
    # The user's ``on_event``: every event as the run log records it, as it happens.
    on_event: Callable[[dict[str, Any]], None] | None = None
    started: float = field(default_factory=time.monotonic)
    # Builds one node's guest-call handlers (``rlm.recursion.handlers``).
    # (The node is an ``rlm.loop.RLMNode``; typed Any so this module stays below the loop.)
    handler_factory: Callable[["RunTree", Any], Handlers] | None = None
    _model_slots: asyncio.Semaphore = field(init=False)
    _child_slots: dict[int, asyncio.Semaphore] = field(init=False, default_factory=dict)
    _child_numbers: dict[str, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._model_slots = asyncio.Semaphore(self.config.limits.max_concurrency)
        self.retry = RetryPolicy(max_retries=self.config.limits.max_retries)
        self.tool_runner = ToolRunner(self.budget)

    @property
    def limits(self) -> Limits:
        return self.config.limits

    # -- events ----------------------------------------------------------------------------------

    def emit(self, event: str, **fields: Any) -> None:
        """One event, built once, to every consumer: the run log, the progress printer, ``on_event``."""
        record = make_event(event, self.run_id, time.monotonic() - self.started, fields)
        if self.run_log is not None:
            self.run_log.write(record)
        if self.progress is not None:
            try:
                self.progress(event, fields)
            except Exception:  # a broken progress display must not end a run
                pass
        if self.on_event is not None:
            try:
                self.on_event(record)
            except Exception:  # a user's callback that raises is logged and never ends a run
                log.warning("on_event_failed", run_id=self.run_id, kind=event, exc_info=True)

    # -- model calls -----------------------------------------------------------------------------

    async def call_model(self, client: ModelClient, messages: list[dict[str, str]], *, rlm_id: str,
                         depth: int) -> ModelResponse:
        """One model call: a concurrency slot, a budget reservation, the call with retries, settlement.

        Raises LimitExceeded when the budget or the clock stops it, ModelCallError when the provider
        fails for good. The wall-clock deadline bounds retries and waits.
        """
        budget = self.budget
        budget.check()
        retries = 0

        def on_retry(attempt: int, exc: ModelCallError, delay: float) -> None:
            nonlocal retries
            retries += 1
            self.emit("retry", rlm_id=rlm_id, depth=depth, model=client.model_name, attempt=attempt,
                      status=exc.status, error=str(exc)[:300], delay_s=round(delay, 3))

        def settle(input_tokens: int, output_tokens: int, failed: bool) -> None:
            cost = budget.settle(reservation, input_tokens, output_tokens, retries=retries, failed=failed)
            # Every settled call, so a consumer can account a run's spend as it goes (and still
            # has it when the run is cancelled before its result exists).
            self.emit("model_call", rlm_id=rlm_id, depth=depth, model=client.model_name,
                      input_tokens=input_tokens, output_tokens=output_tokens,
                      cost_usd=None if cost is None else round(cost, 8), retries=retries, failed=failed,
                      seconds=round(time.monotonic() - started, 4))

        async with self._model_slots:
            reservation = await budget.reserve(client.model_name, messages)
            started = time.monotonic()
            try:
                response = await client.complete(
                    messages, max_output_tokens=reservation.max_output_tokens,
                    timeout=self.limits.model_timeout_s, deadline=budget.deadline, retry=self.retry,
                    on_retry=on_retry)
            except ModelCallError as exc:
                settle(0, 0, True)
                remaining = budget.remaining_s()
                if remaining is not None and remaining <= 0.05:
                    raise budget.trip("max_wall_s", f"the run reached its wall-clock limit of "
                                                    f"{self.limits.max_wall_s:g} s") from exc
                raise
            except BaseException:
                settle(0, 0, True)
                raise
        settle(response.input_tokens, response.output_tokens, False)
        return response

    def pick_client(self, model: Any) -> ModelClient:
        if model is None:
            return self.sub_client
        if not isinstance(model, str) or model not in self.clients:
            known = ", ".join(sorted(self.clients))
            raise ValueError(f"unknown model {str(model)[:100]!r}; this run has: {known}")
        return self.clients[model]

    # -- children --------------------------------------------------------------------------------

    def next_child_id(self, parent_id: str) -> str:
        counter = self._child_numbers.setdefault(parent_id, itertools.count(1))
        return f"{parent_id}.{next(counter)}"

    def child_slots(self, depth: int) -> asyncio.Semaphore:
        # One pool per depth: a parent holding a slot at depth d waits only on slots at depth d+1,
        # so a tree of batched children can never deadlock on its own slots.
        slots = self._child_slots.get(depth)
        if slots is None:
            slots = self._child_slots[depth] = asyncio.Semaphore(self.limits.max_concurrent_children)
        return slots

    def handlers_for(self, node: Any) -> Handlers:
        """The guest-call handlers of one RLM's sandbox, bound to that RLM."""
        if self.handler_factory is None:
            return {}
        return self.handler_factory(self, node)
