"""The loop of each water point: its open session run and ended, its devices watched.

With a session, every poll: the valve read back every `VALVE_CHECK_S` (found
closed or silent: the session ends `fault`), the flow read (the meter
offline: ends `fault`), the charge committed, and the session ended when
the rules say so. Idle: a faulty valve commanded closed again when its
back-off allows, the valve and flow meter checked every `IDLE_CHECK_S`, an
offline flow meter probed. A failure in one point's loop is logged and
retried later; it never stops another point.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from gatewayd.contract.enums import EndReason
from gatewayd.errors import StoreError
from gatewayd.services.clock import Clock
from gatewayd.services.water.charging import Charging
from gatewayd.services.water.point import VALVE_RETRY_MAX_S, PointRuntime
from gatewayd.services.water.point_devices import PointDevices

log = structlog.get_logger(__name__)


class PointLoop:
    """Runs each point (`run`) and ends its sessions (`end`, with the point's lock held)."""

    def __init__(self, devices: PointDevices, charging: Charging, clock: Clock,
                 poll_s: float) -> None:
        self.devices = devices
        self.charging = charging
        self.clock = clock
        self.poll_s = poll_s

    def wait_s(self, pt: PointRuntime) -> float:
        """How long the point's loop sleeps unless woken."""
        if pt.session is not None:
            return self.poll_s
        due = pt.retry_at if pt.fault is not None else pt.idle_check_at
        if pt.flow_offline is not None:
            due = min(due, pt.probe_at)
        return max(due - self.clock.mono(), 0.0)

    async def run(self, pt: PointRuntime) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.wait_s(pt)):
                    await pt.wake.wait()
            pt.wake.clear()
            try:
                async with pt.lock:
                    if pt.session is not None:
                        await self._tick(pt)
                    else:
                        await self._idle(pt)
            except Exception:
                log.exception("point_loop_failed", point=pt.id)
                await asyncio.sleep(VALVE_RETRY_MAX_S)

    async def _idle(self, pt: PointRuntime) -> None:
        if pt.fault is not None:
            if self.clock.mono() >= pt.retry_at:
                await self.devices.close_valve(pt)
        elif self.clock.mono() >= pt.idle_check_at:
            await self.devices.idle_check(pt)
        if pt.flow_offline is not None and self.clock.mono() >= pt.probe_at:
            await self.devices.read_flow(pt)  # clears the alarm when it answers

    async def _tick(self, pt: PointRuntime) -> None:
        assert pt.session is not None
        if (self.clock.mono() >= pt.valve_check_at
                and not await self.devices.valve_still_open(pt)):
            await self.end(pt, EndReason.FAULT)
            return
        count = await self.devices.read_flow(pt)
        if pt.flow_offline is not None:
            await self.end(pt, EndReason.FAULT)
            return
        step = self.charging.step(pt, count)
        try:
            await self.charging.commit(pt, step)
        except StoreError:
            # The store cannot record the charge (disk full): a session that
            # must end still stops the water now; its charge and water.session
            # are recorded once the store recovers (the session is not advanced).
            if step.end is not None:
                await self.devices.close_valve(pt)
            raise
        if step.end is not None:
            await self.end(pt, step.end)

    async def end(self, pt: PointRuntime, reason: EndReason) -> None:
        """Close the valve, charge the rest, record one `water.session` (lock held)."""
        assert pt.session is not None
        await self.devices.close_valve(pt)
        # No read of a flow meter that failed, nor after a close that did (the
        # board is likely dead: its timeouts would eat the stop budget): the
        # session ends now, charged from the last reading.
        count = None if pt.faulty else await self.devices.read_flow(pt)
        await self.charging.finish(pt, reason, count)
