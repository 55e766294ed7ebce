"""Docker test setup: an engine and an up-to-date kernel image, or a skip (a failure under CI=true).

Docker tests skip only when no engine answers and CI is unset. With CI=true a missing engine, a
missing gVisor runtime or an image that cannot be built fails the run instead. At the end of the
session, no container created by this test process may be left.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from sandboxes.box_tags import OWNER_LABEL, owner_id

from sandboxes.backends.docker.engine import engine_client, engine_runtimes
from sandboxes.errors import SandboxUnavailable

IN_CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: Docker tests must run, not skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client() -> Any:
    try:
        client = engine_client()
    except SandboxUnavailable as exc:
        _unavailable(str(exc))
    from sandboxes.backends.docker.image_build import ImageBuildError, build_image

    try:  # reused at once when up to date; rebuilt (seconds, cached layers) when the guest changed
        build_image(offline=True, client=client)
    except ImageBuildError as exc:
        pytest.fail(f"the kernel image could not be built: {exc}", pytrace=False)
    return client


@pytest.fixture(scope="session", params=["runc", "runsc"])
def runtime(request: pytest.FixtureRequest, docker_client: Any) -> str | None:
    """Each test that takes it runs under runc (the engine default) and under gVisor."""
    if request.param == "runsc" and "runsc" not in engine_runtimes(docker_client):
        _unavailable("the Docker engine has no 'runsc' (gVisor) runtime registered")
    return None if request.param == "runc" else request.param


def our_containers(client: Any) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={owner_id()}"})


@pytest.fixture(autouse=True, scope="session")
def no_container_left_behind() -> Any:
    yield
    try:
        client = engine_client()
    except SandboxUnavailable:
        return
    left = our_containers(client)
    names = [c.name for c in left]
    for container in left:  # clean up anyway, so one failure does not leak into the next run
        try:
            container.remove(force=True)
        except Exception:
            pass
    assert not names, f"containers left behind by the tests: {names}"


@pytest.fixture(autouse=True)
def _engine_and_image(request: pytest.FixtureRequest) -> None:
    """Every test marked ``docker`` needs the engine and the image (or is skipped / failed as above)."""
    if request.node.get_closest_marker("docker") is not None:
        request.getfixturevalue("docker_client")
