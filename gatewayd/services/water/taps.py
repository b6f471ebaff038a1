"""How a tap at a closed point is answered: a session started, or the tap refused.

- The answer comes from memory (cards, balances, offline spend): no store
  read on the way to the valve.
- A granted tap's session row and its `tap` event commit before the valve
  opens, so that a crash at any moment leaves a session the next start can
  charge; a valve that does not open ends the session at once (`fault`).
- Every refusal is a `tap` event, unless its reader is flooded: past
  `gateway.refused_taps_per_min` in a minute, its refusals are folded into
  one counted `tap` event per reason a minute and `reader_flood` is raised
  (gatewayd/rules/reader_flood.py). A folded refusal costs no store write.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import date

import structlog

from drivers.protocols import CardTap
from gatewayd.config.model import WaterRules
from gatewayd.contract.enums import AlarmCode, EndReason, TapReason, WaterUse
from gatewayd.contract.events import Tap, reader_device
from gatewayd.errors import StoreError
from gatewayd.rules.reader_flood import Outcome, RefusalFolder
from gatewayd.rules.water import Session, TapFacts, check_tap
from gatewayd.services.alarms import Alarms
from gatewayd.services.clock import Clock
from gatewayd.services.water.point import PointRuntime
from gatewayd.services.water.point_devices import PointDevices
from gatewayd.services.water.point_loop import PointLoop
from gatewayd.store import water_sessions
from gatewayd.store.cards import Cards
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger
from gatewayd.store.offline_spend import OfflineSpend
from gatewayd.store.txn import Txn

log = structlog.get_logger(__name__)


class TapAnswers:
    """Starts sessions and records `tap` events (refusals folded past the flood limit)."""

    def __init__(self, policy: WaterRules, store: Store, *, cards: Cards, ledger: Ledger,
                 offline_spend: OfflineSpend, alarms: Alarms, clock: Clock,
                 center_online: Callable[[], bool], devices: PointDevices,
                 point_loop: PointLoop, refusals: RefusalFolder) -> None:
        self.policy = policy
        self.store = store
        self.cards = cards
        self.ledger = ledger
        self.offline_spend = offline_spend
        self.alarms = alarms
        self.clock = clock
        self.center_online = center_online
        self.devices = devices
        self.point_loop = point_loop
        self.refusals = refusals

    async def start(self, pt: PointRuntime, tap: CardTap) -> None:
        """Start a session at the point, or refuse the tap (point's lock held)."""
        now_wall = self.clock.wall()
        today = self.clock.local(now_wall).date()
        offline = not self.center_online()
        facts = self._facts(pt, tap.uid, today, offline)
        reason = check_tap(facts)
        if reason is not None:
            await self.record(tap, pt.id, granted=False, reason=reason)
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
            water_sessions.insert(txn, session)
            txn.event(Tap(reader=tap.reader, card=tap.uid, point=pt.id, granted=True,
                               reason=TapReason.START), ts=stamp, wall=now_wall)

        await self.store.run(job)
        pt.session = session
        if not await self.devices.open_valve(pt):
            await self.point_loop.end(pt, EndReason.FAULT)
            return
        log.info("session_started", point=pt.id, card=card.uid, session=session.session,
                 offline=offline, latency_ms=round((time.monotonic() - tap.mono) * 1000, 1))
        pt.wake.set()  # take the counter's baseline now

    def _facts(self, pt: PointRuntime, uid: str, today: date, offline: bool) -> TapFacts:
        card = self.cards.get(uid)
        account = card.account if card else ""
        w = self.policy
        return TapFacts(
            card=card, kinds=pt.cfg.kinds, today=today,
            balance_fen=self.ledger.balance(account), account_known=self.ledger.is_known(account),
            min_balance_fen=w.min_balance_fen, step_fen=w.step_fen, offline=offline,
            offline_spent_fen=self.offline_spend.of(uid, today.isoformat()),
            offline_limit_fen=w.offline_limit_fen,
            busy=pt.session is not None, fault=pt.faulty,
        )

    async def record(self, tap: CardTap, point: str | None, *, granted: bool,
                     reason: TapReason) -> None:
        """One `tap` event, or a refusal folded into its reader's count."""
        if not granted:
            out = self.refusals.refuse(tap.reader, tap.uid, point, reason, self.clock.mono())
            await self.folded(out)
            if not out.record:
                log.debug("tap_refused_folded", reader=tap.reader, card=tap.uid, reason=reason)
                return
            log.info("tap_refused", reader=tap.reader, card=tap.uid, point=point, reason=reason)
        now_wall = self.clock.wall()
        stamp = self.clock.stamp(now_wall)
        await self.store.run(lambda txn: txn.event(
            Tap(reader=tap.reader, card=tap.uid, point=point, granted=granted, reason=reason),
            ts=stamp, wall=now_wall))

    async def folded(self, out: Outcome) -> None:
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
                txn.event(Tap(reader=f.reader, card=f.card, point=f.point, granted=False,
                                   reason=f.reason, count=f.count), ts=stamp, wall=now_wall)

        for f in out.folds:
            log.warning("tap_refusals_folded", reader=f.reader, reason=f.reason, count=f.count)
        try:
            await self.store.run(job)
        except StoreError as e:
            log.error("tap_refusals_not_recorded", error=str(e),
                      count=sum(f.count for f in out.folds))
