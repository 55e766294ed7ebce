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

import argparse
import asyncio
import collections
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TextIO

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


def _result_record(task: Task, result: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"key": task.key, "id": task.id}
    record.update(result.to_dict())
    totals = result.totals
    record["tokens"] = {"input": totals.input_tokens, "output": totals.output_tokens, "calls": totals.calls}
    if task.extra:
        record["task"] = task.extra
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return record


def _failed_record(key: str, task_id: Any, error: str, seconds: float, extra: dict[str, Any] | None) -> dict[str, Any]:
    record: dict[str, Any] = {"key": key, "id": task_id, "status": FAILED, "response": None, "message": error,
                              "cost_usd": 0.0, "execution_time": round(seconds, 4)}
    if extra:
        record["task"] = extra
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return record


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
            await record(_failed_record(ref.key, task.id if task else ref.key, text, seconds,
                                        task.extra if task else None), seconds)
            return
        await record(_result_record(task, result), time.monotonic() - task_started)

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


# --------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `rlm batch` options; model, sandbox and limit options mean what they mean for `rlm run`."""
    parser.add_argument("tasks", type=Path, metavar="TASKS.jsonl",
                        help="one task per line: {id, question, context | context_path, ...}")
    parser.add_argument("--out", type=Path, required=True, metavar="RESULTS.jsonl",
                        help="results, one line per task, appended as each finishes; rerun to resume")
    parser.add_argument("--concurrency", type=int, default=4, help="tasks run at once (default 4)")
    parser.add_argument("--sandbox", choices=["local", "docker", "modal", "e2b"], default="local",
                        help="where REPL code runs (default local, which is no isolation: use docker, modal or e2b "
                             "for untrusted model output)")
    parser.add_argument("--backend", choices=["openai", "anthropic"], default="openai")
    parser.add_argument("--model", help="root model (default: gpt-5-mini / claude-sonnet-4-5)")
    parser.add_argument("--sub-model", help="model for llm_query and child RLMs (default: gpt-5-nano / "
                                            "claude-haiku-4-5)")
    parser.add_argument("--base-url", help="OpenAI-compatible server (default: $OPENAI_BASE_URL or the provider)")
    parser.add_argument("--max-depth", type=int, default=1)
    parser.add_argument("--max-iterations", type=int, default=30)
    parser.add_argument("--log-dir", help="write each run's JSONL log here (default: none)")
    parser.add_argument("--max-cost-usd", type=float, default=None, help="budget of each task's run tree")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per task")
    parser.add_argument("--max-llm-calls", type=int, default=1000, help="model calls per task")
    parser.add_argument("--max-wall-s", type=float, default=1800.0, help="wall clock per task (default 1800)")
    parser.add_argument("--cell-timeout-s", type=float, default=120.0)
    parser.add_argument("--max-total-cost-usd", type=float, default=None,
                        help="start no new task once the batch's results (this run and earlier ones) cost this much")
    parser.add_argument("--summary-json", type=Path, help="also write the summary as JSON to this file")
    parser.add_argument("--verbose", action="store_true", help="operational logs on stderr too")


def add_batch_parser(sub: argparse._SubParsersAction) -> None:
    """Registers `rlm batch` with the `rlm` command (rlm/cli.py picks this up)."""
    batch = sub.add_parser("batch", help="many RLM runs from a JSONL file, resumable",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(batch)
    batch.set_defaults(func=run_from_args)


def make_runner(args: argparse.Namespace) -> RunTask:
    """One RLM for the whole batch; each task is its own completion (own sandbox, own budget)."""
    from rlm.cli import rlm_from_args

    rlm = rlm_from_args(args)

    async def run(task: Task) -> Any:
        return await rlm.acompletion(task.context, root_prompt=task.question)

    return run


def run_from_args(args: argparse.Namespace) -> int:
    """Run `rlm batch` with parsed arguments; returns the exit status."""
    from rlm.cli import configure_logging

    configure_logging(args.verbose)  # per-run log lines would drown the progress; warnings still show
    try:
        runner = make_runner(args)
        summary = asyncio.run(run_batch(args.tasks, args.out, runner, concurrency=args.concurrency,
                                        max_total_cost_usd=args.max_total_cost_usd))
    except (BatchError, ValueError) as exc:  # ValueError: bad model or sandbox settings, before any task
        print(f"rlm batch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlm batch: interrupted; finished results are saved, run the same command again to continue",
              file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"rlm batch: cannot write the results file {args.out}: {exc.strerror or exc}; results written "
              "so far are kept, fix the problem and run the same command again", file=sys.stderr)
        return 3
    for line in summary.lines():
        print(line, file=sys.stderr)
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    if summary.remaining:
        return 3
    return 1 if summary.all_statuses.get(FAILED) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlm batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
