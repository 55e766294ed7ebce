"""Two users in one box: the agent's and the kernel's, so kernel code cannot touch its supervisor.

Where the box lets the agent start as root with a few capabilities (a Docker container started as
``0:0`` with ``cap_drop=ALL`` and ``cap_add=[SETUID, SETGID, KILL, SETPCAP]``, under runc and gVisor
alike), the agent, before anything else:

1. empties the capability bounding set (CAP_SETPCAP), so nothing it starts can ever gain one;
2. becomes the agent user (setgroups([]), setresgid, setresuid) keeping, through PR_SET_KEEPCAPS and
   capset, exactly CAP_SETUID and CAP_SETGID (to start each new kernel as the kernel user) and
   CAP_KILL (to interrupt, kill and sweep the kernel's processes); SETPCAP and the rest are gone;
3. starts the kernel as the kernel user (``subprocess.Popen(user=, group=)``): a uid of its own, no
   capability in any set (they are cleared at exec for a non-root uid and the bounding set is empty),
   and no-new-privileges from the engine, so it cannot get one back.

A signal from the kernel to the agent (SIGSTOP, SIGKILL, ``kill(-1, ...)``) fails with EPERM, as do
ptrace, /proc/<agent>/mem and, under runc, renicing the agent or pinning it to a CPU: all need the
agent's uid or a capability. Both users share one group, which owns the working folder (mode 0770) and
the agent's private folder (sticky, 1770): uploads written by the agent are the kernel's to read and
write, the kernel binds its ipc sockets next to the agent's, and cannot remove or replace the agent's
files there. Both run with umask 007, so what one writes the other can use.

Where the agent does not start as root (the local backend, Modal, E2B) it runs the kernel as itself,
as before: detecting a stopped or dead agent is then the controller's job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

CAP_KILL, CAP_SETGID, CAP_SETUID = 5, 6, 7
AGENT_CAPS = (CAP_SETUID, CAP_SETGID, CAP_KILL)
PR_SET_KEEPCAPS, PR_CAPBSET_DROP = 8, 24
CAP_LAST_POSSIBLE = 63
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
SHARED_UMASK = 0o007


@dataclass(frozen=True)
class KernelUser:
    """Whom the kernel runs as, once the agent has split the box's users."""

    uid: int
    gid: int


def _check(result: int, what: str) -> None:
    import ctypes

    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _set_capabilities(libc: Any, caps: tuple[int, ...]) -> None:
    """Make ``caps`` this process's effective and permitted sets, and nothing inheritable."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    mask = 0
    for cap in caps:
        mask |= 1 << cap
    data = (Data * 2)()
    data[0].effective = data[0].permitted = mask
    _check(libc.capset(ctypes.byref(Header(_LINUX_CAPABILITY_VERSION_3, 0)), data), "capset")


def split_users(users: dict[str, int] | None) -> KernelUser | None:
    """Become the agent user with only the capabilities to supervise a kernel of another user.

    ``users``: ``{"agent": uid, "kernel": uid, "group": gid}`` from the agent's config. Returns the
    kernel's user, or None (no split) when none was asked for or the agent did not start as root (a
    runtime that forces a user of its own: ``rlm sandbox doctor`` then reports one user). Once started,
    any step that fails raises: the agent must not go on half switched.
    """
    if not users or os.geteuid() != 0:
        return None
    import ctypes  # only here: the agent's start-up imports nothing it does not need

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(CAP_LAST_POSSIBLE + 1):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:  # EINVAL: no such cap
            _check(-1, f"dropping capability {cap} from the bounding set")
    _check(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "PR_SET_KEEPCAPS")
    group = int(users["group"])
    os.setgroups([])
    os.setresgid(group, group, group)
    os.setresuid(int(users["agent"]), int(users["agent"]), int(users["agent"]))
    _set_capabilities(libc, AGENT_CAPS)
    _check(libc.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0), "PR_SET_KEEPCAPS")
    os.umask(SHARED_UMASK)
    return KernelUser(int(users["kernel"]), group)
