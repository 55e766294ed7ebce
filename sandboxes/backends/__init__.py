"""Backends: one transport per provider family, each imported only when used (so the SDKs of
providers nobody uses need not be installed).

This registry is the one place that maps a backend's name to its class. ``sandboxes.sandbox`` reaches
it through a lazy import inside ``Sandbox.start`` rather than at module load, so the shared core never
depends on any backend module; a caller may skip the registry altogether by passing a backend of its
own (``open_sandbox(spec, backend=...)``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from sandboxes.spec import BACKENDS

if TYPE_CHECKING:
    from sandboxes.backends.base import Backend

# Backend name -> the module defining ``BACKEND`` for it.
MODULES = {
    "local": "sandboxes.backends.local",
    "docker": "sandboxes.backends.docker.backend",
    "modal": "sandboxes.backends.cloud.modal",
    "e2b": "sandboxes.backends.cloud.e2b",
}
assert set(MODULES) == set(BACKENDS)


def backend_class(name: str) -> "type[Backend]":
    if name not in MODULES:
        raise ValueError(f"unknown sandbox backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return importlib.import_module(MODULES[name]).BACKEND
