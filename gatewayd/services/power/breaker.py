"""Each room's breaker at run time: driven where the rules want it, read back, reconciled.

Contract:
- A breaker follows its room's recorded state (`Breakers.drive`); a failed
  command is retried with back-off (BREAKER_RETRY_S at most) with
  `breaker_mismatch` raised until it follows. Once it follows a recorded cut
  or restore, the room's `switch_pending` is cleared.
- At start every breaker is read, within START_IO_S in all (`read_at_start`);
  one not read by then is `unverified`, and its first answer is decided as
  at start.
- A relay board's breakers are read every poll (`bank_loop`). A breaker that
  moved by itself is read again alone to confirm it, then cut again or, found
  off with no cut recorded, left off and held (`rules.breaker.reconcile`).
- A cut room whose meter shows a load has its breaker read alone (`check`; the
  room loop asks at most every DRAW_CHECK_S): a relay closed by hand (a DL/T
  645 meter's button; its relay is not read every poll) is cut again as above.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import replace

import structlog

from drivers.errors import DeviceError, SwitchMismatch
from drivers.protocols import SwitchBank
from gatewayd.contract.enums import AlarmCode, CutReason
from gatewayd.contract.events import Alarm, breaker_device
from gatewayd.rules.breaker import Verdict, reconcile
from gatewayd.rules.power import Outcome
from gatewayd.services.alarms import Alarms
from gatewayd.services.clock import Clock
from gatewayd.services.component import START_IO_S
from gatewayd.services.power.record import Recorder
from gatewayd.services.power.room import RoomRuntime

log = structlog.get_logger(__name__)

# A relay board that did not answer its breakers' read is read again after this.
BANK_RETRY_S = 5.0
FOUND_OFF_AT_START = ("breaker found off at start with no cut recorded: left off and held; "
                      "room.restore switches it on")
FOUND_OFF = ("breaker found off with no cut recorded (switched by hand or the relay board "
             "reset): left off and held; room.restore switches it on")


class Breakers:
    """The rooms' breakers for the power service."""

    def __init__(self, rooms: Mapping[str, RoomRuntime], recorder: Recorder, alarms: Alarms,
                 clock: Clock, poll_s: float) -> None:
        self.rooms = rooms
        self.by_breaker = {rt.breaker.name: rt for rt in rooms.values()}
        # The relay boards read every poll; a reload replaces the list, and a board's
        # loop ends once its bank is no longer in it.
        self.banks: list[SwitchBank] = []
        self.recorder = recorder
        self.alarms = alarms
        self.clock = clock
        self.poll_s = poll_s

    async def read_at_start(self) -> None:
        """Read every breaker within START_IO_S in all; mark those unread `unverified`."""
        unreadable: list[str] = []

        async def read_one(rt: RoomRuntime) -> None:
            try:
                rt.breaker_on = await rt.breaker.get()
            except DeviceError:
                unreadable.append(rt.id)

        # Every read is queued at once: each bus owner serves its own in turn, so
        # a live bus is never held behind a dead one (a limit here would be).
        try:
            async with asyncio.timeout(START_IO_S), asyncio.TaskGroup() as tg:
                for rt in self.rooms.values():
                    tg.create_task(read_one(rt), name=f"start-{rt.id}")
        except TimeoutError:
            pass
        unread = [rt for rt in self.rooms.values() if rt.breaker_on is None]
        for rt in unread:
            rt.unverified = True
        if unread:
            # One line for the lot (a dead bus may hold hundreds), the bus says why.
            log.warning("breakers_unverified_at_start", count=len(unread), budget_s=START_IO_S,
                        unanswered=len(unread) - len(unreadable),
                        rooms=sorted(rt.id for rt in unread)[:20])

    async def found_off(self, rt: RoomRuntime, detail: str = FOUND_OFF_AT_START) -> None:
        """Off with no cut recorded: hold the room (a remote cut) and say so."""
        rt.state = replace(rt.state, hold=True, cut_reason=CutReason.REMOTE)
        self.alarms.raise_(AlarmCode.BREAKER_MISMATCH, breaker_device(rt.id), detail)
        await self.recorder.commit(rt, Outcome(rt.state), extra_alarms=[
            Alarm(code=AlarmCode.BREAKER_MISMATCH, device=breaker_device(rt.id),
                       detail=detail, active=True)])

    async def drive(self, rt: RoomRuntime, want_on: bool | None = None) -> None:
        """Make the breaker follow the rules (or `want_on`); a failed command is
        retried with back-off (BREAKER_RETRY_S at most) with `breaker_mismatch`
        raised until it follows."""
        now = self.clock.mono()
        following = want_on is None
        if want_on is None:
            want_on = rt.state.cut_reason is None
        if now < rt.next_breaker_try and want_on == rt.retry_want:
            return
        if rt.breaker_on is None and not await self._read(rt, want_on, now):
            return
        if rt.breaker_on == want_on:
            if following and rt.switch_pending:
                await self.recorder.switch_done(rt)
            if rt.retry_want is not None:
                # A failed command is moot: the breaker is where the rules now want it.
                rt.retry_want = None
                await self.alarms.report(AlarmCode.BREAKER_MISMATCH, breaker_device(rt.id), "", False)
            return
        device = breaker_device(rt.id)
        rt.breaker_at = self.clock.mono()
        try:
            await rt.breaker.set(want_on)
        except DeviceError as e:
            rt.next_breaker_try = now + rt.breaker_backoff.next_delay()
            rt.retry_want = want_on
            rt.breaker_on = e.actual if isinstance(e, SwitchMismatch) else None
            detail = f"commanded {'on' if want_on else 'off'}: {e.message}"
            rt.breaker_log.failed(error=e.message)
            await self.alarms.report(AlarmCode.BREAKER_MISMATCH, device, detail, True)
            return
        rt.breaker_backoff.reset()
        rt.breaker_log.ok()
        rt.breaker_on = want_on
        rt.retry_want = None
        if following and rt.switch_pending:
            await self.recorder.switch_done(rt)
        await self.alarms.report(AlarmCode.BREAKER_MISMATCH, device, "", False)

    async def _read(self, rt: RoomRuntime, want_on: bool, now: float) -> bool:
        """Read a breaker whose state is unknown; False when there is nothing more
        to do now (no answer: retried with back-off; or found off and held)."""
        rt.breaker_at = now
        try:
            rt.breaker_on = await rt.breaker.get()
        except DeviceError:
            rt.next_breaker_try = now + rt.breaker_backoff.next_delay()
            rt.retry_want = want_on
            return False
        rt.breaker_backoff.reset()
        if rt.unverified:
            # The start's check, late: a breaker off for no recorded reason
            # is left off and held, never switched on because we restarted.
            rt.unverified = False
            if reconcile(rt.breaker_on, rt.state, rt.switch_pending) is Verdict.HOLD_OFF:
                await self.found_off(rt)
                return False
        return True

    async def bank_loop(self, bank: SwitchBank) -> None:
        """Read a relay board's breakers every poll; a board that does not answer
        is tried again after BANK_RETRY_S (its rooms' commands still go to it)."""
        while any(b is bank for b in self.banks):
            started = self.clock.mono()
            delay = self.poll_s
            try:
                states = await bank.read()
            except DeviceError:
                delay = max(self.poll_s, BANK_RETRY_S)
                states = {}
            for name, on in states.items():
                rt = self.by_breaker.get(name)
                if rt is not None:
                    try:
                        await self.seen(rt, on, started)
                    except Exception:
                        log.exception("breaker_check_failed", room=rt.id)
            left = started + delay - self.clock.mono()
            await asyncio.sleep(max(left, 0.0) * random.uniform(0.95, 1.05))

    async def check(self, rt: RoomRuntime, power_w: float | None) -> bool:
        """A cut room whose meter shows a load: read its breaker alone, and cut it again
        if it was closed by hand. Found off, the breaker does not cut what the meter
        measures: said in the log (a wiring fault), nothing switched, False returned."""
        read_at = self.clock.mono()
        try:
            on = await rt.breaker.get()
        except DeviceError:
            return True   # the breaker's bus says why; the next check reads it again
        if on:
            await self.seen(rt, on, read_at)
            return True
        log.warning("cut_room_draws", room=rt.id, power_w=power_w,
                    detail="the breaker is off but the meter shows a load: "
                    "check that the breaker cuts the metered circuit")
        return False

    async def seen(self, rt: RoomRuntime, on: bool, read_at: float) -> None:
        """A breaker read by its board's poll: one that moved by itself is put back
        where the rules want it (cut again), or, found off, left off and held."""
        async with rt.lock:
            if rt.breaker_at >= read_at or rt.unverified or rt.switch_pending or rt.retired:
                return   # commanded (or read) since this read began, or being settled
            if rt.breaker_on is None or rt.breaker_on == on:
                rt.breaker_on = on
                return
            # Confirmed by a read of this breaker alone before anything is done:
            # Modbus TCP has no checksum, and one flipped bit in a board's answer
            # must not hold a room off (nor cut it at the next read).
            rt.breaker_at = self.clock.mono()
            try:
                if await rt.breaker.get() != on:
                    log.warning("breaker_read_not_confirmed", room=rt.id, read=on)
                    return
            except DeviceError:
                return
            rt.breaker_on = on
            verdict = reconcile(on, rt.state, rt.switch_pending)
            if verdict is Verdict.CUT_AGAIN:
                detail = (f"found on while cut ({rt.state.cut_reason}): "
                          "switched by hand or the relay board reset; switched off again")
                log.error("breaker_found_on", room=rt.id, reason=rt.state.cut_reason)
                await self.alarms.report(AlarmCode.BREAKER_MISMATCH, breaker_device(rt.id),
                                         detail, True)
                rt.next_breaker_try = 0.0   # at once: a failed command's retry period aside
                await self.drive(rt)
            elif verdict is Verdict.HOLD_OFF:
                log.error("breaker_found_off", room=rt.id)
                await self.found_off(rt, FOUND_OFF)
