"""Removing boxes nobody will close: their controller is gone, or their lifetime has passed.

A controller removes its own boxes on close, on cancellation, at exit and on SIGTERM. What survives a
SIGKILL or a crashed host is found here by its labels: the owner (host, pid and start time of the
controller process) and the expiry time. ``rlm sandbox reap`` runs this; so can a cron job.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandboxes.backends.docker.channel_dirs import CONTAINER_PREFIX, channel_parent
from sandboxes.backends.docker.engine import engine_client
from sandboxes.box_tags import BOX_ID_LABEL, EXPIRES_LABEL, MANAGED_LABEL, OWNER_LABEL, owner_alive

# A channel folder with no container is left alone this long: its box may be starting right now.
FOLDER_GRACE_S = 300.0
_FOLDER = re.compile(r"^rlm-box-([0-9a-zA-Z_-]+?)-[^-]+$")


@dataclass(frozen=True)
class ReapedBox:
    container: str
    box_id: str
    owner: str
    reason: str
    removed: bool


def managed_containers(client: Any, owner: str | None = None) -> list[Any]:
    """Every container we created (running or not), optionally only one owner's."""
    label = f"{OWNER_LABEL}={owner}" if owner else MANAGED_LABEL
    return client.containers.list(all=True, filters={"label": label})


def reap_reason(labels: dict[str, str], now: float) -> str | None:
    """Why a box may be removed by anyone, or None while its owner is alive and its lifetime runs."""
    try:
        expires = float(labels.get(EXPIRES_LABEL, ""))
    except ValueError:
        expires = None
    if expires is not None and expires <= now:
        return f"its lifetime ended {now - expires:.0f} s ago"
    owner = labels.get(OWNER_LABEL, "")
    if owner_alive(owner) is False:
        return f"its controller ({owner}) is gone"
    if expires is None:
        return "it carries no expiry label"
    return None


def reap(*, dry_run: bool = False, client: Any = None, now: float | None = None) -> list[ReapedBox]:
    """Remove orphaned and expired boxes; return what was found (and removed unless ``dry_run``)."""
    import docker.errors

    client = client or engine_client()
    now = time.time() if now is None else now
    found: list[ReapedBox] = []
    for container in managed_containers(client):
        labels = container.labels or {}
        reason = reap_reason(labels, now)
        if reason is None:
            continue
        removed = False
        if not dry_run:
            try:
                container.remove(force=True, v=True)
                removed = True
            except docker.errors.NotFound:
                removed = True
            except docker.errors.APIError:
                removed = False
        found.append(ReapedBox(container.name, labels.get(BOX_ID_LABEL, ""), labels.get(OWNER_LABEL, ""),
                               reason, removed))
    if not dry_run:
        remove_stale_channel_folders(client)
    return found


def remove_stale_channel_folders(client: Any, parent: str | None = None) -> list[Path]:
    """Channel folders (``rlm-box-<id>-*``) of this user whose container no longer exists."""
    root = Path(parent or channel_parent())
    live = {c.name.removeprefix(CONTAINER_PREFIX) for c in managed_containers(client)}
    removed: list[Path] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        match = _FOLDER.match(entry.name)
        if not match or match.group(1) in live:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not entry.is_dir(follow_symlinks=False) or info.st_uid != os.geteuid():
            continue
        if time.time() - info.st_mtime < FOLDER_GRACE_S:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    return removed
