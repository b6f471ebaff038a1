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
- A reader, valve or flow meter failing affects only its point.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal
from typing import Any

import structlog

from drivers.devices import CardReader, Counter, DeviceError, Switch, Tap
from gatewayd import pricing
from gatewayd.alarms import Alarms
from gatewayd.cards import Cards
from gatewayd.clock import Clock
from gatewayd.config import Config, Point
from gatewayd.ledger import Ledger
from gatewayd.store import Store, StoreError, Txn
from gatewayd.supervisor import Heartbeat
from gatewayd.water_policy import (
    Billing,
    Limits,
    Session,
    TapFacts,
    advance,
    billing_for,
    check_tap,
)

log = structlog.get_logger(__name__)

# A closed valve that failed to close is commanded again this often.
VALVE_RETRY_S = 5.0
# Consecutive flow meter failures that end a session with `fault`.
FLOW_FAILURES_FAULT = 3


def valve_device(point: str) -> str:
    return f"valve:{point}"


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
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def id(self) -> str:
        return self.cfg.id

    @property
    def state(self) -> str:
        if self.fault is not None:
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
            tariff = getattr(config.tariffs, p.service)
            valve, flow = devices[p.id]
            bits = getattr(flow, "bits", 32) if flow is not None else 32
            ml = p.flow.ml_per_pulse if p.flow is not None else Decimal(0)
            self.points[p.id] = PointRuntime(
                p, valve, flow, billing_for(tariff.price, tariff.unit, ml, bits))
        self.by_reader = {p.reader: self.points[p.id] for p in config.points}
        self.accepting = False
        self.offline_spent: dict[tuple[str, str], int] = {}
        self.taps = 0

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Close every valve, then end and charge sessions a crash left open."""
        await asyncio.gather(*(self._close_valve(pt) for pt in self.points.values()))
        rows = await self.store.read(lambda t: t.execute(
            "SELECT point, session, card, account, service, offline, started, elapsed_s, "
            "counter_start, counter_last, pulses, volume_ml, charged_fen, carry "
            "FROM water_sessions"
        ).fetchall())
        today = self.clock.local().date().isoformat()
        spent = await self.store.read(lambda t: t.execute(
            "SELECT card, day, fen FROM offline_spend WHERE day = ?", (today,)).fetchall())
        self.offline_spent = {(card, day): fen for card, day, fen in spent}
        now_mono, now_wall = self.clock.mono(), self.clock.wall()
        for row in rows:
            (point, sid, card, account, service, offline, started, charged_s, c_start, c_last,
             pulses, volume, charged, carry) = row
            pt = self.points.get(point)
            # Time until this restart (the wall clock is all that survives a
            # reboot), capped at the longest a session may run.
            elapsed = min(max(now_wall - started, 0.0), self.limits.max_session_s)
            session = Session(
                session=sid, point=point, card=card, account=account, service=service,
                offline=bool(offline), started_wall=started, started_mono=now_mono - elapsed,
                counter_start=c_start, counter_last=c_last, pulses=pulses, volume_ml=volume,
                seconds=int(charged_s), charged_fen=charged, carry=pricing.carry_from_text(carry),
                last_flow_mono=now_mono,
            )
            if pt is None:
                log.warning("session_for_unknown_point", point=point, session=sid)
                await self._finish_orphan(session)
                continue
            pt.session = session
            await self._end(pt, "restart")
        self.accepting = True
        log.info("water_started", points=len(self.points), readers=len(self.readers),
                 recovered=len(rows))

    async def run(self, heartbeat: Heartbeat) -> None:
        async with asyncio.TaskGroup() as tg:
            for reader in self.readers.values():
                tg.create_task(self._reader(reader), name=f"reader-{reader.name}")
            for pt in self.points.values():
                tg.create_task(self._point_loop(pt), name=f"point-{pt.id}")
            while True:
                heartbeat.beat()
                await asyncio.sleep(1.0)

    async def shutdown(self) -> None:
        """Stop taking taps; close every valve and end its session (`shutdown`)."""
        self.accepting = False
        await asyncio.gather(*(self._shutdown_point(pt) for pt in self.points.values()))

    async def _shutdown_point(self, pt: PointRuntime) -> None:
        async with pt.lock:
            if pt.session is not None:
                await self._end(pt, "shutdown")

    # --- readers ------------------------------------------------------------------

    async def _reader(self, reader: CardReader) -> None:
        device = reader_device(reader.name)

        def status(online: bool, detail: str) -> None:
            self.alarms.report_soon("reader_offline", device, detail, not online)

        await reader.run(self.on_tap, status)

    async def on_tap(self, tap: Tap) -> None:
        """A card at a reader: start, stop or refuse, with one `tap` event."""
        self.taps += 1
        pt = self.by_reader.get(tap.reader)
        if pt is None:
            await self._tap_event(tap, None, granted=False, reason="no_point")
            return
        if not self.accepting:
            return  # stopping: the valves are being closed
        async with pt.lock:
            if pt.session is not None:
                if pt.session.card == tap.uid:
                    await self._tap_event(tap, pt.id, granted=True, reason="stop")
                    await self._end(pt, "tap")
                else:
                    await self._tap_event(tap, pt.id, granted=False, reason="busy")
                return
            if pt.fault is not None:
                await self._tap_event(tap, pt.id, granted=False, reason="fault")
                return
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
        )

    async def _open(self, pt: PointRuntime, tap: Tap) -> None:
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
            service=pt.cfg.service, offline=offline, started_wall=now_wall, started_mono=now,
            last_flow_mono=now,
        )
        stamp = self.clock.stamp(now_wall)

        def job(txn: Txn) -> None:
            txn.execute(
                "INSERT INTO water_sessions (point, session, card, account, service, offline, "
                "started) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (pt.id, session.session, session.card, session.account, session.service,
                 int(offline), now_wall))
            txn.event("tap", {"reader": tap.reader, "card": tap.uid, "point": pt.id,
                              "granted": True, "reason": "start"}, ts=stamp, wall=now_wall)

        await self.store.run(job)
        pt.session = session
        try:
            await pt.valve.set(True)
        except DeviceError as e:
            await self._valve_failed(pt, f"commanded open: {e.message}")
            await self._end(pt, "fault")
            return
        log.info("session_started", point=pt.id, card=card.uid, session=session.session,
                 offline=offline, latency_ms=round((time.monotonic() - tap.mono) * 1000, 1))
        pt.wake.set()  # take the counter's baseline now

    async def _tap_event(self, tap: Tap, point: str | None, *, granted: bool, reason: str) -> None:
        now_wall = self.clock.wall()
        stamp = self.clock.stamp(now_wall)
        if not granted:
            log.info("tap_refused", reader=tap.reader, card=tap.uid, point=point, reason=reason)
        await self.store.run(lambda txn: txn.event(
            "tap", {"reader": tap.reader, "card": tap.uid, "point": point, "granted": granted,
                    "reason": reason}, ts=stamp, wall=now_wall))

    # --- sessions -----------------------------------------------------------------

    async def _point_loop(self, pt: PointRuntime) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s if pt.session or pt.fault else 3600):
                    await pt.wake.wait()
            pt.wake.clear()
            try:
                async with pt.lock:
                    if pt.session is not None:
                        await self._tick(pt)
                    elif pt.fault is not None:
                        await self._close_valve(pt)
            except Exception:
                log.exception("point_loop_failed", point=pt.id)
                await asyncio.sleep(VALVE_RETRY_S)

    async def _read_flow(self, pt: PointRuntime) -> int | None:
        if pt.flow is None:
            return None
        try:
            count = await pt.flow.read()
        except DeviceError:
            pt.flow_failures += 1
            return None
        pt.flow_failures = 0
        return count

    async def _tick(self, pt: PointRuntime) -> None:
        s = pt.session
        assert s is not None
        count = await self._read_flow(pt)
        if pt.flow is not None and pt.flow_failures >= FLOW_FAILURES_FAULT:
            await self._end(pt, "fault")
            return
        if s.counter_start is None and count is not None:
            s = replace(s, counter_start=count)
        step = advance(
            s, pt.billing, self.limits, now=self.clock.mono(), count=count,
            balance_fen=self.ledger.balance(s.account),
            offline_spent_fen=self.offline_spent.get((s.card, self._today()), 0),
        )
        try:
            await self._commit_progress(pt, step.session, step.charge_fen)
        except StoreError:
            # The store cannot record the charge (disk full): a session that
            # must end still stops the water now; its charge and water.session
            # are recorded once the store recovers (the session is not advanced).
            if step.end is not None:
                await self._close_valve(pt)
            raise
        if step.end is not None:
            await self._end(pt, step.end)

    def _today(self) -> str:
        return self.clock.local().date().isoformat()

    async def _commit_progress(self, pt: PointRuntime, s: Session, fen: int) -> None:
        day = self._today()

        def job(txn: Txn) -> tuple[int, bool] | None:
            txn.execute(
                "UPDATE water_sessions SET elapsed_s = ?, counter_start = ?, counter_last = ?, "
                "pulses = ?, volume_ml = ?, charged_fen = ?, carry = ? "
                "WHERE point = ? AND session = ?",
                (s.seconds, s.counter_start, s.counter_last, s.pulses, s.volume_ml, s.charged_fen,
                 pricing.carry_to_text(s.carry), pt.id, s.session))
            if fen == 0:
                return None
            if s.offline:
                _spend(txn, s.card, day, fen)
            return Ledger.debit(txn, s.account, fen)

        result = await self.store.run(job)
        pt.session = s
        if result is not None:
            self.ledger.note(s.account, *result)
            if s.offline:
                key = (s.card, day)
                self.offline_spent[key] = self.offline_spent.get(key, 0) + fen

    async def _end(self, pt: PointRuntime, reason: str) -> None:
        """Close the valve, charge the rest, record one `water.session` (lock held)."""
        s = pt.session
        assert s is not None
        await self._close_valve(pt)
        count = await self._read_flow(pt) if pt.fault is None or reason != "fault" else None
        step = advance(s, pt.billing, self.limits, now=self.clock.mono(), count=count,
                       balance_fen=self.ledger.balance(s.account), final=True)
        s, fen = step.session, step.charge_fen
        now_wall = self.clock.wall()
        stamp = self.clock.stamp(now_wall)
        day = self._today()
        fields = self._session_fields(s, reason, stamp)

        def job(txn: Txn) -> tuple[int, bool]:
            if fen and s.offline:
                _spend(txn, s.card, day, fen)
            result = Ledger.debit(txn, s.account, fen)
            txn.event("water.session", fields, ts=stamp, wall=now_wall)
            txn.execute("DELETE FROM water_sessions WHERE point = ? AND session = ?",
                        (s.point, s.session))
            return result

        result = await asyncio.shield(self.store.run(job))
        self.ledger.note(s.account, *result)
        if fen and s.offline:
            key = (s.card, day)
            self.offline_spent[key] = self.offline_spent.get(key, 0) + fen
        pt.session = None
        log.info("session_ended", point=pt.id, card=s.card, reason=reason,
                 volume_ml=s.volume_ml, seconds=s.seconds, amount_fen=s.charged_fen)

    def _session_fields(self, s: Session, reason: str, ended: str) -> dict[str, Any]:
        """The `water.session` event of a session ending now, with its whole charge."""
        return {
            "session": s.session, "point": s.point, "service": s.service, "card": s.card,
            "account": s.account, "started": self.clock.stamp(s.started_wall), "ended": ended,
            "volume_ml": s.volume_ml, "seconds": s.seconds, "amount_fen": s.charged_fen,
            "end_reason": reason, "offline": s.offline,
        }

    async def _finish_orphan(self, s: Session) -> None:
        """A session row for a point no longer configured: report what was charged."""
        now_wall = self.clock.wall()
        stamp = self.clock.stamp(now_wall)
        fields = self._session_fields(s, "restart", stamp)

        def job(txn: Txn) -> None:
            txn.event("water.session", fields, ts=stamp, wall=now_wall)
            txn.execute("DELETE FROM water_sessions WHERE point = ?", (s.point,))

        await self.store.run(job)

    # --- valves -------------------------------------------------------------------

    async def _close_valve(self, pt: PointRuntime) -> None:
        try:
            await pt.valve.set(False)
        except DeviceError as e:
            await self._valve_failed(pt, f"commanded closed: {e.message}")
            return
        if pt.fault is not None:
            pt.fault = None
            await self.alarms.report("valve_fault", valve_device(pt.id), "", False)

    async def _valve_failed(self, pt: PointRuntime, detail: str) -> None:
        pt.fault = detail
        log.error("valve_fault", point=pt.id, detail=detail)
        await self.alarms.report("valve_fault", valve_device(pt.id), detail, True)
        pt.wake.set()

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
            "fault": pt.fault,
        }

    def open_charges(self, account: str) -> int:
        """Fen charged by open sessions of `account` (debited, not yet reported)."""
        return sum(p.session.charged_fen for p in self.points.values()
                   if p.session is not None and p.session.account == account)


def _spend(txn: Txn, card: str, day: str, fen: int) -> None:
    txn.execute(
        "INSERT INTO offline_spend (card, day, fen) VALUES (?, ?, ?) "
        "ON CONFLICT (card, day) DO UPDATE SET fen = fen + excluded.fen", (card, day, fen))
