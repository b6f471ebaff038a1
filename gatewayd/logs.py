"""Logging: structlog key-value events; JSON lines for journald, colours on a terminal."""

from __future__ import annotations

import logging
import sys

import structlog

LEVELS = ("debug", "info", "warning", "error")


def setup(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog and the stdlib root logger (for libraries) once, at start."""
    if json is None:
        json = not sys.stdout.isatty()
    numeric = getattr(logging, level.upper())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=False),
    ]
    renderer: structlog.types.Processor
    if json:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
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
