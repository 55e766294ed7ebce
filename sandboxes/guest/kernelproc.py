"""The kernel as a process: its connection file, its environment, launching it, signalling it.

Kept apart from the agent, with nothing but light standard-library imports, so the agent's entry
point (``python -m sandboxes.guest``) can launch the kernel before it imports anything heavy: the
kernel's half-second boot then overlaps the agent's own start-up instead of following it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

from sandboxes.guest.runtime import SOCKET_ENV
from sandboxes.guest.users import SHARED_UMASK, KernelUser, split_users

KERNEL_FLAGS = ("--HistoryManager.enabled=False", "--IPKernelApp.quiet=True", "--InteractiveShell.colors=nocolor")


class KernelProcess:
    """One ipykernel process on ipc transport in the agent's private folder. Respawnable."""

    def __init__(self, workdir: Path, private: Path, user: KernelUser | None = None) -> None:
        self.workdir = workdir
        self.private = private
        # The kernel's own user, when the agent split the box's users (see ``users``); else the agent's.
        self.user = user
        self.call_socket = private / "calls.sock"
        self.connection_file = private / "kernel.json"
        self.proc: subprocess.Popen[bytes] | None = None
        info = {"transport": "ipc", "ip": str(private / "k"), "key": secrets.token_hex(16),
                "signature_scheme": "hmac-sha256", "kernel_name": "python3"}
        info.update({name: port for port, name in enumerate(
            ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"), start=1)})
        self.connection_file.write_text(json.dumps(info))
        # Readable by the kernel's user through the shared group; the folder is sticky, so the kernel
        # can bind its sockets in it but not replace the agent's files.
        self.connection_file.chmod(0o640 if user else 0o600)
        if user:
            private.chmod(0o1770)

    def env(self) -> dict[str, str]:
        """The kernel's environment: only what the agent was given, plus what the runtime needs."""
        env = dict(os.environ)
        env[SOCKET_ENV] = str(self.call_socket)
        env["IPYTHONDIR"] = str(self.private / "ipython")
        env["JUPYTER_RUNTIME_DIR"] = str(self.private / "runtime")
        env["MPLBACKEND"] = "Agg"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def spawn(self) -> None:
        """Start the kernel process; returns at once (the agent's client connects later)."""
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", str(self.connection_file), *KERNEL_FLAGS]
        # A session of its own: interrupting or killing its process group reaches what the cell started.
        as_user: dict[str, int] = {}
        if self.user is not None:
            as_user = {"user": self.user.uid, "group": self.user.gid, "umask": SHARED_UMASK}
        self.proc = subprocess.Popen(argv, cwd=self.workdir, env=self.env(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                     **as_user)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def poll(self) -> int | None:
        """None while running, else the exit code (negative: killed by that signal)."""
        return None if self.proc is None else self.proc.poll()

    def signal(self, signum: int) -> None:
        """Signal the kernel's whole process group (a subprocess the cell started too)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signum)
        except OSError:
            try:
                self.proc.send_signal(signum)
            except OSError:
                pass


def apply_rlimits(limits: dict[str, int]) -> None:
    """Set the named rlimits (``{"AS": bytes, "NOFILE": n, ...}``, soft = hard) on this process.

    The agent sets them on itself before it starts the kernel, which inherits them: they hold from
    the kernel's first instruction, where a limit set on the agent from outside would race the kernel's
    start. A limit the system refuses is a start-up failure, not a box without it."""
    import resource

    for name, value in limits.items():
        resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (int(value), int(value)))


def launch(config: dict) -> KernelProcess:
    """Make the working and private folders and start the kernel, from the agent's config."""
    user = split_users(config.get("users"))
    apply_rlimits(config.get("rlimits") or {})
    workdir = Path(config.get("workdir") or os.getcwd()).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    kernel = KernelProcess(workdir, Path(tempfile.mkdtemp(prefix="sandbox-agent-")), user)
    kernel.spawn()
    return kernel
