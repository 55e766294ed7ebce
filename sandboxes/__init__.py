"""Secure Jupyter kernels in boxes. Knows nothing of language models.

    from sandboxes import SandboxSpec, open_sandbox
    async with open_sandbox(SandboxSpec(backend="docker"), handlers={"echo": echo}) as box:
        result = await box.execute("1 + 1")

Names are loaded lazily so that importing ``sandboxes.guest`` inside a box (where only the guest
package is present) never pulls in controller code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "SandboxSpec": "sandboxes.spec",
    "open_sandbox": "sandboxes.sandbox",
    "Sandbox": "sandboxes.sandbox",
    "ExecResult": "sandboxes.results",
    "ExecError": "sandboxes.results",
    "SyncSandbox": "sandboxes.sync",
    "open_sandbox_sync": "sandboxes.sync",
    "SandboxError": "sandboxes.errors",
    "SandboxStartError": "sandboxes.errors",
    "SandboxUnavailable": "sandboxes.errors",
    "SandboxClosed": "sandboxes.errors",
    "SandboxLost": "sandboxes.errors",
    "GuestCallError": "sandboxes.errors",
    "StartQueue": "sandboxes.admission",
    "start_queue": "sandboxes.admission",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from sandboxes.errors import (GuestCallError, SandboxClosed, SandboxError, SandboxLost, SandboxStartError,
                                  SandboxUnavailable)
    from sandboxes.results import ExecError, ExecResult
    from sandboxes.sandbox import Sandbox, open_sandbox
    from sandboxes.spec import SandboxSpec
    from sandboxes.admission import StartQueue, start_queue
    from sandboxes.sync import SyncSandbox, open_sandbox_sync


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sandboxes' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
