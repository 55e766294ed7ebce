"""Recursive Language Models whose REPL code runs in secure sandboxes.

    from rlm import RLM, Limits
    rlm = RLM(backend="openai", backend_kwargs={"model_name": "gpt-5-mini"}, environment="docker",
              limits=Limits(max_cost_usd=2.0))
    result = rlm.completion(huge_text, root_prompt="Which city is mentioned most?")
    result.response, result.status, result.usage, result.trajectory_path

The context (``prompt``) never enters the root model's prompt: it is uploaded into the sandbox as a
file and bound to ``context`` in the REPL, where the root model's code reads it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine

from sandboxes.logs import get_logger, quiet_by_default

from rlm.budget import (PRICES, PRICES_AS_OF, Budget, LimitExceeded, Limits, ModelUsage, Price, ToolUsage,
                         Totals, require_prices)
from rlm.callbacks import Callbacks
from rlm.clients import make_client
from rlm.clients.base import ModelClient
from rlm.session import LoopThread, Session, SessionSpent
from rlm.tools import Toolbox
from rlm.trajectory import ProgressPrinter, RLMLogger, redact
from rlm.workspace import sandbox_spec

__all__ = ["RLM", "Limits", "RLMResult", "RLMLogger", "ModelUsage", "ToolUsage", "Price", "PRICES", "PRICES_AS_OF",
           "LimitExceeded"]

log = get_logger("rlm")
quiet_by_default("rlm")

@dataclass
class RLMResult:
    """How one completion ended.

    ``status`` is ``final`` (the model gave its answer), the name of the limit that ended the run
    (``max_iterations``, ``max_depth``, ``max_llm_calls``, ``max_tool_calls``, ``max_tokens``,
    ``max_cost_usd``, ``max_wall_s``, ``cell_timeout_s``, ``model_timeout_s``), ``context_window`` (the
    conversation outgrew the model's window; see ``compaction``), or ``error``. When a limit
    ended it, ``response`` is the best partial answer (or None) and ``message`` says what happened.
    ``usage`` is by model; ``tool_usage`` by custom tool.
    """

    response: str | None
    status: str
    usage: dict[str, ModelUsage]
    execution_time: float
    trajectory_path: str | None
    iterations: int = 0
    message: str | None = None
    run_id: str = ""
    totals: Totals = field(default_factory=Totals)
    tool_usage: dict[str, ToolUsage] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "final"

    @property
    def cost_usd(self) -> float | None:
        """Total cost in USD; None when a model used is not in the price table."""
        return self.totals.cost_usd

    def to_dict(self) -> dict[str, Any]:
        return {
            "response": self.response,
            "status": self.status,
            "message": self.message,
            "iterations": self.iterations,
            "usage": {model: usage.to_dict() for model, usage in self.usage.items()},
            "tool_usage": {name: usage.to_dict() for name, usage in self.tool_usage.items()},
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6),
            "execution_time": round(self.execution_time, 4),
            "trajectory_path": self.trajectory_path,
            "run_id": self.run_id,
        }


class RLM:
    """A Recursive Language Model. Each ``completion`` opens its own sandbox(es) and budget."""

    def __init__(
        self,
        backend: str = "openai",
        backend_kwargs: dict[str, Any] | None = None,
        environment: str = "local",
        environment_kwargs: dict[str, Any] | None = None,
        max_depth: int = 1,
        max_iterations: int = 30,
        other_backends: list[str] | None = None,
        other_backend_kwargs: list[dict[str, Any]] | None = None,
        custom_system_prompt: str | None = None,
        logger: RLMLogger | None = None,
        verbose: bool = False,
        limits: Limits | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        custom_tools: dict[str, Any] | None = None,
        custom_sub_tools: dict[str, Any] | None = None,
        on_iteration_start: Callable[[int, int], None] | None = None,
        on_iteration_complete: Callable[[int, int, float], None] | None = None,
        on_subcall_start: Callable[[int, str, str], None] | None = None,
        on_subcall_complete: Callable[[int, str, float, str | None], None] | None = None,
        sampling_args: dict[str, Any] | None = None,
        sub_sampling_args: dict[str, Any] | None = None,
        persistent: bool = False,
        session_limits: Limits | None = None,
        compaction: bool = False,
        compaction_threshold_pct: float = 0.85,
    ) -> None:
        """
        Args:
            backend: "openai" (any OpenAI-compatible server with ``base_url``) or "anthropic".
            backend_kwargs: ``model_name``, ``api_key`` (default: OPENAI_API_KEY / ANTHROPIC_API_KEY),
                ``base_url``; other keys are sent with each request (e.g. ``temperature``).
            environment: the sandbox backend for REPL code: "local", "docker", "modal" or "e2b".
            environment_kwargs: SandboxSpec settings (memory_mb, cpus, runtime="runsc", image, ...).
            max_depth: depth at which an RLM stops being one: the root is depth 0, and an
                ``rlm_query`` child at depth >= max_depth is a plain model call.
            max_iterations: model replies per RLM.
            other_backends / other_backend_kwargs: models for sub-calls; the first one serves
                ``llm_query`` and child RLMs, and any of them can be chosen by name with ``model=``.
            custom_system_prompt: replaces the root system prompt ({max_iterations} and
                {output_chars} are filled in if present).
            logger: an RLMLogger; each completion writes its JSONL run log there.
            verbose: print progress to stderr.
            limits: the run tree's budget (calls, tokens, USD, wall clock, timeouts, concurrency).
            on_event: called with every run event (a dict, the same record the JSONL log gets) as it
                happens, on the run's event loop; keep it quick. One that raises is logged and ignored.
            custom_tools: host functions (sync or async) that REPL code calls like plain functions, by
                name: ``{"search": search}``; arguments and results travel as JSON. A non-callable
                value (plain JSON data) becomes a REPL variable. An entry may also be
                ``{"tool": value, "description": "..."}``. Tools are listed in the system prompt
                with their signatures and docstrings; see rlm.tools and the Limits on tool calls.
            custom_sub_tools: the tools of child RLMs (``rlm_query``); None means custom_tools, {} none.
                ``llm_query`` is a plain model call and has no tools.
            on_iteration_start(depth, iteration), on_iteration_complete(depth, iteration, seconds),
            on_subcall_start(depth, model, prompt_preview), on_subcall_complete(depth, model,
                seconds, error_or_none): the reference implementation's hooks, fed by the same events
                as on_event (see rlm.callbacks); a subcall is a child RLM.
            sampling_args: extra request fields for the root model (temperature, top_p, seed, ...);
                they can never replace the model, the messages or the output cap (Limits.max_output_tokens).
            sub_sampling_args: the same for the sub-call model (other_backends[0], or the root model's
                settings when there is none).
            persistent: keep the box, the REPL state and the root conversation across completions (a
                session; see rlm.session): each completion's context becomes ``context_1``,
                ``context_2``, ... with ``context`` the newest. ``close()`` (or ``with`` / ``async with``)
                destroys the box.
            session_limits: a budget for the whole session (calls, tokens, USD, and seconds spent in
                completions), shared by its completions; each completion still has ``limits``.
            compaction: summarise the root conversation when it reaches ``compaction_threshold_pct`` of
                the model's context window (Limits.context_windows, else rlm.windows.WINDOWS); the full
                conversation stays in the REPL as ``history``.
        """
        from sandboxes import SandboxSpec

        if max_depth < 0:
            raise ValueError("max_depth must be 0 or more")
        if max_iterations < 1:
            raise ValueError("max_iterations must be at least 1")
        self.backend = backend
        self.backend_kwargs = dict(backend_kwargs or {})
        if sampling_args is not None:
            self.backend_kwargs["sampling_args"] = {**self.backend_kwargs.get("sampling_args", {}), **sampling_args}
        if sub_sampling_args is not None and not other_backends:
            other_backends, other_backend_kwargs = [backend], [dict(self.backend_kwargs)]
        self.environment = environment
        self.environment_kwargs = dict(environment_kwargs or {})
        if "cell_timeout_s" in self.environment_kwargs:
            raise ValueError("set the per-cell timeout with limits=Limits(cell_timeout_s=...), "
                             "not environment_kwargs")
        if "backend" in self.environment_kwargs:
            raise ValueError("choose the sandbox backend with environment=..., not environment_kwargs")
        try:
            SandboxSpec(backend=environment, **self.environment_kwargs)
        except TypeError as exc:
            fields = ", ".join(f.name for f in dataclasses.fields(SandboxSpec) if f.name != "backend")
            raise ValueError(f"bad environment_kwargs ({exc}); SandboxSpec takes: {fields}") from None
        self.max_depth = max_depth
        self.max_iterations = max_iterations
        self.other_backends = list(other_backends or [])
        self.other_backend_kwargs = [dict(k) for k in (other_backend_kwargs or [])]
        if len(self.other_backend_kwargs) < len(self.other_backends):
            raise ValueError("give one other_backend_kwargs entry (with model_name) per other_backends entry")
        if sub_sampling_args is not None:
            first = self.other_backend_kwargs[0]
            first["sampling_args"] = {**first.get("sampling_args", {}), **sub_sampling_args}
        self.custom_tools = Toolbox.parse(custom_tools)
        self.custom_sub_tools = (self.custom_tools if custom_sub_tools is None
                                 else Toolbox.parse(custom_sub_tools, argument="custom_sub_tools"))
        self.custom_system_prompt = custom_system_prompt
        self.logger = logger
        self.verbose = verbose
        self.limits = limits or Limits()
        self.on_event = on_event
        self.on_iteration_start = on_iteration_start
        self.on_iteration_complete = on_iteration_complete
        self.on_subcall_start = on_subcall_start
        self.on_subcall_complete = on_subcall_complete
        self._callbacks()  # fail now on a callback that is not callable
        if session_limits is not None and not persistent:
            raise ValueError("session_limits needs persistent=True (a session); per completion, use limits=")
        if not 0 < compaction_threshold_pct <= 1:
            raise ValueError("compaction_threshold_pct must be in (0, 1], e.g. 0.85")
        self.persistent = persistent
        self.session_limits = session_limits
        self.compaction = compaction
        self.compaction_threshold_pct = compaction_threshold_pct
        self._session: Session | None = None
        # Fail now, not mid-run, on an unknown backend, a missing model name or a missing key, and on a
        # dollar limit that an unpriced model would escape.
        root, _, clients = self._make_clients()
        require_prices({name: "the root model" if client is root else "a sub-call model (other_backends)"
                        for name, client in clients.items()}, self.limits, self.session_limits)

    def _callbacks(self) -> Callbacks:
        return Callbacks(self.on_event, self.on_iteration_start, self.on_iteration_complete,
                         self.on_subcall_start, self.on_subcall_complete)

    def _make_clients(self) -> tuple[ModelClient, ModelClient, dict[str, ModelClient]]:
        concurrency = self.limits.max_concurrency
        root = make_client(self.backend, self.backend_kwargs, concurrency=concurrency)
        clients = {root.model_name: root}
        sub = root
        for i, (backend, kwargs) in enumerate(zip(self.other_backends, self.other_backend_kwargs)):
            client = make_client(backend, kwargs, concurrency=concurrency)
            clients.setdefault(client.model_name, client)
            if i == 0:
                sub = client
        return root, sub, clients

    def _config(self) -> dict[str, Any]:
        return redact({
            "backend": self.backend,
            "backend_kwargs": self.backend_kwargs,
            "environment": self.environment,
            "environment_kwargs": self.environment_kwargs,
            "max_depth": self.max_depth,
            "max_iterations": self.max_iterations,
            "other_backends": self.other_backends,
            "other_backend_kwargs": self.other_backend_kwargs,
            "custom_system_prompt": self.custom_system_prompt is not None,
            "custom_tools": sorted([*self.custom_tools.functions, *self.custom_tools.values]),
            "custom_sub_tools": sorted([*self.custom_sub_tools.functions, *self.custom_sub_tools.values]),
            "limits": {k: v for k, v in dataclasses.asdict(self.limits).items() if k != "prices"},
            "persistent": self.persistent,
            "compaction": self.compaction,
            "compaction_threshold_pct": self.compaction_threshold_pct,
            "prices_as_of": PRICES_AS_OF,
        })

    def completion(self, prompt: str | list[Any] | dict[str, Any], root_prompt: str | None = None) -> RLMResult:
        """Answer ``root_prompt`` over the context ``prompt``. Blocks; see ``acompletion``."""
        if self.persistent:
            _check_context(prompt, root_prompt)
            session = self._live_session() or self._new_session(None)
            return session.run_blocking(self._turn(session, prompt, root_prompt))
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.acompletion(prompt, root_prompt))
        # Called from inside an event loop (a notebook, an async app): run on a thread of its own.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rlm-completion") as pool:
            return pool.submit(asyncio.run, self.acompletion(prompt, root_prompt)).result()

    async def acompletion(self, prompt: str | list[Any] | dict[str, Any],
                          root_prompt: str | None = None) -> RLMResult:
        """Answer ``root_prompt`` over the context ``prompt`` (a str, list or dict).

        Never raises for limits, provider failures or sandbox failures: the result's ``status`` says
        how the run ended. Raises TypeError for a context of another type.
        """
        _check_context(prompt, root_prompt)
        if self.persistent:
            session = self._live_session() or self._new_session(asyncio.get_running_loop())
            return await session.run_async(self._turn(session, prompt, root_prompt))
        return await self._run(prompt, root_prompt, self.limits)

    def _live_session(self) -> Session | None:
        """The current session; refused (and its box destroyed) when the loop it lives on has ended."""
        session = self._session
        if session is not None and session.loop_ended:
            self._session = None
            session.destroy_now()
            raise RuntimeError("the event loop this persistent RLM's session was opened on has ended (each "
                               "asyncio.run() is a new loop), and its box went with it. Keep a session inside one "
                               "event loop (`async with RLM(..., persistent=True) as rlm:`), or use the blocking "
                               "completion(); the next call starts a new session")
        return session

    def _new_session(self, loop: asyncio.AbstractEventLoop | None) -> Session:
        """A session on ``loop`` (the caller's), or on a private loop thread for blocking calls."""
        runner = LoopThread() if loop is None else None
        spec = sandbox_spec(self.environment, self.environment_kwargs, self.limits.cell_timeout_s)
        self._session = Session(runner.loop if runner else loop, spec, runner)  # type: ignore[arg-type]
        return self._session

    def _turn(self, session: Session, prompt: Any,
              root_prompt: str | None) -> Callable[[], Coroutine[Any, Any, RLMResult]]:
        """One completion of the session, to run on the session's loop."""

        async def turn() -> RLMResult:
            async with session.lock:
                started = time.monotonic()
                try:
                    limits, notes = session.limits_for(self.limits, self.session_limits)
                except SessionSpent as spent:
                    return RLMResult(None, spent.limit, {}, 0.0, None, message=str(spent))
                result = await self._run(prompt, root_prompt, limits, session)
                session.record(result.usage, time.monotonic() - started)
                if result.status in notes:
                    result.message = f"{notes[result.status]}: {result.message}"
                return result

        return turn

    def close(self) -> None:
        """End the session of a persistent RLM: destroy its box (no-op otherwise). The RLM stays usable:
        the next completion starts a new session."""
        session, self._session = self._session, None
        if session is not None:
            session.close_blocking()

    async def aclose(self) -> None:
        """``close`` for async code: waits for the box to be destroyed."""
        session, self._session = self._session, None
        if session is not None:
            await session.close_async()

    def __enter__(self) -> "RLM":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> "RLM":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def session_usage(self) -> dict[str, ModelUsage]:
        """What the current session's completions used, per model (empty without a session)."""
        return dict(self._session.usage) if self._session is not None else {}

    async def _run(self, prompt: Any, root_prompt: str | None, limits: Limits,
                   session: Session | None = None) -> RLMResult:
        from rlm.loop import RLMNode
        from rlm.recursion import handlers
        from rlm.tree import RunTree, TreeConfig

        started = time.monotonic()
        run_id = uuid.uuid4().hex[:12]
        root, sub, clients = self._make_clients()
        budget = Budget(limits)
        run_log = self.logger.open(run_id) if self.logger is not None else None
        tree = RunTree(
            run_id=run_id,
            config=TreeConfig(self.environment, self.environment_kwargs, self.max_depth, self.max_iterations,
                              limits, self.custom_system_prompt, self.custom_tools, self.custom_sub_tools,
                              compaction=self.compaction, compaction_threshold_pct=self.compaction_threshold_pct),
            budget=budget, root_client=root, sub_client=sub, clients=clients, run_log=run_log,
            progress=ProgressPrinter() if self.verbose else None, on_event=self._callbacks() or None,
            handler_factory=handlers,
        )
        context_size = len(prompt) if isinstance(prompt, (str, list, dict)) else None
        tree.emit("run_start", config=self._config(), context_type=type(prompt).__name__,
                  context_size=context_size, root_prompt=root_prompt)
        bound = log.bind(run_id=run_id, depth=0)
        bound.info("run_start", model=root.model_name, environment=self.environment)
        try:
            node = RLMNode(tree, rlm_id="0", depth=0, parent_id=None, client=root, context=prompt,
                           root_prompt=root_prompt, workspace=session.workspace if session else None,
                           conversation=session.conversation if session else None)
            outcome = await node.run()
        finally:
            tree.tool_runner.close()
            for client in {id(c): c for c in clients.values()}.values():
                await client.aclose()
        result = RLMResult(
            response=outcome.response,
            status=outcome.status,
            usage=dict(budget.usage),
            execution_time=time.monotonic() - started,
            trajectory_path=str(run_log.path) if run_log is not None else None,
            iterations=outcome.iterations,
            message=outcome.message,
            run_id=run_id,
            totals=Totals.of(budget.usage),
            tool_usage=dict(budget.tool_usage),
        )
        tree.emit("final", **{k: v for k, v in result.to_dict().items() if k != "trajectory_path"})
        bound.info("run_end", status=result.status, seconds=round(result.execution_time, 3))
        if run_log is not None:
            run_log.close()
        return result


def _check_context(prompt: Any, root_prompt: Any) -> None:
    if not isinstance(prompt, (str, list, dict)):
        raise TypeError(f"the context must be a str, a list or a dict, not {type(prompt).__name__}")
    if root_prompt is not None and not isinstance(root_prompt, str):
        raise TypeError("root_prompt must be a str")
