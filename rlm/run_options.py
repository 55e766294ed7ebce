"""What the commands that run RLMs share: the model, sandbox and limit options of `rlm run` and
`rlm batch`, the RLM built from them, how a context file is read, and the command line's logging.

Keys are never options: they come from OPENAI_API_KEY / ANTHROPIC_API_KEY, so they stay out of
shell histories and process lists.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_MODELS = {"openai": "gpt-5-mini", "anthropic": "claude-sonnet-4-5"}
DEFAULT_SUB_MODELS = {"openai": "gpt-5-nano", "anthropic": "claude-haiku-4-5"}
SANDBOXES = ["local", "docker", "modal", "e2b"]


def add_model_options(parser: argparse.ArgumentParser, *, log_dir: str | None, max_wall_s: float) -> None:
    """The options both commands take; ``log_dir`` and ``max_wall_s`` are their defaults."""
    parser.add_argument("--sandbox", choices=SANDBOXES, default="local",
                        help="where REPL code runs (default local, which is no isolation: use docker, modal or "
                             "e2b for untrusted model output)")
    parser.add_argument("--backend", choices=["openai", "anthropic"], default="openai")
    parser.add_argument("--model", help="root model (default: gpt-5-mini / claude-sonnet-4-5)")
    parser.add_argument("--sub-model", help="model for llm_query and child RLMs (default: gpt-5-nano / "
                                            "claude-haiku-4-5)")
    parser.add_argument("--base-url", help="OpenAI-compatible server (default: $OPENAI_BASE_URL or the provider)")
    parser.add_argument("--max-depth", type=int, default=1)
    parser.add_argument("--max-iterations", type=int, default=30)
    parser.add_argument("--log-dir", default=log_dir,
                        help=f"where each run's JSONL log goes (default: {log_dir or 'none'})")
    parser.add_argument("--max-cost-usd", type=float, default=None, help="budget of each run tree")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per run tree")
    parser.add_argument("--max-llm-calls", type=int, default=1000, help="model calls per run tree")
    parser.add_argument("--max-wall-s", type=float, default=max_wall_s,
                        help=f"wall clock per run (default {max_wall_s:g})")
    parser.add_argument("--cell-timeout-s", type=float, default=120.0)
    parser.add_argument("--verbose", action="store_true", help="operational logs on stderr too")


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


class _CurrentStderr:
    """Whatever ``sys.stderr`` is at the time of writing (tests replace it after configuration)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_HANDLER = logging.StreamHandler(_CurrentStderr())  # type: ignore[arg-type]
_HANDLER.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))


def configure_logging(verbose: bool) -> None:
    """The command line's operational logs on stderr: warnings by default, everything with --verbose.

    The library itself never configures logging (see ``sandboxes.logs``); a command is an application.
    """
    for name in ("rlm", "sandboxes"):
        logger = logging.getLogger(name)
        if _HANDLER not in logger.handlers:
            logger.addHandler(_HANDLER)
        logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
