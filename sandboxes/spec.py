"""SandboxSpec: every limit a sandbox enforces, with the defaults a careful operator would pick.

A spec is plain frozen data so it can be logged, compared, hashed and shared between a pool and its
boxes: its mappings (``env``, ``labels``, ``options``) are taken as dicts and kept as ``FrozenMap`` objects,
read-only and hashable, so nobody can change a spec that boxes are already built from. Backends read
what applies to them; a limit a backend cannot enforce is documented in that backend.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

BACKENDS = ("local", "docker", "modal", "e2b")
RUNTIMES = (None, "runc", "runsc")
# The smallest CPU share a box may ask for: a 1 ms CFS quota (the kernel's floor) over a 100 ms period.
MIN_CPUS = 0.01


class FrozenMap(Mapping[str, Any]):
    """A read-only mapping with a hash, its keys in sorted order. Nested dicts and lists in the values
    are frozen too (to FrozenMaps and tuples), so the whole value is immutable and hashable."""

    __slots__ = ("_items", "_hash")

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        self._items = {key: _freeze(value) for key, value in sorted(dict(items or {}).items())}
        self._hash: int | None = None

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(tuple(self._items.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._items) == dict(other.items())

    def __repr__(self) -> str:
        return f"FrozenMap({self._items!r})"


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping) and not isinstance(value, FrozenMap):
        return FrozenMap(value)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item) for item in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(_freeze(item) for item in value)
    return value


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
    env: Mapping[str, str] = field(default_factory=FrozenMap)
    # Labels recorded on the box (Docker labels, Modal tags, E2B metadata) for ownership and reaping.
    labels: Mapping[str, str] = field(default_factory=FrozenMap)
    # Backend-specific settings (e.g. Modal app name and environment, E2B template).
    options: Mapping[str, Any] = field(default_factory=FrozenMap)

    def __post_init__(self) -> None:
        for name in ("env", "labels", "options"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise ValueError(f"{name} must be a mapping (a dict), not {type(value).__name__}")
            if not isinstance(value, FrozenMap):
                object.__setattr__(self, name, FrozenMap(value))
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
        if self.cpus < MIN_CPUS:
            raise ValueError(f"cpus must be at least {MIN_CPUS} (a share of one CPU the engines can enforce)")
        for name in ("cell_timeout_s", "lifetime_s", "kill_grace_s", "startup_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for key in self.env:
            if not isinstance(key, str) or not key or "=" in key:
                raise ValueError(f"bad environment variable name {key!r}")

    def replace(self, **changes: Any) -> "SandboxSpec":
        return dataclasses.replace(self, **changes)
