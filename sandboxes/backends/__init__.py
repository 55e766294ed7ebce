"""Backends, one module each. A module defines ``BACKEND``; it is imported only when used, so the
SDKs of providers nobody uses need not be installed."""

from __future__ import annotations

import importlib

from sandboxes.backends.base import Backend
from sandboxes.spec import BACKENDS


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise ValueError(f"unknown sandbox backend {name!r}; choose one of {', '.join(BACKENDS)}")
    module = importlib.import_module(f"sandboxes.backends.{name}")
    return module.BACKEND
