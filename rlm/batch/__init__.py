"""`rlm batch`: many RLM runs from a JSONL file, each result written the moment its run ends.

    rlm batch TASKS.jsonl --out RESULTS.jsonl [--concurrency N] [--sandbox local|docker|modal|e2b]

Each line of TASKS.jsonl is one task::

    {"id": "q17", "question": "Which city ...?", "context": "...long text..."}
    {"id": "q18", "question": "...", "context_path": "docs/q18.txt", "answer": "Paris"}

``context`` is a string, list or object; ``context_path`` names a file (relative to the tasks file;
``.json`` files are parsed, anything else is read as UTF-8 text). Other fields (an expected answer,
tags) are copied into the result under ``task``.

Results are durable and the batch is resumable: each result is one line appended to RESULTS.jsonl,
flushed and fsynced before the next is written, so a batch killed at any moment loses at most the
runs that were in flight; running the same command again skips every id that already has a line and
runs the rest. A line cut short by a kill is dropped (that task runs again). One task failing (a bad
line, a missing file, a sandbox that would not start) is recorded as status ``failed`` and never stops
the others. Progress goes to stderr; at the end, a summary of status counts, cost and time.

Exit status: 0 when every task has a result and none is ``failed``; 1 when some are ``failed``;
2 for a usage error; 3 when the batch stopped before running every task (interrupted, or the
``--max-total-cost-usd`` budget was spent).
"""

from __future__ import annotations

from rlm.batch.results import BatchSummary, ResultsFile
from rlm.batch.runner import RunTask, run_batch
from rlm.batch.tasks import FAILED, BatchError, Task, TaskRef, load_task, scan_tasks

__all__ = ["FAILED", "BatchError", "BatchSummary", "ResultsFile", "RunTask", "Task", "TaskRef", "load_task",
           "run_batch", "scan_tasks"]
