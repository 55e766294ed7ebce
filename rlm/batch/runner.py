"""Runs the tasks of a batch: bounded concurrency, one task's failure its own, a batch budget.

A rerun skips every task that already has a result, so a killed batch continues where it stopped.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from rlm.batch.results import BatchSummary, ResultsFile, failed_record, result_record
from rlm.batch.tasks import FAILED, BatchError, Task, TaskRef, load_task, scan_tasks

RunTask = Callable[[Task], Any]  # async: Task -> RLMResult


async def run_batch(tasks_path: Path, results_path: Path, run_task: RunTask, *, concurrency: int = 4,
                    max_total_cost_usd: float | None = None, progress: TextIO | None = None) -> BatchSummary:
    """Run every task of ``tasks_path`` that has no result in ``results_path`` yet.

    ``run_task`` runs one task and returns an RLMResult (or anything with ``status``, ``to_dict()`` and
    ``totals``); whatever it raises is recorded as that task's failure. At most ``concurrency`` run at
    once. With ``max_total_cost_usd``, no new task starts once the batch (all runs so far) has spent it.
    """
    if concurrency < 1:
        raise BatchError("--concurrency must be at least 1")
    out = progress or sys.stderr
    refs = scan_tasks(tasks_path)
    results = ResultsFile(results_path)
    done = results.load()
    keys = {ref.key for ref in refs}
    summary = BatchSummary(total_tasks=len(refs), already_done=sum(1 for k in done if k in keys))
    for key, record in done.items():
        if key in keys:
            summary.all_statuses[str(record.get("status"))] += 1
            summary.all_cost_usd += float(record.get("cost_usd") or 0.0)
    if results.dropped_partial:
        print(f"batch: {results_path} ended in a partial line (a run was killed while writing it); "
              "dropped it, that task runs again", file=out)
    pending = collections.deque(ref for ref in refs if ref.key not in done)
    print(f"batch: {len(refs)} task(s) in {tasks_path}, {summary.already_done} already done, "
          f"{len(pending)} to run, {concurrency} at a time", file=out, flush=True)
    started = time.monotonic()

    def over_budget() -> bool:
        return max_total_cost_usd is not None and summary.all_cost_usd >= max_total_cost_usd

    async def record(rec: dict[str, Any], seconds: float) -> None:
        await results.append(rec)
        status = str(rec.get("status"))
        cost = rec.get("cost_usd")
        summary.ran += 1
        summary.statuses[status] += 1
        summary.all_statuses[status] += 1
        summary.task_s += seconds
        if cost is None:
            summary.unpriced += 1
        else:
            summary.cost_usd += float(cost)
            summary.all_cost_usd += float(cost)
        tokens = rec.get("tokens") or {}
        summary.input_tokens += int(tokens.get("input", 0))
        summary.output_tokens += int(tokens.get("output", 0))
        have = sum(summary.all_statuses.values())
        cost_text = "$?" if cost is None else f"${float(cost):.4f}"
        note = f" - {str(rec.get('message'))[:160]}" if status == FAILED else ""
        print(f"[{have}/{summary.total_tasks}] {rec['key']}: {status} in {seconds:.1f} s, {cost_text}{note}",
              file=out, flush=True)

    async def one(ref: TaskRef) -> None:
        task_started = time.monotonic()
        task: Task | None = None
        try:
            if ref.invalid:
                raise ValueError(ref.invalid)
            task = await asyncio.to_thread(load_task, tasks_path, ref)
            result = await run_task(task)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one task's failure is its own; the batch goes on
            seconds = time.monotonic() - task_started
            # A ValueError is our own account of a bad task line; anything else is named by its type.
            text = str(exc) if isinstance(exc, ValueError) else f"{exc.__class__.__name__}: {exc}"
            await record(failed_record(ref.key, task.id if task else ref.key, text, seconds,
                                        task.extra if task else None), seconds)
            return
        await record(result_record(task, result), time.monotonic() - task_started)

    async def worker() -> None:
        while pending:
            if over_budget():
                summary.stopped = f"the batch budget of ${max_total_cost_usd:g} is spent"
                return
            await one(pending.popleft())

    workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(pending)))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        # Interrupted, or results can no longer be written (disk full): stop every run cleanly, so
        # each closes its sandbox; what was written stays, and a rerun continues from there.
        summary.stopped = "interrupted"
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
    finally:
        summary.wall_s = time.monotonic() - started
    return summary
