"""The Docker engine as the Docker backend, the image builder, the reaper and `doctor` see it.

One place that knows how to reach the engine (with an error that says how to start one when it does
not answer), which runtimes it offers, and the labels that mark a container as ours. Kept apart from
``sandboxes.backends.docker.backend`` so the image builder and the reaper need not import the backend.
"""

from __future__ import annotations

import threading
from typing import Any

from sandboxes.box_tags import LABEL_PREFIX
from sandboxes.errors import SandboxUnavailable

# On images: the guest version inside, and the digest of everything the image was built from.
GUEST_VERSION_LABEL = f"{LABEL_PREFIX}.guest-version"
BUILD_KEY_LABEL = f"{LABEL_PREFIX}.build-key"

_client_lock = threading.Lock()
_client: Any = None

HOW_TO_START = (
    "Start a Docker engine (`sudo systemctl start docker`, or `sudo dockerd &`), make sure this user "
    "may use it (the `docker` group) and that DOCKER_HOST points to it if it is not the default "
    "socket; `rlm sandbox doctor` checks the setup."
)


def engine_client() -> Any:
    """A docker-py client for the local engine, shared by every box of this process.

    The API version is negotiated (Debian's engine speaks an older API than the newest clients).
    Raises SandboxUnavailable, saying how to start an engine, when none answers.
    """
    global _client
    with _client_lock:
        if _client is not None:
            return _client
        try:
            import docker
        except ImportError:  # pragma: no cover - docker is a hard dependency
            raise SandboxUnavailable("the `docker` Python package is missing: pip install docker") from None
        try:
            client = docker.from_env(version="auto", timeout=60, max_pool_size=64)
            client.ping()
        except Exception as exc:
            raise SandboxUnavailable(f"no Docker engine answers ({_short(exc)}). {HOW_TO_START}") from None
        _client = client
        return client


def engine_runtimes(client: Any) -> dict[str, Any]:
    """The OCI runtimes the engine offers, e.g. {"runc": {...}, "runsc": {...}}."""
    return dict(client.info().get("Runtimes") or {})


def require_runtime(client: Any, runtime: str | None) -> None:
    """Fail fast, saying what to do, when the spec asks for a runtime the engine does not have."""
    if runtime is None or runtime == "runc":
        return
    if runtime not in engine_runtimes(client):
        raise SandboxUnavailable(
            f"the Docker engine has no {runtime!r} runtime: gVisor is not installed or not registered. "
            "Install it (`apt-get install runsc`), register it in /etc/docker/daemon.json as "
            '{"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", '
            '"--host-uds=all"]}}} and restart the engine; `rlm sandbox doctor` checks the setup.'
        )


def _short(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return text if len(text) <= 200 else text[:200] + "..."
