"""What a backend is: a transport. It creates a box, starts the guest agent in it, hands back a
byte stream to that agent, and destroys the box. Everything else (protocol, timeouts, output caps,
guest calls) lives in ``sandboxes.guest`` and ``sandboxes.channel`` and is the same for all backends.
"""

from __future__ import annotations

import abc
import json
import typing
from typing import Any

from sandboxes.cancellation import finish
from sandboxes.results import Diagnosis
from sandboxes.spec import SandboxSpec
from sandboxes.transport import ByteStream


class Backend(abc.ABC):
    """One box on one provider. Instances are single-use: start once, destroy once.

    A backend writes ``start``, ``_destroy`` and, when it can, ``_emergency_destroy`` and ``diagnose``;
    the once-only bookkeeping of destroying is here, so no backend repeats it.
    """

    name: str = "?"

    def __init__(self, spec: SandboxSpec, box_id: str) -> None:
        self.spec = spec
        self.box_id = box_id
        self.destroyed = False

    @abc.abstractmethod
    async def start(self) -> ByteStream:
        """Create the box, start the agent in it and return a stream connected to the agent.

        The caller bounds this with ``spec.startup_timeout_s`` and calls ``destroy`` on any failure,
        so a backend may leave partial state for ``destroy`` to clean. Raise SandboxUnavailable with
        a message that says what to do when the provider itself is missing or misconfigured.
        """

    @typing.final
    async def destroy(self) -> None:
        """Destroy the box and everything in it. Idempotent; never raises; always finishes: a caller
        cancelled meanwhile gets its cancellation once the box is gone."""
        if self.destroyed:
            return
        self.destroyed = True
        await finish(self._destroy())

    @abc.abstractmethod
    async def _destroy(self) -> None:
        """Destroy what ``start`` made (called once, possibly after a failed or partial start)."""

    @typing.final
    def emergency_destroy(self) -> None:
        """Synchronous best-effort destroy, for interpreter exit and SIGTERM (no event loop there)."""
        if self.destroyed:
            return
        self.destroyed = True
        self._emergency_destroy()

    def _emergency_destroy(self) -> None:
        """What ``emergency_destroy`` does, once; nothing by default."""

    def shared_folder(self) -> tuple[str, str] | None:
        """A folder of the host the box can read (never write), as (host path, path in the box), or None.

        Where there is one (a local box's own folder, a Docker box's read-only channel mount), the
        controller can hand the box a large file by writing it there, with no trip through the channel.
        """
        return None

    async def diagnose(self) -> Diagnosis | None:
        """After the stream ended unexpectedly: why the box died, if the provider can say.

        Return e.g. ``Diagnosis("oom", "the box ran out of memory (limit 1024 MB)")``, or None when
        unknown. The kind comes from what the provider reports (an OOM flag, an exit code or signal, its
        state), never from the box's own output: a box must not be able to choose its status.
        """
        return None


# What ``open_sandbox(..., backend=...)`` and ``SandboxPool(..., backend=...)`` take to make a box's
# backend: a Backend class, or any callable of the same shape.
BackendFactory = typing.Callable[[SandboxSpec, str], Backend]


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
