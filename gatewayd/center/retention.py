"""Outbox housekeeping for the center link: the size cap and the retention of events.

Contract (center-link.md "Delivery"; the policy itself is `gatewayd.store.retention`):
- The outbox is held under `center.outbox_max_mb` (`retention.enforce_cap`:
  telemetry is dropped first, money events never; the store says `over_cap`
  then). Each drop is logged with what it cost, and an `outbox_full` alarm
  raised or cleared makes the status due at once (`on_alarm`).
- What the center has had long enough (`retention.prune`, from
  `center.keep_events_days`) is pruned at start and every
  `RETENTION_INTERVAL_S`, in bounded store jobs.
- `run()` does that every `HOUSEKEEPING_S`; a failing store is logged once,
  then summarised, then its recovery.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import Final

import structlog

from drivers.retry import FailureLog
from gatewayd.config.model import CenterSection
from gatewayd.errors import StoreError
from gatewayd.services.clock import Clock
from gatewayd.store import retention
from gatewayd.store.db import Store

__all__ = ["Retention"]

log = structlog.get_logger(__name__)

#: The cap is enforced and the heartbeat beaten this often.
HOUSEKEEPING_S: Final = 5.0
#: Retention runs this often (and at start).
RETENTION_INTERVAL_S: Final = 3600.0

_MIB: Final = 1024 * 1024


class Retention:
    """Enforces the outbox cap and prunes what the center has had long enough."""

    def __init__(self, store: Store, clock: Clock, center: CenterSection, *,
                 on_alarm: Callable[[], None]) -> None:
        self._store = store
        self._clock = clock
        self._center = center
        self._on_alarm = on_alarm  # the cap raised or cleared its alarm
        self.max_bytes = int(center.outbox_max_mb * _MIB)
        self._log = FailureLog(log, "outbox_housekeeping_failed",
                               recovered="outbox_housekeeping_recovered")

    async def run(self, tick: Callable[[], None]) -> None:
        """Enforce the cap every `HOUSEKEEPING_S` and prune at start and every
        `RETENTION_INTERVAL_S`; `tick()` after each round (the link's heartbeat)."""
        next_prune = 0.0
        while True:
            wall = self._clock.wall()
            ts = self._clock.stamp(wall)
            try:
                outcome = await self._store.run(partial(retention.enforce_cap, max_bytes=self.max_bytes,
                                                        ts=ts, wall=wall))
                self.report_cap(outcome)
                if time.monotonic() >= next_prune:
                    await self._prune(wall)
                    next_prune = time.monotonic() + RETENTION_INTERVAL_S
            except StoreError as e:
                self._log.failed(error=str(e))
            else:
                self._log.ok()
            tick()
            await asyncio.sleep(HOUSEKEEPING_S)

    def report_cap(self, outcome: retention.CapOutcome) -> None:
        """Say what enforcing the cap dropped, and whether money alone is over it."""
        if outcome.dropped_telemetry or outcome.dropped_events:
            log.warning("outbox_dropped", telemetry=outcome.dropped_telemetry, events=outcome.dropped_events,
                        outbox_mib=round(outcome.total_bytes / _MIB, 1),
                        cap_mib=self._center.outbox_max_mb)
        if outcome.over_cap:
            log.error("outbox_over_cap_money_only", outbox_mib=round(outcome.total_bytes / _MIB, 1),
                      cap_mib=self._center.outbox_max_mb)
        if outcome.alarm is not None:
            self._on_alarm()

    async def _prune(self, wall: float) -> None:
        keep_days = self._center.keep_events_days
        total = 0
        while True:
            n = await self._store.run(partial(retention.prune, now=wall, keep_events_days=keep_days))
            total += n
            if n == 0:
                break
        if total:
            log.info("outbox_pruned", rows=total, keep_events_days=keep_days)
