"""Where our containers and their channel folders are on the host: container names, and the private
folder that holds one channel folder (with the agent's Unix socket) per box.

Shared by the backend, which makes them, and the reaper, which removes what a dead controller left.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from sandboxes.errors import SandboxUnavailable

CONTAINER_PREFIX = "rlm-box-"
# Host folder under which each box gets its channel folder; short, because socket paths are limited.
RUN_DIR_ENV = "RLM_SANDBOX_RUN_DIR"


def channel_parent() -> str:
    """The folder holding this user's channel folders: private (0700), so no other user of the host
    can reach a box's socket and pose as its agent. Each box's own folder is bind-mounted directly,
    so the box needs no access to this one.

    ``$RLM_SANDBOX_RUN_DIR`` names another folder, which gets the same checks: made 0700 if missing,
    refused unless it is a folder (not a link) of this user, and closed to others if it was open."""
    configured = os.environ.get(RUN_DIR_ENV)
    path = Path(configured) if configured else Path(tempfile.gettempdir()) / f"rlm-sandboxes-{os.geteuid()}"
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise SandboxUnavailable(f"cannot make the channel folder {path}: {exc}; set {RUN_DIR_ENV} to a "
                                 "folder of this user") from None
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        fix = f"point {RUN_DIR_ENV} at a private folder of this user" if configured else (
            f"remove it, or set {RUN_DIR_ENV} to a private folder for the boxes' channels")
        raise SandboxUnavailable(f"{path} exists but is not a folder of this user: {fix}")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return str(path)
