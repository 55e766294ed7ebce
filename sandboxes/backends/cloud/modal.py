"""The Modal backend: the guest agent as the main process of a Modal Sandbox, spoken to over its
stdin/stdout.

No port is opened on the box and the box has no network (``block_network=True``): the channel is the
agent process's stdin and stdout, which Modal's API carries. The box runs under gVisor (Modal runs
every sandbox that way) with a hard CPU and memory limit (request = limit; ``cpus`` counts logical
CPUs as on Docker, and a Modal core is two of them), a hard lifetime (``timeout``) and an
``idle_timeout``: the stream sends a bare newline whenever it has been quiet for a quarter of that,
so a box goes idle, and is reaped by Modal, only when its controller is gone.

The image is defined from ``images/requirements.txt`` (the same guest packages the Docker image
installs) on Modal's Debian base with the Python version of the Docker image's base, plus the guest
package (only ``sandboxes/guest`` beside an empty ``sandboxes/__init__.py``) added at start, so a new
guest version never needs an image rebuild. Modal caches the built image.

Not enforced per box on Modal: ``pids``, ``disk_mb``, ``nofile`` (Modal sets its own), and the agent
runs as root inside the gVisor box (the box itself is the boundary).

Spec options: ``app_name`` (default "rlm-sandboxes"), ``environment`` (a Modal environment name),
``idle_timeout_s`` (default 300), ``region``, ``image`` (a ``modal.Image`` to use instead of ours; it
must have ipykernel and jupyter_client), ``python_version``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import weakref
from typing import Any

from sandboxes.backends.base import agent_argv
from sandboxes.backends.cloud.sdk_surface import SdkCall
from sandboxes.backends.cloud.stdio_box import SDK_TIMEOUT_S, StdioBoxBackend, provider_lifetime_s, short_error
from sandboxes.backends.cloud.textstream import TextStream
from sandboxes.backends.guest_bundle import staged_guest
from sandboxes.box_tags import box_tags
from sandboxes.errors import SandboxUnavailable
from sandboxes.results import DiagnosisKind
from sandboxes.spec import SandboxSpec
from sandboxes.transport import ByteStream

CREDENTIALS_HINT = ("configure Modal credentials: run `modal token new` (writes ~/.modal.toml) or set "
                    "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET")
DEFAULT_APP_NAME = "rlm-sandboxes"
DEFAULT_IDLE_TIMEOUT_S = 300
DEFAULT_PYTHON_VERSION = "3.12"
MIN_CORES = 0.125
# Where the image keeps the guest package (on PYTHONPATH).
GUEST_ROOT = "/opt/rlm-guest"
DIAGNOSE_WAIT_S = 3.0
# Modal's stdin takes at most 2 MiB between two drains (modal.io_streams.MAX_BUFFER_SIZE).
MAX_STDIN_WRITE = 2 * 1024 * 1024

# Every SDK name this module touches, with every keyword it passes. tests/cloud holds this table
# against the installed SDK and against the fake; ``sdk()`` checks it before the first box.
SDK_SURFACE: tuple[SdkCall, ...] = (
    SdkCall("App.lookup", "aio", ("name", "create_if_missing", "environment_name")),
    SdkCall("Image.debian_slim", "sync", ("python_version",)),
    SdkCall("Image.pip_install", "sync", ("*",)),
    SdkCall("Image.env", "sync", ("vars",)),
    SdkCall("Image.add_local_dir", "sync", ("local_path", "remote_path", "copy")),
    SdkCall("Sandbox.create", "aio", ("*", "app", "image", "tags", "env", "timeout", "idle_timeout", "cpu",
                                      "memory", "block_network", "runtime", "region")),
    SdkCall("Sandbox.object_id", "property"),
    SdkCall("Sandbox.stdin", "property"),
    SdkCall("Sandbox.stdout", "property"),
    SdkCall("Sandbox.stderr", "property"),
    SdkCall("Sandbox.returncode", "property"),
    SdkCall("Sandbox.poll", "aio"),
    SdkCall("Sandbox.terminate", "aio"),
    SdkCall("io_streams.StreamWriter.write", "sync", ("data",)),
    SdkCall("io_streams.StreamWriter.drain", "aio"),
    SdkCall("io_streams.StreamReader.__aiter__", "sync"),
)

# Per SDK module (the real one, or a test's fake): apps looked up, images defined.
# An app entry is the app, or the lookup in flight (a Future of it).
_apps: "weakref.WeakKeyDictionary[Any, dict[tuple[str, str | None], Any]]" = weakref.WeakKeyDictionary()
_images: "weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], Any]]" = weakref.WeakKeyDictionary()


def _requirements() -> list[str]:
    """The guest's packages, from images/requirements.txt (shared with the Docker image)."""
    from sandboxes.backends.image_sources import source_root

    path = source_root() / "images" / "requirements.txt"
    try:
        text = path.read_text()
    except OSError:
        raise SandboxUnavailable(
            f"{path} not found: the Modal image is defined from the project's images/ folder; install the "
            "package from a checkout (`pip install -e .`), or pass a ready modal.Image as "
            "SandboxSpec(options={'image': ...})") from None
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def _python_version(spec: SandboxSpec) -> str:
    """The Docker image's Python (from its BASE_IMAGE), so both backends run the same environment."""
    if spec.options.get("python_version"):
        return str(spec.options["python_version"])
    try:
        from sandboxes.backends.image_sources import default_base_image

        match = re.search(r"python:(\d+\.\d+)", default_base_image())
    except Exception:
        match = None
    return match.group(1) if match else DEFAULT_PYTHON_VERSION


def kernel_image(modal: Any, spec: SandboxSpec) -> Any:
    """The Modal image: the guest's packages, then the guest package itself, added at start."""
    base = spec.options.get("image")
    requirements = tuple(_requirements()) if base is None else ()
    key = (id(base), _python_version(spec), requirements)
    cache = _images.setdefault(modal, {})
    if key in cache:
        return cache[key]
    if base is None:
        base = modal.Image.debian_slim(python_version=_python_version(spec)).pip_install(*requirements)
    image = (
        base.env(vars={"PYTHONPATH": GUEST_ROOT, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"})
        # Added when each box starts (copy=False), so a changed guest never rebuilds the image.
        .add_local_dir(local_path=staged_guest(), remote_path=GUEST_ROOT, copy=False)
    )
    cache[key] = image
    return image


def modal_cores(cpus: float) -> float:
    """Modal cores for ``cpus`` logical CPUs (Modal's smallest request is 0.125 core)."""
    return max(MIN_CORES, cpus / 2)


async def _app(modal: Any, name: str, environment: str | None) -> Any:
    """The app, looked up once per process: boxes started together share one lookup (a first
    ``create_if_missing`` from many boxes at once would otherwise race to create it)."""
    cache = _apps.setdefault(modal, {})
    key = (name, environment)
    entry = cache.get(key)
    if entry is None or (isinstance(entry, asyncio.Future) and (
            entry.get_loop() is not asyncio.get_running_loop() or (entry.done() and entry.exception()))):
        entry = cache[key] = asyncio.ensure_future(asyncio.wait_for(
            modal.App.lookup.aio(name=name, create_if_missing=True, environment_name=environment), SDK_TIMEOUT_S))
    if isinstance(entry, asyncio.Future):
        app = await asyncio.shield(entry)
        cache[key] = app
        return app
    return entry


class ModalSandbox(StdioBoxBackend):
    name = "modal"
    sdk_module = "modal"
    sdk_surface = SDK_SURFACE
    terminate_backstop = "Modal ends it at its timeout/idle_timeout"

    def __init__(self, spec: SandboxSpec, box_id: str) -> None:
        super().__init__(spec, box_id)
        self.stdout_error: str | None = None
        self.idle_timeout_s = int(spec.options.get("idle_timeout_s", DEFAULT_IDLE_TIMEOUT_S))

    def _create_kwargs(self, modal: Any, app: Any) -> dict[str, Any]:
        spec = self.spec
        if spec.runtime == "runc":
            raise SandboxUnavailable("Modal runs every sandbox under gVisor; runtime='runc' is not available "
                                     "there: use runtime=None or 'runsc'")
        kwargs: dict[str, Any] = {
            "app": app,
            "image": kernel_image(modal, spec),
            "tags": box_tags(spec, self.box_id),
            "env": dict(spec.env),
            "timeout": provider_lifetime_s(spec),
            "idle_timeout": self.idle_timeout_s,
            # spec.cpus counts logical CPUs, as Docker does; Modal's unit is a physical core (2 logical).
            "cpu": (modal_cores(spec.cpus), modal_cores(spec.cpus)),
            "memory": (spec.memory_mb, spec.memory_mb),
            "block_network": spec.network == "none",
        }
        if spec.runtime == "runsc":
            kwargs["runtime"] = "gvisor"
        if spec.options.get("region"):
            kwargs["region"] = spec.options["region"]
        return kwargs

    @property
    def workdir(self) -> str:
        return self.root + "/work"

    async def start(self) -> ByteStream:
        modal = self.sdk()
        app_name = str(self.spec.options.get("app_name", DEFAULT_APP_NAME))
        environment = self.spec.options.get("environment")
        try:
            app = await _app(modal, app_name, environment)
        except Exception as exc:
            raise SandboxUnavailable(
                f"could not reach the Modal app {app_name!r} ({short_error(exc)}): {CREDENTIALS_HINT}; "
                "`modal token info` shows which workspace the credentials belong to") from None
        argv = agent_argv("python", self.spec, self.workdir, None)
        try:
            self.sandbox = await modal.Sandbox.create.aio(*argv, **self._create_kwargs(modal, app))
        except SandboxUnavailable:
            raise
        except Exception as exc:
            raise SandboxUnavailable(f"Modal refused to create the sandbox ({short_error(exc)}); check the "
                                     f"credentials ({CREDENTIALS_HINT}) and the workspace's limits") from None
        self.sandbox_id = self.sandbox.object_id
        self.log.debug("modal_sandbox_created", box_id=self.box_id, sandbox_id=self.sandbox_id)
        keepalive = max(1.0, self.idle_timeout_s / 4)
        self.stream = TextStream(self._send, max_write=MAX_STDIN_WRITE, keepalive=keepalive)
        self.tasks = [asyncio.create_task(self._pump_stdout(self.stream), name=f"modal-stdout-{self.box_id}"),
                      asyncio.create_task(self._pump_stderr(), name=f"modal-stderr-{self.box_id}")]
        return self.stream

    async def _send(self, piece: bytes) -> None:
        async def write() -> None:
            self.sandbox.stdin.write(data=piece)
            await self.sandbox.stdin.drain.aio()

        await self.guarded_write(write(), "the Modal sandbox's stdin")

    async def _pump_stdout(self, stream: TextStream) -> None:
        try:
            async for chunk in self.sandbox.stdout:
                await stream.feed(chunk)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stdout_error = short_error(exc)
        finally:
            await stream.feed_eof()

    async def _pump_stderr(self) -> None:
        with contextlib.suppress(Exception):
            async for chunk in self.sandbox.stderr:
                self.stderr_tail.add(chunk)

    async def _describe_end(self) -> tuple[DiagnosisKind, list[str]]:
        parts: list[str] = []
        kind: DiagnosisKind = "lost"
        code = None
        try:
            # Stdout can end a moment before Modal records the exit: give it a few seconds.
            async with asyncio.timeout(DIAGNOSE_WAIT_S):
                while (code := await self.sandbox.poll.aio()) is None:
                    await asyncio.sleep(0.2)
        except TimeoutError:
            pass
        except Exception as exc:
            parts.append(f"Modal could not say how the sandbox {self.sandbox_id} ended ({short_error(exc)})")
        if code is not None:
            what = f"the Modal sandbox {self.sandbox_id} ended with exit code {code}"
            kind = "killed" if code > 128 or code < 0 else "exited"
            if code in (137, -9):
                what += (f" (killed: over its {self.spec.memory_mb} MB memory limit, past its lifetime, "
                         "or terminated from outside)")
            parts.append(what)
        elif not parts:
            parts.append(f"the Modal sandbox {self.sandbox_id} still runs but its agent's output ended")
        if self.stdout_error:
            parts.append(f"reading its stdout failed: {self.stdout_error}")
        return kind, parts

    async def _terminate(self) -> None:
        await self.sandbox.terminate.aio()

    def _emergency_destroy(self) -> None:
        if self.sandbox is None:
            return
        with contextlib.suppress(Exception):
            self.sandbox.terminate()


BACKEND = ModalSandbox
