"""``rlm serve``: the app under uvicorn, JSON logs, and a graceful stop on SIGTERM.

On SIGTERM (or Ctrl-C) the server stops accepting connections, ends its event streams, gives
running runs ``shutdown_grace_s`` to finish and interrupts the rest (their boxes destroyed); queued
runs stay queued in the store and start when the server comes back.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Any

import structlog

from rlm.service.config import Config, load_config
from sandboxes.logs import structured_record


def configure_json_logs(level: int = logging.INFO) -> None:
    """structlog as one JSON object per line on stderr, with the tenant and run ids bound per task."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # The library's own loggers (rlm, sandboxes) write through the standard logging module: the
    # same JSON lines, one object per record, so a lost box or a limit shows in the service's log.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processor=structlog.processors.JSONRenderer(),
        foreign_pre_chain=[structured_record, structlog.contextvars.merge_contextvars,
                           structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                           structlog.processors.TimeStamper(fmt="iso", utc=True)]))
    for name in ("rlm", "sandboxes"):
        library = logging.getLogger(name)
        library.handlers = [h for h in library.handlers if isinstance(h, logging.NullHandler)] + [handler]
        library.setLevel(level)
        library.propagate = False


def serve(*, host: str, port: int, config_path: str | None, database_url: str | None,
          log_level: str = "info") -> int:
    import uvicorn

    from rlm.service.app import create_app

    config: Config = load_config(config_path)
    if database_url:
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, database_url=database_url))
    configure_json_logs(getattr(logging, log_level.upper(), logging.INFO))
    app = create_app(config)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.stopping = True  # event streams end, so open connections close promptly
            super().handle_exit(sig, frame)

    uv_config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                               timeout_graceful_shutdown=max(5, int(config.server.shutdown_grace_s)),
                               lifespan="on")
    server = Server(uv_config)
    server.run()
    return 0 if server.started else 1


def add_serve_parser(sub: Any) -> None:
    serve_parser = sub.add_parser("serve", help="run the multi-tenant RLM service (HTTP API)",
                                  description="Serve RLM runs to many tenants over HTTP (docs at /docs).")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8080)
    serve_parser.add_argument("--db", help="database URL (default: the config's, or sqlite:///rlm-service.db)")
    serve_parser.add_argument("--config", help="the server's TOML configuration (models, keys, limits, tools)")
    serve_parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve_parser.set_defaults(func=cmd_serve)


def cmd_serve(args: Any) -> int:
    from rlm.service.config import ConfigError

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        print(f"rlm serve: the service needs its extra ({exc.name} is missing): pip install 'rlm-sandboxes[service]'",
              file=sys.stderr)
        return 1
    try:
        return serve(host=args.host, port=args.port, config_path=args.config, database_url=args.db,
                     log_level=args.log_level)
    except ConfigError as exc:
        print(f"rlm serve: {exc}", file=sys.stderr)
        return 1
