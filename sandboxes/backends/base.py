"""What the backends share below the contract of ``sandboxes.backend``: how the guest agent is
configured and launched in a box. ``Backend`` and ``BackendFactory`` are re-exported here so a
backend module imports all it builds on from one place.
"""

from __future__ import annotations

import abc
import json
import typing
from typing import Any

from sandboxes.backend import Backend, BackendFactory
from sandboxes.spec import SandboxSpec

__all__ = ["Backend", "BackendFactory", "agent_argv", "agent_config"]


def agent_config(spec: SandboxSpec, workdir: str, owns_box: bool = False, *,
                 rlimits: dict[str, int] | None = None, users: dict[str, int] | None = None) -> dict[str, Any]:
    """The settings the agent needs, passed to it as one JSON argument."""
    config: dict[str, Any] = {
        "workdir": workdir,
        "output_limit": spec.output_limit_bytes,
        "kill_grace": spec.kill_grace_s,
        "memory_mb": spec.memory_mb,
        "owns_box": owns_box,
    }
    if rlimits:
        config["rlimits"] = rlimits
    if users:
        config["users"] = users
    return config


def agent_argv(python: str, spec: SandboxSpec, workdir: str, connect: str | None,
               owns_box: bool = False, *, rlimits: dict[str, int] | None = None,
               users: dict[str, int] | None = None) -> list[str]:
    """The agent's command line. ``connect`` is a Unix socket path, or None to speak on stdin/stdout.

    ``owns_box``: the box holds nothing but the agent and what it starts (a container), so the agent
    may kill every other process in it when it restarts the kernel. Never for the local backend.
    ``rlimits``: limits (``{"AS": bytes, ...}``) the agent sets on itself before it starts the kernel.
    ``users``: ``{"agent": uid, "kernel": uid, "group": gid}`` for an agent started as root with the
    capabilities to switch users: it runs the kernel as a user of its own (``sandboxes.guest.users``).
    """
    argv = [python, "-m", "sandboxes.guest", "--config",
            json.dumps(agent_config(spec, workdir, owns_box, rlimits=rlimits, users=users))]
    if connect is None:
        argv.append("--stdio")
    else:
        argv += ["--connect", connect]
    return argv
