"""The run-time check of the kernel image, which the Docker backend makes before its first box: the
image is present and holds this controller's guest. Building the image is ``image_build``'s job.
"""

from __future__ import annotations

import functools
from typing import Any

from sandboxes.backends.docker.engine import GUEST_VERSION_LABEL
from sandboxes.errors import SandboxUnavailable
from sandboxes.guest.protocol import guest_version

IMAGE_REPOSITORY = "rlm-sandbox-kernel"
BUILD_COMMAND = "rlm sandbox build-image"


@functools.cache
def default_image() -> str:
    """The kernel image of this controller: its tag names the guest version it must hold.

    A tag per guest version, not one ``latest``, lets controllers of different versions (two
    checkouts, an upgrade rolling out) share one engine without rebuilding each other's image.
    """
    return f"{IMAGE_REPOSITORY}:guest-{guest_version()}"


def image_guest_version(client: Any, image: str) -> str | None:
    """The guest version an image was built with; None when the image is not present."""
    import docker.errors

    try:
        attrs = client.images.get(image).attrs
    except docker.errors.ImageNotFound:
        return None
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    return labels.get(GUEST_VERSION_LABEL, "")


def check_image(client: Any, image: str) -> None:
    """Fail fast, before any container starts, when the image is missing or holds another guest."""
    found = image_guest_version(client, image)
    command = BUILD_COMMAND + ("" if image == default_image() else f" --tag {image}")
    if found is None:
        raise SandboxUnavailable(
            f"the kernel image {image!r} is not present on the Docker engine: build it with `{command}`"
        )
    expected = guest_version()
    if found != expected:
        raise SandboxUnavailable(
            f"the kernel image {image!r} is stale: it holds guest version {found or 'unknown'!r} but this "
            f"controller is {expected!r}; run `{command}`"
        )


def describe_image(client: Any, image: str) -> dict[str, Any]:
    """What `doctor` shows of an image: present, guest version, and whether it matches this controller."""
    found = image_guest_version(client, image)
    return {
        "image": image,
        "present": found is not None,
        "guest_version": found,
        "expected_guest_version": guest_version(),
        "up_to_date": found == guest_version(),
    }
