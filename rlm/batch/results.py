"""The results file of `rlm batch`, and the batch's summary.

Results are durable: each is one line appended to the file, flushed and fsynced before the next,
so a batch killed at any moment loses at most the runs that were in flight. A line cut short by a
kill is dropped when the file is loaded, and that task runs again.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rlm.batch.tasks import FAILED, BatchError, Task

class ResultsFile:
    """An append-only JSONL file of results, one durable line per finished task."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()
        self.dropped_partial = False

    def load(self) -> dict[str, dict[str, Any]]:
        """The results already written, by task key (the last line wins). Cuts off a partial last line
        left by a kill, so the next append starts on a line of its own."""
        results: dict[str, dict[str, Any]] = {}
        try:
            with open(self.path, "ab"):  # fail now, not after the first run, when it cannot be written
                pass
            data = self.path.read_bytes()
        except OSError as exc:
            raise BatchError(f"cannot use the results file {self.path}: {exc.strerror or exc}") from None
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(complete)
                handle.flush()
                os.fsync(handle.fileno())
            self.dropped_partial = True
            data = data[:complete]
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a damaged line: its task counts as not done and runs again
            if isinstance(record, dict) and "key" in record:
                results[str(record["key"])] = record
        return results

    def _write(self, line: bytes) -> None:
        with open(self.path, "ab") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    async def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        async with self._lock:
            await asyncio.to_thread(self._write, line)


@dataclass
class BatchSummary:
    total_tasks: int
    already_done: int
    ran: int = 0
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    # Over every result in the file (this run and earlier ones).
    all_statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    cost_usd: float = 0.0  # this run
    all_cost_usd: float = 0.0
    unpriced: int = 0  # results whose cost is unknown (a model not in the price table)
    input_tokens: int = 0
    output_tokens: int = 0
    wall_s: float = 0.0
    task_s: float = 0.0  # sum of the runs' own times
    stopped: str | None = None

    @property
    def remaining(self) -> int:
        return self.total_tasks - sum(self.all_statuses.values())

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["statuses"] = dict(self.statuses)
        data["all_statuses"] = dict(self.all_statuses)
        data["remaining"] = self.remaining
        data["cost_usd"] = round(self.cost_usd, 6)
        data["all_cost_usd"] = round(self.all_cost_usd, 6)
        return data

    def lines(self) -> list[str]:
        def counts(counter: collections.Counter[str]) -> str:
            return ", ".join(f"{status} {n}" for status, n in counter.most_common()) or "none"

        mean = f"{self.task_s / self.ran:.1f} s" if self.ran else "-"
        rate = f"{self.ran / self.wall_s * 60:.1f}/min" if self.wall_s > 0 else "-"
        out = [
            f"batch: ran {self.ran} task(s) in {self.wall_s:.1f} s ({rate}, mean {mean} per task); "
            f"{self.already_done} were already done",
            f"  this run:  {counts(self.statuses)}; cost ${self.cost_usd:.4f}; "
            f"tokens in {self.input_tokens:,} / out {self.output_tokens:,}",
            f"  all tasks: {sum(self.all_statuses.values())} of {self.total_tasks} have results: "
            f"{counts(self.all_statuses)}; cost ${self.all_cost_usd:.4f}",
        ]
        if self.unpriced:
            out.append(f"  {self.unpriced} result(s) used a model without a known price: their cost is not counted")
        if self.remaining:
            why = f" ({self.stopped})" if self.stopped else ""
            out.append(f"  {self.remaining} task(s) not run yet{why}: run the same command again to continue")
        return out


def result_record(task: Task, result: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"key": task.key, "id": task.id}
    record.update(result.to_dict())
    totals = result.totals
    record["tokens"] = {"input": totals.input_tokens, "output": totals.output_tokens, "calls": totals.calls}
    if task.extra:
        record["task"] = task.extra
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return record


def failed_record(key: str, task_id: Any, error: str, seconds: float, extra: dict[str, Any] | None) -> dict[str, Any]:
    record: dict[str, Any] = {"key": key, "id": task_id, "status": FAILED, "response": None, "message": error,
                              "cost_usd": 0.0, "execution_time": round(seconds, 4)}
    if extra:
        record["task"] = extra
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return record
