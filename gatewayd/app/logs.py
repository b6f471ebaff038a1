"""Logging: structlog key-value events; JSON lines for journald, colours on a terminal.

A JSON line starts with its event name (`{"event": "alarm_raised", "level":
"warning", ...}`), so `journalctl -o cat` and `grep` read it first. When the
log stream is the journal's (systemd sets JOURNAL_STREAM to its "DEV:INODE",
checked against the stream itself as sd-daemon does: a child whose output was
redirected must not claim it), each line also starts with its syslog priority
(`<3>` error, `<4>` warning, `<6>` info, `<7>` debug), which journald takes as
the entry's PRIORITY: `journalctl -p err -u gatewayd` shows the errors.
Library lines (pymodbus, paho) go the same way, as JSON with their `logger`.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import datetime
from typing import Any, TextIO

import structlog

LEVELS = ("debug", "info", "warning", "error")
# syslog(3) priorities of the level names (structlog's and the standard library's).
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "exception": 3, "critical": 2}


def journal_stream(stream: TextIO) -> bool:
    """True when `stream` is the socket that JOURNAL_STREAM names."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):
        return False  # unset, malformed, or a stream without a descriptor


def _stamp_with_offset(
    logger: object, method: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    """RFC 3339 local time with its UTC offset (`2026-11-25T16:26:14.813+08:00`):
    a log line copied off the box still says when it happened."""
    event["timestamp"] = datetime.now().astimezone().isoformat(timespec="milliseconds")
    return event


class JsonLine:
    """The last processor: one JSON object, `event` then `level` first; with the
    `<N>` priority prefix when writing to the journal."""

    def __init__(self, journal: bool) -> None:
        self.journal = journal
        self._json = structlog.processors.JSONRenderer()

    def __call__(self, logger: Any, method: str, event: structlog.types.EventDict) -> str:
        level = str(event.pop("level", method))
        ordered = {"event": event.pop("event", None), "level": level, **event}
        line = str(self._json(logger, method, ordered))
        return f"<{PRIORITY.get(level, 6)}>{line}" if self.journal else line


def setup(level: str = "info", *, json: bool | None = None, stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib root logger (for libraries) once, at start."""
    stream = stream or sys.stdout
    if json is None:
        json = not stream.isatty()
    numeric = getattr(logging, level.upper())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    renderer: structlog.types.Processor
    if json:
        shared.append(_stamp_with_offset)
        shared.append(structlog.processors.format_exc_info)
        renderer = JsonLine(journal_stream(stream))
    else:
        shared.append(structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False))
        renderer = structlog.dev.ConsoleRenderer(colors=True)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    # Libraries (pymodbus, paho) log through the standard library: keep their
    # warnings, in the same stream and the same form, without their chatter.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer])
        if json else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=max(numeric, logging.WARNING), handlers=[handler], force=True)
