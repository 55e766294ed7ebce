"""SandboxSpec: every limit a sandbox enforces, with the defaults a careful operator would pick.

A spec is plain frozen data so it can be logged, compared and shared between a pool and its boxes.
Backends read what applies to them; a limit a backend cannot enforce is documented in that backend.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

BACKENDS = ("local", "docker", "modal", "e2b")
RUNTIMES = (None, "runc", "runsc")


@dataclass(frozen=True)
class SandboxSpec:
    backend: str = "local"
    memory_mb: int = 1024
    cpus: float = 1.0
    pids: int = 256
    disk_mb: int = 512
    cell_timeout_s: float = 60.0
    lifetime_s: float = 3600.0
    network: str = "none"
    runtime: str | None = None
    image: str | None = None
    # Output kept per cell (stdout and stderr each): the head and the tail, with a note of what was cut.
    output_limit_bytes: int = 256 * 1024
    # After an interrupt, how long a busy kernel gets before it is killed and restarted.
    kill_grace_s: float = 2.0
    # Deadline for the box to start and the agent to say `ready`.
    startup_timeout_s: float = 60.0
    # Guest calls served at once, and queued at most, per box.
    max_concurrent_calls: int = 64
    max_pending_calls: int = 1024
    # Open files inside the box (RLIMIT_NOFILE).
    nofile: int = 1024
    # Extra environment for the kernel. Only what the caller puts here enters the box: never secrets.
    env: dict[str, str] = field(default_factory=dict)
    # Labels recorded on the box (Docker labels, Modal tags, E2B metadata) for ownership and reaping.
    labels: dict[str, str] = field(default_factory=dict)
    # Backend-specific settings (e.g. Modal app name and environment, E2B template).
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown sandbox backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {self.runtime!r}; use None (the engine default), 'runc' or 'runsc' (gVisor)")
        if self.network not in ("none", "bridge"):
            raise ValueError("network must be 'none' (default) or 'bridge' (explicitly loosened)")
        for name in ("memory_mb", "pids", "disk_mb", "output_limit_bytes", "max_concurrent_calls",
                     "max_pending_calls", "nofile"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("cpus", "cell_timeout_s", "lifetime_s", "kill_grace_s", "startup_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for key in self.env:
            if not isinstance(key, str) or not key or "=" in key:
                raise ValueError(f"bad environment variable name {key!r}")

    def replace(self, **changes: Any) -> "SandboxSpec":
        return dataclasses.replace(self, **changes)
