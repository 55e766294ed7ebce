"""The kernel side of the DSPy interpreter: what a box runs so that tools, SUBMIT and variables work.

``setup_code()`` is one cell, run once per box: it builds the module ``_sandbox_dspy`` inside the
kernel from the static source below. Nothing in a cell is data: the tool list, the output field
names and the variables' values arrive as JSON files written with ``put_file``, and the cell
``PREPARE_CODE`` reads them. Every value that comes back (tool arguments, submitted fields) travels as
JSON through ``sandboxes.guest.runtime.call``; the controller checks it again, since it trusts
nothing the box says.
"""

from __future__ import annotations

MODULE_NAME = "_sandbox_dspy"
# Folder (relative to the kernel's working folder) for the manifest and the variables' files.
STATE_DIR = ".sandbox_dspy"
MANIFEST_FILE = f"{STATE_DIR}/manifest.json"
VARIABLES_DIR = f"{STATE_DIR}/variables"
# Guest-call names: one handler per tool, and one for SUBMIT.
TOOL_CALL_PREFIX = "dspy.tool."
SUBMIT_CALL = "dspy.submit"

_SOURCE = r'''
import inspect
import json
import os

from sandboxes.guest.runtime import GuestCallError, call

# Absolute, so model code that changes the working folder does not hide the files.
BASE = os.getcwd()


class SandboxSubmitted(BaseException):
    """Raised by SUBMIT once the controller holds the fields: it ends the cell. A BaseException, so an
    `except Exception` in the model's code does not swallow it."""


class _Default:
    def __repr__(self):
        return "<default>"


_outputs = None


def _signature(params):
    parameters = []
    for p in params:
        if "default" in p:
            default = p["default"]
        elif p.get("has_default"):
            default = _Default()
        else:
            default = inspect.Parameter.empty
        parameters.append(inspect.Parameter(p["name"], getattr(inspect.Parameter, p["kind"]), default=default))
    return inspect.Signature(parameters)


def make_tool(name, spec):
    handler = __HANDLER_PREFIX__ + name

    def tool(*args, **kwargs):
        try:
            return call(handler, {"args": list(args), "kwargs": kwargs})
        except GuestCallError as exc:
            raise RuntimeError("tool %s() failed: %s" % (name, exc)) from None

    tool.__name__ = tool.__qualname__ = name
    tool.__doc__ = spec.get("doc")
    tool._sandbox_dspy_tool = True
    if spec.get("params") is not None:
        try:
            tool.__signature__ = _signature(spec["params"])
        except (ValueError, TypeError, AttributeError):
            pass
    return tool


def _submit_signature():
    names = _outputs if _outputs is not None else ["output"]
    return inspect.Signature([inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names])


def SUBMIT(*args, **kwargs):
    """Submit the final output fields; ends this code block."""
    signature = _submit_signature()
    try:
        fields = dict(signature.bind(*args, **kwargs).arguments)
    except TypeError as exc:
        raise TypeError("SUBMIT%s: %s" % (signature, exc)) from None
    try:
        json.dumps(fields, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError("SUBMIT takes JSON values (str, int, float, bool, None, list, dict): %s" % exc) from None
    try:
        call(__SUBMIT_CALL__, fields)
    except GuestCallError as exc:
        raise ValueError("SUBMIT was refused: %s" % exc) from None
    raise SandboxSubmitted("SUBMIT ended this code block")


def prepare(namespace):
    """Bind what the manifest names into the REPL's namespace."""
    global _outputs
    with open(os.path.join(BASE, __MANIFEST__), encoding="utf-8") as handle:
        manifest = json.load(handle)
    _outputs = manifest["outputs"]
    SUBMIT.__signature__ = _submit_signature()
    tools = manifest["tools"]
    for key, value in list(namespace.items()):
        if getattr(value, "_sandbox_dspy_tool", False) and key not in tools:
            del namespace[key]
    for name, spec in tools.items():
        namespace[name] = make_tool(name, spec)
    namespace["SUBMIT"] = SUBMIT
    for name in manifest["variables"]:
        with open(os.path.join(BASE, __VARIABLES_DIR__, name + ".json"), encoding="utf-8") as handle:
            namespace[name] = json.load(handle)
'''


def setup_code() -> str:
    """The cell that creates ``_sandbox_dspy`` in the kernel (its own namespace, not the REPL's)."""
    source = (_SOURCE.replace("__HANDLER_PREFIX__", repr(TOOL_CALL_PREFIX))
              .replace("__SUBMIT_CALL__", repr(SUBMIT_CALL))
              .replace("__MANIFEST__", repr(MANIFEST_FILE))
              .replace("__VARIABLES_DIR__", repr(VARIABLES_DIR)))
    return (
        "import sys as _sandbox_dspy_sys, types as _sandbox_dspy_types\n"
        f"_sandbox_dspy_module = _sandbox_dspy_types.ModuleType({MODULE_NAME!r})\n"
        f"exec(compile({source!r}, '<{MODULE_NAME}>', 'exec'), _sandbox_dspy_module.__dict__)\n"
        f"_sandbox_dspy_sys.modules[{MODULE_NAME!r}] = _sandbox_dspy_module\n"
        "del _sandbox_dspy_sys, _sandbox_dspy_types, _sandbox_dspy_module\n"
    )


# Run before a block whenever tools, output fields or variables changed.
PREPARE_CODE = f"__import__({MODULE_NAME!r}).prepare(globals())"
