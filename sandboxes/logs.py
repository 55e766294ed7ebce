"""Operational logs of the library: structlog's bound loggers, written through the standard
``logging`` module, so that the application decides where they go.

A library must not print: nothing here touches structlog's global configuration (which belongs to
the application), and the package loggers (``sandboxes``, ``rlm``) carry a ``NullHandler``, so
with no logging configured nothing reaches stdout or stderr. An application that configures
``logging`` (``logging.basicConfig(level=logging.INFO)``, a JSON handler, ...) gets every event as
one line, ``event key=value ...``, with the fields also kept on the record for structured handlers
(see ``structured_record``); levels filter before any formatting is done.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

def _to_log_record(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """The last step: a readable message for any handler (``event key=value ...``), and the event's
    name and fields on the record (``record.event_name``, ``record.event_fields``) for handlers that
    want them structured (a JSON formatter, for example)."""
    event = str(event_dict.pop("event", ""))
    text = " ".join([event] + [f"{key}={value!r}" for key, value in event_dict.items()])
    return {"msg": text, "extra": {"event_name": event, "event_fields": event_dict}}


_PROCESSORS: list[Any] = [
    structlog.stdlib.filter_by_level,
    structlog.processors.format_exc_info,
    _to_log_record,
]


def structured_record(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A processor for ``structlog.stdlib.ProcessorFormatter(foreign_pre_chain=[...])``: gives a
    record written by these loggers its event name and fields back as keys of the event dict."""
    record = event_dict.get("_record")
    name = getattr(record, "event_name", None)
    if name is not None:
        event_dict["event"] = name
        event_dict.update(getattr(record, "event_fields", {}))
    return event_dict


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
