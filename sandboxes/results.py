"""ExecResult: what one cell produced, with a status that says how it ended."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "error", "timeout", "kernel_restarted", "oom", "sandbox_lost"]
# How a box ended, as its provider reports it (see Diagnosis).
DiagnosisKind = Literal["oom", "killed", "exited", "lifetime", "lost"]


@dataclass(frozen=True)
class ExecError:
    name: str
    value: str
    traceback: str

    def __str__(self) -> str:
        return f"{self.name}: {self.value}"


@dataclass(frozen=True)
class ExecResult:
    status: Status
    stdout: str = ""
    stderr: str = ""
    error: ExecError | None = None
    # Rich outputs, each a dict of MIME type to data (text/plain, image/png as base64, ...).
    display: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0
    # Something the caller must know beyond the cell's own output, e.g. "the kernel was restarted:
    # variables from earlier cells are gone".
    notice: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Diagnosis:
    """Why a box died, from facts its provider reports: the engine's OOM flag and exit code, the
    agent process's exit status or signal, the provider's state. Never from text the box wrote:
    ``detail`` may quote the agent's last words for a human, but only ``kind`` decides a status.

    ``oom``: the provider killed the box for memory; ``killed``: a signal ended its agent;
    ``exited``: its agent exited by itself; ``lifetime``: the provider ended it at its lifetime;
    ``lost``: anything else (the box is gone, or still runs but its agent stopped answering).
    """

    kind: DiagnosisKind
    detail: str

    @property
    def status(self) -> Status:
        """The status of a cell the box's death cut off."""
        return "oom" if self.kind == "oom" else "sandbox_lost"

    def __str__(self) -> str:
        return self.detail
