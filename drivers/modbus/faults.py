"""How a Modbus bus meets faults: a request tried again, a dead connection or a noisy line backed off.

The policy half of `drivers.modbus.bus` (which keeps the mechanism: queue,
workers, links). Contract:

- one request: `worth_retrying` says whether another attempt may help (a busy
  device, a timeout, garbage) or not (an illegal address, a noisy line, a bus
  in its reconnect back-off); `request_backoff` spaces the attempts;
  `describe_failure` names the failure for `DeviceError`.
- the bus: `BusOutages` tells the workers whether they may try now
  (`refuse_connect` raises `LinkDown`, `noisy` returns a `LinkNoisy`, each with
  the time left), and takes the failures and recoveries they see. Each failure
  in a row waits longer (capped back-off with jitter, reset on recovery); the
  first is logged at WARNING, repeats at DEBUG, the recovery at INFO. A
  connection lost before it ever answered is a failed attempt, so a dead
  endpoint costs one connection every RECONNECT_BACKOFF_MAX_S at most.

No I/O.
"""

from __future__ import annotations

import random
import time

import structlog

from drivers.errors import (
    FrameError,
    LinkDown,
    LinkError,
    LinkGarbage,
    LinkNoisy,
    LinkTimeout,
    ModbusExceptionError,
)
from drivers.retry import HALF_TO_FULL, Backoff

log = structlog.get_logger(__name__)

# Back-off between retries of one request: short, the bus is shared and time-critical.
RETRY_BACKOFF_S = 0.05
RETRY_BACKOFF_MAX_S = 0.5
# Exception codes worth retrying: the device is alive but busy.
RETRYABLE_EXCEPTIONS = frozenset({5, 6})
# Back-off between attempts to reopen a lost connection or port.
RECONNECT_BACKOFF_S = 0.2
RECONNECT_BACKOFF_MAX_S = 10.0
# Back-off after an RTU line did not fall quiet: noise rarely stops at once.
NOISE_BACKOFF_S = 0.5
NOISE_BACKOFF_MAX_S = 10.0

RequestFailure = ModbusExceptionError | FrameError | LinkError


def request_backoff(rng: random.Random) -> Backoff:
    """The delays between the attempts of one request."""
    return Backoff(RETRY_BACKOFF_S, RETRY_BACKOFF_MAX_S, jitter=HALF_TO_FULL, rng=rng)


def worth_retrying(exc: RequestFailure, *, bus_down: bool) -> bool:
    """Whether another attempt at the request may get an answer."""
    if isinstance(exc, ModbusExceptionError):
        return exc.response.code in RETRYABLE_EXCEPTIONS
    if isinstance(exc, LinkNoisy):
        return False
    return not (isinstance(exc, LinkDown) and bus_down)


def describe_failure(exc: RequestFailure, unit: int) -> str:
    """What went wrong with a request to `unit`, for `DeviceError` (and so logs and alarms)."""
    if isinstance(exc, ModbusExceptionError):
        return f"{exc} (unit {unit})"
    if isinstance(exc, FrameError):
        return f"bad answer: {exc} (unit {unit})"
    return f"{_kind(exc)}: {exc} (unit {unit})"


def _kind(exc: LinkError) -> str:
    if isinstance(exc, LinkTimeout):
        return "timeout"
    if isinstance(exc, LinkGarbage):
        return "garbage"
    if isinstance(exc, LinkNoisy):
        return "noisy line"
    return "disconnected"


class BusOutages:
    """The reconnect and noise back-off of bus `bus`; see the module docstring."""

    def __init__(self, bus: str, rng: random.Random) -> None:
        self.bus = bus
        self._down_until = 0.0
        self._down_reason = ""
        self._noisy_until = 0.0
        self.lost = False  # a connection was lost and not yet re-established
        # Their attempts count the failures in a row: connecting, a line falling quiet.
        self._reconnect = Backoff(RECONNECT_BACKOFF_S, RECONNECT_BACKOFF_MAX_S, jitter=0.2, rng=rng)
        self._noise = Backoff(NOISE_BACKOFF_S, NOISE_BACKOFF_MAX_S, jitter=0.2, rng=rng)

    # ------------------------------------------------------------ connections

    @property
    def down(self) -> bool:
        """True while connection attempts wait out their back-off."""
        return self._down_until > time.monotonic()

    def refuse_connect(self) -> None:
        """Raise `LinkDown` while the back-off after a failed attempt lasts."""
        now = time.monotonic()
        if now < self._down_until:
            # No countdown in the message: it becomes the meter_offline alarm's detail,
            # which must not freeze a moment's "retrying in 0.6 s" (the log has retry_in_s).
            raise LinkDown(f"{self._down_reason} (reconnecting)")

    def connect_failed(self, reason: str) -> None:
        """A connection could not be made (or was lost before it answered): back off."""
        delay = self._reconnect.next_delay()
        self._down_until = time.monotonic() + delay
        self._down_reason = reason
        self.lost = True
        level = log.warning if self._reconnect.attempt == 1 else log.debug
        level("modbus_bus_connect_failed", bus=self.bus, error=reason,
              attempt=self._reconnect.attempt, retry_in_s=round(delay, 2))

    def answered(self) -> bool:
        """A connection answered a request: the bus is up again. True if it had been lost."""
        was_lost = self.lost
        if was_lost:
            log.info("modbus_bus_reconnected", bus=self.bus, after_failures=self._reconnect.attempt)
        self.lost = False
        self._reconnect.reset()
        self._down_until = 0.0
        return was_lost

    def disconnected(self, exc: LinkError, *, had_answered: bool) -> None:
        """A connection was dropped after `exc`."""
        if not had_answered and isinstance(exc, LinkDown):
            # Closed before a word (garbage is a word: the server is there).
            self.connect_failed(f"connection lost before it answered: {exc}")
            return
        level = log.debug if self.lost else log.warning
        level("modbus_bus_disconnected", bus=self.bus, error=str(exc))
        self.lost = True

    # ------------------------------------------------------------ a noisy line

    def noisy(self) -> LinkNoisy | None:
        """The error for a request while the back-off after a noisy line lasts, else None."""
        now = time.monotonic()
        if now < self._noisy_until:
            return LinkNoisy("line noisy (requests paused)")  # no countdown: see refuse_connect
        return None

    def line_noisy(self, exc: LinkNoisy) -> None:
        """The line did not fall quiet before a request: requests fail at once for a while."""
        delay = self._noise.next_delay()
        self._noisy_until = time.monotonic() + delay
        level = log.warning if self._noise.attempt == 1 else log.debug
        level("modbus_bus_noisy", bus=self.bus, error=str(exc), attempt=self._noise.attempt,
              retry_in_s=round(delay, 2))

    def line_quiet(self) -> None:
        """A request went through: a noisy spell, if any, is over."""
        if self._noise.attempt:
            log.info("modbus_bus_quiet", bus=self.bus, after_failures=self._noise.attempt)
            self._noise.reset()
