"""What Modal and E2B share: a box on a hosted provider whose agent is a process spoken to over its
stdin and stdout, which the provider's SDK carries as text.

Each provider module says how to create its box, start the agent and write to its stdin; this class
holds the rest, once: loading and checking the SDK, the provider's own lifetime for the box, the
agent's stderr kept as its "last words", turning a failed write into a lost connection, and a
teardown that ends the stream, terminates the box (logging, never raising, when the provider
refuses) and stops the tasks pumping its output.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import math
from typing import Any, Awaitable

from sandboxes.logs import get_logger

from sandboxes.backends.base import Backend
from sandboxes.backends.cloud.sdk_surface import SdkCall, load_sdk
from sandboxes.backends.cloud.textstream import OutputTail, TextStream
from sandboxes.cancellation import cancelling
from sandboxes.results import Diagnosis, DiagnosisKind
from sandboxes.spec import SandboxSpec

# The longest lifetime the providers grant a box.
MAX_LIFETIME_S = 24 * 3600
# Where each box keeps the agent's files (the working folder, and on E2B the guest package).
BOX_ROOT = "/tmp/rlm-box-{box_id}"
# How much of the agent's stderr is kept, and how many of its last lines a diagnosis quotes.
STDERR_TAIL = 16 * 1024
LAST_WORDS_LINES = 10
SDK_TIMEOUT_S = 30.0
TASK_STOP_WAIT_S = 5.0


def short_error(exc: BaseException) -> str:
    """An SDK error as one short line for a message: its class and the start of its text."""
    text = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
    return text if len(text) <= 300 else text[:300] + "..."


def provider_lifetime_s(spec: SandboxSpec) -> int:
    """The lifetime given to the provider. The controller expires the box at ``lifetime_s`` after it is
    ready; the provider's own limit, counted from creation, is the backstop for a controller that died."""
    return min(MAX_LIFETIME_S, math.ceil(spec.lifetime_s + spec.startup_timeout_s))


class StdioBoxBackend(Backend):
    """A provider box whose agent speaks on stdin/stdout. Subclasses set the class attributes and
    write ``start`` (which sets ``sandbox``, ``sandbox_id`` and ``stream``), ``_terminate`` and
    ``_describe_end``."""

    # The SDK's import name, and every SDK name the subclass touches (checked before the first box).
    sdk_module: str = ""
    sdk_surface: tuple[SdkCall, ...] = ()
    # What a log line says when terminating failed: how the provider ends the box anyway.
    terminate_backstop: str = ""

    def __init__(self, spec: SandboxSpec, box_id: str) -> None:
        super().__init__(spec, box_id)
        self.sandbox: Any = None
        self.sandbox_id: str | None = None
        self.stream: TextStream | None = None
        self.stderr_tail = OutputTail(STDERR_TAIL)
        # Tasks that feed the stream from the provider (output pumps, the exit waiter).
        self.tasks: list[asyncio.Task[None]] = []
        self.root = BOX_ROOT.format(box_id=box_id)
        self.log = get_logger(f"sandboxes.{self.name}")

    @classmethod
    def sdk(cls) -> Any:
        """The SDK module, after checking it offers everything the backend calls."""
        return load_sdk(cls.sdk_module, cls.sdk_surface, cls.sdk_module)

    async def guarded_write(self, write: Awaitable[Any], where: str) -> None:
        """Await one write to the agent's stdin. The channel treats connection errors as a lost box;
        anything else the SDK raises would escape to the user, so it becomes one."""
        try:
            await write
        except Exception as exc:
            raise ConnectionResetError(f"writing to {where} failed: {short_error(exc)}") from None

    def last_words(self) -> list[str]:
        """The agent's last lines on stderr, as parts of a diagnosis (none when it said nothing)."""
        tail = self.stderr_tail.last_lines(LAST_WORDS_LINES)
        return [f"the agent's last words: {tail}"] if tail else []

    async def diagnose(self) -> Diagnosis | None:
        if self.sandbox is None:
            return None
        kind, parts = await self._describe_end()
        return Diagnosis(kind, "; ".join(parts + self.last_words()) or "the agent's output ended")

    @abc.abstractmethod
    async def _describe_end(self) -> tuple[DiagnosisKind, list[str]]:
        """How the box or its agent ended, from what the provider reports (exit code, state): the kind,
        and parts of the text for humans. The agent's stderr is added by ``diagnose``, never judged."""

    @abc.abstractmethod
    async def _terminate(self) -> None:
        """Ask the provider to destroy the box (bounded by SDK_TIMEOUT_S by the caller)."""

    async def _stop_agent(self) -> None:
        """Before the box goes: end the agent's process where the provider needs that separately."""

    async def _destroy(self) -> None:
        if self.stream is not None:
            with contextlib.suppress(Exception):
                await self.stream.close()
        await self._stop_agent()
        if self.sandbox is not None:
            try:
                await asyncio.wait_for(self._terminate(), SDK_TIMEOUT_S)
            except BaseException as exc:
                if cancelling():
                    raise
                self.log.warning(f"{self.name}_terminate_failed", box_id=self.box_id, sandbox_id=self.sandbox_id,
                                 error=short_error(exc), note=self.terminate_backstop)
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=TASK_STOP_WAIT_S)
