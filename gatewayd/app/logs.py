"""Logging: structlog key-value events; JSON lines for journald, colours on a terminal."""

from __future__ import annotations

import logging
import sys
from datetime import datetime

import structlog

LEVELS = ("debug", "info", "warning", "error")


def _stamp_with_offset(
    logger: object, method: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    """RFC 3339 local time with its UTC offset (`2026-11-25T16:26:14.813+08:00`):
    a log line copied off the box still says when it happened."""
    event["timestamp"] = datetime.now().astimezone().isoformat(timespec="milliseconds")
    return event


def setup(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog and the stdlib root logger (for libraries) once, at start."""
    if json is None:
        json = not sys.stdout.isatty()
    numeric = getattr(logging, level.upper())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    renderer: structlog.types.Processor
    if json:
        shared.append(_stamp_with_offset)
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        shared.append(structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False))
        renderer = structlog.dev.ConsoleRenderer(colors=True)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    # Libraries (pymodbus, paho) log through the standard library: keep their
    # warnings, in the same stream, without their chatter.
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stdout,
                        format="%(levelname)s %(name)s: %(message)s", force=True)
