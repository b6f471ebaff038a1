"""Reconnect policy and link state of a card reader, apart from its I/O.

`Backoff` says how long to wait before the next attempt (`drivers.retry`'s,
with the readers' delays). `LinkStatus` turns every open and every
failure into at most one `status` call per change and logs with the house
levels: first failure WARNING (`card_reader_offline`), repeats DEBUG
(`card_reader_retry`), recovery INFO (`card_reader_online`).
"""

from __future__ import annotations

import enum
import random
import time
from typing import Any

import structlog

from drivers import retry
from drivers.cardreader import report_status
from drivers.protocols import StatusSink

log = structlog.get_logger(__name__)

# A local device either opens at once or is absent: start retrying quickly,
# but do not spin on a reader that stays unplugged for hours.
BACKOFF_INITIAL_S = 0.5
BACKOFF_CAP_S = 30.0
# A link that stayed up this long has proven itself: its next failure starts
# the back-off again from the beginning. One lost sooner (a port that opens
# and fails at once, a reader listed but unavailable) keeps backing off, so a
# flapping reader costs an attempt every BACKOFF_CAP_S, and a few log lines.
LINK_STABLE_S = 5.0


class Backoff(retry.Backoff):
    """A reader's back-off: `drivers.retry.Backoff` with the readers' defaults."""

    def __init__(self, initial_s: float = BACKOFF_INITIAL_S, cap_s: float = BACKOFF_CAP_S,
                 factor: float = 2.0, jitter: float = 0.25,
                 rng: random.Random | None = None) -> None:
        super().__init__(initial_s, cap_s, factor, jitter, rng)


class LinkState(enum.Enum):
    """What the reader last reported."""

    STARTING = "starting"
    ONLINE = "online"
    OFFLINE = "offline"


class LinkStatus:
    """Reports a reader's link changes once each to `status`, and logs them."""

    def __init__(self, reader: str, status: StatusSink, **log_context: Any) -> None:
        self.reader = reader
        self.state = LinkState.STARTING
        self.failures = 0
        self._up_at = 0.0
        self._status = status
        self._log = log.bind(reader=reader, **log_context)

    def up(self) -> None:
        """The device is open and working."""
        if self.state is LinkState.ONLINE:
            return
        self._up_at = time.monotonic()
        if self.state is LinkState.OFFLINE:
            self._log.info("card_reader_online", failures=self.failures)
        else:
            self._log.info("card_reader_open")
        self.state = LinkState.ONLINE
        self.failures = 0
        self._report(True, "")

    def proven(self) -> bool:
        """The link is up and has stayed up LINK_STABLE_S (reset the back-off)."""
        return self.state is LinkState.ONLINE and time.monotonic() - self._up_at >= LINK_STABLE_S

    def down(self, reason: str, retry_in_s: float) -> None:
        """The device failed or could not be opened; the next try is in `retry_in_s`."""
        self.failures += 1
        if self.state is LinkState.OFFLINE:
            self._log.debug(
                "card_reader_retry",
                reason=reason,
                attempt=self.failures,
                retry_in_s=round(retry_in_s, 2),
            )
            return
        self._log.warning("card_reader_offline", reason=reason, retry_in_s=round(retry_in_s, 2))
        self.state = LinkState.OFFLINE
        self._report(False, reason)

    def _report(self, online: bool, detail: str) -> None:
        report_status(self._status, self.reader, online, detail)
