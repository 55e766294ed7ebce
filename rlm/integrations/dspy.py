"""DSPy's ``CodeInterpreter`` on our sandboxes: ``dspy.RLM`` with its code in a hardened box.

    import dspy
    from rlm.integrations.dspy import SandboxInterpreter
    from sandboxes import SandboxSpec

    factory = SandboxInterpreter.factory(SandboxSpec(backend="docker", runtime="runsc"))
    rlm = dspy.RLM("context, query -> answer", interpreter_factory=factory)

What runs where. The model's code runs in a Jupyter kernel inside the box the spec describes (any
backend and runtime). DSPy's tools (``llm_query``, the user's tools, the dspy facade's own) stay on
the host: the kernel gets a stub per tool that sends its arguments as JSON over the sandbox's one
channel, and a guest-call handler per tool runs the real function in a worker thread, in the
``contextvars`` context of the ``execute`` call (so ``dspy.context(lm=...)`` reaches ``llm_query``).
``SUBMIT(...)`` sends the fields to the controller, which checks them against ``output_fields``, and
then ends the cell; ``execute`` returns ``FinalOutput(fields)``. Variables go in as JSON files written
with ``put_file``, never inside a code string.

The API is synchronous, as DSPy's is: the box lives on a private event loop in a thread of its own
(``sandboxes.SyncSandbox``), so ``execute`` also works when called from inside a running event loop
(``dspy.RLM.aforward``), blocking that loop for the cell's duration as any synchronous call would.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import inspect
import json
import keyword
import threading
import weakref
from typing import Any, Callable, Iterable

try:
    import dspy  # noqa: F401  (the framework this module adapts)
    from dspy.primitives.code_interpreter import CodeExecutionError, CodeInterpreterError, FinalOutput
    from dspy.utils.callback import BaseCallback, with_callbacks
    from pydantic_core import PydanticSerializationError, to_jsonable_python
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("rlm.integrations.dspy needs DSPy 3: pip install 'rlm-sandboxes[dspy]'") from exc

from sandboxes import ExecResult, SandboxClosed, SandboxError, SandboxLost, SandboxSpec, SyncSandbox
from rlm.integrations import dspy_kernel as kernel

__all__ = ["SandboxInterpreter", "SandboxInterpreterFactory", "CodeExecutionError", "CodeInterpreterError",
           "FinalOutput"]

# Cell statuses after which the kernel's state is gone: the session ends, as DSPy's protocol asks.
_TERMINAL = {"kernel_restarted", "oom", "sandbox_lost"}
_SYNTAX_ERRORS = {"SyntaxError", "IndentationError", "TabError"}
_RESERVED = {"SUBMIT", kernel.MODULE_NAME}
# Which interpreter's tool the current worker thread runs, to refuse an execute() on that same
# interpreter from inside it (it would wait on the very cell that waits on the tool). Other
# interpreters stay usable from a tool: dspy's facade runs nested dspy.RLMs, each in a box of its own.
_in_tool = threading.local()


class SandboxInterpreter:
    """A DSPy ``CodeInterpreter`` whose code runs in one sandbox, from ``start`` to ``shutdown``.

    ``spec`` says which box (backend, runtime, limits; ``cell_timeout_s`` bounds each ``execute``).
    ``tools`` maps names to host functions callable from the code (DSPy's RLM adds its own through the
    mutable ``tools`` dict). ``output_fields`` (``[{"name": ..., "type": ...}]``, set by ``dspy.RLM``)
    names what ``SUBMIT`` takes; without it ``SUBMIT(output)`` submits ``{"output": output}``.
    ``backend`` replaces the backend the spec names, as for ``sandboxes.open_sandbox``.

    Errors follow DSPy's protocol: an exception in the code (or in a tool it called) raises
    ``CodeExecutionError``, a syntax error ``SyntaxError``, a cell over its time limit a
    ``CodeExecutionError`` saying so (the kernel keeps its state); a box that cannot start, is lost,
    runs out of memory or has its kernel restarted raises a bare ``CodeInterpreterError`` and ends the
    session (the box is destroyed; make a new interpreter).
    """

    execution_instructions = (
        "Python runs in a Jupyter kernel (CPython) inside an isolated sandbox with no network access. State "
        "persists across executions. The standard library is available; installing packages is not possible. "
        "Files you write stay inside the sandbox. Each execution has a time limit."
    )

    def __init__(self, spec: SandboxSpec | None = None, tools: dict[str, Callable[..., Any]] | None = None,
                 output_fields: list[dict[str, Any]] | None = None, *,
                 callbacks: list[BaseCallback] | None = None, backend: Any = None) -> None:
        self.spec = spec or SandboxSpec()
        self.tools: dict[str, Callable[..., Any]] = dict(tools or {})
        self.output_fields = output_fields
        self.callbacks = list(callbacks or [])
        self._backend = backend
        self._box: SyncSandbox | None = None
        self._finalizer: weakref.finalize | None = None
        self._ended: str | None = None  # why the session ended, once it has
        self._lock = threading.Lock()
        self._bound: tuple[str, str] | None = None  # (tools spec, outputs) as last sent to the kernel
        self._uploaded: dict[str, str] = {}  # variable name -> digest of the JSON last uploaded
        self._context: contextvars.Context | None = None
        self._submitted: dict[str, Any] | None = None

    @classmethod
    def factory(cls, spec: SandboxSpec | None = None, **kwargs: Any) -> "SandboxInterpreterFactory":
        """A zero-argument factory for ``dspy.RLM(..., interpreter_factory=...)``: a fresh box per call."""
        return SandboxInterpreterFactory(spec or SandboxSpec(), kwargs)

    # --- lifecycle -------------------------------------------------------------------------------

    @with_callbacks
    def start(self) -> None:
        """Open the box and load the kernel side. Idempotent; after shutdown or a lost box, an error."""
        if self._ended is not None:
            raise CodeInterpreterError(self._ended)
        if self._box is not None:
            return
        try:
            box = SyncSandbox(self.spec, self._handlers([]), backend=self._backend)
        except SandboxError as exc:
            raise CodeInterpreterError(f"could not start the {self.spec.backend} sandbox: {exc}") from exc
        self._box = box
        self._finalizer = weakref.finalize(self, _close_quietly, box)
        result = self._run_cell(kernel.setup_code())
        if result.status != "ok":
            self._end(f"the sandbox's DSPy setup cell failed ({result.status}): {_describe(result)}")
            raise CodeInterpreterError(self._ended)

    @with_callbacks
    def shutdown(self) -> None:
        """Destroy the box. Idempotent; the interpreter cannot be used afterwards."""
        if self._ended is None:
            self._ended = "this SandboxInterpreter was shut down; create a new one for a fresh session"
        self._close_box()

    def __enter__(self) -> "SandboxInterpreter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    @property
    def box_id(self) -> str | None:
        """The id of the box while it is open (for logs and for finding it in ``docker ps``)."""
        return self._box.box_id if self._box is not None else None

    # --- execution -------------------------------------------------------------------------------

    @with_callbacks
    def execute(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        """Run ``code`` in the box after binding ``variables``; return its output text, ``None`` when it
        printed nothing, or ``FinalOutput`` when it called ``SUBMIT``."""
        if getattr(_in_tool, "owner", None) is self:
            raise CodeInterpreterError("SandboxInterpreter cannot execute code from inside one of its own tools")
        with self._lock:
            self.start()
            files = self._variable_files(variables or {})
            self._context = contextvars.copy_context()
            self._submitted = None
            try:
                self._prepare(files)
                result = self._run_cell(code)
                submitted = self._submitted
            finally:
                self._context = None
                self._submitted = None
        if submitted is not None:
            return FinalOutput(submitted)
        return _outcome(result, self.spec.cell_timeout_s)

    def _variable_files(self, variables: dict[str, Any]) -> dict[str, bytes]:
        """Each variable as JSON bytes; refuses names the REPL cannot bind and values JSON cannot carry."""
        files = {}
        for name, value in variables.items():
            if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
                raise CodeInterpreterError(f"Invalid variable name: {name!r} (must be a Python identifier)")
            if name in _RESERVED or name in self.tools:
                raise CodeInterpreterError(f"Invalid variable name: {name!r} is taken by SUBMIT or a tool")
            try:
                files[name] = json.dumps(to_jsonable_python(value), ensure_ascii=False).encode("utf-8")
            except (PydanticSerializationError, TypeError, ValueError) as exc:
                raise CodeInterpreterError(
                    f"variable {name!r} ({type(value).__name__}) cannot enter the sandbox: only values that "
                    f"convert to JSON can (str, numbers, bool, None, lists, dicts, pydantic models, dataclasses); "
                    f"{exc}") from None
        return files

    def _prepare(self, files: dict[str, bytes]) -> None:
        """Upload changed variables and the manifest, rebind handlers, and run the prepare cell, when
        anything changed since the last block (variables are rebound every time, as DSPy does)."""
        tools = {name: _tool_spec(name, fn) for name, fn in self.tools.items()}
        bound = (json.dumps(tools, sort_keys=True), json.dumps(self.output_fields, sort_keys=True))
        if not files and bound == self._bound:
            return
        box = self._require_box()
        try:
            for name, data in files.items():
                digest = hashlib.sha256(data).hexdigest()
                if self._uploaded.get(name) != digest:
                    box.put_file(f"{kernel.VARIABLES_DIR}/{name}.json", data)
                    self._uploaded[name] = digest
            outputs = [f["name"] for f in self.output_fields] if self.output_fields else None
            manifest = {"tools": tools, "outputs": outputs, "variables": sorted(files)}
            box.put_file(kernel.MANIFEST_FILE, json.dumps(manifest).encode("utf-8"))
        except (SandboxLost, SandboxClosed) as exc:
            self._end(f"the sandbox was lost while sending variables: {exc}")
            raise CodeInterpreterError(self._ended) from exc
        except SandboxError as exc:  # the box refused the write (e.g. its disk is full): it still runs
            self._uploaded.clear()
            raise CodeExecutionError(f"could not write the variables into the sandbox: {exc}") from exc
        if bound != self._bound:
            box.bind(self._handlers(tools))
        result = self._run_cell(kernel.PREPARE_CODE)
        if result.status == "error" and result.error is not None:
            self._uploaded.clear()  # e.g. the code deleted the files: send them all again next time
            raise CodeExecutionError(f"binding tools and variables failed: {result.error}")
        _outcome(result, self.spec.cell_timeout_s)  # raises for a timeout or a lost box
        self._bound = bound

    def _run_cell(self, code: str) -> ExecResult:
        box = self._require_box()
        try:
            result = box.execute(code)
        except SandboxError as exc:
            self._end(f"the sandbox is gone: {exc}")
            raise CodeInterpreterError(self._ended) from exc
        if result.status in _TERMINAL:
            self._end(f"{_describe(result)}. The box and every variable in it are gone; this session has ended: "
                      "create a new SandboxInterpreter")
            raise CodeInterpreterError(self._ended)
        return result

    def _require_box(self) -> SyncSandbox:
        if self._box is None:
            raise CodeInterpreterError(self._ended or "the sandbox is not started")
        return self._box

    # --- calls from the kernel (worker threads of the box's loop) -------------------------------

    def _handlers(self, tool_names: Iterable[str]) -> dict[str, Callable[[Any], Any]]:
        """Guest-call handlers: SUBMIT, and one per tool. They hold the interpreter weakly, so a
        forgotten interpreter can be collected (and its box destroyed by the finalizer)."""
        ref = weakref.ref(self)
        handlers: dict[str, Callable[[Any], Any]] = {
            kernel.SUBMIT_CALL: lambda payload: _alive(ref)._take_submit(payload)}
        for name in tool_names:
            handlers[kernel.TOOL_CALL_PREFIX + name] = (
                lambda payload, name=name: _alive(ref)._serve_tool(name, payload))
        return handlers

    def _serve_tool(self, name: str, payload: Any) -> Any:
        if not isinstance(payload, dict):
            raise TypeError("a tool call carries {'args': [...], 'kwargs': {...}}")
        args, kwargs = payload.get("args", []), payload.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise TypeError("a tool call carries {'args': [...], 'kwargs': {...}}")
        context = self._context
        if context is None:
            raise RuntimeError("tools can be called only while a block is executing")
        return context.copy().run(self._call_in_tool_thread, name, args, kwargs)

    def _call_in_tool_thread(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        fn = self.tools.get(name)
        if fn is None:
            raise NameError(f"no tool named {name!r}")
        args, kwargs = _as_keywords(fn, args, kwargs)
        _in_tool.owner = self
        try:
            result = self.invoke_tool(name, kwargs, args)
        finally:
            _in_tool.owner = None
        return to_jsonable_python(result, fallback=str)

    @with_callbacks
    def invoke_tool(self, tool_name: str, kwargs: dict[str, Any], args: tuple[Any, ...] = ()) -> Any:
        """Call the host tool ``tool_name`` (what a stub in the kernel asks for); awaits coroutines."""
        result = self.tools[tool_name](*args, **kwargs)
        if inspect.isawaitable(result):
            return asyncio.run(_awaited(result))
        return result

    def _take_submit(self, fields: Any) -> None:
        """Check SUBMIT's fields against ``output_fields`` and keep them for ``execute`` to return."""
        if self._context is None:
            raise RuntimeError("SUBMIT can be called only while a block is executing")
        if not isinstance(fields, dict):
            raise TypeError("SUBMIT's fields must arrive as a JSON object")
        expected = [f["name"] for f in self.output_fields] if self.output_fields else ["output"]
        missing = [n for n in expected if n not in fields]
        unknown = sorted(set(fields) - set(expected))
        if missing or unknown:
            raise ValueError(f"SUBMIT needs exactly the fields {expected}"
                             + (f"; missing {missing}" if missing else "")
                             + (f"; unknown {unknown}" if unknown else ""))
        self._submitted = fields

    # --- ending ----------------------------------------------------------------------------------

    def _end(self, why: str) -> None:
        self._ended = why
        self._close_box()

    def _close_box(self) -> None:
        box, self._box = self._box, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if box is not None:
            _close_quietly(box)


class SandboxInterpreterFactory:
    """What ``dspy.RLM(interpreter_factory=...)`` takes: each call makes a fresh ``SandboxInterpreter``
    (its own box). Carries ``execution_instructions`` for the model's prompt, saying which box it gets."""

    def __init__(self, spec: SandboxSpec, kwargs: dict[str, Any]) -> None:
        self.spec = spec
        self.kwargs = kwargs

    def __call__(self) -> SandboxInterpreter:
        return SandboxInterpreter(self.spec, **self.kwargs)

    @property
    def execution_instructions(self) -> str:
        runtime = f", runtime {self.spec.runtime}" if self.spec.runtime else ""
        return (SandboxInterpreter.execution_instructions
                + f" Sandbox: {self.spec.backend}{runtime}; each execution may run {self.spec.cell_timeout_s:g} s; "
                f"memory {self.spec.memory_mb} MB.")


# --- helpers -------------------------------------------------------------------------------------


def _alive(ref: "weakref.ref[SandboxInterpreter]") -> SandboxInterpreter:
    interpreter = ref()
    if interpreter is None:
        raise RuntimeError("the interpreter that owned this sandbox is gone")
    return interpreter


def _close_quietly(box: SyncSandbox) -> None:
    try:
        box.close()
    except Exception:
        pass


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _outcome(result: ExecResult, timeout_s: float) -> str | None:
    """What ``execute`` returns for a cell that did not SUBMIT, or the DSPy error it raises."""
    if result.status == "timeout":
        raise CodeExecutionError(f"TimeoutError: the code ran longer than {timeout_s:g} s and was interrupted; "
                                 "variables defined before that are kept")
    if result.status == "error":
        error = result.error
        name, value = (error.name, error.value) if error is not None else ("Error", "the code failed")
        if name in _SYNTAX_ERRORS:
            raise SyntaxError(f"{name}: {value}")
        message = f"{name}: {value}"
        if result.stdout:
            message += f"\n(output before the error:)\n{result.stdout}"
        raise CodeExecutionError(message)
    parts = [result.stdout, result.stderr]
    parts += [d["text/plain"] for d in result.display if isinstance(d.get("text/plain"), str)]
    if result.notice:
        parts.append(f"[{result.notice}]")
    text = "".join(p if p.endswith("\n") else p + "\n" for p in parts if p)
    return text or None


def _describe(result: ExecResult) -> str:
    detail = result.notice or (str(result.error) if result.error else "")
    return f"{result.status}: {detail}" if detail else result.status


def _tool_spec(name: str, fn: Callable[..., Any]) -> dict[str, Any]:
    """What the kernel's stub shows of a tool: its parameters (for ``help``) and docstring."""
    if not name.isidentifier() or keyword.iskeyword(name) or name in _RESERVED:
        raise CodeInterpreterError(f"Invalid tool name {name!r}: must be an identifier other than {sorted(_RESERVED)}")
    if not callable(fn):
        raise CodeInterpreterError(f"tool {name!r} is not callable")
    spec: dict[str, Any] = {"doc": inspect.getdoc(fn), "params": None}
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return spec
    params = []
    for p in signature.parameters.values():
        entry: dict[str, Any] = {"name": p.name, "kind": p.kind.name}
        if p.default is not inspect.Parameter.empty:
            try:
                json.dumps(p.default, allow_nan=False)
                entry["default"] = p.default
            except (TypeError, ValueError):
                entry["has_default"] = True
        params.append(entry)
    spec["params"] = params
    return spec


def _as_keywords(fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional arguments from the kernel as keywords where the signature allows (DSPy's tools take
    keyword arguments); unchanged for tools with positional-only or ``*args`` parameters."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return tuple(args), kwargs
    bound = signature.bind(*args, **kwargs)  # a TypeError here reaches the kernel as the tool's error
    kinds = {p.kind for p in signature.parameters.values()}
    if inspect.Parameter.POSITIONAL_ONLY in kinds or inspect.Parameter.VAR_POSITIONAL in kinds:
        return bound.args, bound.kwargs
    keywords: dict[str, Any] = {}
    for key, value in bound.arguments.items():
        if signature.parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
            keywords.update(value)
        else:
            keywords[key] = value
    return (), keywords
