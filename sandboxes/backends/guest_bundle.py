"""The guest package as files to put into a box that has no image of ours (E2B), or to add to one
(Modal): ``sandboxes/guest/*.py`` beside an empty ``sandboxes/__init__.py``.

Only the guest package goes in; the controller's ``sandboxes/__init__.py`` and everything else in
``sandboxes`` stay out, so code in the box cannot import controller code it has no business with.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path

from sandboxes.guest.protocol import guest_sources

# Where the bundle's files go, relative to the folder put on the box's PYTHONPATH.
PACKAGE_INIT = "sandboxes/__init__.py"
GUEST_DIR = "sandboxes/guest"


def guest_files() -> dict[str, bytes]:
    """Relative path -> content, for every file of the guest package as a box sees it."""
    files = {PACKAGE_INIT: b""}
    for source in guest_sources():
        files[f"{GUEST_DIR}/{source.name}"] = source.read_bytes()
    return files


_staged: Path | None = None
_stage_lock = threading.Lock()


def write_guest(root: Path) -> Path:
    """Lay the bundle out under ``root`` (which then goes on the box's PYTHONPATH); returns ``root``."""
    for rel, data in guest_files().items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def staged_guest() -> Path:
    """A local folder holding the bundle, for providers that copy a folder into a box (Modal's
    ``add_local_dir``). Made once per process and removed at exit."""
    global _staged
    with _stage_lock:
        if _staged is None or not _staged.is_dir():
            root = Path(tempfile.mkdtemp(prefix="rlm-guest-"))
            atexit.register(shutil.rmtree, root, True)
            _staged = write_guest(root)
        return _staged
