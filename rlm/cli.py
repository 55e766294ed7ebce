"""The ``rlm`` command.

    rlm run --context FILE [--backend openai|anthropic] [--model M] [--sub-model M] [--base-url URL]
            [--sandbox local|docker|modal|e2b] [--max-depth N] [--max-iterations N] [--log-dir DIR] QUESTION
    rlm batch TASKS.jsonl --out RESULTS.jsonl [...]   many runs, resumable (see rlm/batch)
    rlm view RUN.jsonl [-o PAGE.html] [--open]      one self-contained HTML page showing a run
    rlm run --server URL ...   the same on an `rlm serve` service (key from RLM_SERVICE_KEY)
    rlm serve [--host H --port P --db URL --config FILE]   the multi-tenant service
    rlm tenants add|list|set|disable|enable|rotate-key ...  its tenants and keys
    rlm sandbox ...        the sandbox layer's own commands (build-image, reap, ...)

The answer goes to stdout; progress and the summary go to stderr, so ``rlm run ... > answer.txt``
works. Keys come from OPENAI_API_KEY / ANTHROPIC_API_KEY, never from the command line. Exit code:
0 when the model gave a final answer, 2 when a limit ended the run, 1 on errors.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Callable, Sequence

from rlm.batch.command import add_batch_parser
from rlm.run_options import add_model_options, configure_logging, read_context, rlm_from_args
from rlm.viewer.command import add_view_parser

# -- rlm run -----------------------------------------------------------------------------------------


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="answer a question over a large context file",
                         description="Answer QUESTION over the context in FILE with a Recursive Language Model.")
    run.add_argument("question", metavar="QUESTION")
    run.add_argument("--context", required=True, metavar="FILE", help="text file, or .json with a list/object")
    add_model_options(run, log_dir="rlm_logs", max_wall_s=3600.0)
    run.add_argument("--quiet", action="store_true", help="no progress on stderr")
    run.add_argument("--server", metavar="URL", help="run on an `rlm serve` service instead of locally")
    run.add_argument("--api-key-env", default="RLM_SERVICE_KEY", metavar="NAME",
                     help="environment variable holding the service's API key (default: RLM_SERVICE_KEY)")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    configure_logging(args.verbose)
    context = read_context(args.context)
    if getattr(args, "server", None):
        from rlm.client import run_on_server

        return run_on_server(args, context, build_parser().parse_args(["run", "--context", "-", "-"]))
    try:
        rlm = rlm_from_args(args, verbose=not args.quiet)
    except ValueError as exc:
        print(f"rlm: {exc}", file=sys.stderr)
        return 1
    result = rlm.completion(context, root_prompt=args.question)
    print_summary(result)
    if result.response is not None:
        print(result.response)
    return 0 if result.status == "final" else (1 if result.status == "error" else 2)


def print_summary(result: Any, stream: Any = None) -> None:
    stream = stream or sys.stderr
    print(f"status: {result.status}" + (f" ({result.message})" if result.message else ""), file=stream)
    for model, usage in result.usage.items():
        cost = "cost unknown" if usage.cost_usd is None else f"${usage.cost_usd:.4f}"
        print(f"  {model}: {usage.calls} calls, {usage.input_tokens:,} in / {usage.output_tokens:,} out tokens, "
              f"{cost}" + (f", {usage.retries} retries" if usage.retries else ""), file=stream)
    total = "unknown" if result.cost_usd is None else f"${result.cost_usd:.4f}"
    print(f"  total cost {total}, {result.execution_time:.1f} s, {result.iterations} iterations", file=stream)
    if result.trajectory_path:
        print(f"  run log: {result.trajectory_path}", file=stream)


# -- rlm sandbox ...  (delegated to the sandbox layer's CLI) ---------------------------------------------


def add_sandbox_parser(sub: argparse._SubParsersAction) -> None:
    box = sub.add_parser("sandbox", help="sandbox commands (build-image, reap, ...)", add_help=False)
    box.add_argument("rest", nargs=argparse.REMAINDER)
    box.set_defaults(func=lambda args: cmd_sandbox(args.rest))


def cmd_sandbox(argv: Sequence[str]) -> int:
    try:
        sandbox_cli = importlib.import_module("sandboxes.backends.docker.cli")
    except ImportError as exc:
        print(f"rlm sandbox: the sandbox commands are not available in this installation ({exc}); "
              "reinstall the package with `pip install -e .`", file=sys.stderr)
        return 1
    return int(sandbox_cli.main(list(argv)) or 0)


# -- the parser ----------------------------------------------------------------------------------------

# Subcommands, each registered by a function that adds its parser and sets ``func``.
def add_service_parsers(sub: argparse._SubParsersAction) -> None:
    """`rlm serve` and `rlm tenants` (the service, rlm/service/; imported only when its command runs)."""
    from rlm.service.server import add_serve_parser
    from rlm.service.tenants_cli import add_tenants_parser

    add_serve_parser(sub)
    add_tenants_parser(sub)


PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [add_run_parser, add_batch_parser, add_view_parser,
                                                               add_service_parsers, add_sandbox_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlm", description="Recursive Language Models in secure sandboxes.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sandbox"]:  # pass everything, --help included, to the sandbox CLI untouched
        return cmd_sandbox(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("rlm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
