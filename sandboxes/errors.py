"""Errors raised by the sandbox layer. Each message says what to do next."""

from __future__ import annotations


class SandboxError(Exception):
    """Base class for every error the sandbox layer raises."""


class SandboxStartError(SandboxError):
    """The box could not be created or its agent never said `ready` in time."""


class SandboxUnavailable(SandboxStartError):
    """The backend itself is missing or unreachable (no engine, no image, no credentials)."""


class SandboxClosed(SandboxError):
    """The sandbox was closed by its owner; open a new one."""


class SandboxLost(SandboxError):
    """The box stopped answering or died; its state is gone."""


# Raised inside kernel code when the controller answers a guest call with an error. Defined in the
# guest package, which a box has without the rest of ``sandboxes``.
from sandboxes.guest.runtime import GuestCallError  # noqa: E402,F401
