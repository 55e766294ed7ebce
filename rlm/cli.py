"""The ``rlm`` command.

    rlm run --context FILE [--backend openai|anthropic] [--model M] [--sub-model M] [--base-url URL]
            [--sandbox local|docker|modal|e2b] [--max-depth N] [--max-iterations N] [--log-dir DIR] QUESTION
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
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

DEFAULT_MODELS = {"openai": "gpt-5-mini", "anthropic": "claude-sonnet-4-5"}
DEFAULT_SUB_MODELS = {"openai": "gpt-5-nano", "anthropic": "claude-haiku-4-5"}


class _CurrentStderr:
    """Whatever ``sys.stderr`` is at the time of writing (it may be replaced after configuration)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(verbose: bool) -> None:
    """Operational logs (structlog) to stderr: warnings by default, everything with --verbose."""
    import structlog

    level = logging.DEBUG if verbose else logging.WARNING
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
    )


def read_context(path: str) -> str | list[Any] | dict[str, Any]:
    """A ``.json`` file holding a list or an object is loaded as such; anything else is text."""
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"rlm: no such context file: {path}")
    if file.suffix.lower() == ".json":
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise SystemExit(f"rlm: {path} is not valid JSON ({exc}); rename it to .txt to pass it as text")
        if isinstance(data, (list, dict)):
            return data
    return file.read_text(encoding="utf-8", errors="replace")


# -- rlm run -----------------------------------------------------------------------------------------


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="answer a question over a large context file",
                         description="Answer QUESTION over the context in FILE with a Recursive Language Model.")
    run.add_argument("question", metavar="QUESTION")
    run.add_argument("--context", required=True, metavar="FILE", help="text file, or .json with a list/object")
    run.add_argument("--backend", choices=["openai", "anthropic"], default="openai")
    run.add_argument("--model", help="root model (default: gpt-5-mini / claude-sonnet-4-5)")
    run.add_argument("--sub-model", help="model for llm_query and child RLMs (default: gpt-5-nano / "
                                         "claude-haiku-4-5)")
    run.add_argument("--base-url", help="OpenAI-compatible server (default: $OPENAI_BASE_URL or the provider)")
    run.add_argument("--sandbox", choices=["local", "docker", "modal", "e2b"], default="local")
    run.add_argument("--max-depth", type=int, default=1)
    run.add_argument("--max-iterations", type=int, default=30)
    run.add_argument("--log-dir", default="rlm_logs", help="where the JSONL run log goes (default: rlm_logs)")
    run.add_argument("--max-cost-usd", type=float, default=None)
    run.add_argument("--max-tokens", type=int, default=None)
    run.add_argument("--max-llm-calls", type=int, default=1000)
    run.add_argument("--max-wall-s", type=float, default=3600.0)
    run.add_argument("--cell-timeout-s", type=float, default=120.0)
    run.add_argument("--quiet", action="store_true", help="no progress on stderr")
    run.add_argument("--verbose", action="store_true", help="operational logs on stderr too")
    run.add_argument("--server", metavar="URL", help="run on an `rlm serve` service instead of locally")
    run.add_argument("--api-key-env", default="RLM_SERVICE_KEY", metavar="NAME",
                     help="environment variable holding the service's API key (default: RLM_SERVICE_KEY)")
    run.set_defaults(func=cmd_run)


def backend_kwargs(backend: str, model: str, base_url: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"model_name": model}
    if backend == "openai":
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    if base_url:
        kwargs["base_url"] = base_url
    return kwargs


def rlm_from_args(args: argparse.Namespace, *, verbose: bool = False) -> Any:
    """The RLM that `rlm run` and `rlm batch` build from their shared options."""
    from rlm import RLM, Limits, RLMLogger

    model = args.model or DEFAULT_MODELS[args.backend]
    sub_model = args.sub_model or DEFAULT_SUB_MODELS[args.backend]
    return RLM(
        backend=args.backend,
        backend_kwargs=backend_kwargs(args.backend, model, args.base_url),
        environment=args.sandbox,
        max_depth=args.max_depth,
        max_iterations=args.max_iterations,
        other_backends=[args.backend],
        other_backend_kwargs=[backend_kwargs(args.backend, sub_model, args.base_url)],
        logger=RLMLogger(args.log_dir) if args.log_dir else None,
        verbose=verbose,
        limits=Limits(max_cost_usd=args.max_cost_usd, max_tokens=args.max_tokens,
                      max_llm_calls=args.max_llm_calls, max_wall_s=args.max_wall_s,
                      cell_timeout_s=args.cell_timeout_s),
    )


def cmd_run(args: argparse.Namespace) -> int:
    configure_logging(args.verbose)
    context = read_context(args.context)
    if getattr(args, "server", None):
        from rlm.client import run_on_server

        return run_on_server(args, context)
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
        sandbox_cli = importlib.import_module("sandboxes.cli")
    except ImportError as exc:
        print(f"rlm sandbox: the sandbox commands are not available in this installation ({exc}); "
              "reinstall the package with `pip install -e .`", file=sys.stderr)
        return 1
    return int(sandbox_cli.main(list(argv)) or 0)


# -- the parser ----------------------------------------------------------------------------------------

# Subcommands, each registered by a function that adds its parser and sets ``func``. `rlm batch` is
# added by rlm/batch.py, which defines ``add_batch_parser(sub)`` in the same shape; it is picked up
# here when present.
def add_service_parsers(sub: argparse._SubParsersAction) -> None:
    """`rlm serve` and `rlm tenants` (the service, rlm/service/)."""
    from rlm.service.server import add_serve_parser
    from rlm.service.tenants_cli import add_tenants_parser

    add_serve_parser(sub)
    add_tenants_parser(sub)


PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [add_run_parser, add_sandbox_parser,
                                                                add_service_parsers]


def _optional_parsers() -> list[Callable[[argparse._SubParsersAction], None]]:
    found = []
    try:
        batch = importlib.import_module("rlm.batch")
    except ImportError:
        return found
    if hasattr(batch, "add_batch_parser"):
        found.append(batch.add_batch_parser)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlm", description="Recursive Language Models in secure sandboxes.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in PARSERS + _optional_parsers():
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
