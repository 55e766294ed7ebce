"""The sub-call handlers behind ``llm_query`` and ``rlm_query``, for one RLM of a run tree.

Each RLM in the tree gets handlers bound by closure to *that* RLM: its id and depth come from the controller, never from the payload, so
kernel code cannot claim to be shallower or richer than it is (trust invariant 2). Payloads are
untrusted JSON and are checked before use.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from rlm.budget import LimitExceeded
from rlm.clients.base import ModelCallError, ModelClient, ModelTimeoutError
from rlm.fanout import fan_out
from rlm.loop import NodeOutcome, RLMNode
from rlm.tools import ToolFailed
from rlm.tree import Handlers, RunTree

MAX_BATCH = 100_000  # prompts per batched call
PREVIEW_CHARS = 500  # of prompts and answers in sub-call events


class SubCalls:
    """The handlers for one RLM: each closes over the node, so depth and identity are the controller's."""

    def __init__(self, tree: RunTree, node: RLMNode) -> None:
        self.tree = tree
        self.node = node

    def handlers(self) -> Handlers:
        handlers: Handlers = {
            "llm_query": self.llm_query,
            "llm_query_batched": self.llm_query_batched,
            "rlm_query": self.rlm_query,
            "rlm_query_batched": self.rlm_query_batched,
            "answer": self.answer,
        }
        if self.tree.config.tools_at(self.node.depth).functions:
            handlers["tool"] = self.tool
        return handlers

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
        except asyncio.CancelledError:
            status, error = "cancelled", "the call was cancelled (its cell was stopped, or the run ended)"
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

        async def one(i: int) -> None:
            if self.tree.budget.tripped is not None:
                results[i] = self._ended()
                return
            try:
                results[i] = await self._llm(prompts_[i], client, "llm_query", index=i)
            except LimitExceeded as exc:
                results[i] = {"error": f"limit reached ({exc.limit}): {exc}"}
            except ModelCallError as exc:
                results[i] = {"error": str(exc)}

        await fan_out(len(prompts_), self.tree.limits.max_concurrency, one)
        return results

    def _ended(self) -> dict[str, str]:
        """The answer of a batch item reached after the run hit a limit: no call, no event, a short error
        (tens of thousands of them must still fit in one reply)."""
        return {"error": f"limit reached ({self.tree.budget.tripped}); the run is ending"}

    # -- rlm_query ---------------------------------------------------------------------------------

    async def _child(self, prompt: str, context: Any) -> NodeOutcome:
        node, tree = self.node, self.tree
        depth = node.depth + 1
        child_context, root_prompt = (prompt, None) if context is None else (context, prompt)

        def child() -> RLMNode:  # made once a slot is held: nothing per child exists while it waits
            return RLMNode(tree, rlm_id=tree.next_child_id(node.rlm_id), depth=depth, parent_id=node.rlm_id,
                           client=tree.sub_client, context=child_context, root_prompt=root_prompt)

        if depth >= tree.config.max_depth:
            return await child().run()  # a plain model call; needs no sandbox slot
        async with tree.child_slots(depth):
            return await child().run()

    @staticmethod
    def _answer_of(outcome: NodeOutcome) -> str:
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

        results: list[Any] = [None] * len(prompts_)

        async def one(i: int) -> None:
            if self.tree.budget.tripped is not None:
                results[i] = self._ended()
                return
            try:
                outcome = await self._child(prompts_[i], contexts[i] if contexts is not None else None)
                results[i] = self._answer_of(outcome)
            except (RuntimeError, LimitExceeded, ModelCallError) as exc:
                results[i] = {"error": str(exc)}

        # As many workers as children can run at once: sandboxed children hold a child slot each, plain
        # calls at max_depth a model slot each; a worker more would only wait.
        tree = self.tree
        plain = self.node.depth + 1 >= tree.config.max_depth
        workers = tree.limits.max_concurrency if plain else tree.limits.max_concurrent_children
        await fan_out(len(prompts_), workers, one)
        return results

    # -- custom tools ------------------------------------------------------------------------------

    async def tool(self, payload: Any) -> dict[str, Any]:
        """One custom tool call: ``{"value": result}``, or ``{"error": why}`` (the kernel raises ToolError)."""
        node, tree = self.node, self.tree
        p = self._payload(payload, "name", "args", "kwargs")
        name, args, kwargs = p.get("name"), p.get("args"), p.get("kwargs")
        tool = tree.config.tools_at(node.depth).functions.get(name) if isinstance(name, str) else None
        if tool is None:
            raise ValueError(f"no custom tool named {str(name)[:100]!r} in this REPL")
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError("args must be a list and kwargs an object")
        started = time.monotonic()
        status, error, value = "ok", None, None
        try:
            value = await tree.tool_runner.call(tool, args, kwargs)
            return {"value": value}
        except ToolFailed as exc:
            status, error = exc.status, str(exc)
            return {"error": error}
        except LimitExceeded as exc:
            status, error = exc.limit, str(exc)
            return {"error": f"limit reached ({exc.limit}): {exc}; the run is ending"}
        except asyncio.CancelledError:
            status, error = "cancelled", "the call was cancelled (its cell was stopped, or the run ended)"
            raise
        finally:
            tree.emit("tool_call", rlm_id=node.rlm_id, depth=node.depth, iteration=node.iteration, name=name,
                      args=_preview([args, kwargs]), status=status, error=error,
                      seconds=round(time.monotonic() - started, 4),
                      result=_preview(value) if status == "ok" else None)

    # -- answer ------------------------------------------------------------------------------------

    async def answer(self, payload: Any) -> None:
        p = self._payload(payload, "content", "ready")
        content, ready = p.get("content"), p.get("ready")
        if not isinstance(content, str) or not isinstance(ready, bool):
            raise ValueError("answer needs content (str) and ready (bool)")
        self.node.on_answer(content, ready)
        return None


def _preview(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "..."


def handlers(tree: RunTree, node: RLMNode) -> Handlers:
    """The guest-call handlers of one RLM's sandbox, bound by closure to that RLM."""
    return SubCalls(tree, node).handlers()
