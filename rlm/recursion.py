"""The run tree and the sub-call handlers behind ``llm_query`` and ``rlm_query``.

A ``RunTree`` is everything one ``completion`` shares: the budget, one client per model (on the run's
single event loop), the run log, and the concurrency bounds. Each RLM in the tree gets handlers bound
by closure to *that* RLM: its id and depth come from the controller, never from the payload, so
kernel code cannot claim to be shallower or richer than it is (trust invariant 2). Payloads are
untrusted JSON and are checked before use.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import structlog

from rlm import prompts
from rlm.budget import Budget, LimitExceeded, Limits
from rlm.clients.base import ModelCallError, ModelClient, ModelResponse, ModelTimeoutError, RetryPolicy
from rlm.trajectory import RunLog, make_event

if TYPE_CHECKING:
    from rlm.loop import NodeOutcome, RLMNode

log = structlog.get_logger("rlm")

MAX_BATCH = 100_000  # prompts per batched call
PREVIEW_CHARS = 500  # of prompts and answers in sub-call events
# A plain model call (depth exhausted) refuses material larger than any model window.
MAX_PLAIN_CALL_CHARS = 4_000_000


@dataclass
class TreeConfig:
    """The settings every RLM in a tree shares."""

    environment: str
    environment_kwargs: dict[str, Any]
    max_depth: int
    max_iterations: int
    limits: Limits
    custom_system_prompt: str | None = None


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
    _model_slots: asyncio.Semaphore = field(init=False)
    _child_slots: dict[int, asyncio.Semaphore] = field(init=False, default_factory=dict)
    _child_numbers: dict[str, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._model_slots = asyncio.Semaphore(self.config.limits.max_concurrency)
        self.retry = RetryPolicy(max_retries=self.config.limits.max_retries)

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
                log.warning("on_event_failed", run_id=self.run_id, event=event, exc_info=True)

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

    def handlers_for(self, node: "RLMNode") -> dict[str, Callable[[Any], Awaitable[Any]]]:
        """The guest-call handlers of one RLM's sandbox, bound to that RLM."""
        return SubCalls(self, node).handlers()


class SubCalls:
    """The handlers for one RLM: each closes over the node, so depth and identity are the controller's."""

    def __init__(self, tree: RunTree, node: "RLMNode") -> None:
        self.tree = tree
        self.node = node

    def handlers(self) -> dict[str, Callable[[Any], Awaitable[Any]]]:
        return {
            "llm_query": self.llm_query,
            "llm_query_batched": self.llm_query_batched,
            "rlm_query": self.rlm_query,
            "rlm_query_batched": self.rlm_query_batched,
            "answer": self.answer,
        }

    # -- payload checks (untrusted input) --------------------------------------------------------

    @staticmethod
    def _payload(payload: Any, *keys: str) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise ValueError("the payload must be an object")
        unknown = set(payload) - set(keys)
        if unknown:
            raise ValueError(f"unexpected payload fields: {sorted(unknown)[:5]}")
        return payload

    @staticmethod
    def _prompts(value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise ValueError("prompts must be a list of strings")
        if len(value) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} prompts per batched call")
        return value

    # -- llm_query ---------------------------------------------------------------------------------

    async def _llm(self, prompt: str, client: ModelClient, kind: str, index: int | None = None) -> str:
        node, tree = self.node, self.tree
        started = time.monotonic()
        status, error, response = "ok", None, None
        try:
            response = await tree.call_model(client, [{"role": "user", "content": prompt}],
                                             rlm_id=node.rlm_id, depth=node.depth + 1)
            return response.text
        except LimitExceeded as exc:
            status, error = exc.limit, str(exc)
            raise
        except ModelCallError as exc:
            status, error = "model_timeout_s" if isinstance(exc, ModelTimeoutError) else "error", str(exc)
            raise
        finally:
            tree.emit("subcall", kind=kind, rlm_id=node.rlm_id, parent=node.rlm_id, depth=node.depth + 1,
                      index=index, model=client.model_name, status=status, error=error,
                      seconds=round(time.monotonic() - started, 4),
                      input_tokens=response.input_tokens if response else None,
                      output_tokens=response.output_tokens if response else None,
                      prompt_chars=len(prompt), prompt=prompt[:PREVIEW_CHARS],
                      response=response.text[:PREVIEW_CHARS] if response else None)

    async def llm_query(self, payload: Any) -> str:
        p = self._payload(payload, "prompt", "model")
        if not isinstance(p.get("prompt"), str):
            raise ValueError("prompt must be a string")
        client = self.tree.pick_client(p.get("model"))
        try:
            return await self._llm(p["prompt"], client, "llm_query")
        except LimitExceeded as exc:
            raise RuntimeError(f"limit reached ({exc.limit}): {exc}; the run is ending") from None

    async def llm_query_batched(self, payload: Any) -> list[Any]:
        p = self._payload(payload, "prompts", "model")
        prompts_ = self._prompts(p.get("prompts"))
        client = self.tree.pick_client(p.get("model"))
        results: list[Any] = [None] * len(prompts_)
        indices = iter(range(len(prompts_)))

        async def worker() -> None:
            # A fixed set of workers pulls indices: no task per prompt, so 10,000 prompts cost 64 tasks.
            for i in indices:
                try:
                    results[i] = await self._llm(prompts_[i], client, "llm_query", index=i)
                except LimitExceeded as exc:
                    results[i] = {"error": f"limit reached ({exc.limit}): {exc}"}
                except ModelCallError as exc:
                    results[i] = {"error": str(exc)}

        workers = min(len(prompts_), self.tree.limits.max_concurrency)
        await asyncio.gather(*(worker() for _ in range(workers)))
        return results

    # -- rlm_query ---------------------------------------------------------------------------------

    async def _child(self, prompt: str, context: Any) -> "NodeOutcome":
        from rlm.loop import RLMNode

        node, tree = self.node, self.tree
        depth = node.depth + 1
        child_context, root_prompt = (prompt, None) if context is None else (context, prompt)
        child = RLMNode(tree, rlm_id=tree.next_child_id(node.rlm_id), depth=depth, parent_id=node.rlm_id,
                        client=tree.sub_client, context=child_context, root_prompt=root_prompt)
        if depth >= tree.config.max_depth:
            return await child.run()  # a plain model call; needs no sandbox slot
        async with tree.child_slots(depth):
            return await child.run()

    @staticmethod
    def _answer_of(outcome: "NodeOutcome") -> str:
        if outcome.status in ("final", "max_depth") and outcome.response is not None:
            return outcome.response
        if outcome.status == "max_iterations" and outcome.response:
            return outcome.response  # its best partial answer
        raise RuntimeError(f"the child RLM ended with status {outcome.status}"
                           + (f": {outcome.message}" if outcome.message else "") + " and no answer")

    async def rlm_query(self, payload: Any) -> str:
        p = self._payload(payload, "prompt", "context")
        if not isinstance(p.get("prompt"), str):
            raise ValueError("prompt must be a string")
        outcome = await self._child(p["prompt"], p.get("context"))
        return self._answer_of(outcome)

    async def rlm_query_batched(self, payload: Any) -> list[Any]:
        p = self._payload(payload, "prompts", "contexts")
        prompts_ = self._prompts(p.get("prompts"))
        contexts = p.get("contexts")
        if contexts is not None and (not isinstance(contexts, list) or len(contexts) != len(prompts_)):
            raise ValueError("contexts must be a list with one item per prompt")

        async def one(i: int) -> Any:
            try:
                outcome = await self._child(prompts_[i], contexts[i] if contexts is not None else None)
                return self._answer_of(outcome)
            except (RuntimeError, LimitExceeded, ModelCallError) as exc:
                return {"error": str(exc)}

        return list(await asyncio.gather(*(one(i) for i in range(len(prompts_)))))

    # -- answer ------------------------------------------------------------------------------------

    async def answer(self, payload: Any) -> None:
        p = self._payload(payload, "content", "ready")
        content, ready = p.get("content"), p.get("ready")
        if not isinstance(content, str) or not isinstance(ready, bool):
            raise ValueError("answer needs content (str) and ready (bool)")
        self.node.on_answer(content, ready)
        return None


def plain_call_messages(prompt: str, context: Any) -> list[dict[str, str]]:
    return prompts.plain_call_messages(prompt, context)
