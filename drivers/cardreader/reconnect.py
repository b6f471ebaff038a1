"""Reconnect policy and link state of a card reader, apart from its I/O.

`Backoff` says how long to wait before the next attempt (capped exponential
with jitter, reset on success). `LinkStatus` turns every open and every
failure into at most one `status` call per change and logs with the house
levels: first failure WARNING (`card_reader_offline`), repeats DEBUG
(`card_reader_retry`), recovery INFO (`card_reader_online`).
"""

from __future__ import annotations

import enum
import random
from typing import Any

import structlog

from drivers.cardreader import report_status
from drivers.devices import StatusSink

log = structlog.get_logger(__name__)

# A local device either opens at once or is absent: start retrying quickly,
# but do not spin on a reader that stays unplugged for hours.
BACKOFF_INITIAL_S = 0.5
BACKOFF_CAP_S = 30.0


class Backoff:
    """Capped exponential back-off with +/- `jitter` (a fraction) around each delay."""

    def __init__(
        self,
        initial_s: float = BACKOFF_INITIAL_S,
        cap_s: float = BACKOFF_CAP_S,
        factor: float = 2.0,
        jitter: float = 0.25,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial_s <= cap_s or factor < 1 or not 0 <= jitter < 1:
            raise ValueError("back-off needs 0 < initial <= cap, factor >= 1, 0 <= jitter < 1")
        self.initial_s = initial_s
        self.cap_s = cap_s
        self.factor = factor
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.attempt = 0

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; grows until the cap."""
        base = min(self.cap_s, self.initial_s * self.factor**self.attempt)
        self.attempt += 1
        return base * (1 + self.jitter * (2 * self._rng.random() - 1))

    def longest(self) -> float:
        """The capped delay, for errors that retrying soon will not fix (permissions)."""
        self.attempt += 1
        return self.cap_s * (1 + self.jitter * (2 * self._rng.random() - 1))

    def reset(self) -> None:
        """The link works again: the next failure starts from `initial_s`."""
        self.attempt = 0


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
        self._status = status
        self._log = log.bind(reader=reader, **log_context)

    def up(self) -> None:
        """The device is open and working."""
        if self.state is LinkState.ONLINE:
            return
        if self.state is LinkState.OFFLINE:
            self._log.info("card_reader_online", failures=self.failures)
        else:
            self._log.info("card_reader_open")
        self.state = LinkState.ONLINE
        self.failures = 0
        self._report(True, "")

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
