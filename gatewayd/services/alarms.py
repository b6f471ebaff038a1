"""Active alarms: raised once, cleared once, recorded as `alarm` events, counted.

`report(code, device, detail, active)` changes the registry and, when the
state changed, records the `alarm` event (center-link.md "Events"). Sync
callbacks (device health, reader status) use `report_soon`. `raise_`/`clear`
only change the registry, for callers that record the event in a transaction
of their own.

Across restarts: `load()` reads the alarms on record as raised (the store's
`alarms_active`, kept from the event log). One raised again is not recorded
twice; one cleared is recorded cleared; `settle()`, once the components have
had time to see their devices, records the clearing of those nobody raised
again (the device is well, or gone from the config), so that the center is
never left with an alarm the gateway has forgotten.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Collection
from typing import Any

import structlog

from gatewayd.contract.enums import AlarmCode
from gatewayd.contract.events import Alarm
from gatewayd.errors import StoreError
from gatewayd.services.clock import Clock
from gatewayd.store import alarm_log
from gatewayd.store.db import Store
from gatewayd.store.txn import Txn

log = structlog.get_logger(__name__)


class Alarms:
    def __init__(self, store: Store | None = None, clock: Clock | None = None) -> None:
        self.active: dict[tuple[AlarmCode, str], str] = {}
        self.recorded: dict[tuple[AlarmCode, str], str] = {}  # raised before this start
        self._store = store
        self._clock = clock
        self._pending: set[asyncio.Task[Any]] = set()

    async def load(self) -> None:
        """Take the alarms on record as raised before this start."""
        if self._store is None:
            return
        rows = await self._store.read(alarm_log.on_record)
        self.recorded = {(AlarmCode(code), device): detail for code, device, detail in rows}
        if self.recorded:
            log.info("alarms_on_record", alarms=sorted(f"{c}:{d}" for c, d in self.recorded))

    async def settle(self) -> None:
        """Record the clearing of alarms on record that nobody raised again."""
        for code, device in list(self.recorded):
            del self.recorded[(code, device)]
            log.info("alarm_cleared", code=code, device=device, why="not seen since the restart")
            await self._record(code, device, "", False)

    def raise_(self, code: AlarmCode, device: str, detail: str) -> bool:
        if (code, device) in self.active:
            return False
        self.active[(code, device)] = detail
        if self.recorded.pop((code, device), None) is not None:
            log.warning("alarm_still_raised", code=code, device=device, detail=detail)
            return False  # raised before the restart: on record already
        log.warning("alarm_raised", code=code, device=device, detail=detail)
        return True

    def clear(self, code: AlarmCode, device: str) -> bool:
        if (self.active.pop((code, device), None) is None
                and self.recorded.pop((code, device), None) is None):
            return False
        log.info("alarm_cleared", code=code, device=device)
        return True

    def is_active(self, code: AlarmCode, device: str) -> bool:
        return (code, device) in self.active

    def counts(self) -> Counter[str]:
        return Counter(code for code, _ in self.active)

    async def report(self, code: AlarmCode, device: str, detail: str, active: bool) -> None:
        """Raise or clear; record the event when that changed anything."""
        changed = self.raise_(code, device, detail) if active else self.clear(code, device)
        if changed:
            await self._record(code, device, detail if active else "", active)

    async def forget_devices(self, devices: Collection[str]) -> None:
        """Clear the alarms of `devices`, gone from the config by a reload."""
        for code, device in [k for k in self.active if k[1] in devices]:
            await self.report(code, device, "", False)

    def report_soon(self, code: AlarmCode, device: str, detail: str, active: bool) -> None:
        """`report` from synchronous code running on the event loop."""
        task = asyncio.get_running_loop().create_task(self.report(code, device, detail, active))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _record(self, code: AlarmCode, device: str, detail: str, active: bool) -> None:
        if self._store is None or self._clock is None:
            return  # a registry without a store (unit tests): nothing to record
        wall = self._clock.wall()
        stamp = self._clock.stamp(wall)

        def job(txn: Txn) -> None:
            txn.event(Alarm(code=code, device=device, detail=detail, active=active),
                      ts=stamp, wall=wall)

        try:
            await self._store.run(job)
        except StoreError as e:
            # Disk full or failing: the registry still holds the alarm (logs,
            # metrics, status show it); only its event is lost.
            log.error("alarm_not_recorded", code=code, device=device, active=active, error=str(e))
