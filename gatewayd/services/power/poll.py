"""Each room's loop: poll its meter, step the rules, carry the outcome out.

Contract:
- Every room has its own poll loop; a meter or breaker that fails affects
  only its room. A room on a slow bus (`wire_paced`: DL/T 645) reads its
  meter again as soon as the last reading is handled: its bus serves the
  meters in turn, so the wire sets the pace (one reading a round). A meter
  that keeps failing is polled less often (its `health.poll_delay`) and
  raises `meter_offline`; the room's timers (curfew, reclose, lockout) keep
  running without it.
- An overload timer that runs out between two polls gets a reading of its
  own at that moment (`_trip_read_at`), so the cut does not wait for the poll.
- A decision's events, the charge and the room's state commit in one store
  transaction before the breaker is touched. When that fails, for any reason,
  the protective part still happens (a cut is carried out and its event kept
  for the next commit, `carry_out`), and a room that keeps failing raises
  `room_failing` until it works again.
- A value no meter can report is no reading (`drivers.protocols.screened`):
  nothing is charged for it and it counts against the meter's health.
"""

from __future__ import annotations

import asyncio
import contextlib
from fractions import Fraction

import structlog

from drivers.errors import DeviceError
from drivers.protocols import MeterReading, screened
from gatewayd.contract.enums import AlarmCode
from gatewayd.contract.events import room_device
from gatewayd.errors import StoreError
from gatewayd.rules.breaker import Verdict, reconcile
from gatewayd.rules.power import Context, Cut, Outcome, Reading, step
from gatewayd.services.alarms import Alarms
from gatewayd.services.clock import Clock
from gatewayd.services.power.breaker import Breakers
from gatewayd.services.power.curfew import CurfewWatch
from gatewayd.services.power.record import Also, Recorder
from gatewayd.services.power.room import RoomRuntime
from gatewayd.store.ledger import Ledger

log = structlog.get_logger(__name__)

# An overload read is taken this long after the timer runs out (asyncio timers
# may fire a clock tick early; the reading's time must be past the deadline).
TRIP_READ_MARGIN_S = 0.002
# A room whose readings fail to be handled this many times in a row raises
# room_failing (one failure may be a passing fault; three are not).
ROOM_FAILING_AFTER = 3
# A cut room's meter showing more than this has its breaker read (at most every
# DRAW_CHECK_S): a breaker that is off leaves a meter at 0 W.
DRAW_WHILE_CUT_W = 20.0
DRAW_CHECK_S = 10.0
DRAW_SETTLE_S = 2.0
DRAW_FOUND_OFF_S = 60.0


class RoomRunner:
    """Runs the rooms' rules for the power service: their poll loops, and the
    evaluations and decisions that the start and the commands ask for."""

    def __init__(self, *, ledger: Ledger, alarms: Alarms, clock: Clock, curfew: CurfewWatch,
                 recorder: Recorder, breakers: Breakers, rate: Fraction, poll_s: float,
                 wire_paced: frozenset[str] = frozenset()) -> None:
        self.ledger = ledger
        self.alarms = alarms
        self.clock = clock
        self.curfew = curfew
        self.recorder = recorder
        self.breakers = breakers
        self.rate = rate   # fen per Wh
        self.poll_s = poll_s
        self.wire_paced = wire_paced   # rooms read back to back, paced by their bus

    def context(self, rt: RoomRuntime, now: float) -> Context:
        account = rt.cfg.account
        health = rt.meter.health
        return Context(
            now=now,
            rules=rt.cfg.rules,
            resistive_cutoff=rt.cfg.resistive_cutoff,
            rate=self.rate,
            balance_fen=self.ledger.balance(account),
            account_known=self.ledger.is_known(account),
            curfew=self.curfew.covers(rt.id),
            meter_online=health is None or health.online,
        )

    # --- the poll loop ------------------------------------------------------------

    async def loop(self, rt: RoomRuntime) -> None:
        next_tick = self.clock.mono()
        while True:
            now = self.clock.mono()
            reading = await self._read(rt, now) if now >= rt.next_read else None
            await self.evaluate(rt, reading)
            now = self.clock.mono()
            if reading is not None and self._draws_while_cut(rt, reading, now):
                rt.draw_checked_at = now
                if not await self.breakers.check(rt, reading.power_w):
                    rt.draw_checked_at += DRAW_FOUND_OFF_S   # a wiring fault: said seldom
            if now >= next_tick:
                next_tick = max(next_tick + self.poll_s, now)  # fell behind: do not burst
            wake_at = next_tick
            trip_read = self._trip_read_at(rt)
            if trip_read is not None and trip_read < wake_at:
                wake_at = rt.next_read = trip_read
            if rt.id in self.wire_paced:
                wake_at = min(wake_at, max(rt.next_read, now))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wake_at - now, 0.0)):
                    await rt.wake.wait()
            rt.wake.clear()

    async def _read(self, rt: RoomRuntime, now: float) -> MeterReading | None:
        """Read the meter and set when to read it next."""
        rt.read_at = now
        health = rt.meter.health
        try:
            reading: MeterReading | None = await rt.meter.read()
        except DeviceError:
            reading = None  # the bus logs and the health callback alarms
        except Exception as e:  # a driver's bug is a failed read, not a dead room
            reading = None
            if health is not None:
                health.failed(f"{type(e).__name__}: {e}")
        delay = 0.0 if rt.id in self.wire_paced else self.poll_s
        if health is not None and (reading is None or reading.power_w is None):
            # Backed off while offline; a meter that answers with a usable
            # power (its energy register bad) keeps its poll: overload
            # protection runs on it. A wire-paced meter that fails waits a
            # poll too: its bus may fail at once (a port in back-off).
            delay = health.poll_delay(self.poll_s)
        rt.next_read = now + delay - 0.01
        return reading

    @staticmethod
    def _draws_while_cut(rt: RoomRuntime, reading: MeterReading, now: float) -> bool:
        """The meter shows a load although the room is cut and its breaker was left off:
        the breaker was closed by hand (a DL/T 645 meter's relay has a button, and is
        not read every poll), or does not cut what the meter measures. Checked at most
        every DRAW_CHECK_S."""
        return (reading.power_w is not None and abs(reading.power_w) > DRAW_WHILE_CUT_W
                and rt.state.cut_reason is not None and rt.breaker_on is False
                and not rt.switch_pending and now - rt.draw_checked_at >= DRAW_CHECK_S
                # taken well after the breaker was last switched or read: not the load
                # of before the cut, nor a relay still opening
                and reading.mono >= rt.breaker_at + DRAW_SETTLE_S)

    def _trip_read_at(self, rt: RoomRuntime) -> float | None:
        """When the overload timer runs out before the next poll, read the meter
        right then: the first reading above the limit taken `trip_after_s` after
        the timer started cuts the room, so the cut comes within one poll period
        of the condition being met, not two."""
        over = rt.state.over_since
        if over is None:
            return None
        at = over + rt.cfg.rules.trip_after_s + TRIP_READ_MARGIN_S
        if at <= rt.read_at or at >= rt.next_read:
            return None  # already read after it, or the next poll comes first
        return at

    # --- the rules, carried out ---------------------------------------------------

    async def evaluate(self, rt: RoomRuntime, reading: MeterReading | None,
                       *, startup: bool = False) -> None:
        """Apply the rules to one reading (or none) and carry them out.

        Never raises (but cancellation): a failure of any kind is logged (the
        first of a run with its traceback), counted, and raises `room_failing`
        after ROOM_FAILING_AFTER in a row; what the rules call for to protect the
        room has been carried out by then (`carry_out`)."""
        async with rt.lock:
            if rt.retired:
                return   # removed by a reload while this waited
            try:
                await self._evaluate(rt, reading, startup=startup)
            except Exception as e:
                await self.room_failed(rt, e)
            else:
                if rt.failures:
                    await self._room_works(rt)

    async def _evaluate(self, rt: RoomRuntime, reading: MeterReading | None,
                        *, startup: bool) -> None:
        now = self.clock.mono()
        r = None
        if reading is not None:
            reading = self._screen(rt, reading)
        if reading is not None:
            rt.last = reading
            r = Reading(reading.energy_wh, reading.power_w, reading.pf, reading.mono,
                        reading.energy_step_wh)
        ctx = self.context(rt, now)
        failed: Exception | None = None
        try:
            out = step(rt.state, ctx, r)
        except Exception as e:
            if r is None:
                raise
            # This reading cannot be handled: the rules that need none (timers,
            # curfew, balance, meter offline) still run, and the room says so.
            failed = e
            out = step(rt.state, ctx, None)
        await self.carry_out(rt, out, startup=startup)
        if failed is not None:
            raise failed

    def _screen(self, rt: RoomRuntime, reading: MeterReading) -> MeterReading | None:
        """The reading without values no meter can report (its meter should have
        dropped them already); those count against the meter's health."""
        checked = screened(reading)
        if checked is not reading:
            health = rt.meter.health
            if health is not None:
                health.failed(checked.fault)
            else:
                log.warning("meter_bad_reading", room=rt.id, fault=checked.fault)
        if checked.energy_wh is None and checked.power_w is None:
            return None
        return checked

    async def room_failed(self, rt: RoomRuntime, e: Exception) -> None:
        """Log a failed evaluation (bounded) and raise room_failing when it keeps failing.

        A store that refuses writes is `store_failing`'s (the daemon's probe):
        every room would fail with it, and one alarm says it."""
        rt.failures += 1
        event = ("power_decision_not_recorded" if isinstance(e, StoreError)
                 else "room_evaluation_failed")
        if rt.failures == 1:
            log.error(event, room=rt.id, error=f"{type(e).__name__}: {e}",
                      exc_info=not isinstance(e, StoreError))
        else:
            log.debug(event, room=rt.id, error=f"{type(e).__name__}: {e}", attempt=rt.failures)
        if rt.failures >= ROOM_FAILING_AFTER and not isinstance(e, StoreError):
            await self.alarms.report(AlarmCode.ROOM_FAILING, room_device(rt.id),
                                     f"{type(e).__name__}: {e}"[:200], True)

    async def _room_works(self, rt: RoomRuntime) -> None:
        log.info("room_evaluation_recovered", room=rt.id, after_failures=rt.failures)
        rt.failures = 0
        await self.alarms.report(AlarmCode.ROOM_FAILING, room_device(rt.id), "", False)

    async def carry_out(self, rt: RoomRuntime, out: Outcome, *, startup: bool = False,
                        also: Also | None = None) -> None:
        """Record the outcome, then drive the breaker (a cut even when recording fails)."""
        if (startup and rt.breaker_on is True
                and reconcile(True, out.state, rt.switch_pending) is Verdict.CUT_AGAIN
                and not any(isinstance(d, Cut) for d in out.decisions)):
            # Recorded as cut, found on: cut it again, and say so.
            assert out.state.cut_reason is not None
            out.decisions.append(Cut(out.state.cut_reason, None))
        try:
            await self.recorder.commit(rt, out, also=also)
        except Exception as e:
            # The decision cannot be recorded: the disk is full or failing, or
            # something in it cannot be stored (a bug, a value out of range).
            # The money does not move: the baseline stays, so the energy is
            # charged, with its reports, at the first commit that works. The
            # protection goes on: overload and resistive timers keep running,
            # and a cut happens (fire and money safety come first), is kept in
            # memory, and its event is written with that first commit. Nothing
            # else is carried out (a restore waits for the store). A command's
            # decision (`also`) is the command's to report: it fails whole.
            if also is not None:
                log.error("power_decision_not_recorded", room=rt.id,
                          error=f"{type(e).__name__}: {e}")
            else:
                self.recorder.keep_unrecorded(rt, out)
                if out.state.cut_reason is not None:
                    await self.breakers.drive(rt, want_on=False)
            raise
        if startup and rt.unverified:
            return  # not read within the start's budget: its room loop reads it
        await self.breakers.drive(rt)
