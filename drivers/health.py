"""Per-device health: online/offline from consecutive failures, and how often to poll.

Contract: a device is online until `OFFLINE_AFTER` operations in a row have failed,
and online again at its first success. `poll_delay(base_s)` is `base_s` while online
and grows (doubling, capped at `OFFLINE_POLL_MAX_S`) while offline, so a dead device
costs its bus at most one timeout per that period instead of one per poll.
Shared by every bus protocol; its log events are named for the device's
protocol (`modbus_device_failed`, `dlt645_device_offline`, ...).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog

from drivers.errors import DeviceError
from drivers.retry import JITTER_RNG, Backoff

log = structlog.get_logger(__name__)

# Three failed operations in a row: one lost frame (noise on RS-485) is not an outage.
OFFLINE_AFTER = 3
# An offline device is still tried at least this often, so it comes back within it.
OFFLINE_POLL_MAX_S = 15.0

# Called with (device name, online, detail) on every change of `online`.
HealthSink = Callable[[str, bool, str], None]
T = TypeVar("T")


@dataclass
class DeviceHealth:
    """Failure bookkeeping of one device; mutated only by the bus that owns it."""

    device: str
    bus: str
    unit: int | str   # a Modbus unit id, or a DL/T 645 meter's address
    on_change: HealthSink | None = None
    protocol: str = "modbus"   # names the log events: `{protocol}_device_failed`, ...
    online: bool = True
    consecutive_failures: int = 0
    last_error: str = ""
    last_ok_mono: float | None = None
    failures_total: int = 0
    # The shared generator: one per device would be 2.5 KB each, a thousand in a building.
    _rng: random.Random = field(default=JITTER_RNG, repr=False, compare=False)

    def _names(self) -> dict[str, object]:
        """What each log line says of the device."""
        return {"device": self.device, "bus": self.bus, "unit": self.unit}

    def succeeded(self, now: float) -> None:
        """Record a successful operation."""
        self.last_ok_mono = now
        if self.consecutive_failures == 0:
            return
        was_online = self.online
        log.info(f"{self.protocol}_device_recovered", **self._names(),
                 after_failures=self.consecutive_failures)
        self.consecutive_failures = 0
        self.last_error = ""
        self.online = True
        if not was_online and self.on_change is not None:
            self.on_change(self.device, True, "")

    def failed(self, error: str) -> None:
        """Record a failed operation (after the bus' retries)."""
        self.consecutive_failures += 1
        self.failures_total += 1
        self.last_error = error
        if self.consecutive_failures == 1:
            log.warning(f"{self.protocol}_device_failed", **self._names(), error=error)
        else:
            log.debug(f"{self.protocol}_device_failed", **self._names(), error=error,
                      attempt=self.consecutive_failures)
        if self.online and self.consecutive_failures >= OFFLINE_AFTER:
            self.online = False
            log.warning(f"{self.protocol}_device_offline", **self._names(),
                        failures=self.consecutive_failures, error=error)
            if self.on_change is not None:
                self.on_change(self.device, False, error)

    async def watched(self, operation: Awaitable[T]) -> T:
        """The result of `operation`, its outcome recorded: a `DeviceError` is a failure
        (and raised again), anything it returns a success."""
        try:
            result = await operation
        except DeviceError as exc:
            self.failed(exc.message)
            raise
        self.succeeded(time.monotonic())
        return result

    def poll_delay(self, base_s: float) -> float:
        """Seconds until the next routine poll of this device.

        `base_s` while online; offline, `base_s * 2**k` for the k-th failure past the
        threshold, capped at max(`base_s`, `OFFLINE_POLL_MAX_S`), with +-10 % jitter
        so that dead devices on one bus do not retry in lockstep.
        """
        if self.online:
            return base_s
        k = min(self.consecutive_failures - OFFLINE_AFTER + 1, 16)
        backoff = Backoff(base_s, max(base_s, OFFLINE_POLL_MAX_S), jitter=0.1, rng=self._rng)
        return backoff.delay(k)
