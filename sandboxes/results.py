"""ExecResult: what one cell produced, with a status that says how it ended."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "error", "timeout", "kernel_restarted", "oom", "sandbox_lost"]


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
