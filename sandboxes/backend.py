"""What a backend is, as the shared core sees it: a transport. It creates a box, starts the guest
agent in it, hands back a byte stream to that agent, and destroys the box. Everything else
(protocol, timeouts, output caps, guest calls) lives in ``sandboxes.guest`` and ``sandboxes.channel``
and is the same for all backends.

The core never imports a backend module. ``backend_class`` finds the class for a backend's name
among the installed ``sandboxes.backends`` entry points (pyproject.toml lists them), and a caller
can skip the lookup by passing a backend of its own (``open_sandbox(spec, backend=...)``).
"""

from __future__ import annotations

import abc
import functools
import importlib.metadata
import typing

from sandboxes.cancellation import finish
from sandboxes.errors import SandboxUnavailable
from sandboxes.results import Diagnosis
from sandboxes.spec import SandboxSpec
from sandboxes.transport import ByteStream

ENTRY_POINT_GROUP = "sandboxes.backends"


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

    def on_ready(self) -> None:
        """Called once the agent said ready (its kernel is up), e.g. to tell the CPU governor that
        the box's start-up is over. Nothing by default; must not block."""

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


@functools.cache
def backend_class(name: str) -> "type[Backend]":
    """The installed backend called ``name`` (an entry point of the ``sandboxes.backends`` group)."""
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        known = sorted(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        raise SandboxUnavailable(
            f"no sandbox backend named {name!r} is installed (installed: {', '.join(known) or 'none'}); "
            "reinstall the package (`pip install -e .` in a checkout) so its backends are registered")
    cls = next(iter(found)).load()
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise SandboxUnavailable(f"the entry point for sandbox backend {name!r} is not a Backend class")
    return cls
