"""Custom tools: the user's host-side functions, called from REPL code like plain functions.

``RLM(custom_tools={"search": search, "rates": {"EUR": 1.08}})`` (the reference implementation's
shape). Each entry is a callable (sync or async), plain JSON data, or
``{"tool": value, "description": "..."}``. A callable stays on the host, where it may hold what must
never enter a sandbox (keys, database handles); the kernel gets a stub of the same name that sends
its arguments as JSON through the sandbox's one channel and gets the JSON result back. Nothing is
pickled either way. Plain data is uploaded as a file and bound as a variable.

Every tool call of a run tree is counted (``Limits.max_tool_calls``), bounded in concurrency
(``Limits.max_concurrent_tools``) and in time (``Limits.tool_timeout_s``), and logged as a
``tool_call`` event by the handler that serves it (``rlm.recursion``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import json
import keyword
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from rlm import prompts
from rlm.budget import Budget
from rlm.repl_setup import REPL_NAMES

DESCRIPTION_CHARS = 2000  # of a tool's docstring in the system prompt
ERROR_CHARS = 2000  # of a tool's error message sent to the kernel
# Names the REPL may bind in some runs (the contexts and histories of a multi-turn session).
_NUMBERED = re.compile(r"(context|history)_\d+")


class ToolFailed(Exception):
    """A tool call that did not produce a result; ``status`` is "error" or "timeout"."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Tool:
    """One callable custom tool."""

    name: str
    fn: Callable[..., Any]
    is_async: bool
    signature: str  # "search(query: str, limit: int = 10) -> list[str]"
    description: str  # the given description, else the docstring

    @classmethod
    def of(cls, name: str, fn: Callable[..., Any], description: str | None) -> "Tool":
        # An object whose __call__ is async is an async tool too.
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))
        try:
            signature = str(inspect.signature(fn, eval_str=True))
        except Exception:  # annotations that do not evaluate: show them as written
            try:
                signature = str(inspect.signature(fn))
            except (TypeError, ValueError):  # some builtins have no signature
                signature = "(...)"
        doc = description if description is not None else inspect.getdoc(fn) or ""
        if len(doc) > DESCRIPTION_CHARS:
            doc = doc[:DESCRIPTION_CHARS] + " ..."
        return cls(name, fn, is_async, name + signature, doc)


@dataclass(frozen=True)
class Toolbox:
    """The custom tools of one RLM depth: callables by name, and plain values to bind as variables."""

    functions: Mapping[str, Tool] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=dict)
    value_descriptions: Mapping[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.functions or self.values)

    @classmethod
    def parse(cls, custom_tools: Mapping[str, Any] | None, *, argument: str = "custom_tools") -> "Toolbox":
        """Check every name and value now, so a bad tool fails at ``RLM(...)``, not mid-run."""
        if custom_tools is None:
            return cls()
        if not isinstance(custom_tools, Mapping):
            raise TypeError(f"{argument} must be a dict of name -> function or value, "
                            f"not {type(custom_tools).__name__}")
        functions: dict[str, Tool] = {}
        values: dict[str, Any] = {}
        descriptions: dict[str, str] = {}
        for name, entry in custom_tools.items():
            _check_name(name, argument)
            value, description = entry, None
            if isinstance(entry, Mapping) and "tool" in entry:
                value, description = entry["tool"], entry.get("description")
                if description is not None and not isinstance(description, str):
                    raise TypeError(f"{argument}[{name!r}]: the description must be a str")
            if callable(value):
                functions[name] = Tool.of(name, value, description)
                continue
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{argument}[{name!r}] is neither callable nor plain JSON data ({exc}); "
                                 "pass a function, or str/int/float/bool/None/list/dict values") from None
            values[name] = value
            descriptions[name] = description or f"a {type(value).__name__}" + (
                f" of length {len(value)}" if isinstance(value, (str, list, dict)) else "")
        return cls(functions, values, descriptions)

    def prompt_section(self) -> str | None:
        """What the system prompt says about these tools; None when there are none."""
        if not self:
            return None
        return prompts.tools_section(
            [(t.signature, t.description) for t in self.functions.values()],
            list(self.value_descriptions.items()))

    def manifest(self) -> bytes:
        """The file the kernel's tool snippet reads: each stub's name and docstring, and the values."""
        functions = {name: f"{t.signature}\n\n{t.description}".strip() for name, t in self.functions.items()}
        return json.dumps({"functions": functions, "values": self.values}, ensure_ascii=False).encode("utf-8")


def _check_name(name: Any, argument: str) -> None:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"{argument}: {name!r} is not a valid tool name; use a Python identifier that is "
                         "not a keyword, e.g. 'search_docs'")
    if name in REPL_NAMES or _NUMBERED.fullmatch(name) or name.startswith("_rlm"):
        raise ValueError(f"{argument}: {name!r} is taken by the REPL (it binds {', '.join(sorted(REPL_NAMES))}, "
                         "context_N and history_N, and _rlm* internals); rename the tool")


class ToolRunner:
    """Runs the tool calls of one run tree: one count, a concurrency bound, a timeout per call.

    Sync tools run on this runner's own threads rather than the event loop's default executor: a
    sync tool that overruns its timeout cannot be stopped, and its thread must not hold up the end
    of the run (``asyncio.run`` waits for the default executor's threads). Its result is dropped.
    """

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.limits = budget.limits
        self._slots = asyncio.Semaphore(self.limits.max_concurrent_tools)
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None

    async def call(self, tool: Tool, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Run ``tool``; return its JSON-ready result. Raises ToolFailed, or LimitExceeded when the
        run is out of tool calls or time."""
        self.budget.admit_tool(tool.name)
        async with self._slots:
            started = time.monotonic()
            failed = True
            try:
                timeout = self.limits.tool_timeout_s
                remaining = self.budget.remaining_s()
                if remaining is not None:
                    timeout = max(0.0, min(timeout, remaining))
                try:
                    async with asyncio.timeout(timeout):
                        value = await self._run(tool, args, kwargs)
                except TimeoutError:
                    raise ToolFailed("timeout", f"{tool.name} did not return within {timeout:g} s "
                                                "(Limits.tool_timeout_s)") from None
                except Exception as exc:
                    text = str(exc) or "(no message)"
                    raise ToolFailed("error", f"{tool.name} raised {exc.__class__.__name__}: "
                                              f"{text[:ERROR_CHARS]}") from None
                try:
                    json.dumps(value, allow_nan=False)
                except (TypeError, ValueError) as exc:
                    raise ToolFailed("error", f"{tool.name} returned a {type(value).__name__}, which is not "
                                              f"JSON data ({str(exc)[:200]}); return plain data") from None
                failed = False
                return value
            finally:
                self.budget.record_tool(tool.name, time.monotonic() - started, failed=failed)

    async def _run(self, tool: Tool, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if tool.is_async:
            return await tool.fn(*args, **kwargs)
        if self._threads is None:
            self._threads = concurrent.futures.ThreadPoolExecutor(self.limits.max_concurrent_tools,
                                                                  thread_name_prefix="rlm-tool")
        call = functools.partial(contextvars.copy_context().run, tool.fn, *args, **kwargs)
        value = await asyncio.get_running_loop().run_in_executor(self._threads, call)
        if inspect.isawaitable(value):  # e.g. a functools.partial of an async function
            value = await value
        return value

    def close(self) -> None:
        """Let go of the threads without waiting for a tool that overran its timeout."""
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None
