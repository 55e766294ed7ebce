"""The run log: one JSON object per line, written and flushed as each event happens.

A crash at any point leaves a valid JSONL file holding everything up to the crash. Events are
never kept in memory, so a run with ten thousand sub-calls has flat memory. Secrets never enter:
the run-start event carries the configuration with every key-like field removed.

Events (``event`` field): ``run_start``, ``rlm_start`` (each RLM in the tree, with its parent),
``iteration_start``, ``iteration`` (the model's reply), ``cell`` (code, status, outputs, timing),
``subcall`` (llm_query / rlm_query from kernel code, with the RLM that made it), ``model_call`` (each
settled model call: model, tokens, cost, seconds), ``tool_call`` (a custom tool), ``retry``,
``notice``, ``iteration_end``, ``rlm_end``, ``final``; ``sandbox_ready`` (a box started or reused,
with its start, upload and setup times), ``box_queued`` and ``box_wait`` (a box start waited for its
turn in the start queue: how many starts were ahead, how many seconds it waited), ``sandbox_lost``,
``compaction`` (the conversation summarised: tokens before and after). Every event has ``t`` (seconds
since the run started), ``run_id``, and where
it applies ``rlm_id`` and ``depth``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, TextIO

# Longest string kept per field of an event; model replies and cell outputs are capped far below.
MAX_FIELD_CHARS = 200_000
SECRET_WORDS = ("key", "token", "secret", "password", "authorization", "credential")


def redact(value: Any) -> Any:
    """A copy of ``value`` with every mapping entry whose name looks secret removed."""
    if isinstance(value, Mapping):
        return {k: redact(v) for k, v in value.items()
                if not any(word in str(k).lower() for word in SECRET_WORDS)}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        return value[:MAX_FIELD_CHARS] + f"... [{len(value) - MAX_FIELD_CHARS} more characters]"
    return value


def make_event(event: str, run_id: str, t: float, fields: Mapping[str, Any]) -> dict[str, Any]:
    """One run event as every consumer sees it: the JSONL log, ``on_event`` callbacks, the service."""
    record = {"event": event, "t": round(t, 4), "run_id": run_id}
    record.update({k: _clip(v) for k, v in fields.items()})
    return record


class RunLog:
    """An open JSONL file for one run."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path = path
        self.run_id = run_id
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO | None = open(path, "a", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one event (as built by ``make_event``) and flush it."""
        if self._file is None:
            return
        self._file.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class RLMLogger:
    """Where run logs go: one ``<time>-<run id>.jsonl`` file per completion under ``log_dir``.

    Pass it as ``RLM(logger=RLMLogger("rlm_logs"))``; the result's ``trajectory_path`` names the file.
    """

    def __init__(self, log_dir: str | os.PathLike[str] = "rlm_logs") -> None:
        self.log_dir = Path(log_dir)

    def open(self, run_id: str) -> RunLog:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return RunLog(self.log_dir / f"{stamp}-{run_id}.jsonl", run_id)


class ProgressPrinter:
    """Short progress lines on stderr (``verbose=True`` and the CLI), fed the run-log events."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.started = time.monotonic()

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        line = self._format(event, fields)
        if line:
            elapsed = time.monotonic() - self.started
            indent = "  " * int(fields.get("depth", 0) or 0)
            print(f"[{elapsed:7.2f}s] {indent}{line}", file=self.stream, flush=True)

    @staticmethod
    def _format(event: str, f: dict[str, Any]) -> str | None:
        who = f"rlm {f.get('rlm_id', '')}"
        if event == "rlm_start":
            return f"{who}: started at depth {f.get('depth')} (sandbox {f.get('box_id') or '-'})"
        if event == "iteration":
            blocks = f.get("code_blocks", 0)
            return (f"{who}: iteration {f.get('iteration')}: model replied "
                    f"({f.get('output_tokens', '?')} tokens, {blocks} code block{'s' if blocks != 1 else ''})")
        if event == "cell":
            return f"{who}:   cell {f.get('status')} in {f.get('seconds', 0):.2f} s"
        if event == "subcall" and f.get("kind") in ("rlm_query", "llm_query_batched"):
            return f"{who}:   {f.get('kind')} -> {f.get('status', 'ok')} ({f.get('seconds', 0):.2f} s)"
        if event == "tool_call" and f.get("status") != "ok":
            return f"{who}:   tool {f.get('name')} -> {f.get('status')} ({str(f.get('error', ''))[:80]})"
        if event == "retry":
            return f"{who}: retrying {f.get('model')} in {f.get('delay_s', 0):.1f} s ({f.get('error', '')[:80]})"
        if event == "compaction":
            return (f"{who}: compacted the conversation (~{f.get('tokens_before')} -> ~{f.get('tokens_after')} "
                    "tokens)")
        if event == "sandbox_lost":
            return f"{who}: sandbox {f.get('box_id')} lost: {str(f.get('reason', ''))[:100]}"
        if event == "box_queued":
            return f"{who}: waiting for a sandbox start slot ({f.get('ahead', 0)} starts ahead)"
        if event == "box_wait":
            return f"{who}: sandbox start slot after {f.get('seconds', 0):.1f} s in the queue"
        if event == "notice":
            return f"{who}: {f.get('text', '')[:120]}"
        if event == "rlm_end":
            return f"{who}: ended: {f.get('status')}"
        return None
