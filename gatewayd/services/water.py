"""Showers and drinking water at run time: taps, valves, flow, sessions.

Contract:
- Valves fail closed: `start()` commands every valve closed before READY
  and ends (charges) any session a crash left open (`end_reason` restart).
- A tap is answered from memory (cards, balances); the session row and the
  `tap` event commit before the valve opens, so a crash at any moment leaves
  a session the next start can charge.
- An open session is charged as it runs (every poll), in the same transaction
  as its row; it ends with one `water.session` event carrying the whole charge.
- On shutdown no tap is taken, every valve is closed and every session ended
  (`shutdown`), charged and committed.
- Valves that do not answer do not hold the start: what has not answered
  within `START_IO_S` is a `valve_fault` (the point refuses taps) until it
  answers and is closed.
- A reader, valve or flow meter failing affects only its point. A valve that
  fails is commanded closed again with capped back-off (`VALVE_RETRY_MIN_S`
  to `VALVE_RETRY_MAX_S`), and its log lines are bounded. A flow meter
  that stops answering raises `meter_offline` (device `flow:POINT`), ends the
  point's session (`fault`) and makes the point refuse taps (`fault`) until a
  probe every `FLOW_PROBE_S` finds it answering again (cleared).
- Charges made while the center is unreachable count toward the card's
  offline day limit, whenever the session started.
- A reader flooded with refused taps cannot fill the store: past
  `gateway.refused_taps_per_min` in a minute, its refusals are folded into
  one counted `tap` event per reason a minute and `reader_flood` is raised
  (gatewayd/rules/reader_flood.py). Granted taps are never folded; a folded
  refusal costs no store write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal
from typing import Any

import structlog

from drivers.errors import DeviceError
from drivers.protocols import CardReader, CardTap, Counter, Switch
from drivers.retry import Backoff, FailureLog
from gatewayd.config.model import Config, Point
from gatewayd.contract import wire
from gatewayd.contract.wire import AlarmCode, EndReason, TapReason, WaterUse
from gatewayd.errors import StoreError
from gatewayd.rules import pricing
from gatewayd.rules.reader_flood import Outcome, RefusalFolder
from gatewayd.rules.water import (
    Advance,
    Billing,
    FlowAlarm,
    Limits,
    Session,
    TapFacts,
    advance,
    billing_for,
    check_tap,
)
from gatewayd.services.alarms import Alarms
from gatewayd.services.clock import Clock
from gatewayd.services.component import START_IO_S, Heartbeat
from gatewayd.store.cards import Cards
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger
from gatewayd.store.txn import Txn

log = structlog.get_logger(__name__)

# A valve that failed (to close, to open, or to answer a check) is commanded
# closed again after a back-off from VALVE_RETRY_MIN_S, doubling up to
# VALVE_RETRY_MAX_S (+-25 %), reset once it obeys: a dead relay board (or bus)
# costs a request every few seconds, never a busy loop, and one that comes
# back is closed (and its point serves again) within VALVE_RETRY_MAX_S.
VALVE_RETRY_MIN_S = 1.0
VALVE_RETRY_MAX_S = 10.0
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
# At shutdown, once every session has ended, idle valves are commanded closed
# too, within this much more of the stop budget (they were closed at start and are
# checked every IDLE_CHECK_S: this only catches one opened since).
SHUTDOWN_IDLE_CLOSE_S = 1.0
# At shutdown, closing the valves of open sessions and reading their flow
# may take this long in all; sessions still open then are ended without
# device I/O, so that the stop keeps time to tell the center (10 s in all).
SHUTDOWN_IO_S = 3.0
# After a crash the last counter reading's time is derived from the session
# row (started + elapsed_s, whole seconds, the count read just before): the
# flow bound allows this much more time, so that real flow during the outage
# is never taken for a counter reset.
RECOVERY_READ_MARGIN_S = 2.0


SESSION_COLUMNS = ("point, session, card, account, service, offline, started, elapsed_s, "
                   "counter_start, counter_last, pulses, volume_ml, charged_fen, carry")


def valve_device(point: str) -> str:
    return f"valve:{point}"


def flow_device(point: str) -> str:
    return f"flow:{point}"


def reader_device(reader: str) -> str:
    return f"reader:{reader}"


@dataclass
class PointRuntime:
    cfg: Point
    valve: Switch
    flow: Counter | None
    billing: Billing
    session: Session | None = None
    fault: str | None = None          # valve fault detail; None: the valve obeys
    flow_failures: int = 0
    flow_offline: str | None = None   # why the flow meter is offline; None: it answers
    probe_at: float = 0.0             # monotonic time of the next probe while offline
    idle_check_at: float = 0.0        # monotonic time of the next idle check
    valve_check_at: float = 0.0       # monotonic time of the next check during a session
    recovered: bool = False           # the session was found open after a crash
    retry_at: float = 0.0             # monotonic time of the next close while `fault`
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    backoff: Backoff = field(
        default_factory=lambda: Backoff(VALVE_RETRY_MIN_S, VALVE_RETRY_MAX_S))
    fault_log: FailureLog = field(init=False)

    def __post_init__(self) -> None:
        self.fault_log = FailureLog(log, "valve_fault", recovered="valve_recovered",
                                    level=logging.ERROR, point=self.cfg.id)

    @property
    def id(self) -> str:
        return self.cfg.id

    @property
    def faulty(self) -> bool:
        """The valve or the flow meter is failing: the point refuses taps."""
        return self.fault is not None or self.flow_offline is not None

    @property
    def state(self) -> str:
        if self.faulty:
            return "fault"
        return "open" if self.session is not None else "closed"


class WaterService:
    """The `water` component: readers, water points and their sessions."""

    name = "water"

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        ledger: Ledger,
        cards: Cards,
        alarms: Alarms,
        clock: Clock,
        devices: Mapping[str, tuple[Switch, Counter | None]],
        readers: Mapping[str, CardReader],
        center_online: Callable[[], bool],
    ) -> None:
        self.config = config
        self.store = store
        self.ledger = ledger
        self.cards = cards
        self.alarms = alarms
        self.clock = clock
        self.readers = dict(readers)
        self.center_online = center_online
        self.poll_s = max(config.gateway.poll_interval_s, 0.2)
        self.heartbeat_s: float | None = max(30.0, 10 * self.poll_s)
        w = config.water
        self.limits = Limits(w.step_fen, w.max_session_s, w.idle_close_s, w.offline_limit_fen)
        self.points: dict[str, PointRuntime] = {}
        for p in config.points:
            tariff = config.tariffs.of(p.service)
            valve, flow = devices[p.id]
            bits = getattr(flow, "bits", 32) if flow is not None else 32
            ml = p.flow.ml_per_pulse if p.flow is not None else Decimal(0)
            self.points[p.id] = PointRuntime(
                p, valve, flow, billing_for(tariff.price, tariff.unit, ml, bits))
        self.by_reader = {p.reader: self.points[p.id] for p in config.points}
        self.accepting = False
        self.offline_spent: dict[tuple[str, str], int] = {}
        self.taps = 0
        self.refusals = RefusalFolder(config.gateway.refused_taps_per_min)

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Close every valve, then end and charge sessions a crash left open.

        The device I/O (every close, and the last flow reading of a crash's
        session) runs for all points at once and gets START_IO_S in all: a
        valve not confirmed closed by then is a `valve_fault` (its point
        refuses taps until the valve answers and is closed), and a session
        whose reading did not come is charged from its last committed one."""
        rows = await self.store.read(lambda t: t.execute(
            f"SELECT {SESSION_COLUMNS} FROM water_sessions").fetchall())
        today = self.clock.local().date().isoformat()
        spent = await self.store.read(lambda t: t.execute(
            "SELECT card, day, fen FROM offline_spend WHERE day = ?", (today,)).fetchall())
        self.offline_spent = {(card, day): fen for card, day, fen in spent}
        now_mono, now_wall = self.clock.mono(), self.clock.wall()
        for row in rows:
            session = self._session_from_row(row, now_mono, now_wall)
            point, sid = session.point, session.session
            pt = self.points.get(point)
            if pt is None:
                log.warning("session_for_unknown_point", point=point, session=sid)
                await self._finish_orphan(session)
                continue
            pt.session = session
            pt.recovered = True
        closed: set[str] = set()
        counts: dict[str, int | None] = {}

        async def settle(pt: PointRuntime) -> None:
            if await self._close_valve(pt):
                closed.add(pt.id)
            if pt.session is not None and not pt.faulty:
                counts[pt.id] = await self._read_flow(pt)

        try:
            async with asyncio.timeout(START_IO_S), asyncio.TaskGroup() as tg:
                for pt in self.points.values():
                    tg.create_task(settle(pt), name=f"start-{pt.id}")
        except TimeoutError:
            log.warning("valves_unconfirmed_at_start", budget_s=START_IO_S,
                        points=sorted(p for p in self.points if p not in closed))
        for pt in self.points.values():
            if pt.id not in closed and pt.fault is None:
                await self._valve_failed(pt, f"not confirmed closed within {START_IO_S:g} s "
                                             "of start")
            if pt.session is not None:
                await self._finish(pt, EndReason.RESTART, counts.get(pt.id))
        self.accepting = True
        log.info("water_started", points=len(self.points), readers=len(self.readers),
                 recovered=len(rows))

    def _session_from_row(self, row: Sequence[Any], now_mono: float, now_wall: float) -> Session:
        """A session as its `water_sessions` row left it (SESSION_COLUMNS)."""
        (point, sid, card, account, service, offline, started, charged_s, c_start, c_last,
         pulses, volume, charged, carry) = row
        # Time until now (the wall clock is all that survives a reboot),
        # capped at the longest a session may run.
        elapsed = min(max(now_wall - started, 0.0), self.limits.max_session_s)
        # The last counter reading was committed with elapsed_s, so it was
        # taken no earlier than started + elapsed_s: the time since then
        # bounds the flow the counter may show now.
        since_reading = max(now_wall - started - charged_s, 0.0) + RECOVERY_READ_MARGIN_S
        return Session(
            session=sid, point=point, card=card, account=account, service=WaterUse(service),
            offline=bool(offline), started_wall=started, started_mono=now_mono - elapsed,
            counter_start=c_start, counter_last=c_last, pulses=pulses, volume_ml=volume,
            seconds=int(charged_s), charged_fen=charged, carry=pricing.carry_from_text(carry),
            last_flow_mono=now_mono, counter_mono=now_mono - since_reading,
        )

    async def run(self, heartbeat: Heartbeat) -> None:
        async with asyncio.TaskGroup() as tg:
            for reader in self.readers.values():
                tg.create_task(self._reader(reader), name=f"reader-{reader.name}")
            for pt in self.points.values():
                tg.create_task(self._point_loop(pt), name=f"point-{pt.id}")
            while True:
                heartbeat.beat()
                try:
                    await self._folded(self.refusals.roll(self.clock.mono()))
                except Exception:   # a bug here must not stop the readers and points
                    log.exception("reader_flood_roll_failed")
                await asyncio.sleep(1.0)

    async def shutdown(self) -> None:
        """Stop taking taps; close every valve and end its session (`shutdown`)."""
        self.accepting = False
        await self._folded(self.refusals.flush())  # the minute's folds, not lost
        try:
            async with asyncio.timeout(SHUTDOWN_IO_S):
                await asyncio.gather(*(self._shutdown_point(pt) for pt in self.points.values()))
        except TimeoutError:
            # Dead boards on a bus: their timeouts queue up. Every session still
            # ends now, charged from its last reading, so that the stop keeps
            # its budget for the center link (the next start closes the valves).
            log.warning("shutdown_valves_timed_out",
                        open_sessions=[pt.id for pt in self.points.values() if pt.session])
            await self._end_from_store()
        idle = [pt for pt in self.points.values() if pt.session is None and pt.fault is None]
        try:
            async with asyncio.timeout(SHUTDOWN_IDLE_CLOSE_S):
                await asyncio.gather(*(self._shutdown_idle(pt) for pt in idle))
        except TimeoutError:
            log.warning("shutdown_idle_valves_timed_out", points=len(idle))

    async def _end_from_store(self) -> None:
        """End every session the store still holds open, without device I/O.

        Each is charged from its row (what its last committed reading
        measured; time billing up to now), in one transaction that reads the
        row, so nothing a point's loop committed is missed and nothing it
        commits afterwards is charged (its session row is gone). A point's
        own end still in flight finds the row gone too: one end only."""
        now_mono, now_wall = self.clock.mono(), self.clock.wall()
        stamp = self.clock.stamp(now_wall)
        day = self._today()
        offline = not self.center_online()
        billing = {pid: pt.billing for pid, pt in self.points.items()}
        # Sessions this process started (ended `shutdown`); any other is a
        # crash's, which the start had not ended yet (`restart`).
        own = {pt.session.session for pt in self.points.values()
               if pt.session is not None and not pt.recovered}

        def job(txn: Txn) -> list[tuple[Session, int, bool, EndReason]]:
            ended = []
            rows = txn.execute(f"SELECT {SESSION_COLUMNS} FROM water_sessions").fetchall()
            for row in rows:
                s = self._session_from_row(row, now_mono, now_wall)
                if s.point not in billing:
                    continue   # not this configuration's: the next start reports it
                reason = EndReason.SHUTDOWN if s.session in own else EndReason.RESTART
                step = advance(s, billing[s.point], self.limits, now=now_mono, count=None,
                               balance_fen=0, offline=offline, final=True)
                s = step.session
                result = _record_end(txn, s, fen=step.charge_fen, offline_fen=step.offline_fen,
                                     day=day, fields=self._session_fields(s, reason, stamp),
                                     stamp=stamp, wall=now_wall)
                assert result is not None   # its row was just read, in this transaction
                ended.append((s, *result, reason))
            return ended

        for s, balance, known, reason in await self.store.run(job):
            self.ledger.note(s.account, balance, known)
            pt = self.points[s.point]
            pt.session, pt.recovered = None, False
            log.warning("session_ended_without_valve", point=s.point, card=s.card, reason=reason,
                        volume_ml=s.volume_ml, seconds=s.seconds, amount_fen=s.charged_fen)

    @staticmethod
    def _end_reason(pt: PointRuntime) -> EndReason:
        """`shutdown`, or `restart` for a crash's session the start had not ended yet."""
        return EndReason.RESTART if pt.recovered else EndReason.SHUTDOWN

    async def _shutdown_point(self, pt: PointRuntime) -> None:
        async with pt.lock:
            if pt.session is not None:
                await self._end(pt, self._end_reason(pt))

    async def _shutdown_idle(self, pt: PointRuntime) -> None:
        async with pt.lock:
            if pt.session is None:
                await self._close_valve(pt)

    # --- readers ------------------------------------------------------------------

    async def _reader(self, reader: CardReader) -> None:
        device = reader_device(reader.name)

        def status(online: bool, detail: str) -> None:
            self.alarms.report_soon(AlarmCode.READER_OFFLINE, device, detail, not online)

        await reader.run(self.on_tap, status)

    async def on_tap(self, tap: CardTap) -> None:
        """A card at a reader: start, stop or refuse, with one `tap` event."""
        self.taps += 1
        if not self.accepting:
            return  # starting or stopping: the valves are being closed
        pt = self.by_reader.get(tap.reader)
        if pt is None:
            await self._tap_event(tap, None, granted=False, reason=TapReason.NO_POINT)
            return
        async with pt.lock:
            if not self.accepting:
                return  # shutdown began while this tap waited for the point
            if pt.session is not None and pt.session.card == tap.uid:
                await self._tap_event(tap, pt.id, granted=True, reason=TapReason.STOP)
                await self._end(pt, EndReason.TAP)
                return
            # Another card at a busy or faulty point is refused by check_tap,
            # after the card's own identity (a lost card is reported as lost).
            await self._open(pt, tap)

    def _facts(self, pt: PointRuntime, uid: str, today: date, offline: bool) -> TapFacts:
        card = self.cards.get(uid)
        account = card.account if card else ""
        w = self.config.water
        return TapFacts(
            card=card, kinds=pt.cfg.kinds, today=today,
            balance_fen=self.ledger.balance(account), account_known=self.ledger.is_known(account),
            min_balance_fen=w.min_balance_fen, step_fen=w.step_fen, offline=offline,
            offline_spent_fen=self.offline_spent.get((uid, today.isoformat()), 0),
            offline_limit_fen=w.offline_limit_fen,
            busy=pt.session is not None, fault=pt.faulty,
        )

    async def _open(self, pt: PointRuntime, tap: CardTap) -> None:
        now_wall = self.clock.wall()
        today = self.clock.local(now_wall).date()
        offline = not self.center_online()
        facts = self._facts(pt, tap.uid, today, offline)
        reason = check_tap(facts)
        if reason is not None:
            await self._tap_event(tap, pt.id, granted=False, reason=reason)
            return
        card = facts.card
        assert card is not None
        now = self.clock.mono()
        session = Session(
            session=str(uuid.uuid4()), point=pt.id, card=card.uid, account=card.account,
            service=WaterUse(pt.cfg.service), offline=offline, started_wall=now_wall, started_mono=now,
            last_flow_mono=now,
        )
        stamp = self.clock.stamp(now_wall)

        def job(txn: Txn) -> None:
            txn.execute(
                "INSERT INTO water_sessions (point, session, card, account, service, offline, "
                "started) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (pt.id, session.session, session.card, session.account, session.service,
                 int(offline), now_wall))
            txn.event(wire.Tap(reader=tap.reader, card=tap.uid, point=pt.id, granted=True,
                               reason=TapReason.START), ts=stamp, wall=now_wall)

        await self.store.run(job)
        pt.session = session
        try:
            await pt.valve.set(True)
        except DeviceError as e:
            await self._valve_failed(pt, f"commanded open: {e.message}")
            await self._end(pt, EndReason.FAULT)
            return
        pt.valve_check_at = self._after(VALVE_CHECK_S)
        log.info("session_started", point=pt.id, card=card.uid, session=session.session,
                 offline=offline, latency_ms=round((time.monotonic() - tap.mono) * 1000, 1))
        pt.wake.set()  # take the counter's baseline now

    async def _tap_event(self, tap: CardTap, point: str | None, *, granted: bool,
                         reason: TapReason) -> None:
        if not granted:
            out = self.refusals.refuse(tap.reader, tap.uid, point, reason, self.clock.mono())
            await self._folded(out)
            if not out.record:
                log.debug("tap_refused_folded", reader=tap.reader, card=tap.uid, reason=reason)
                return
            log.info("tap_refused", reader=tap.reader, card=tap.uid, point=point, reason=reason)
        now_wall = self.clock.wall()
        stamp = self.clock.stamp(now_wall)
        await self.store.run(lambda txn: txn.event(
            wire.Tap(reader=tap.reader, card=tap.uid, point=point, granted=granted, reason=reason),
            ts=stamp, wall=now_wall))

    async def _folded(self, out: Outcome) -> None:
        """Record the folded refusals of the minutes that ended, and `reader_flood`."""
        for reader, active in out.flood:
            detail = (f"more than {self.refusals.limit} refused taps a minute: further refusals "
                      "are folded into counted tap events" if active else "")
            await self.alarms.report(AlarmCode.READER_FLOOD, reader_device(reader), detail, active)
        if not out.folds:
            return
        now_wall = self.clock.wall()
        stamp = self.clock.stamp(now_wall)

        def job(txn: Txn) -> None:
            for f in out.folds:
                txn.event(wire.Tap(reader=f.reader, card=f.card, point=f.point, granted=False,
                                   reason=f.reason, count=f.count), ts=stamp, wall=now_wall)

        for f in out.folds:
            log.warning("tap_refusals_folded", reader=f.reader, reason=f.reason, count=f.count)
        try:
            await self.store.run(job)
        except StoreError as e:
            log.error("tap_refusals_not_recorded", error=str(e),
                      count=sum(f.count for f in out.folds))

    # --- sessions -----------------------------------------------------------------

    def _wait_s(self, pt: PointRuntime) -> float:
        """How long the point's loop sleeps unless woken."""
        if pt.session is not None:
            return self.poll_s
        due = pt.retry_at if pt.fault is not None else pt.idle_check_at
        if pt.flow_offline is not None:
            due = min(due, pt.probe_at)
        return max(due - self.clock.mono(), 0.0)

    async def _point_loop(self, pt: PointRuntime) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._wait_s(pt)):
                    await pt.wake.wait()
            pt.wake.clear()
            try:
                async with pt.lock:
                    if pt.session is not None:
                        await self._tick(pt)
                    else:
                        if pt.fault is not None:
                            if self.clock.mono() >= pt.retry_at:
                                await self._close_valve(pt)
                        elif self.clock.mono() >= pt.idle_check_at:
                            await self._idle_check(pt)
                        if pt.flow_offline is not None and self.clock.mono() >= pt.probe_at:
                            await self._read_flow(pt)  # clears the alarm when it answers
            except Exception:
                log.exception("point_loop_failed", point=pt.id)
                await asyncio.sleep(VALVE_RETRY_MAX_S)

    async def _idle_check(self, pt: PointRuntime) -> None:
        """An idle point: its valve reads closed (else it is closed now) and its
        flow meter answers (else, after a few checks, `meter_offline`)."""
        pt.idle_check_at = self._after(IDLE_CHECK_S)
        try:
            is_open = await pt.valve.get()
        except DeviceError as e:
            await self._valve_failed(pt, f"unreadable while idle: {e.message}")
            return
        if is_open:
            log.error("valve_open_while_idle", point=pt.id,
                      detail="found open with no session: closing it")
            await self._close_valve(pt)
        if pt.flow is not None and pt.flow_offline is None:
            await self._read_flow(pt)

    async def _valve_still_open(self, pt: PointRuntime) -> bool:
        """During a session: the valve reads open (else `valve_fault`, and False)."""
        pt.valve_check_at = self._after(VALVE_CHECK_S)
        try:
            is_open = await pt.valve.get()
        except DeviceError as e:
            await self._valve_failed(pt, f"unreadable during a session: {e.message}")
            return False
        if not is_open:
            await self._valve_failed(pt, "found closed during a session")
            return False
        return True

    async def _read_flow(self, pt: PointRuntime) -> int | None:
        """The counter now, or None; raises and clears `meter_offline` for `flow:POINT`."""
        if pt.flow is None:
            return None
        try:
            count = await pt.flow.read()
        except DeviceError as e:
            pt.flow_failures += 1
            pt.probe_at = self._after(FLOW_PROBE_S)
            if pt.flow_failures >= FLOW_FAILURES_FAULT and pt.flow_offline is None:
                pt.flow_offline = e.message or "no answer"
                log.error("flow_meter_offline", point=pt.id, failures=pt.flow_failures,
                          detail=pt.flow_offline)
                await self.alarms.report(AlarmCode.METER_OFFLINE, flow_device(pt.id), pt.flow_offline,
                                         True)
            return None
        pt.flow_failures = 0
        if pt.flow_offline is not None:
            pt.flow_offline = None
            log.info("flow_meter_back", point=pt.id)
            await self.alarms.report(AlarmCode.METER_OFFLINE, flow_device(pt.id), "", False)
        return count

    async def _tick(self, pt: PointRuntime) -> None:
        s = pt.session
        assert s is not None
        if self.clock.mono() >= pt.valve_check_at and not await self._valve_still_open(pt):
            await self._end(pt, EndReason.FAULT)
            return
        count = await self._read_flow(pt)
        if pt.flow_offline is not None:
            await self._end(pt, EndReason.FAULT)
            return
        if s.counter_start is None and count is not None:
            s = replace(s, counter_start=count)
        offline = not self.center_online()
        step = advance(
            s, pt.billing, self.limits, now=self.clock.mono(), count=count,
            balance_fen=self.ledger.balance(s.account), offline=offline,
            offline_spent_fen=self.offline_spent.get((s.card, self._today()), 0),
        )
        try:
            await self._commit_progress(pt, step)
        except StoreError:
            # The store cannot record the charge (disk full): a session that
            # must end still stops the water now; its charge and water.session
            # are recorded once the store recovers (the session is not advanced).
            if step.end is not None:
                await self._close_valve(pt)
            raise
        if step.end is not None:
            await self._end(pt, step.end)

    def _after(self, period_s: float) -> float:
        """The monotonic time `period_s` (+-10 %) from now: points do not poll in lockstep."""
        return self.clock.mono() + period_s * random.uniform(0.9, 1.1)

    def _today(self) -> str:
        return self.clock.local().date().isoformat()

    async def _commit_progress(self, pt: PointRuntime, step: Advance) -> None:
        s, fen, offline_fen = step.session, step.charge_fen, step.offline_fen
        day = self._today()
        record_alarm = self._alarm_job(pt, step.alarm)

        def job(txn: Txn) -> tuple[int, bool] | None:
            if txn.execute(
                "UPDATE water_sessions SET elapsed_s = ?, counter_start = ?, counter_last = ?, "
                "pulses = ?, volume_ml = ?, charged_fen = ?, carry = ? "
                "WHERE point = ? AND session = ?",
                (s.seconds, s.counter_start, s.counter_last, s.pulses, s.volume_ml, s.charged_fen,
                 pricing.carry_to_text(s.carry), pt.id, s.session)).rowcount == 0:
                return None   # ended meanwhile (a stop out of time): charged there
            record_alarm(txn)
            if fen == 0:
                return None
            if offline_fen:
                _spend(txn, s.card, day, offline_fen)
            return Ledger.debit(txn, s.account, fen)

        result = await self.store.run(job)
        pt.session = s
        self._alarm_logged(pt, step.alarm)
        if result is not None:
            self.ledger.note(s.account, *result)
            self._note_spend(s.card, day, offline_fen)

    def _note_spend(self, card: str, day: str, offline_fen: int) -> None:
        if offline_fen:
            key = (card, day)
            self.offline_spent[key] = self.offline_spent.get(key, 0) + offline_fen

    def _alarm_job(self, pt: PointRuntime, alarm: FlowAlarm | None) -> Callable[[Txn], None]:
        """Records a one-off flow meter alarm in the caller's transaction (or nothing)."""
        if alarm is None:
            return lambda txn: None
        wall = self.clock.wall()
        stamp = self.clock.stamp(wall)
        body = wire.Alarm(code=alarm.code, device=flow_device(pt.id), detail=alarm.detail,
                          active=True)

        def job(txn: Txn) -> None:
            txn.event(body, ts=stamp, wall=wall)

        return job

    @staticmethod
    def _alarm_logged(pt: PointRuntime, alarm: FlowAlarm | None) -> None:
        if alarm is not None:
            log.warning(alarm.code, device=flow_device(pt.id), detail=alarm.detail)

    async def _end(self, pt: PointRuntime, reason: EndReason) -> None:
        """Close the valve, charge the rest, record one `water.session` (lock held)."""
        assert pt.session is not None
        await self._close_valve(pt)
        # No read of a flow meter that failed, nor after a close that did (the
        # board is likely dead: its timeouts would eat the stop budget): the
        # session ends now, charged from the last reading.
        count = None if pt.faulty else await self._read_flow(pt)
        await self._finish(pt, reason, count)

    async def _finish(self, pt: PointRuntime, reason: EndReason, count: int | None) -> None:
        """End the session with the valve closed (or failed) and the counter at `count`
        (None: not read): charge the rest, record one `water.session`."""
        s = pt.session
        assert s is not None
        step = advance(s, pt.billing, self.limits, now=self.clock.mono(), count=count,
                       balance_fen=self.ledger.balance(s.account),
                       offline=not self.center_online(), final=True)
        s, fen, offline_fen = step.session, step.charge_fen, step.offline_fen
        record_alarm = self._alarm_job(pt, step.alarm)
        now_wall = self.clock.wall()
        stamp = self.clock.stamp(now_wall)
        day = self._today()
        fields = self._session_fields(s, reason, stamp)

        def job(txn: Txn) -> tuple[int, bool] | None:
            return _record_end(txn, s, fen=fen, offline_fen=offline_fen, day=day, fields=fields,
                               stamp=stamp, wall=now_wall, before=record_alarm)

        result = await asyncio.shield(self.store.run(job))
        pt.session = None
        pt.recovered = False
        if result is None:
            log.info("session_already_ended", point=pt.id, session=s.session)
            return
        self.ledger.note(s.account, *result)
        self._alarm_logged(pt, step.alarm)
        self._note_spend(s.card, day, offline_fen)
        log.info("session_ended", point=pt.id, card=s.card, reason=reason,
                 volume_ml=s.volume_ml, seconds=s.seconds, amount_fen=s.charged_fen)

    def _session_fields(self, s: Session, reason: EndReason, ended: str) -> wire.WaterSession:
        """The `water.session` event of a session ending now, with its whole charge."""
        return wire.WaterSession(
            session=s.session, point=s.point, service=s.service, card=s.card,
            account=s.account, started=self.clock.stamp(s.started_wall), ended=ended,
            volume_ml=s.volume_ml, seconds=s.seconds, amount_fen=s.charged_fen,
            end_reason=reason, offline=s.offline,
        )

    async def _finish_orphan(self, s: Session) -> None:
        """A session row for a point no longer configured: report what was charged."""
        now_wall = self.clock.wall()
        stamp = self.clock.stamp(now_wall)
        fields = self._session_fields(s, EndReason.RESTART, stamp)

        def job(txn: Txn) -> None:
            txn.event(fields, ts=stamp, wall=now_wall)
            txn.execute("DELETE FROM water_sessions WHERE point = ?", (s.point,))

        await self.store.run(job)

    # --- valves -------------------------------------------------------------------

    async def _close_valve(self, pt: PointRuntime) -> bool:
        """Command the valve closed: True once it obeyed (a fault is cleared)."""
        try:
            await pt.valve.set(False)
        except DeviceError as e:
            await self._valve_failed(pt, f"commanded closed: {e.message}")
            return False
        pt.backoff.reset()
        pt.fault_log.ok()
        if pt.fault is not None:
            pt.fault = None
            await self.alarms.report(AlarmCode.VALVE_FAULT, valve_device(pt.id), "", False)
        return True

    async def _valve_failed(self, pt: PointRuntime, detail: str) -> None:
        """The valve did not obey or answer: the point refuses taps, and its loop
        commands the valve closed again once the back-off allows (never at
        once: a dead board fails at once, and that would be a busy loop)."""
        pt.fault = detail
        pt.retry_at = self.clock.mono() + pt.backoff.next_delay()
        pt.fault_log.failed(detail=detail)
        await self.alarms.report(AlarmCode.VALVE_FAULT, valve_device(pt.id), detail, True)
        pt.wake.set()  # the loop recomputes its wait (the retry may be sooner than its sleep)

    # --- for commands and status --------------------------------------------------

    async def balance_changed(self, account: str) -> None:
        """Nothing to do at once: open sessions read the balance every tick."""
        return

    def tariff_problem(self, service: str, unit: str) -> str | None:
        """Why a tariff cannot apply here (a per-litre price needs flow meters)."""
        if unit != "L":
            return None
        blind = [p.id for p in self.points.values() if p.cfg.service == service and p.flow is None]
        if blind:
            return f"points without a flow meter cannot be billed per litre: {', '.join(blind)}"
        return None

    def set_tariff(self, service: str, price: Decimal, unit: str) -> None:
        """A new price from now on, open sessions included (their carry is kept)."""
        for pt in self.points.values():
            if pt.cfg.service == service:
                pt.billing = billing_for(price, unit, pt.billing.ml_per_pulse,
                                         pt.billing.counter_bits)

    def describe(self, pt: PointRuntime) -> dict[str, Any]:
        s = pt.session
        return {
            "point": pt.id, "service": pt.cfg.service, "state": pt.state,
            "card": None if s is None else s.card,
            "volume_ml": None if s is None else s.volume_ml,
            "seconds": None if s is None else s.seconds,
            "amount_fen": None if s is None else s.charged_fen,
            "offline": None if s is None else s.offline,
            "fault": pt.fault if pt.fault is not None else (
                None if pt.flow_offline is None else f"flow meter: {pt.flow_offline}"),
        }


def _record_end(txn: Txn, s: Session, *, fen: int, offline_fen: int, day: str,
                fields: wire.WaterSession, stamp: str, wall: float,
                before: Callable[[Txn], None] | None = None) -> tuple[int, bool] | None:
    """A session's end in the store: its row gone, the rest charged, one
    `water.session`. Once only: an end whose waiter was cancelled (a stop out
    of time) may have committed already; then nothing (None)."""
    if txn.execute("DELETE FROM water_sessions WHERE point = ? AND session = ?",
                   (s.point, s.session)).rowcount == 0:
        return None
    if before is not None:
        before(txn)
    if offline_fen:
        _spend(txn, s.card, day, offline_fen)
    result = Ledger.debit(txn, s.account, fen)
    txn.event(fields, ts=stamp, wall=wall)
    return result


def _spend(txn: Txn, card: str, day: str, fen: int) -> None:
    txn.execute(
        "INSERT INTO offline_spend (card, day, fen) VALUES (?, ?, ?) "
        "ON CONFLICT (card, day) DO UPDATE SET fen = fen + excluded.fen", (card, day, fen))
