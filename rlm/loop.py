"""One RLM: a sandbox with the context in it, and the loop of model replies and code cells.

The loop ends on a final answer or a limit, and always returns an outcome: every limit, provider
failure and sandbox failure becomes a status with the best partial answer, never an exception that
escapes (cancellation from the caller aside).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from sandboxes.logs import get_logger

from rlm import prompts
from rlm.budget import LimitExceeded
from rlm.clients.base import ContextWindowError, ModelCallError, ModelClient, ModelResponse, ModelTimeoutError
from rlm.compaction import Conversation
from rlm.parsing import parse_reply, truncate
from rlm.tree import RunTree
from rlm.repl_setup import TOOLS_JSON, reset_ready_code, tools_code
from rlm.windows import DEFAULT_WINDOW, estimate_tokens, window_for
from rlm.workspace import SETUP_TIMEOUT_S, Workspace, error_text as _error_text, sandbox_spec
from sandboxes.errors import SandboxError
from sandboxes.results import ExecResult

# A plain model call (depth exhausted) refuses material larger than any model window.
MAX_PLAIN_CALL_CHARS = 4_000_000
# Model replies kept in the run log per iteration.
REPLY_LOG_CHARS = 100_000
PROMPT_PREVIEW_CHARS = 500


@dataclass(frozen=True)
class NodeOutcome:
    status: str
    response: str | None
    iterations: int
    message: str | None = None


class _Stop(Exception):
    """Ends the loop with a status (a limit, or an error that leaves nothing to do)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class RLMNode:
    """One completion at one depth: owns its sandbox for exactly the duration of ``run``.

    A persistent RLM's root instead works in its session's ``workspace`` and ``conversation``, which
    outlive the completion.
    """

    def __init__(self, tree: RunTree, *, rlm_id: str, depth: int, parent_id: str | None, client: ModelClient,
                 context: Any, root_prompt: str | None, workspace: Workspace | None = None,
                 conversation: Conversation | None = None) -> None:
        self.tree = tree
        self.rlm_id = rlm_id
        self.depth = depth
        self.parent_id = parent_id
        self.client = client
        self.context = context
        self.root_prompt = root_prompt
        self.iteration = 0
        self.cell_timeouts = 0
        # The latest answer["content"] the kernel reported, kept here so that a run cut short (limit,
        # lost sandbox) still has its best partial answer.
        self.draft: str | None = None
        self.final: str | None = None
        # True once the model has been shown the output of at least one cell.
        self.looked = False
        self.rejected_early = False
        self.box: Any = None
        self.in_session = workspace is not None
        self.workspace = workspace
        self.conversation = conversation or Conversation()
        self.messages: list[dict[str, str]] = self.conversation.messages
        self.log = get_logger("rlm").bind(run_id=tree.run_id, rlm_id=rlm_id, depth=depth)

    # -- entry -----------------------------------------------------------------------------------

    async def run(self) -> NodeOutcome:
        tree = self.tree
        started = time.monotonic()
        if self.depth >= tree.config.max_depth:
            outcome = await self._plain_call()
        else:
            outcome = await self._run_loop()
        tree.emit("rlm_end", rlm_id=self.rlm_id, depth=self.depth, model=self.client.model_name,
                  status=outcome.status, iterations=outcome.iterations, message=outcome.message,
                  response=truncate(outcome.response, 2000) if outcome.response else None,
                  seconds=round(time.monotonic() - started, 4))
        self.log.info("rlm_end", status=outcome.status, iterations=outcome.iterations)
        return outcome

    def _prompt_preview(self) -> str | None:
        """The start of this RLM's question (for a child, the rlm_query prompt), for events."""
        prompt = self.root_prompt if self.root_prompt is not None else self.context
        return prompt[:PROMPT_PREVIEW_CHARS] if isinstance(prompt, str) else None

    async def _plain_call(self) -> NodeOutcome:
        """At the depth limit an RLM is a plain model call on its prompt and context."""
        tree = self.tree
        tree.emit("rlm_start", rlm_id=self.rlm_id, parent=self.parent_id, depth=self.depth, box_id=None,
                  model=self.client.model_name, plain_call=True, prompt=self._prompt_preview())
        prompt = self.root_prompt or ""
        context = self.context if self.root_prompt is not None else None
        if context is None:
            prompt = self.context if isinstance(self.context, str) else json.dumps(self.context, default=str)
        messages = prompts.plain_call_messages(prompt, context)
        size = sum(len(m["content"]) for m in messages)
        if size > MAX_PLAIN_CALL_CHARS:
            return NodeOutcome("max_depth", None, 0,
                               f"at max_depth={tree.config.max_depth} this RLM is a plain model call, but its "
                               f"material ({size:,} characters) exceeds any model window; raise max_depth")
        try:
            response = await tree.call_model(self.client, messages, rlm_id=self.rlm_id, depth=self.depth)
        except LimitExceeded as exc:
            return NodeOutcome(exc.limit, None, 0, str(exc))
        except ModelCallError as exc:
            status = ("model_timeout_s" if isinstance(exc, ModelTimeoutError) else
                      "context_window" if isinstance(exc, ContextWindowError) else "error")
            return NodeOutcome(status, None, 0, str(exc))
        return NodeOutcome("max_depth", response.text, 0, "depth limit reached: answered by a plain model call")

    async def _run_loop(self) -> NodeOutcome:
        tree = self.tree
        status, message = "error", None
        deadline = tree.budget.deadline
        try:
            async with asyncio.timeout_at(deadline) as scope:
                status, message = await self._in_sandbox()
        except TimeoutError:
            if deadline is not None and scope.expired():
                exc = tree.budget.trip("max_wall_s", f"the run reached its wall-clock limit of "
                                                     f"{tree.limits.max_wall_s:g} s")
                status, message = exc.limit, str(exc)
            else:
                status, message = "error", "a timeout inside the controller"
                self.log.exception("rlm_failed")
        except _Stop as stop:
            status, message = stop.status, str(stop)
        except LimitExceeded as exc:
            status, message = exc.limit, str(exc)
        except ModelTimeoutError as exc:
            status, message = "model_timeout_s", str(exc)
        except ContextWindowError as exc:
            advice = ("even after compaction" if tree.config.compaction else
                      "turn on RLM(compaction=True) to summarise older turns")
            status, message = "context_window", f"the conversation outgrew the model's context window ({advice}): {exc}"
        except ModelCallError as exc:
            status, message = "error", str(exc)
        except SandboxError as exc:
            status, message = "error", f"sandbox failure: {exc}"
        except Exception as exc:  # a bug or an unexpected failure: report it, do not raise
            self.log.exception("rlm_failed")
            status, message = "error", f"{exc.__class__.__name__}: {exc}"
        if status == "final":
            return NodeOutcome("final", self.final, self.iteration)
        response = self.draft or None
        if status == "max_iterations" and not response:
            response = await self._last_chance()
        return NodeOutcome(status, response, self.iteration, message)

    # -- the sandbox -------------------------------------------------------------------------------

    async def _in_sandbox(self) -> tuple[str, str | None]:
        """Start getting the box ready (a task) and run the loop meanwhile; the box ends with the RLM,
        or stays with the session of a persistent RLM."""
        tree = self.tree
        config = tree.config
        workspace = self.workspace = self.workspace or Workspace(
            sandbox_spec(config.environment, config.environment_kwargs, config.limits.cell_timeout_s))
        toolbox = tree.config.tools_at(self.depth)
        box_id = workspace.begin(self.context, tree.handlers_for(self), emit=self._emit,
                                 deadline=tree.budget.deadline,
                                 extra_files=((TOOLS_JSON, toolbox.manifest()),) if toolbox else (),
                                 extra_code=tools_code(TOOLS_JSON) if toolbox else "", owner=tree.run_id)
        self.log = self.log.bind(box_id=box_id)
        tree.emit("rlm_start", rlm_id=self.rlm_id, parent=self.parent_id, depth=self.depth,
                  box_id=box_id, model=self.client.model_name, prompt=self._prompt_preview())
        self.log.info("rlm_start", model=self.client.model_name)
        try:
            return await self._iterate()
        finally:
            await (workspace.abandon() if self.in_session else workspace.close())

    def _emit(self, event: str, **fields: Any) -> None:
        self.tree.emit(event, rlm_id=self.rlm_id, depth=self.depth, **fields)

    async def _box_ready(self) -> str | None:
        """Wait until the box is ready (the first cell may wait here for the end of its start); return
        what the model must be told about it (its state is gone), if anything."""
        if self.box is None:
            self.box = await self.workspace.ready()
        conversation = self.conversation
        if conversation.history_pending:
            await self.workspace.put_history(conversation.history, self._bounded(SETUP_TIMEOUT_S)[0])
            conversation.history_pending = False
        notice = self.workspace.take_notice()
        if notice:
            self._emit("notice", iteration=self.iteration, text=notice)
        return notice

    def _bounded(self, timeout: float) -> tuple[float, bool]:
        """``timeout`` clamped to the wall clock; True when the clock is the tighter bound."""
        remaining = self.tree.budget.remaining_s()
        if remaining is not None and remaining < timeout:
            return max(remaining, 0.01), True
        return timeout, False

    # -- the loop ----------------------------------------------------------------------------------

    async def _iterate(self) -> tuple[str, str | None]:
        tree = self.tree
        config = tree.config
        messages = self.messages
        description = prompts.describe_context(self.context)
        if not messages:
            messages[:] = [
                {"role": "system", "content": prompts.system_prompt(
                    max_iterations=config.max_iterations, output_chars=config.limits.max_output_chars,
                    custom=config.custom_system_prompt, tools=config.tools_at(self.depth).prompt_section())},
                {"role": "user", "content": prompts.first_message(description, self.root_prompt)},
            ]
        else:  # the next completion of a session: a new context beside the others
            notice = self.workspace.take_notice()
            self.conversation.add_turn(prompts.new_context_message(
                self.workspace.count - 1, description, self.root_prompt, notice))
        for iteration in range(1, config.max_iterations + 1):
            self.iteration = iteration
            started = time.monotonic()
            tree.emit("iteration_start", rlm_id=self.rlm_id, depth=self.depth, iteration=iteration)
            if config.compaction:
                await self._compact()
            asked = time.monotonic()
            reply = await self._ask()
            model_s = time.monotonic() - asked
            text = reply.text
            parsed = parse_reply(text)
            tree.emit("iteration", rlm_id=self.rlm_id, depth=self.depth, iteration=iteration,
                      reply=text[:REPLY_LOG_CHARS], code_blocks=len(parsed.blocks),
                      input_tokens=reply.input_tokens, output_tokens=reply.output_tokens,
                      model_seconds=round(model_s, 4), prompt_chars=sum(len(m["content"]) for m in messages))
            messages.append({"role": "assistant", "content": text})
            feedback: list[str] = []
            for index, code in enumerate(parsed.blocks, 1):
                feedback.append(await self._run_cell(code, index, len(parsed.blocks)))
                if self.final is not None:
                    break
            if self.final is None and parsed.final is not None:
                feedback.extend(await self._final_from_text(parsed.final.kind, parsed.final.value))
            if self.final is not None:
                self._iteration_end(started)
                return "final", None
            if self.rejected_early:
                self.rejected_early = False
                await self._quiet(reset_ready_code())
                feedback.append(prompts.TOO_EARLY)
            if parsed.bad_final_var is not None:
                feedback.append(prompts.BAD_FINAL_VAR.format(arg=parsed.bad_final_var))
            if parsed.unclosed is not None:
                feedback.append(prompts.UNCLOSED.format(lang=parsed.unclosed))
            if not text.strip():
                feedback.append(prompts.EMPTY_REPLY)
            elif not parsed.blocks and parsed.final is None and parsed.unclosed is None:
                feedback.append(prompts.NO_CODE)
            if parsed.blocks:
                self.looked = True
            for note in feedback:
                if not note.startswith("Block "):
                    tree.emit("notice", rlm_id=self.rlm_id, depth=self.depth, iteration=iteration, text=note)
            messages.append({"role": "user", "content": prompts.next_turn(
                feedback, iteration=iteration, max_iterations=config.max_iterations,
                root_prompt=self.root_prompt)})
            self._iteration_end(started)
        return "max_iterations", f"no final answer after {config.max_iterations} iterations"

    async def _ask(self) -> ModelResponse:
        """The root model's next reply. A provider's "context length exceeded" compacts (when compaction
        is on) and asks once more; without compaction it ends the run with status context_window."""
        try:
            return await self._call_root()
        except ContextWindowError:
            if not self.tree.config.compaction or not await self._compact(forced=True):
                raise
            return await self._call_root()

    async def _call_root(self) -> ModelResponse:
        tree = self.tree
        call = tree.call_model(self.client, self.messages, rlm_id=self.rlm_id, depth=self.depth)
        getting_ready = self.workspace.task if self.workspace is not None else None
        if self.box is not None or getting_ready is None:
            return await call
        # The box is still getting ready and the model thinks meanwhile. If the box fails first, the call
        # is cancelled: a failed start costs at most this one call.
        pending = asyncio.ensure_future(call)
        try:
            await asyncio.wait({pending, getting_ready}, return_when=asyncio.FIRST_COMPLETED)
            if not pending.done() and (getting_ready.cancelled() or getting_ready.exception() is not None):
                await self.workspace.ready()  # raises why the box failed
            return await pending
        finally:
            if not pending.done():
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)

    async def _compact(self, *, forced: bool = False) -> bool:
        """Summarise the conversation when it nears the model's window (or the provider said it is over).

        One model call, counted like any other; the REPL state is untouched and the full conversation
        goes to the REPL as ``history``. Returns whether it compacted.
        """
        tree, conversation = self.tree, self.conversation
        known = window_for(self.client.model_name, tree.limits.context_windows)
        window = known or DEFAULT_WINDOW
        tokens = estimate_tokens(self.messages)
        threshold = int(tree.config.compaction_threshold_pct * window)
        if (tokens < threshold and not forced) or len(self.messages) <= 4:
            return False
        if forced:  # our estimate said it fits and the provider disagreed: aim well below what failed
            window = min(window, int(tokens * 0.75))
        asked = time.monotonic()
        reply = await tree.call_model(self.client, conversation.summary_request(window), rlm_id=self.rlm_id,
                                      depth=self.depth)
        conversation.compact(reply.text.strip() or "(the summary came back empty)")
        self._emit("compaction", iteration=self.iteration, count=conversation.compactions, forced=forced,
                   tokens_before=tokens, tokens_after=estimate_tokens(self.messages), window=known,
                   threshold=threshold, model_seconds=round(time.monotonic() - asked, 4),
                   input_tokens=reply.input_tokens, output_tokens=reply.output_tokens,
                   history_messages=len(conversation.history), summary=reply.text[:2000])
        self.log.info("compaction", count=conversation.compactions, tokens_before=tokens, forced=forced)
        return True

    def _iteration_end(self, started: float) -> None:
        """An iteration completed (its cells ran); one cut short by a limit ends with rlm_end instead."""
        self.tree.emit("iteration_end", rlm_id=self.rlm_id, depth=self.depth, iteration=self.iteration,
                       seconds=round(time.monotonic() - started, 4))

    async def _final_from_text(self, kind: str, value: str) -> list[str]:
        if not self.looked:
            return [prompts.TOO_EARLY]
        if kind == "text":
            self.final = value
            return []
        # FINAL_VAR(name) outside code: let the kernel report the variable's value through `answer`.
        return [await self._run_cell(f"FINAL_VAR({value!r})", 1, 1)]

    def on_answer(self, content: str, ready: bool) -> None:
        """The kernel reported answer["content"] / answer["ready"] (or FINAL / FINAL_VAR ran)."""
        self.draft = content
        if ready and self.final is None:
            if self.looked:
                self.final = content
            else:
                self.rejected_early = True

    async def _run_cell(self, code: str, index: int, total: int) -> str:
        """Run one block; return what the model is told about it. Raises _Stop / LimitExceeded to end."""
        box_notice = await self._box_ready()
        tree, box = self.tree, self.box
        timeout, clock_bound = self._bounded(tree.limits.cell_timeout_s)
        started = time.monotonic()
        execute = asyncio.ensure_future(box.execute(code, timeout=timeout))
        tripped = asyncio.ensure_future(tree.budget.tripped_event.wait())
        try:
            await asyncio.wait({execute, tripped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            tripped.cancel()
            if not execute.done():
                execute.cancel()  # the sandbox interrupts the cell
                await asyncio.gather(execute, return_exceptions=True)
        if execute.cancelled():
            tree.budget.check()
            raise _Stop("error", "the cell was cancelled")
        result: ExecResult = execute.result()
        output = _output_text(result)
        tree.emit("cell", rlm_id=self.rlm_id, depth=self.depth, iteration=self.iteration, index=index,
                  code=code, status=result.status, stdout=result.stdout, stderr=result.stderr,
                  error=_error_text(result) if result.error else None, notice=result.notice,
                  seconds=round(result.duration_s, 4), wall_seconds=round(time.monotonic() - started, 4))
        tree.budget.check()
        # A cell that ignored its interrupt comes back "kernel_restarted" after the grace period:
        # that is a timeout too (a kernel that died on its own is not).
        timed_out = result.status == "timeout" or (result.status == "kernel_restarted"
                                                   and result.duration_s >= timeout)
        if timed_out:
            if clock_bound:
                raise tree.budget.trip("max_wall_s", f"the run reached its wall-clock limit of "
                                                     f"{tree.limits.max_wall_s:g} s during a cell")
            self.cell_timeouts += 1
            if self.cell_timeouts > tree.limits.max_cell_timeouts:
                raise _Stop("cell_timeout_s", f"{self.cell_timeouts} cells ran past the per-cell timeout of "
                                              f"{timeout:g} s (Limits.max_cell_timeouts={tree.limits.max_cell_timeouts})")
        if result.status == "sandbox_lost":
            reason = result.notice or _error_text(result)
            self.workspace.mark_lost(reason)
            self._emit("sandbox_lost", iteration=self.iteration, box_id=box.box_id, reason=reason)
            raise _Stop("error", f"the sandbox was lost: {reason}" + (
                " The session starts a new box on its next completion; the REPL state is gone."
                if self.in_session else ""))
        report = prompts.cell_report(index, total, "timeout" if timed_out else result.status, output,
                                     result.duration_s, tree.limits.max_output_chars)
        if timed_out:
            report += "\n" + prompts.CELL_TIMED_OUT.format(timeout=timeout)
        if result.status in ("kernel_restarted", "oom"):
            why = "out of memory" if result.status == "oom" else "the cell would not stop"
            await self.workspace.setup_again(self._bounded(SETUP_TIMEOUT_S)[0])
            note = prompts.KERNEL_RESTARTED.format(why=why)
            tree.emit("notice", rlm_id=self.rlm_id, depth=self.depth, iteration=self.iteration, text=note)
            report += "\n" + note
        if box_notice:
            report += "\n" + box_notice
        return report

    async def _quiet(self, code: str) -> None:
        try:
            await self.box.execute(code, timeout=self._bounded(10.0)[0])
        except SandboxError:
            pass

    async def _last_chance(self) -> str | None:
        """Out of iterations with no draft: ask once for the best answer so far (if the budget allows)."""
        tree = self.tree
        if tree.budget.tripped is not None:
            return None
        messages = [dict(m) for m in self.messages]
        if messages and messages[-1]["role"] == "user":
            messages[-1]["content"] += "\n\n" + prompts.LAST_CHANCE
        else:
            messages.append({"role": "user", "content": prompts.LAST_CHANCE})
        try:
            reply = await tree.call_model(self.client, messages, rlm_id=self.rlm_id, depth=self.depth)
        except (LimitExceeded, ModelCallError):
            return None
        parsed = parse_reply(reply.text)
        if parsed.final is not None and parsed.final.kind == "text":
            return parsed.final.value
        return reply.text.strip() or None


def _output_text(result: ExecResult) -> str:
    parts = [result.stdout]
    if result.stderr:
        parts.append(result.stderr)
    for item in result.display:
        text = item.get("text/plain")
        if isinstance(text, str):
            parts.append(text)
    if result.error is not None:
        parts.append(_error_text(result))
    if result.notice:
        parts.append(f"[{result.notice}]")
    return "\n".join(p.rstrip("\n") for p in parts if p)
