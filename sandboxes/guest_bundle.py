"""The guest package as files to put into a box that has no image of ours (E2B), or to add to one
(Modal): ``sandboxes/guest/*.py`` beside an empty ``sandboxes/__init__.py``.

Only the guest package goes in; the controller's ``sandboxes/__init__.py`` and everything else in
``sandboxes`` stay out, so code in the box cannot import controller code it has no business with.
"""

from __future__ import annotations

from pathlib import Path

GUEST_SOURCE = Path(__file__).resolve().parent / "guest"
# Where the bundle's files go, relative to the folder put on the box's PYTHONPATH.
PACKAGE_INIT = "sandboxes/__init__.py"
GUEST_DIR = "sandboxes/guest"


def guest_sources() -> list[Path]:
    return sorted(GUEST_SOURCE.glob("*.py"))


def guest_files() -> dict[str, bytes]:
    """Relative path -> content, for every file of the guest package as a box sees it."""
    files = {PACKAGE_INIT: b""}
    for source in guest_sources():
        files[f"{GUEST_DIR}/{source.name}"] = source.read_bytes()
    return files
