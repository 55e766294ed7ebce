"""The project's ``images/`` folder: the Dockerfile and the guest's requirements, from which the Docker
kernel image is built and the Modal image is defined (so both backends run the same environment).
"""

from __future__ import annotations

import re
from pathlib import Path

from sandboxes.errors import SandboxError


class ImageBuildError(SandboxError):
    """The kernel image could not be built; the message says which step failed and what to do."""


def source_root() -> Path:
    """The folder holding ``images/`` and ``sandboxes/`` (the project checkout)."""
    return Path(__file__).resolve().parents[2]


def images_dir() -> Path:
    path = source_root() / "images"
    if not (path / "Dockerfile").is_file():
        raise ImageBuildError(
            f"{path}/Dockerfile not found: the image is built from a checkout of the project "
            "(install it with `pip install -e .` from the checkout)"
        )
    return path


def default_base_image() -> str:
    """The ``ARG BASE_IMAGE=...`` default of the Dockerfile, so the base is named in one place."""
    text = (images_dir() / "Dockerfile").read_text()
    match = re.search(r"^ARG\s+BASE_IMAGE=(\S+)", text, re.MULTILINE)
    if not match:
        raise ImageBuildError("images/Dockerfile has no `ARG BASE_IMAGE=...` line")
    return match.group(1)
