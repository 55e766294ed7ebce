"""Operational logs of the library: structlog's bound loggers, written through the standard
``logging`` module, so that the application decides where they go.

A library must not print: nothing here touches structlog's global configuration (which belongs to
the application), and the package loggers (``sandboxes``, ``rlm``) carry a ``NullHandler``, so
with no logging configured nothing reaches stdout or stderr. An application that configures
``logging`` (``logging.basicConfig(level=logging.INFO)``, a JSON handler, ...) gets every event as
one line, ``event key=value ...``; levels filter before any formatting is done.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

_PROCESSORS: list[Any] = [
    structlog.stdlib.filter_by_level,
    structlog.processors.format_exc_info,
    structlog.processors.KeyValueRenderer(key_order=["event"], drop_missing=True),
]


def get_logger(name: str) -> Any:
    """A structlog logger (``.bind``, ``.info(event, **fields)``) writing to ``logging.getLogger(name)``."""
    return structlog.wrap_logger(logging.getLogger(name), processors=_PROCESSORS,
                                 wrapper_class=structlog.stdlib.BoundLogger)


def quiet_by_default(package: str) -> None:
    """Give a package's root logger a NullHandler (the standard library's advice for libraries)."""
    logger = logging.getLogger(package)
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


quiet_by_default("sandboxes")
