"""The valve and flow meter of each water point, commanded and read, and their faults.

- A valve that does not obey or answer is a `valve_fault`: its point refuses
  taps, and the point's loop commands it closed again once the back-off
  allows (`PointRuntime.backoff`); the fault clears when it obeys.
- A flow meter that fails `FLOW_FAILURES_FAULT` times in a row raises
  `meter_offline` (device `flow:POINT`), and its point refuses taps until a
  probe every `FLOW_PROBE_S` finds it answering again (cleared).
- Every read fails softly: a `DeviceError` is a fault here, never raised.
"""

from __future__ import annotations

import random

import structlog

from drivers.errors import DeviceError
from gatewayd.contract.enums import AlarmCode
from gatewayd.contract.events import flow_device, valve_device
from gatewayd.services.alarms import Alarms
from gatewayd.services.clock import Clock
from gatewayd.services.water.point import PointRuntime

log = structlog.get_logger(__name__)

# Consecutive flow meter failures that raise `meter_offline` and end a session
# with `fault`: one lost frame (noise on RS-485) is not an outage.
FLOW_FAILURES_FAULT = 3
# An offline flow meter is read this often (+-10 %), so that the point serves
# again by itself within seconds of the meter answering, at the cost of one
# bus timeout per period.
FLOW_PROBE_S = 5.0
# An idle point is checked this often: its valve must read closed (one found
# open, by hand or by a relay that did not follow, is closed at once), and its
# flow meter must answer, so that a fault shows before the next student taps.
IDLE_CHECK_S = 30.0
# During a session the valve is read back this often (+-10 %): a relay board
# that dropped out or reset (valve found closed, or no answer) ends the
# session with `fault` and raises `valve_fault`, so that a card never pays
# for water that does not run (on a time-billed point nothing else would tell).
VALVE_CHECK_S = 5.0


class PointDevices:
    """Device I/O of the water points, with the alarms their faults raise and clear."""

    def __init__(self, alarms: Alarms, clock: Clock) -> None:
        self.alarms = alarms
        self.clock = clock

    def after(self, period_s: float) -> float:
        """The monotonic time `period_s` (+-10 %) from now: points do not poll in lockstep."""
        return self.clock.mono() + period_s * random.uniform(0.9, 1.1)

    async def open_valve(self, pt: PointRuntime) -> bool:
        """Command the valve open for a session: True once it obeyed (else `valve_fault`)."""
        if not await self._command(pt, True):
            return False
        pt.valve_check_at = self.after(VALVE_CHECK_S)
        return True

    async def close_valve(self, pt: PointRuntime) -> bool:
        """Command the valve closed: True once it obeyed (a fault is cleared)."""
        if not await self._command(pt, False):
            return False
        pt.backoff.reset()
        pt.fault_log.ok()
        if pt.fault is not None:
            pt.fault = None
            await self.alarms.report(AlarmCode.VALVE_FAULT, valve_device(pt.id), "", False)
        return True

    async def _command(self, pt: PointRuntime, on: bool) -> bool:
        """Command the valve open (`on`) or closed: False, and `valve_fault`, if it failed."""
        try:
            await pt.valve.set(on)
        except DeviceError as e:
            await self.valve_failed(pt, f"commanded {'open' if on else 'closed'}: {e.message}")
            return False
        return True

    async def valve_failed(self, pt: PointRuntime, detail: str) -> None:
        """The valve did not obey or answer: the point refuses taps, and its loop
        commands the valve closed again once the back-off allows (never at
        once: a dead board fails at once, and that would be a busy loop)."""
        pt.fault = detail
        pt.retry_at = self.clock.mono() + pt.backoff.next_delay()
        pt.fault_log.failed(detail=detail)
        await self.alarms.report(AlarmCode.VALVE_FAULT, valve_device(pt.id), detail, True)
        pt.wake.set()  # the loop recomputes its wait (the retry may be sooner than its sleep)

    async def idle_check(self, pt: PointRuntime) -> None:
        """An idle point: its valve reads closed (else it is closed now) and its
        flow meter answers (else, after a few checks, `meter_offline`)."""
        pt.idle_check_at = self.after(IDLE_CHECK_S)
        try:
            is_open = await pt.valve.get()
        except DeviceError as e:
            await self.valve_failed(pt, f"unreadable while idle: {e.message}")
            return
        if is_open:
            log.error("valve_open_while_idle", point=pt.id,
                      detail="found open with no session: closing it")
            await self.close_valve(pt)
        if pt.flow is not None and pt.flow_offline is None:
            await self.read_flow(pt)

    async def valve_still_open(self, pt: PointRuntime) -> bool:
        """During a session: the valve reads open (else `valve_fault`, and False)."""
        pt.valve_check_at = self.after(VALVE_CHECK_S)
        try:
            is_open = await pt.valve.get()
        except DeviceError as e:
            await self.valve_failed(pt, f"unreadable during a session: {e.message}")
            return False
        if not is_open:
            await self.valve_failed(pt, "found closed during a session")
            return False
        return True

    async def read_flow(self, pt: PointRuntime) -> int | None:
        """The counter now, or None; raises and clears `meter_offline` for `flow:POINT`."""
        if pt.flow is None:
            return None
        try:
            count = await pt.flow.read()
        except DeviceError as e:
            pt.flow_failures += 1
            pt.probe_at = self.after(FLOW_PROBE_S)
            if pt.flow_failures >= FLOW_FAILURES_FAULT and pt.flow_offline is None:
                pt.flow_offline = e.message or "no answer"
                log.error("flow_meter_offline", point=pt.id, failures=pt.flow_failures,
                          detail=pt.flow_offline)
                await self.alarms.report(AlarmCode.METER_OFFLINE, flow_device(pt.id),
                                         pt.flow_offline, True)
            return None
        pt.flow_failures = 0
        if pt.flow_offline is not None:
            pt.flow_offline = None
            log.info("flow_meter_back", point=pt.id)
            await self.alarms.report(AlarmCode.METER_OFFLINE, flow_device(pt.id), "", False)
        return count
