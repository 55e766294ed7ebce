"""The setup cell: what every RLM kernel starts with.

It loads each context from the file the controller uploaded (the context never travels inside a code
string) as ``context_0``, ``context_1``, ... with ``context`` naming the newest, and defines the REPL
functions as thin wrappers over the one channel to the controller, ``sandboxes.guest.runtime.call``.
The wrappers claim nothing about depth or budget: the controller binds each sandbox's handlers to its
own RLM and decides everything itself.

The same cell runs again after a kernel restart; the context files are still on disk.
"""

from __future__ import annotations

from typing import Sequence

HISTORY_JSON = "history.json"
TOOLS_JSON = "tools.json"

# Names the setup cell binds (and IPython's own), which SHOW_VARS leaves out and custom tools may not
# take. "history" and "ToolError" are bound only in some runs, but are never free for a tool.
REPL_NAMES = frozenset({
    "context", "history", "llm_query", "llm_query_batched", "rlm_query", "rlm_query_batched", "SHOW_VARS",
    "FINAL", "FINAL_VAR", "answer", "LLMError", "GuestCallError", "ToolError", "In", "Out", "exit", "quit",
    "get_ipython", "open",
})

_SETUP = r'''
import json as _rlm_json
from sandboxes.guest.runtime import call as _rlm_call, GuestCallError



def _rlm_load(path):
    with open(path, encoding="utf-8") as file:
        return _rlm_json.load(file) if path.endswith(".json") else file.read()


class LLMError(str):
    """A failed item of a batched call, in place of its answer: a str starting with "Error:"."""

    def __repr__(self):
        return "LLMError(" + str.__repr__(self) + ")"


def _rlm_str(value):
    return value if isinstance(value, str) else str(value)


def _rlm_ctx(value):
    if value is None or isinstance(value, (str, list, dict)):
        return value
    return str(value)


def _rlm_items(values):
    return [LLMError("Error: " + str(v["error"])) if isinstance(v, dict) and "error" in v else v for v in values]


def llm_query(prompt, model=None):
    """Ask a language model one question; returns its answer as a str."""
    return _rlm_call("llm_query", {"prompt": _rlm_str(prompt), "model": model})


def llm_query_batched(prompts, model=None):
    """Many llm_query calls at once; answers in prompt order, failures as LLMError strings."""
    prompts = [_rlm_str(p) for p in prompts]
    if not prompts:
        return []
    return _rlm_items(_rlm_call("llm_query_batched", {"prompts": prompts, "model": model}))


def rlm_query(prompt, context=None):
    """Hand a sub-task to a recursive model with its own REPL; returns its answer as a str."""
    return _rlm_call("rlm_query", {"prompt": _rlm_str(prompt), "context": _rlm_ctx(context)})


def rlm_query_batched(prompts, contexts=None):
    """Several rlm_query calls at once; answers in order, failures as LLMError strings."""
    prompts = [_rlm_str(p) for p in prompts]
    if contexts is not None:
        contexts = [_rlm_ctx(c) for c in contexts]
        if len(contexts) != len(prompts):
            raise ValueError("rlm_query_batched needs one context per prompt")
    if not prompts:
        return []
    return _rlm_items(_rlm_call("rlm_query_batched", {"prompts": prompts, "contexts": contexts}))


class _RLMAnswer(dict):
    """answer["content"] keeps a draft; answer["ready"] = True submits it. Both reach the controller."""

    def __setitem__(self, key, value):
        dict.__setitem__(self, key, value)
        if key in ("content", "ready"):
            _rlm_call("answer", {"content": _rlm_str(self.get("content", "")), "ready": bool(self.get("ready"))})


answer = _RLMAnswer(content="", ready=False)


def FINAL(text):
    """Submit `text` as the final answer."""
    text = _rlm_str(text)
    if isinstance(answer, dict):
        dict.__setitem__(answer, "content", text)
        dict.__setitem__(answer, "ready", True)
    _rlm_call("answer", {"content": text, "ready": True})


def FINAL_VAR(name):
    """Submit the value of the variable called `name` (a str) as the final answer."""
    if isinstance(name, str):
        if name not in globals():
            raise NameError("FINAL_VAR: no variable named %r; pass the name in quotes, e.g. "
                            "FINAL_VAR('result'), or use FINAL(value)" % name)
        value = globals()[name]
    else:
        value = name
    FINAL(value)


_RLM_NAMES = set(__RLM_NAMES__)


def SHOW_VARS():
    """Print the variables you have defined, with their types and sizes."""
    import types as _types
    rows = []
    for name, value in list(globals().items()):
        if name.startswith("_") or name in _RLM_NAMES or isinstance(value, _types.ModuleType):
            continue
        size = ""
        try:
            size = " (len %d)" % len(value)
        except Exception:
            pass
        rows.append("%s: %s%s" % (name, type(value).__name__, size))
    print("\n".join(rows) if rows else "(no variables defined yet)")
'''


def context_file(index: int, is_json: bool) -> str:
    """The file the ``index``-th context is uploaded to (as the reference names the variables)."""
    return f"context_{index}.{'json' if is_json else 'txt'}"


def setup_code(context_files: Sequence[str], *, history: bool = False) -> str:
    """The setup cell: the REPL functions, then every context (``context_files`` in order, from
    ``context_file``), and ``history`` when a compaction has uploaded one."""
    return (_SETUP.replace("__RLM_NAMES__", repr(sorted(REPL_NAMES)))
            + contexts_code(context_files) + (history_code() if history else ""))


def contexts_code(context_files: Sequence[str], first: int = 0) -> str:
    """Load contexts ``first``, ``first + 1``, ... as ``context_N`` and point ``context`` at the last.

    Also starts a fresh ``answer``: in a session, each completion has its own.
    """
    lines = [f"context_{first + i} = _rlm_load({name!r})" for i, name in enumerate(context_files)]
    if context_files:
        lines.append(f"context = context_{first + len(context_files) - 1}")
    lines.append('answer = _RLMAnswer(content="", ready=False)')
    return "\n" + "\n".join(lines) + "\n"


def history_code() -> str:
    """Bind ``history`` (the root conversation before compaction) from the file the controller uploaded."""
    return f"history = _rlm_load({HISTORY_JSON!r})\n"


def reset_ready_code() -> str:
    """Undo an early ``answer["ready"] = True`` without reporting it again."""
    return "if isinstance(answer, dict):\n    dict.__setitem__(answer, 'ready', False)"


_TOOLS = r'''
class ToolError(Exception):
    """A custom tool failed on the host: it raised, timed out, or a limit stopped it. The message says why."""


def _rlm_tool(name, doc):
    def tool(*args, **kwargs):
        try:
            reply = _rlm_call("tool", {"name": name, "args": list(args), "kwargs": kwargs})
        except (TypeError, ValueError) as exc:
            raise TypeError("%s: arguments must be JSON data (str, int, float, bool, None, list, dict): %s"
                            % (name, exc)) from None
        except GuestCallError as exc:
            raise ToolError("%s: %s" % (name, exc)) from None
        if "error" in reply:
            raise ToolError(reply["error"])
        return reply.get("value")

    tool.__name__ = tool.__qualname__ = name
    tool.__doc__ = doc
    return tool


def _rlm_load_tools(path):
    with open(path, encoding="utf-8") as file:
        tools = _rlm_json.load(file)
    for name, doc in tools["functions"].items():
        globals()[name] = _rlm_tool(name, doc)
        _RLM_NAMES.add(name)
    globals().update(tools["values"])


_rlm_load_tools(__RLM_TOOLS_FILE__)
del _rlm_load_tools
'''


def tools_code(tools_file: str = TOOLS_JSON) -> str:
    """Appended to the setup cell when an RLM has custom tools: one stub per tool, values as variables.

    Names, docstrings and values come from ``tools_file`` (uploaded beside the context), never from
    code text; each stub sends its arguments as JSON to the controller's ``tool`` handler.
    """
    return _TOOLS.replace("__RLM_TOOLS_FILE__", repr(tools_file))
