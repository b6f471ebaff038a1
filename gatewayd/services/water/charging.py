"""A water session's money: charged as it runs, the rest charged at its end, once.

- Progress: each charge commits in one transaction with the session's row
  (and any flow meter alarm the rules raised with it), so that a crash loses
  none of it; a session whose row is gone ended meanwhile and was charged there.
- End: the row goes, the rest is debited and one `water.session` carries the
  whole charge, in one transaction, once only (`_record_end`): an end whose
  waiter was cancelled (a stop out of time) may have committed already.
- Charges made while the center is unreachable count toward the card's
  offline day limit (`OfflineSpend`), whenever the session started.
- The mirrors (ledger, offline spend) follow each commit, never lead it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import replace

import structlog

from gatewayd.contract.enums import EndReason
from gatewayd.contract.events import Alarm, WaterSession, flow_device
from gatewayd.rules.water import Advance, Billing, FlowAlarm, Limits, Session, advance
from gatewayd.services.clock import Clock
from gatewayd.services.water.point import PointRuntime
from gatewayd.store import water_sessions
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger
from gatewayd.store.offline_spend import OfflineSpend
from gatewayd.store.txn import Txn

log = structlog.get_logger(__name__)


class Charging:
    """Charges open sessions into the store and ends them there."""

    def __init__(self, store: Store, *, ledger: Ledger, offline_spend: OfflineSpend,
                 clock: Clock, limits: Limits, center_online: Callable[[], bool]) -> None:
        self.store = store
        self.ledger = ledger
        self.offline_spend = offline_spend
        self.clock = clock
        self.limits = limits
        self.center_online = center_online

    def today(self) -> str:
        return self.clock.local().date().isoformat()

    def step(self, pt: PointRuntime, count: int | None) -> Advance:
        """The point's open session charged up to now, the counter at `count` (None: not read)."""
        s = pt.session
        assert s is not None
        if s.counter_start is None and count is not None:
            s = replace(s, counter_start=count)
        offline = not self.center_online()
        return advance(
            s, pt.billing, self.limits, now=self.clock.mono(), count=count,
            balance_fen=self.ledger.balance(s.account), offline=offline,
            offline_spent_fen=self.offline_spend.of(s.card, self.today()),
        )

    async def commit(self, pt: PointRuntime, step: Advance) -> None:
        """Record a progress `step` of the point's session (`pt.session` becomes its session)."""
        s, fen, offline_fen = step.session, step.charge_fen, step.offline_fen
        day = self.today()
        record_alarm = self._alarm_job(pt, step.alarm)

        def job(txn: Txn) -> tuple[int, bool] | None:
            if not water_sessions.save_progress(txn, s):
                return None   # ended meanwhile (a stop out of time): charged there
            record_alarm(txn)
            if fen == 0:
                return None
            if offline_fen:
                OfflineSpend.add(txn, s.card, day, offline_fen)
            return Ledger.debit(txn, s.account, fen)

        result = await self.store.run(job)
        pt.session = s
        _alarm_logged(pt, step.alarm)
        if result is not None:
            self.ledger.note(s.account, *result)
            self.offline_spend.note(s.card, day, offline_fen)

    async def finish(self, pt: PointRuntime, reason: EndReason, count: int | None) -> None:
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
        day = self.today()
        event = self.session_event(s, reason, stamp)

        def job(txn: Txn) -> tuple[int, bool] | None:
            return _record_end(txn, s, fen=fen, offline_fen=offline_fen, day=day, event=event,
                               stamp=stamp, wall=now_wall, before=record_alarm)

        result = await asyncio.shield(self.store.run(job))
        pt.session = None
        pt.recovered = False
        if result is None:
            log.info("session_already_ended", point=pt.id, session=s.session)
            return
        self.ledger.note(s.account, *result)
        _alarm_logged(pt, step.alarm)
        self.offline_spend.note(s.card, day, offline_fen)
        log.info("session_ended", point=pt.id, card=s.card, reason=reason,
                 volume_ml=s.volume_ml, seconds=s.seconds, amount_fen=s.charged_fen)

    async def end_in_store(self, billing: Mapping[str, Billing],
                           own: set[str]) -> list[tuple[Session, EndReason]]:
        """End every session the store holds open for a point in `billing`, from its
        row alone (what its last committed reading measured; time billing up to
        now), in one transaction that reads the rows: `shutdown` for the
        sessions in `own`, `restart` for a crash's. Returns those ended."""
        now_mono, now_wall = self.clock.mono(), self.clock.wall()
        stamp = self.clock.stamp(now_wall)
        day = self.today()
        offline = not self.center_online()

        def job(txn: Txn) -> list[tuple[Session, int, bool, EndReason]]:
            ended = []
            for row in water_sessions.open_sessions(txn, now_mono=now_mono, now_wall=now_wall,
                                                    max_session_s=self.limits.max_session_s):
                if row.point not in billing:
                    continue   # not this configuration's: the next start reports it
                reason = EndReason.SHUTDOWN if row.session in own else EndReason.RESTART
                step = advance(row, billing[row.point], self.limits, now=now_mono, count=None,
                               balance_fen=0, offline=offline, final=True)
                s = step.session
                result = _record_end(txn, s, fen=step.charge_fen, offline_fen=step.offline_fen,
                                     day=day, event=self.session_event(s, reason, stamp),
                                     stamp=stamp, wall=now_wall)
                assert result is not None   # its row was just read, in this transaction
                ended.append((s, *result, reason))
            return ended

        out = []
        for s, balance, known, reason in await self.store.run(job):
            self.ledger.note(s.account, balance, known)
            out.append((s, reason))
        return out

    async def finish_orphan(self, s: Session) -> None:
        """A session row for a point no longer configured: report what was charged."""
        now_wall = self.clock.wall()
        stamp = self.clock.stamp(now_wall)
        event = self.session_event(s, EndReason.RESTART, stamp)

        def job(txn: Txn) -> None:
            txn.event(event, ts=stamp, wall=now_wall)
            water_sessions.delete_point(txn, s.point)

        await self.store.run(job)

    def session_event(self, s: Session, reason: EndReason, ended: str) -> WaterSession:
        """The `water.session` event of a session ending now, with its whole charge."""
        return WaterSession(
            session=s.session, point=s.point, service=s.service, card=s.card,
            account=s.account, started=self.clock.stamp(s.started_wall), ended=ended,
            volume_ml=s.volume_ml, seconds=s.seconds, amount_fen=s.charged_fen,
            end_reason=reason, offline=s.offline,
        )

    def _alarm_job(self, pt: PointRuntime, alarm: FlowAlarm | None) -> Callable[[Txn], None]:
        """Records a one-off flow meter alarm in the caller's transaction (or nothing)."""
        if alarm is None:
            return lambda txn: None
        wall = self.clock.wall()
        stamp = self.clock.stamp(wall)
        body = Alarm(code=alarm.code, device=flow_device(pt.id), detail=alarm.detail,
                          active=True)

        def job(txn: Txn) -> None:
            txn.event(body, ts=stamp, wall=wall)

        return job


def _alarm_logged(pt: PointRuntime, alarm: FlowAlarm | None) -> None:
    if alarm is not None:
        log.warning(alarm.code, device=flow_device(pt.id), detail=alarm.detail)


def _record_end(txn: Txn, s: Session, *, fen: int, offline_fen: int, day: str,
               event: WaterSession, stamp: str, wall: float,
               before: Callable[[Txn], None] | None = None) -> tuple[int, bool] | None:
    """A session's end in the store: its row gone, the rest charged, one
    `water.session`. Once only: an end whose waiter was cancelled (a stop out
    of time) may have committed already; then nothing (None)."""
    if not water_sessions.delete(txn, s):
        return None
    if before is not None:
        before(txn)
    if offline_fen:
        OfflineSpend.add(txn, s.card, day, offline_fen)
    result = Ledger.debit(txn, s.account, fen)
    txn.event(event, ts=stamp, wall=wall)
    return result
