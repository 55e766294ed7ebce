"""The SDK calls the Modal and E2B backends make, held against the installed SDKs and the fakes.

Each backend lists every SDK name and keyword it uses in SDK_SURFACE. Here:
- the installed ``modal`` / ``e2b`` offer all of them with the same sync/async shape;
- the fakes offer exactly them (no more, no fewer keywords), so the behaviour tests that run through
  the fakes exercise the calls the backends really make;
- renaming any one method or keyword in a copy of a fake makes the check fail, and the same check
  fails on an SDK with that rename (the check is what would catch an SDK upgrade renaming it).
"""

from __future__ import annotations

import ast
import inspect
import sys
import types

import pytest

from sandboxes.backends.cloud import e2b as e2b_backend
from sandboxes.backends.cloud import modal as modal_backend
from sandboxes.backends.cloud.sdk_surface import VAR_POSITIONAL, SdkCall, check_fake, check_sdk
from tests.cloud import fake_e2b, fake_modal

CASES = {
    "modal": (modal_backend.SDK_SURFACE, fake_modal),
    "e2b": (e2b_backend.SDK_SURFACE, fake_e2b),
}


def _mutations() -> list[tuple[str, str, str | None]]:
    """(provider, path, keyword or None for the method itself) for every name a backend uses."""
    found = []
    for provider, (surface, _) in CASES.items():
        for call in surface:
            found.append((provider, call.path, None))
            for param in call.params:
                found.append((provider, call.path, param))
    return found


def renamed_copy(module: types.ModuleType, path: str, param: str | None) -> types.ModuleType:
    """A copy of ``module``, compiled from its source with one SDK name changed.

    ``param`` None renames the method or property ``path`` names; otherwise that keyword of it is
    renamed (``"*"``: its positional varargs are taken away).
    """
    tree = ast.parse(inspect.getsource(module))
    class_name, member = path.split(".")[-2:]
    changed = False
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ClassDef) and node.name == class_name):
            continue
        for item in node.body:
            if not (isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == member):
                continue
            if param is None:
                item.name = f"{member}_renamed"
                changed = True
            elif param == VAR_POSITIONAL:
                assert item.args.vararg is not None
                item.args.vararg = None
                changed = True
            else:
                for arg in item.args.posonlyargs + item.args.args + item.args.kwonlyargs:
                    if arg.arg == param:
                        arg.arg = f"{param}_renamed"
                        changed = True
    assert changed, f"{path} ({param}) not found in the source of {module.__name__}"
    copy = types.ModuleType(f"{module.__name__}_renamed")
    copy.__file__ = module.__file__
    exec(compile(tree, module.__file__ or "<fake>", "exec"), copy.__dict__)
    return copy


@pytest.mark.parametrize("provider", sorted(CASES))
def test_installed_sdk_offers_every_call(provider: str) -> None:
    sdk = pytest.importorskip(provider)
    surface, _ = CASES[provider]
    assert check_sdk(sdk, surface) == []


@pytest.mark.parametrize("provider", sorted(CASES))
def test_fake_offers_exactly_the_surface(provider: str) -> None:
    surface, fake = CASES[provider]
    assert check_fake(fake, surface) == []


@pytest.mark.parametrize(("provider", "path", "param"), _mutations(),
                         ids=[f"{p}:{path}:{param or 'method'}" for p, path, param in _mutations()])
def test_renaming_any_name_in_a_fake_copy_fails_the_check(provider: str, path: str, param: str | None) -> None:
    surface, fake = CASES[provider]
    copy = renamed_copy(fake, path, param)
    fake_problems = check_fake(copy, surface)
    sdk_problems = check_sdk(copy, surface)
    assert fake_problems, f"renaming {path} {param or ''} in a copy of the fake went unnoticed"
    assert sdk_problems, f"an SDK with {path} {param or ''} renamed would pass check_sdk"
    if param not in (None, VAR_POSITIONAL):
        assert any(param in p for p in sdk_problems), sdk_problems


def test_every_name_is_mutated() -> None:
    """The parametrized test above covers every entry and every keyword of both tables."""
    covered = {(p, path, param) for p, path, param in _mutations()}
    for provider, (surface, _) in CASES.items():
        for call in surface:
            assert (provider, call.path, None) in covered
            assert all((provider, call.path, param) in covered for param in call.params)


def test_check_catches_shape_changes() -> None:
    """A call that turned from async to blocking, or lost its .aio twin, is caught too."""
    modal = pytest.importorskip("modal")
    problems = check_sdk(modal, [SdkCall("Sandbox.poll", "async"), SdkCall("io_streams.StreamWriter.write", "aio"),
                                 SdkCall("Sandbox.stdin", "aio"), SdkCall("Sandbox.no_such_thing", "sync")])
    assert len(problems) == 4, problems


def test_backend_refuses_an_sdk_that_lacks_a_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before its first box the backend runs the same check, and says what to do."""
    from sandboxes.errors import SandboxUnavailable

    copy = renamed_copy(fake_modal, "Sandbox.create", "block_network")
    monkeypatch.setitem(sys.modules, "modal", copy)
    with pytest.raises(SandboxUnavailable) as info:
        modal_backend.BACKEND.sdk()
    assert "block_network" in str(info.value) and "pip install -U" in str(info.value)


def test_backend_says_how_to_install_a_missing_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    from sandboxes.errors import SandboxUnavailable

    for name, backend in (("modal", modal_backend), ("e2b", e2b_backend)):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import NAME` fail
        with pytest.raises(SandboxUnavailable) as info:
            backend.BACKEND.sdk()
        assert f"pip install 'rlm-sandboxes[{name}]'" in str(info.value)


