"""The tasks file of `rlm batch`: one JSON object per line, indexed once and read line by line.

A task is ``{"id", "question", "context" | "context_path", ...}``; other fields are copied into its
result. Lines are indexed by offset and read again only when their task runs, so a batch of large
inline contexts never holds them all in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A result's status when the batch itself could not run the task (as opposed to an RLM status).
FAILED = "failed"
RESERVED_FIELDS = ("id", "question", "context", "context_path")


class BatchError(Exception):
    """The batch cannot start (unreadable tasks file, duplicate ids, bad options)."""


@dataclass(frozen=True)
class TaskRef:
    """Where a task is in the tasks file: its line is read again only when the task runs, so a batch
    of large inline contexts never holds them all in memory."""

    key: str
    line_number: int
    offset: int
    length: int
    # Set when the line could not be understood: the task is recorded as failed with this reason.
    invalid: str | None = None


@dataclass
class Task:
    key: str
    id: Any
    question: str
    context: Any
    extra: dict[str, Any]


def scan_tasks(path: Path) -> list[TaskRef]:
    """Index the tasks file: one TaskRef per non-blank line. Raises BatchError on duplicate ids."""
    refs: list[TaskRef] = []
    seen: dict[str, int] = {}
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise BatchError(f"cannot read the tasks file {path}: {exc.strerror or exc}") from None
    with handle:
        offset = 0
        for number, raw in enumerate(handle, start=1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            invalid = None
            try:
                item = json.loads(raw)
                if not isinstance(item, dict):
                    raise ValueError("a task line must be a JSON object")
                if "id" not in item or not isinstance(item["id"], (str, int)) or isinstance(item["id"], bool):
                    raise ValueError('a task needs an "id" (a string or an integer)')
                key = str(item["id"])
            except ValueError as exc:
                key = f"line:{number}"
                invalid = f"line {number} of {path.name} is not a valid task: {str(exc)[:300]}"
            if key in seen:
                raise BatchError(f"duplicate task id {key!r} on lines {seen[key]} and {number} of {path}: "
                                 "ids must be unique, since they are how a rerun knows what is done")
            seen[key] = number
            refs.append(TaskRef(key, number, start, len(raw), invalid))
    return refs


def load_task(path: Path, ref: TaskRef) -> Task:
    """Read and check one task's line, and its context. Raises ValueError saying what is wrong."""
    with open(path, "rb") as handle:
        handle.seek(ref.offset)
        item = json.loads(handle.read(ref.length))
    question = item.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError('the task has no "question" (a non-empty string)')
    has_context, has_path = "context" in item, "context_path" in item
    if has_context == has_path:
        raise ValueError('give exactly one of "context" (inline) and "context_path" (a file)')
    if has_context:
        context = item["context"]
        if not isinstance(context, (str, list, dict)):
            raise ValueError('"context" must be a string, a list or an object')
    else:
        if not isinstance(item["context_path"], str):
            raise ValueError('"context_path" must be a string')
        context_file = Path(item["context_path"])
        if not context_file.is_absolute():
            context_file = path.parent / context_file
        try:
            text = context_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read context_path {context_file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ValueError(f"context_path {context_file} is not UTF-8 text") from None
        context = json.loads(text) if context_file.suffix == ".json" else text
    extra = {k: v for k, v in item.items() if k not in RESERVED_FIELDS}
    return Task(ref.key, item["id"], question, context, extra)
