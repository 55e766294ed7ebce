"""The E2B backend: the guest agent as a background command in an E2B sandbox, spoken to over that
command's stdin (``send_stdin``) and stdout (``on_stdout``).

The box is created with ``allow_internet_access=False`` and with sandbox URLs closed to the public,
and a hard lifetime (``timeout``) after which E2B kills it whatever the controller does. Nothing
listens on a port for us: the channel is the command's stdin and stdout, carried by E2B's API.

Which kernel: ours, not E2B's. E2B's code-interpreter template runs its own Jupyter server, reached
over HTTP on a port of the box. We run the same guest agent and ipykernel as every other backend
instead, because (1) the guest calls (``llm_query``) need a channel from running kernel code back to
the controller while a cell runs, which E2B's execution API does not offer and the box's blocked
network must not provide; (2) timeouts, the interrupt-then-restart escalation, output caps and
statuses then behave exactly as on Docker and Modal, tested once; (3) it needs no port reached from
outside. The default template is still E2B's code-interpreter one, only because it ships Python
with ipykernel and jupyter_client; any template with those works (``options={"template": ...}``).

The guest package is written into the box as files (only ``sandboxes/guest`` beside an empty
``sandboxes/__init__.py``) before the agent starts.

Not enforced per box on E2B: ``memory_mb`` and ``cpus`` (fixed by the template at build time:
``e2b template build --memory-mb/--cpu-count``), ``pids``, ``disk_mb``, ``nofile``. The agent runs
as E2B's unprivileged default user.

Spec options: ``template`` (default "code-interpreter-v1"; ``spec.image`` is used when set),
``python`` (default "python3"), ``stdin_chunk_bytes`` (default 1 MiB per ``send_stdin``).
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from typing import Any

from sandboxes.backends.base import agent_argv
from sandboxes.backends.cloud.sdk_surface import SdkCall
from sandboxes.backends.cloud.stdio_box import LAST_WORDS_LINES, SDK_TIMEOUT_S, StdioBoxBackend, provider_lifetime_s, short_error
from sandboxes.backends.cloud.textstream import DEFAULT_MAX_WRITE, TextStream
from sandboxes.backends.guest_bundle import guest_files
from sandboxes.box_tags import box_tags
from sandboxes.cancellation import cancelling
from sandboxes.errors import SandboxUnavailable
from sandboxes.results import DiagnosisKind
from sandboxes.spec import SandboxSpec
from sandboxes.transport import ByteStream

CREDENTIALS_HINT = "set E2B_API_KEY (from the E2B dashboard) in the controller's environment"
DEFAULT_TEMPLATE = "code-interpreter-v1"
MISSING_PACKAGES_HINT = (
    "the E2B template lacks the guest's Python packages (ipykernel, jupyter_client): use the default "
    f"template {DEFAULT_TEMPLATE!r} or build one that installs images/requirements.txt")

_HANDLE = "sandbox_async.commands.command_handle.AsyncCommandHandle"
# Every SDK name this module touches, with every keyword it passes. tests/cloud holds this table
# against the installed SDK and against the fake; ``sdk()`` checks it before the first box.
SDK_SURFACE: tuple[SdkCall, ...] = (
    SdkCall("AsyncSandbox.create", "async", ("template", "timeout", "metadata", "allow_internet_access",
                                             "network")),
    SdkCall("AsyncSandbox.sandbox_id", "property"),
    SdkCall("AsyncSandbox.files", "property"),
    SdkCall("AsyncSandbox.commands", "property"),
    SdkCall("AsyncSandbox.is_running", "async"),
    SdkCall("AsyncSandbox.kill", "async"),
    # Last-resort cleanup at interpreter exit, where no event loop runs: the synchronous client.
    SdkCall("Sandbox.kill", "sync"),
    SdkCall("sandbox_async.filesystem.filesystem.Filesystem.write_files", "async", ("files",)),
    SdkCall("sandbox_async.commands.command.Commands.run", "async", (
        "cmd", "background", "envs", "cwd", "on_stdout", "on_stderr", "stdin", "timeout", "retain_output")),
    SdkCall("sandbox_async.commands.command.Commands.send_stdin", "async", ("pid", "data")),
    SdkCall(f"{_HANDLE}.pid", "property"),
    SdkCall(f"{_HANDLE}.exit_code", "property"),
    SdkCall(f"{_HANDLE}.error", "property"),
    SdkCall(f"{_HANDLE}.wait", "async"),
    SdkCall(f"{_HANDLE}.kill", "async"),
)


class E2BSandbox(StdioBoxBackend):
    name = "e2b"
    sdk_module = "e2b"
    sdk_surface = SDK_SURFACE
    terminate_backstop = "E2B ends it at its timeout"

    def __init__(self, spec: SandboxSpec, box_id: str) -> None:
        super().__init__(spec, box_id)
        self.handle: Any = None
        self.end_error: str | None = None

    @property
    def template(self) -> str:
        return str(self.spec.options.get("template") or self.spec.image or DEFAULT_TEMPLATE)

    async def start(self) -> ByteStream:
        e2b = self.sdk()
        spec = self.spec
        try:
            self.sandbox = await e2b.AsyncSandbox.create(
                template=self.template,
                timeout=provider_lifetime_s(spec),
                metadata=box_tags(spec, self.box_id),
                allow_internet_access=spec.network != "none",
                network={"allow_public_traffic": False},
            )
        except Exception as exc:
            raise SandboxUnavailable(
                f"E2B refused to create a sandbox from template {self.template!r} ({short_error(exc)}): "
                f"{CREDENTIALS_HINT}, and check that the template exists for your team") from None
        self.sandbox_id = self.sandbox.sandbox_id
        self.log.debug("e2b_sandbox_created", box_id=self.box_id, sandbox_id=self.sandbox_id)
        guest = f"{self.root}/guest"
        await asyncio.wait_for(self.sandbox.files.write_files(
            files=[{"path": f"{guest}/{rel}", "data": data} for rel, data in guest_files().items()]),
            SDK_TIMEOUT_S)
        argv = agent_argv(str(spec.options.get("python", "python3")), spec, f"{self.root}/work", None)
        env = {"PYTHONPATH": guest, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", **spec.env}
        stream = TextStream(self._send, max_write=int(spec.options.get("stdin_chunk_bytes", DEFAULT_MAX_WRITE)))
        self.stream = stream
        # E2B runs the command as `bash -l -c CMD`; exec makes the agent that shell's own process.
        self.handle = await self.sandbox.commands.run(
            cmd="exec " + shlex.join(argv),
            background=True,
            envs=env,
            cwd=self.root,
            on_stdout=stream.feed,
            on_stderr=self.stderr_tail.add,
            stdin=True,
            timeout=0,  # the command's stream lives as long as the box, not E2B's 60 s default
            retain_output=False,  # the SDK would otherwise keep every byte the agent ever wrote
        )
        self.tasks = [asyncio.create_task(self._wait_for_exit(stream), name=f"e2b-agent-{self.box_id}")]
        return stream

    async def _send(self, piece: bytes) -> None:
        await self.guarded_write(self.sandbox.commands.send_stdin(pid=self.handle.pid, data=piece),
                                 "the agent's stdin in E2B")

    async def _wait_for_exit(self, stream: TextStream) -> None:
        try:
            await self.handle.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a non-zero exit, or the command stream broke
            self.end_error = short_error(exc)
        finally:
            await stream.feed_eof()

    async def _describe_end(self) -> tuple[DiagnosisKind, list[str]]:
        parts: list[str] = []
        kind: DiagnosisKind = "lost"
        code = self.handle.exit_code if self.handle is not None else None
        if code is not None:
            kind = "killed" if code > 128 or code < 0 else "exited"
            parts.append(f"the agent process exited with code {code}"
                         + (f" ({self.handle.error})" if self.handle.error else ""))
        try:
            running = await asyncio.wait_for(self.sandbox.is_running(), 10.0)
        except Exception:
            running = None
        if running is False:
            parts.append(f"the E2B sandbox {self.sandbox_id} is no longer running (its lifetime ran out or it "
                         "was killed)")
        if self.end_error and code is None:
            parts.append(f"the command stream ended: {self.end_error}")
        if "No module named" in self.stderr_tail.last_lines(LAST_WORDS_LINES):
            parts.append(MISSING_PACKAGES_HINT)
        return kind, parts

    async def _stop_agent(self) -> None:
        if self.handle is not None and self.handle.exit_code is None:
            try:
                await asyncio.wait_for(self.handle.kill(), 10.0)
            except BaseException:  # best effort: the box is destroyed next anyway
                if cancelling():
                    raise

    async def _terminate(self) -> None:
        await self.sandbox.kill()

    def _emergency_destroy(self) -> None:
        if self.sandbox_id is None:
            return
        with contextlib.suppress(Exception):
            self.sdk().Sandbox.kill(self.sandbox_id)


BACKEND = E2BSandbox
