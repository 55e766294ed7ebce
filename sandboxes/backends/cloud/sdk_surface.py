"""The provider SDK calls a backend makes, declared once and checked against the installed SDK.

Modal and E2B change their SDKs often, and no test here can reach either provider. So each cloud
backend lists every SDK function, method and property it touches, with every keyword it passes, in a
module-level ``SDK_SURFACE`` table. ``check_sdk`` holds that table against the installed SDK (the
backend runs it before its first box, so a renamed method fails with an upgrade hint instead of an
AttributeError halfway through a start); the test suite runs it too, and ``check_fake`` holds the
test fakes to the same table so a fake can never drift from what the backend really calls.
"""

from __future__ import annotations

import importlib
import inspect
import types
import weakref
from dataclasses import dataclass
from typing import Any, Iterable

# How a name is used:
#   "aio"       a blocking SDK call whose async twin is ``.aio`` (Modal's synchronicity wrappers)
#   "async"     a coroutine function
#   "sync"      a plain function or method (no I/O, or run where no event loop exists)
#   "property"  an attribute read on an instance, defined as a property on the class
#   "attribute" an attribute the class or its instances have, whatever defines it
STYLES = ("aio", "async", "sync", "property", "attribute")
VAR_POSITIONAL = "*"


@dataclass(frozen=True)
class SdkCall:
    """One SDK name a backend uses.

    ``path`` is dotted from the SDK's top-level module (``"Sandbox.create"``, or
    ``"io_streams.StreamWriter.write"`` for a class reached through a submodule). ``params`` are the
    parameter names the backend passes, by keyword; ``"*"`` means it passes positional varargs.
    """

    path: str
    style: str = "sync"
    params: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"unknown style {self.style!r}")


def _resolve(root: Any, path: str) -> Any:
    obj = root
    walked = getattr(root, "__name__", "?")
    for part in path.split("."):
        if isinstance(obj, types.ModuleType) and not hasattr(obj, part):
            # A submodule not imported by the package itself.
            try:
                importlib.import_module(f"{obj.__name__}.{part}")
            except ImportError:
                pass
        if inspect.isclass(obj):
            # Properties and descriptors as the class defines them, not as they evaluate.
            try:
                obj = inspect.getattr_static(obj, part)
            except AttributeError:
                raise LookupError(f"{walked}.{part} does not exist") from None
            if isinstance(obj, (staticmethod, classmethod)):
                obj = obj.__func__
            elif not isinstance(obj, property) and hasattr(obj, "__get__") and not inspect.isfunction(obj):
                obj = getattr(_owner_of(root, path), part)
        else:
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise LookupError(f"{walked}.{part} does not exist") from None
        walked = f"{walked}.{part}"
    return obj


def _owner_of(root: Any, path: str) -> Any:
    owner = root
    for part in path.split(".")[:-1]:
        owner = getattr(owner, part)
    return owner


def _callable_for(obj: Any, style: str) -> Any:
    """The function whose signature holds the parameters, for a resolved name of a given style."""
    if style == "aio":
        return getattr(obj, "aio", None)
    return obj


def _is_async(fn: Any) -> bool:
    """Whether calling ``fn`` gives an awaitable. A blocking wrapper that has an ``.aio`` twin is not,
    even though it names the coroutine it wraps as ``__wrapped__``."""
    if inspect.iscoroutinefunction(fn):
        return True
    if hasattr(fn, "aio"):
        return False
    return inspect.iscoroutinefunction(inspect.unwrap(fn))


def _parameters(fn: Any) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(inspect.unwrap(fn)).parameters)
    except (TypeError, ValueError):
        return None


def _check_one(root: Any, call: SdkCall, exact: bool) -> list[str]:
    name = f"{getattr(root, '__name__', '?')}.{call.path}"
    try:
        obj = _resolve(root, call.path)
    except LookupError as exc:
        return [f"{name}: {exc}"]
    if call.style == "property":
        return [] if isinstance(obj, property) else [f"{name}: expected a property, found {type(obj).__name__}"]
    if call.style == "attribute":
        return []
    fn = _callable_for(obj, call.style)
    if fn is None or not callable(fn):
        return [f"{name}: expected a callable{' with an .aio twin' if call.style == 'aio' else ''}"]
    problems: list[str] = []
    if call.style in ("aio", "async") and not _is_async(fn):
        problems.append(f"{name}: expected a coroutine function{' (.aio)' if call.style == 'aio' else ''}")
    if call.style == "sync" and _is_async(fn):
        problems.append(f"{name}: expected a plain function, found a coroutine function")
    params = _parameters(fn)
    if params is None:
        return problems + [f"{name}: has no inspectable signature"]
    keywordable = {p.name for p in params.values()
                   if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    has_varargs = any(p.kind == p.VAR_POSITIONAL for p in params.values())
    for wanted in call.params:
        if wanted == VAR_POSITIONAL:
            if not has_varargs:
                problems.append(f"{name}: takes no positional varargs")
        elif wanted not in keywordable:
            problems.append(f"{name}: has no keyword parameter {wanted!r}")
    if exact:
        offered = {n for n in keywordable if n not in ("self", "cls")}
        if has_varargs:
            offered.add(VAR_POSITIONAL)
        extra = offered - set(call.params)
        if extra:
            problems.append(f"{name}: accepts {sorted(extra)} which the surface table does not list")
    return problems


def check_sdk(sdk: Any, surface: Iterable[SdkCall]) -> list[str]:
    """Problems with the installed SDK ``sdk`` (a module) against a surface table; [] when it fits."""
    problems: list[str] = []
    for call in surface:
        problems += _check_one(sdk, call, exact=False)
    return problems


def check_fake(fake: Any, surface: Iterable[SdkCall]) -> list[str]:
    """Problems with a test fake against a surface table.

    Stricter than ``check_sdk``: a fake must offer exactly the listed parameters (so a keyword the
    backend passes but the table omits cannot pass unnoticed), and each class the table names must
    offer no public name beyond the table's (so the table stays the complete list of what is used).
    """
    surface = list(surface)
    problems: list[str] = []
    for call in surface:
        problems += _check_one(fake, call, exact=True)
    classes: dict[str, set[str]] = {}
    for call in surface:
        owner_path, _, attr = call.path.rpartition(".")
        if not owner_path:
            continue
        try:
            owner = _resolve(fake, owner_path)
        except LookupError:
            continue
        if inspect.isclass(owner):
            classes.setdefault(owner_path, set()).add(attr)
    for owner_path, listed in classes.items():
        owner = _resolve(fake, owner_path)
        for attr in vars(owner):
            if attr.startswith("_"):
                continue
            if attr not in listed:
                problems.append(f"fake {owner_path}.{attr} is not in the surface table")
    return problems


# Per SDK module (the real one, or a test's fake): what check_sdk found.
_verdicts: "weakref.WeakKeyDictionary[Any, list[str]]" = weakref.WeakKeyDictionary()


def load_sdk(module_name: str, surface: Iterable[SdkCall], extra: str) -> Any:
    """Import a provider SDK and check it offers ``surface`` (once per module object).

    Raises SandboxUnavailable saying how to install, or upgrade to, a supported version.
    """
    from sandboxes.errors import SandboxUnavailable

    install = f"pip install 'rlm-sandboxes[{extra}]'"
    try:
        sdk = importlib.import_module(module_name)
    except ImportError:
        raise SandboxUnavailable(f"the {extra} backend needs the {module_name} SDK: {install}") from None
    if sdk not in _verdicts:
        _verdicts[sdk] = check_sdk(sdk, surface)
    if _verdicts[sdk]:
        version = getattr(sdk, "__version__", "?")
        raise SandboxUnavailable(
            f"the installed {module_name} SDK ({version}) does not offer what this backend calls: "
            + "; ".join(_verdicts[sdk][:5]) + f". Install a supported version: {install.replace('install', 'install -U', 1)}")
    return sdk
