"""A Docker box's cgroup, as seen from the engine's host: where the CPU governor reads and places it.

Found through the container's first process (``/proc/<pid>/cgroup``), for cgroup v1 and v2 alike.
Reading needs only that the host's cgroup tree is visible here (a local engine); writing (the box's
``cpu.idle`` and ``cpuset.cpus``) needs root on that host, and each file is offered only where
this process may write it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 mounts each controller on its own, or with a partner in one folder.
V1_MOUNTS = {"cpuacct": ("cpuacct", "cpu,cpuacct", "cpuacct,cpu"), "cpu": ("cpu", "cpu,cpuacct", "cpuacct,cpu"),
             "cpuset": ("cpuset",)}


@dataclass(frozen=True)
class BoxCgroup:
    """A reader of the box's CPU time (ns), and its ``cpu.idle`` and ``cpuset.cpus`` files where this
    process may write them (else None)."""

    read: Callable[[], int | None]
    idle: Path | None
    cpuset: Path | None


def box_cgroup(pid: int, container_id: str) -> BoxCgroup | None:
    """The cgroup of the container whose first process is ``pid``; None when that cgroup is not the
    container's or not readable here (a remote engine, another PID namespace)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    read: Callable[[], int | None] | None = None
    files: dict[str, Path] = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if container_id not in path:
            continue
        relative = path.lstrip("/")
        if controllers == "":  # cgroup v2: one folder for every controller
            folder = CGROUP_ROOT / relative
            if (folder / "cpu.stat").exists():
                read = _v2_usage(folder / "cpu.stat")
            files.setdefault("idle", folder / "cpu.idle")
            files.setdefault("cpuset", folder / "cpuset.cpus")
            continue
        names = controllers.split(",")
        if "cpuacct" in names:
            usage = _first(CGROUP_ROOT / mount / relative / "cpuacct.usage" for mount in V1_MOUNTS["cpuacct"])
            if usage is not None:
                read = lambda usage=usage: int(usage.read_text())  # noqa: E731
        if "cpu" in names:
            idle = _first(CGROUP_ROOT / mount / relative / "cpu.idle" for mount in V1_MOUNTS["cpu"])
            if idle is not None:
                files["idle"] = idle
        if "cpuset" in names:
            files["cpuset"] = CGROUP_ROOT / "cpuset" / relative / "cpuset.cpus"
    if read is None:
        return None
    return BoxCgroup(read, _writable(files.get("idle")), _writable(files.get("cpuset")))


def _first(paths: Iterable[Path]) -> Path | None:
    return next((path for path in paths if path.exists()), None)


def _writable(path: Path | None) -> Path | None:
    return path if path is not None and path.exists() and os.access(path, os.W_OK) else None


def _v2_usage(stat: Path) -> Callable[[], int | None]:
    def read() -> int | None:
        for entry in stat.read_text().splitlines():
            if entry.startswith("usage_usec "):
                return int(entry.split()[1]) * 1000
        return None
    return read
