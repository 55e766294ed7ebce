"""The Docker engine as the Docker backend, the image builder, the reaper and `doctor` see it.

One place that knows how to reach the engine (with an error that says how to start one when it does
not answer), which runtimes it offers, and the labels that mark a container as ours. Kept apart from
``sandboxes.backends.docker.backend`` so the image builder and the reaper need not import the backend.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

from sandboxes.errors import SandboxUnavailable

LABEL_PREFIX = "org.rlm-sandboxes"
# Present on every container we create; the reaper and the tests filter on it.
MANAGED_LABEL = f"{LABEL_PREFIX}.managed"
# "<hostname>:<pid>:<process start time>" of the controller that owns the box.
OWNER_LABEL = f"{LABEL_PREFIX}.owner"
RUN_ID_LABEL = f"{LABEL_PREFIX}.run-id"
BOX_ID_LABEL = f"{LABEL_PREFIX}.box-id"
# Unix time after which the box may be destroyed by anyone, whatever its owner says.
EXPIRES_LABEL = f"{LABEL_PREFIX}.expires"
# Caller's own labels (SandboxSpec.labels) are recorded under this prefix.
USER_LABEL_PREFIX = f"{LABEL_PREFIX}.label."
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


def reset_engine_client() -> None:
    """Forget the shared client (after the engine was restarted, or in tests)."""
    global _client
    with _client_lock:
        if _client is not None:
            try:
                _client.close()
            except Exception:
                pass
        _client = None


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


def process_start_ticks(pid: int) -> str | None:
    """The start time of a process in clock ticks since boot (field 22 of /proc/PID/stat).

    With the pid it names one process for good: a pid reused by a later process has another start time.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces or parentheses.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def owner_id() -> str:
    """This controller process, as recorded in the owner label of its boxes."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start_ticks(pid) or '?'}"


def owner_alive(owner: str) -> bool | None:
    """Whether the controller named by an owner label still runs; None when it cannot be told here.

    Only owners on this host can be checked; for others the expiry label is what counts.
    """
    try:
        host, pid_text, ticks = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    current = process_start_ticks(pid)
    if current is None:
        return False
    return ticks == "?" or current == ticks


def _short(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return text if len(text) <= 200 else text[:200] + "..."
