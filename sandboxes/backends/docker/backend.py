"""The Docker backend: the agent as the process of a hardened container (runc, or gVisor's runsc).

The box reaches the controller through one Unix socket in a folder of its own on the host, bind-mounted
read-only at ``/run/sandbox``: the only host path the container sees. The controller listens there and
the agent connects, so start-up waits on the agent's connection, never on polling.

Every hardening default is on unless the spec loosens it: no network (``network="bridge"`` is the only
way to get one), read-only root filesystem, the working folder and /tmp on size-capped tmpfs (which
counts against the memory limit, so a full disk cannot hurt the host), the kernel as a non-root
user with no capability, no-new-privileges, limits on processes, memory (memory+swap equal, so no swap),
CPU, open files and file size, a capped log, and an init process. Nothing of the host's environment
enters the box: only ``spec.env``.

Kernel code cannot touch the agent: the container starts as root-in-container with only SETUID,
SETGID, KILL and SETPCAP; the agent empties the bounding set, becomes the agent user keeping only
SETUID, SETGID and KILL, and runs the kernel as another user with no capability at all (see
``sandboxes.guest.users``). A signal, ptrace or renice from kernel code to the agent fails with EPERM.

A box that keeps a CPU busy is demoted while it stays busy (``sandboxes.cpu_governor``): idle
priority where its cgroup is writable here, and off the cores kept for quiet boxes and the controller.
A quota caps its share, not its neighbours' wait for a core.

Blocking docker-py calls run in a thread pool of this module, never on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from sandboxes.logs import get_logger

from sandboxes.backends.base import Backend, agent_argv
from sandboxes.backends.docker.cgroups import box_cgroup
from sandboxes.backends.docker.channel_dirs import CONTAINER_PREFIX, channel_parent
from sandboxes.backends.docker.engine import engine_client, engine_runtimes, require_runtime
from sandboxes.backends.docker.image_check import default_image, check_image
from sandboxes.box_tags import RUN_ID_LABEL, box_tags
from sandboxes.cancellation import cancelling
from sandboxes.cpu_governor import Governed, cpuset_text, governor
from sandboxes.errors import SandboxStartError, SandboxUnavailable
from sandboxes.results import Diagnosis, DiagnosisKind
from sandboxes.spec import SandboxSpec
from sandboxes.transport import ByteStream, UnixListener

log = get_logger("sandboxes.docker")

# Users and paths inside the box, as laid out by images/Dockerfile. The container starts as root with
# the capabilities below and nothing else; the agent then splits the users (sandboxes.guest.users).
START_USER = "0:0"
AGENT_UID = 10000
KERNEL_UID = 10001
BOX_GID = 10001
START_CAPS = ["SETUID", "SETGID", "KILL", "SETPCAP"]
BOX_PYTHON = "/opt/kernel/bin/python"
BOX_WORKDIR = "/home/sandbox"
BOX_CHANNEL_DIR = "/run/sandbox"
SOCKET_NAME = "agent.sock"
# The CFS period a box's CPU share is enforced over. With Docker's default (100 ms) a box that spins
# on every thread it has runs a 100 ms burst before it is throttled, and its neighbours (the
# controller among them) wait out that burst; a 10 ms period cuts the bursts tenfold (what
# benchmarks/neighbours.py showed of it alone was within that benchmark's run-to-run spread). The
# kernel's floor for a quota is 1 ms, so a smaller share gets a longer period.
CPU_PERIOD_US = 10_000
MIN_CPU_QUOTA_US = 1_000
# /tmp and /dev/shm are small: the working folder is where data belongs.
TMP_MAX_MB = 64
# The agent's own stderr lands in the engine's log; kernel code can write there too, so it is capped.
LOG_MAX = "1m"
# How often start-up looks whether the container died before its agent connected.
START_POLL_S = (0.25, 0.5, 1.0, 2.0)
REMOVE_TIMEOUT_S = 30.0
# Under gVisor the engine's pids limit counts gVisor's own host tasks: about 80 for an idle box and
# about six per process inside it (ptrace platform). The limit passed to the engine is scaled so that
# ``spec.pids`` means roughly the same number of processes in the box under either runtime.
RUNSC_BASE_TASKS = 96
RUNSC_TASKS_PER_PROCESS = 6

# docker-py is blocking; its calls run here, so fifty boxes starting at once never starve the
# event loop's default executor (which guest-call handlers also use).
_threads = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="sandbox-docker")
_checked_images: dict[str, str] = {}
_runtimes: dict[str, Any] | None = None


async def _in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_threads, lambda: fn(*args, **kwargs))


def _preflight(spec: SandboxSpec, image: str) -> Any:
    """Engine, runtime and image checks, each with an error that says what to do; cached per process."""
    global _runtimes
    client = engine_client()
    if spec.runtime not in (None, "runc"):
        if _runtimes is None or spec.runtime not in _runtimes:
            _runtimes = engine_runtimes(client)
            if spec.runtime not in _runtimes:
                require_runtime(client, spec.runtime)
    if image not in _checked_images:
        check_image(client, image)
        _checked_images[image] = image
    return client


def cpu_limits(cpus: float) -> dict[str, int]:
    """The box's CPU share as a CFS quota over a short period (see ``CPU_PERIOD_US``)."""
    period = max(CPU_PERIOD_US, math.ceil(MIN_CPU_QUOTA_US / cpus))
    return {"cpu_period": period, "cpu_quota": max(MIN_CPU_QUOTA_US, round(cpus * period))}


def container_config(spec: SandboxSpec, box_id: str, channel_dir: str) -> dict[str, Any]:
    """The arguments of ``create_container`` (with ``host_config`` as plain keyword arguments).

    Kept apart from the API calls so the hardening can be read, and checked by tests, in one place.
    """
    from docker.types import LogConfig, Mount, Ulimit

    mb = 1024 * 1024
    tmp_mb = min(TMP_MAX_MB, spec.disk_mb)
    labels = box_tags(spec, box_id)
    run_id = spec.labels.get("run_id") or spec.labels.get("run-id")
    if run_id:
        labels[RUN_ID_LABEL] = str(run_id)
    environment = dict(spec.env)
    environment.setdefault("HOME", BOX_WORKDIR)
    environment.setdefault("TMPDIR", "/tmp")
    environment.setdefault("LANG", "C.UTF-8")
    return {
        "image": spec.image or default_image(),
        "command": agent_argv(BOX_PYTHON, spec, BOX_WORKDIR, f"{BOX_CHANNEL_DIR}/{SOCKET_NAME}", owns_box=True,
                              users={"agent": AGENT_UID, "kernel": KERNEL_UID, "group": BOX_GID}),
        "name": CONTAINER_PREFIX + box_id,
        "hostname": "sandbox",
        "user": START_USER,
        "working_dir": BOX_WORKDIR,
        "environment": environment,
        "labels": labels,
        "host_config": {
            "network_mode": "none" if spec.network == "none" else "bridge",
            "read_only": True,
            "tmpfs": {
                # The kernel's, shared with the agent through the group (runc takes the image folder's mode).
                BOX_WORKDIR: f"rw,nosuid,nodev,size={spec.disk_mb}m,uid={KERNEL_UID},gid={BOX_GID},mode=0770",
                "/tmp": f"rw,nosuid,nodev,noexec,size={tmp_mb}m,mode=1777",
            },
            "shm_size": tmp_mb * mb,
            "mounts": [Mount(target=BOX_CHANNEL_DIR, source=channel_dir, type="bind", read_only=True)],
            "cap_drop": ["ALL"],
            "cap_add": START_CAPS,
            "security_opt": ["no-new-privileges"],
            "pids_limit": engine_pids_limit(spec),
            "mem_limit": spec.memory_mb * mb,
            "memswap_limit": spec.memory_mb * mb,
            **cpu_limits(spec.cpus),
            "ulimits": [
                Ulimit(name="nofile", soft=spec.nofile, hard=spec.nofile),
                Ulimit(name="fsize", soft=spec.disk_mb * mb, hard=spec.disk_mb * mb),
                Ulimit(name="core", soft=0, hard=0),
            ],
            "init": True,
            "ipc_mode": "private",
            "log_config": LogConfig(type="json-file", config={"max-size": LOG_MAX, "max-file": "1"}),
            "runtime": spec.runtime,
        },
    }


def engine_pids_limit(spec: SandboxSpec) -> int:
    """The engine's pids limit for a spec (see RUNSC_BASE_TASKS)."""
    if spec.runtime == "runsc":
        return RUNSC_BASE_TASKS + RUNSC_TASKS_PER_PROCESS * spec.pids
    return spec.pids


class DockerSandbox(Backend):
    """One container per box. Not reusable: start once, destroy once."""

    name = "docker"

    def __init__(self, spec: SandboxSpec, box_id: str) -> None:
        super().__init__(spec, box_id)
        self.container_name = CONTAINER_PREFIX + box_id
        self.container_id: str | None = None
        self.dir: Path | None = None
        self.listener: UnixListener | None = None
        self._create: concurrent.futures.Future[Any] | None = None
        self._client: Any = None
        self._started_at = 0.0

    # --- start --------------------------------------------------------------------------------

    async def start(self) -> ByteStream:
        image = self.spec.image or default_image()
        self._client = await _in_thread(_preflight, self.spec, image)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{CONTAINER_PREFIX}{self.box_id}-", dir=channel_parent()))
        # The box's user is not the controller's: it may pass through the folder, never list it.
        os.chmod(self.dir, 0o711)
        self.listener = await UnixListener.open(self.dir / SOCKET_NAME, mode=0o666)
        config = container_config(self.spec, self.box_id, str(self.dir))
        self._started_at = time.monotonic()
        self._create = _threads.submit(self._create_and_start, config)
        try:
            self.container_id = await asyncio.wrap_future(self._create)
        except SandboxUnavailable:
            raise
        except Exception as exc:
            raise self._start_error(exc) from None
        stream = await self._await_agent()
        governor.add(self.box_id, self._governed)
        return stream

    def on_ready(self) -> None:
        governor.ready(self.box_id)

    def _governed(self) -> Governed | None:
        """How the CPU governor reads and places this box (in its thread: inspect blocks). A runc box
        is confined through Docker's update API, a gVisor one (runsc has no ``update``) through its
        cgroup; a runc box is also demoted through its cgroup's ``cpu.idle`` where this process may
        write it."""
        api, container_id = self._client.api, self.container_id
        state = api.inspect_container(container_id)
        cgroup = box_cgroup(state["State"].get("Pid") or 0, container_id)
        if cgroup is None:
            return None
        runc = (state["HostConfig"].get("Runtime") or "runc") != "runsc"
        if not runc and cgroup.cpuset is None:
            return None  # runsc cannot update a running box, and its cgroup is not ours to write
        # A gVisor box is one cgroup for agent and kernel alike: at idle priority its agent, starved with
        # the busy kernel, missed delivering a cell's interrupt within the grace period. Cores only.
        idle, cpuset = (cgroup.idle if runc else None), cgroup.cpuset

        def place(cores: frozenset[int] | None, busy: bool) -> None:
            if idle is not None:
                idle.write_text("1" if busy else "0")
            if cores is None:
                return
            if runc:
                api.update_container(container_id, cpuset_cpus=cpuset_text(cores))
            elif cpuset is not None:
                cpuset.write_text(cpuset_text(cores))

        return Governed(cgroup.read, place)

    def _create_and_start(self, config: dict[str, Any]) -> str:
        api = self._client.api
        host_config = api.create_host_config(**config.pop("host_config"))
        container = api.create_container(host_config=host_config, use_config_proxy=False, **config)
        api.start(container["Id"])
        return container["Id"]

    def _start_error(self, exc: Exception) -> Exception:
        import docker.errors

        image = self.spec.image or default_image()
        text = str(exc)
        if isinstance(exc, docker.errors.ImageNotFound) or "No such image" in text:
            _checked_images.pop(image, None)
            return SandboxUnavailable(f"the kernel image {image!r} is missing: build it with `rlm sandbox build-image`")
        if "unknown or invalid runtime" in text or "runtime" in text and "not" in text and self.spec.runtime:
            return SandboxUnavailable(f"the Docker engine cannot run {self.spec.runtime!r}: {text[:300]}. "
                                      "`rlm sandbox doctor` says how to register gVisor.")
        if isinstance(exc, docker.errors.APIError):
            return SandboxStartError(f"Docker refused to start the box: {text[:500]}")
        if isinstance(exc, (ConnectionError, OSError)) or "Connection" in type(exc).__name__:
            return SandboxUnavailable(f"the Docker engine stopped answering ({text[:200]}); "
                                      "`rlm sandbox doctor` checks it")
        return SandboxStartError(f"could not start the box: {exc.__class__.__name__}: {text[:500]}")

    async def _await_agent(self) -> ByteStream:
        """The agent's connection; fails early, with the reason, if the container dies first."""
        assert self.listener is not None
        deadline = time.monotonic() + self.spec.startup_timeout_s
        accept = asyncio.ensure_future(self.listener.accept(self.spec.startup_timeout_s))
        try:
            for pause in itertools.chain(START_POLL_S, itertools.repeat(START_POLL_S[-1])):
                done, _ = await asyncio.wait({accept}, timeout=min(pause, max(0.0, deadline - time.monotonic())))
                if done:
                    return accept.result()
                if time.monotonic() >= deadline:
                    raise TimeoutError
                state = await _in_thread(self._state)
                if state is not None and not state.get("Running", False):
                    why = await self.diagnose() or f"the container stopped ({state.get('Status')})"
                    raise SandboxStartError(f"the box's agent exited before connecting: {why}")
            raise TimeoutError  # not reached: the poll above runs until the deadline
        finally:
            if not accept.done():
                accept.cancel()

    # --- state and diagnosis ------------------------------------------------------------------

    def _state(self) -> dict[str, Any] | None:
        """The container's State, or None when it is gone."""
        import docker.errors

        try:
            return self._client.api.inspect_container(self.container_name)["State"]
        except docker.errors.NotFound:
            return None

    def _last_words(self) -> str:
        try:
            text = self._client.api.logs(self.container_name, stdout=True, stderr=True, tail=20)
        except Exception:
            return ""
        return text[-2000:].decode("utf-8", "replace").strip()

    def _pids_at_limit(self) -> bool:
        try:
            stats = self._client.api.stats(self.container_name, stream=False, one_shot=True)
            pids = stats.get("pids_stats") or {}
            return bool(pids.get("current")) and pids.get("current", 0) >= engine_pids_limit(self.spec)
        except Exception:
            return False

    async def diagnose(self) -> Diagnosis | None:
        if self._client is None or self.container_id is None:
            return None
        try:
            return await _in_thread(self._diagnose)
        except Exception as exc:
            return Diagnosis("lost", f"the container could not be inspected ({exc.__class__.__name__})")

    def _diagnose(self) -> Diagnosis | None:
        """From the engine's record of the container: its OOM flag, exit code and age. The agent's
        last words (the container's log, which kernel code can write to) are quoted, never judged."""
        state = self._state()
        # The stream just ended: an agent that died takes the container down a moment later.
        for _ in range(40):
            if state is None or not state.get("Running"):
                break
            time.sleep(0.05)
            state = self._state()
        if state is None:
            return Diagnosis("lost", "the container is gone (removed outside this controller)")
        if state.get("Running"):
            if self._pids_at_limit():
                return Diagnosis("lost", f"the box hit its process limit ({self.spec.pids} processes)")
            return None
        code = state.get("ExitCode")
        if state.get("OOMKilled") and code == 128 + 9:
            # The engine saw an OOM kill in the box's cgroup and its agent died of SIGKILL; kernel code
            # cannot send that signal to the agent (it runs under a user of its own).
            return Diagnosis("oom", f"the box ran out of memory (limit {self.spec.memory_mb} MB) and was OOM-killed")
        kind: DiagnosisKind
        if isinstance(code, int) and code > 128:
            kind, what = "killed", f"was killed by signal {code - 128}"
        else:
            kind, what = "exited", f"exited with code {code}"
        if time.monotonic() - self._started_at >= self.spec.lifetime_s:
            kind, what = "lifetime", what + f" after its lifetime of {self.spec.lifetime_s:g} s"
        words = self._last_words()
        return Diagnosis(kind, f"the box's agent {what}" + (f"; its last words: {words}" if words else ""))

    # --- destroy ------------------------------------------------------------------------------

    def shared_folder(self) -> tuple[str, str] | None:
        # The channel folder, bind-mounted read-only: the one host path the box sees.
        return (str(self.dir), BOX_CHANNEL_DIR) if self.dir is not None else None

    async def _destroy(self) -> None:
        governor.remove(self.box_id)
        if self._create is not None and not self._create.done():
            # A create still in flight would otherwise bring the container up after we removed it.
            try:
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._create)), REMOVE_TIMEOUT_S)
            except BaseException:  # the create's own failure (or cancellation) is not ours
                if cancelling():
                    raise
        if self._create is not None:
            try:
                await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(_in_thread(self._remove))),
                                       REMOVE_TIMEOUT_S)
            except BaseException as exc:
                if cancelling():
                    raise
                log.warning("docker_remove_failed", box_id=self.box_id, error=repr(exc)[:200])
        await self._drop_channel()

    def _remove(self) -> None:
        import docker.errors

        try:
            self._client.api.remove_container(self.container_name, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc):
                raise

    async def _drop_channel(self) -> None:
        if self.listener is not None:
            await self.listener.close()
            self.listener = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _emergency_destroy(self) -> None:
        """At interpreter exit or SIGTERM: remove the container synchronously, best effort."""
        governor.remove(self.box_id)
        try:
            if self._create is not None:
                try:
                    self._create.result(timeout=REMOVE_TIMEOUT_S)
                except Exception:
                    pass
                self._remove()
        except Exception:
            pass
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


BACKEND = DockerSandbox
