"""A room's record in the store: its state loaded at start, each outcome of the
rules committed in one transaction, and the cuts carried out while the store
could not record them.

Contract: an outcome's charge, its events, the room's state and its
`switch_pending` (and a command's result, `also`) commit together or not at
all; the ledger's mirror and the room's runtime change only after the commit.
An outcome that changes nothing worth writing (`store.rooms.change_key`) is
not written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import structlog

from gatewayd.contract.events import (
    Alarm,
    BalanceLow,
    BreakerCut,
    BreakerRestored,
    EventBody,
    PowerUsage,
    meter_device,
)
from gatewayd.rules.power import (
    BalanceFell,
    Charge,
    Cut,
    Decision,
    MeterAlarm,
    Outcome,
    Report,
    Restore,
    RoomState,
)
from gatewayd.services.clock import Clock
from gatewayd.services.power.room import RoomRuntime
from gatewayd.store import rooms as rooms_table
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger
from gatewayd.store.txn import Txn

log = structlog.get_logger(__name__)

# A command's own writes, in the transaction of the decision it asked for.
Also = Callable[[Txn, RoomState], None]


def _charge(txn: Txn, account: str, decisions: Sequence[Decision]) -> tuple[int, bool]:
    """Debit the outcome's charges (when it charges or reports); the account's
    balance and whether the center knows it."""
    charged = sum(d.fen for d in decisions if isinstance(d, Charge))
    if charged or any(isinstance(d, Report) for d in decisions):
        return Ledger.debit(txn, account, charged)
    current = Ledger.read(txn, account)
    return current if current is not None else (0, False)


def _event(d: Decision, room: str, account: str, balance: int) -> EventBody | None:
    """The event a decision is recorded as (a charge has none: its report does)."""
    if isinstance(d, Report):
        return PowerUsage(room=room, account=account, wh=d.wh, amount_fen=d.fen,
                               meter_wh_from=d.meter_wh_from, meter_wh_to=d.meter_wh_to,
                               balance_fen=balance)
    if isinstance(d, Cut):
        return BreakerCut(room=room, reason=d.reason, power_w=d.power_w)
    if isinstance(d, Restore):
        return BreakerRestored(room=room, reason=d.reason)
    if isinstance(d, BalanceFell):
        return BalanceLow(account=account, balance_fen=balance)
    if isinstance(d, MeterAlarm):
        return Alarm(code=d.code, device=meter_device(room), detail=d.detail, active=d.active)
    return None


class Recorder:
    """Loads and commits the rooms' state for the power service."""

    def __init__(self, store: Store, ledger: Ledger, clock: Clock) -> None:
        self.store = store
        self.ledger = ledger
        self.clock = clock

    async def load(self, rooms: Mapping[str, RoomRuntime]) -> None:
        """Each room's stored state, its timers on this boot's clock."""
        stored = await self.store.read(rooms_table.load)
        now_mono, now_wall = self.clock.mono(), self.clock.wall()
        for s in stored:
            rt = rooms.get(s.room)
            if rt is None:
                continue  # a room removed from the config keeps its row for the record
            rt.switch_pending = s.switch_pending
            rt.state = rooms_table.decode(s.row, rt.cfg.rules, now_mono, now_wall)
            rt.persisted = rooms_table.change_key(rooms_table.encode(rt.state, now_mono, now_wall))

    async def commit(self, rt: RoomRuntime, out: Outcome,
                     extra_alarms: list[Alarm] | None = None, also: Also | None = None) -> None:
        """Record the outcome's charge, events and room state in one transaction
        (with `also`, e.g. a command's result, in the same one)."""
        now_mono, now_wall = self.clock.mono(), self.clock.wall()
        row = rooms_table.encode(out.state, now_mono, now_wall)
        key = rooms_table.change_key(row)
        if (not out.decisions and not extra_alarms and also is None and key == rt.persisted
                and not rt.unrecorded):
            rt.state = out.state
            return
        account = rt.cfg.account
        stamp = self.clock.stamp(now_wall)
        room = rt.id
        switching = any(isinstance(d, Cut | Restore) for d in out.decisions) or bool(rt.unrecorded)
        unrecorded = list(rt.unrecorded)

        def job(txn: Txn) -> tuple[int, bool]:
            for cut, cut_stamp, cut_wall in unrecorded:  # carried out while the disk was full
                txn.event(BreakerCut(room=room, reason=cut.reason, power_w=cut.power_w),
                          ts=cut_stamp, wall=cut_wall)
            balance, known = _charge(txn, account, out.decisions)
            for d in out.decisions:
                body = _event(d, room, account, balance)
                if body is not None:
                    txn.event(body, ts=stamp, wall=now_wall)
                if isinstance(d, MeterAlarm):
                    log.warning(d.code, room=room, detail=d.note or d.detail)
            for alarm in extra_alarms or ():
                txn.event(alarm, ts=stamp, wall=now_wall)
            rooms_table.save(txn, room, row)
            if switching:
                rooms_table.set_switch_pending(txn, room, True)
            if also is not None:
                also(txn, out.state)
            return balance, known

        balance, known = await self.store.run(job)
        self.ledger.note(account, balance, known)
        del rt.unrecorded[:len(unrecorded)]
        rt.state = out.state
        rt.persisted = key
        rt.switch_pending = rt.switch_pending or switching
        for d in out.decisions:
            if isinstance(d, Cut | Restore):
                log.info("breaker_cut" if isinstance(d, Cut) else "breaker_restored",
                         room=room, reason=d.reason)

    async def switch_done(self, rt: RoomRuntime) -> None:
        """The breaker follows the recorded decision: nothing left to finish."""
        await self.store.run(lambda t: rooms_table.set_switch_pending(t, rt.id, False))
        rt.switch_pending = False

    def keep_unrecorded(self, rt: RoomRuntime, out: Outcome) -> None:
        """Take the protective part of an outcome the store refused: its cuts, kept
        for the next commit, and the timers; the money stays where it was (see
        `RoomRunner.carry_out`)."""
        old, new = rt.state, out.state
        cuts = [d for d in out.decisions if isinstance(d, Cut)]
        if any(isinstance(d, Restore) for d in out.decisions):
            return  # stays cut until the restore can be recorded
        if cuts:
            now_wall = self.clock.wall()
            stamp = self.clock.stamp(now_wall)
            rt.unrecorded += [(d, stamp, now_wall) for d in cuts]
            rt.state = replace(new, baseline_wh=old.baseline_wh, baseline_at=old.baseline_at,
                               carry=old.carry, accrued_wh=old.accrued_wh,
                               accrued_fen=old.accrued_fen, chain_from_wh=old.chain_from_wh,
                               accrued_since=old.accrued_since, low_sent=old.low_sent)
        else:
            rt.state = replace(old, over_since=new.over_since, last_power_w=new.last_power_w,
                               offline_since=new.offline_since)
