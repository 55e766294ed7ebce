"""`rlm batch`: the command line of the batch runner (see ``rlm.batch`` for the file formats)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import rlm.batch as batch_doc
from rlm.batch.runner import RunTask, run_batch
from rlm.batch.tasks import FAILED, BatchError, Task
from rlm.run_options import add_model_options, configure_logging, rlm_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `rlm batch` options; model, sandbox and limit options mean what they mean for `rlm run`."""
    parser.add_argument("tasks", type=Path, metavar="TASKS.jsonl",
                        help="one task per line: {id, question, context | context_path, ...}")
    parser.add_argument("--out", type=Path, required=True, metavar="RESULTS.jsonl",
                        help="results, one line per task, appended as each finishes; rerun to resume")
    parser.add_argument("--concurrency", type=int, default=4, help="tasks run at once (default 4)")
    add_model_options(parser, log_dir=None, max_wall_s=1800.0)
    parser.add_argument("--max-total-cost-usd", type=float, default=None,
                        help="start no new task once the batch's results (this run and earlier ones) cost this much")
    parser.add_argument("--summary-json", type=Path, help="also write the summary as JSON to this file")


def add_batch_parser(sub: argparse._SubParsersAction) -> None:
    """Registers `rlm batch` with the `rlm` command ."""
    batch = sub.add_parser("batch", help="many RLM runs from a JSONL file, resumable",
                           description=batch_doc.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(batch)
    batch.set_defaults(func=run_from_args)


def make_runner(args: argparse.Namespace) -> RunTask:
    """One RLM for the whole batch; each task is its own completion (own sandbox, own budget)."""
    rlm = rlm_from_args(args)

    async def run(task: Task) -> Any:
        return await rlm.acompletion(task.context, root_prompt=task.question)

    return run


def run_from_args(args: argparse.Namespace) -> int:
    """Run `rlm batch` with parsed arguments; returns the exit status."""
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
    parser = argparse.ArgumentParser(prog="rlm batch", description=batch_doc.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
