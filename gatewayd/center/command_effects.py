"""What each accepted command does (center-link.md "Commands"), by family.

Contract:
- `carry_out(ctx, cmd)` applies one accepted, fresh, not yet seen command:
  the ledger, card, tariff or room change it asks for, the event it causes
  and its result (`ctx.remember`) commit in one store job; the in-memory
  mirrors (ledger, cards, tariffs) are updated only after that commit.
- A command that cannot be applied raises `Refused` before anything is
  written (no such card or room, a conflict); the caller records that.
- `ctx` is the command handler (`gatewayd.center.apply.CommandService`):
  this module holds no state of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import msgspec

from gatewayd.config.model import Config
from gatewayd.contract import command_types as ct
from gatewayd.contract.command_types import ParsedCommand
from gatewayd.contract.enums import CardKind, CardStatus, ErrorCode
from gatewayd.contract.events import AccountCredited
from gatewayd.contract.results import (
    AccountSnapshot,
    AccountStateResult,
    CardResult,
    CardsLoadResult,
    CardSnapshot,
    CardStateResult,
    CardStatusResult,
    CreditResult,
    EmptyResult,
    ResendResult,
    RoomLimitResult,
    RoomResult,
    RoomSnapshot,
    RoomStateResult,
    SyncResult,
    TariffResult,
)
from gatewayd.contract.wire import encode_result_ok
from gatewayd.errors import Refused
from gatewayd.rules.ledger import balance_problem, synced_balance
from gatewayd.rules.power import RoomState
from gatewayd.rules.water import Card
from gatewayd.services.clock import Clock
from gatewayd.services.power.service import PowerService
from gatewayd.services.water.service import WaterService
from gatewayd.store import meta, outbox
from gatewayd.store.cards import Cards
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger
from gatewayd.store.txn import Txn


class CommandContext(Protocol):
    """What carrying out a command needs from the handler."""

    config: Config
    store: Store
    clock: Clock
    ledger: Ledger
    cards: Cards
    power: PowerService
    water: WaterService
    status: Callable[[], Awaitable[dict[str, Any]]] | None

    def remember(self, cmd: ParsedCommand, result: bytes) -> Callable[[Txn], None]:
        """The store step that records `cmd` as handled with `result`."""
        ...


async def carry_out(ctx: CommandContext, cmd: ParsedCommand) -> None:
    """Apply `cmd` and record its result; raises Refused when it cannot be applied."""
    a = cmd.args
    if isinstance(a, ct.AccountCredit):
        await _credit(ctx, cmd, a)
    elif isinstance(a, ct.AccountSync):
        await _sync(ctx, cmd, a)
    elif isinstance(a, ct.CardPut):
        await _card_put(ctx, cmd, a)
    elif isinstance(a, ct.CardBlock | ct.CardUnblock):
        await _card_block(ctx, cmd, a.card, blocked=isinstance(a, ct.CardBlock))
    elif isinstance(a, ct.CardsLoad):
        await _cards_load(ctx, cmd, a)
    elif isinstance(a, ct.TariffSet):
        await _tariff(ctx, cmd, a)
    elif isinstance(a, ct.RoomCut | ct.RoomRestore | ct.RoomLimit):
        await _room(ctx, cmd, a)
    elif isinstance(a, ct.EventsResend):
        await _resend(ctx, cmd, a)
    elif isinstance(a, ct.StateGet):
        await _state(ctx, cmd, a)
    else:  # ping
        await ctx.store.run(ctx.remember(cmd, encode_result_ok(cmd.id, EmptyResult())))


# --- money ----------------------------------------------------------------------


async def _credit(ctx: CommandContext, cmd: ParsedCommand, a: ct.AccountCredit) -> None:
    stamp_wall = ctx.clock.wall()
    stamp = ctx.clock.stamp(stamp_wall)

    def job(txn: Txn) -> int:
        before = Ledger.read(txn, a.account)
        problem = balance_problem(a.account, (before[0] if before else 0) + a.amount_fen)
        if problem:
            raise Refused(ErrorCode.CONFLICT, problem)
        balance = Ledger.credit(txn, a.account, a.amount_fen)
        txn.event(AccountCredited(account=a.account, amount_fen=a.amount_fen,
                                  balance_fen=balance, command=cmd.id),
                  ts=stamp, wall=stamp_wall)
        ctx.remember(cmd, encode_result_ok(
            cmd.id, CreditResult(account=a.account, balance_fen=balance)))(txn)
        return balance

    balance = await ctx.store.run(job)
    ctx.ledger.note(a.account, balance, True)
    await _balance_changed(ctx, a.account)


async def _sync(ctx: CommandContext, cmd: ParsedCommand, a: ct.AccountSync) -> None:
    """balance = center's figure - own debits with seq > through_seq - accrued unreported."""
    rooms = [r.id for r in ctx.config.rooms if r.account == a.account]

    def job(txn: Txn) -> SyncResult:
        # The last seq assigned (events may have been pruned or dropped since).
        last = txn.last_seq()
        if a.through_seq > last:
            raise Refused(ErrorCode.CONFLICT,
                          f"through_seq {a.through_seq} is beyond this building's last "
                          f"seq {last}")
        unreported = Ledger.unreported(txn, a.account, a.through_seq, rooms)
        balance = synced_balance(a.balance_fen, unreported)
        problem = balance_problem(a.account, balance)
        if problem:
            raise Refused(ErrorCode.CONFLICT, problem)
        Ledger.set_balance(txn, a.account, balance)
        result = SyncResult(account=a.account, balance_fen=balance,
                            unreported_fen=unreported.total_fen)
        ctx.remember(cmd, encode_result_ok(cmd.id, result))(txn)
        return result

    result = await ctx.store.run(job)
    ctx.ledger.note(a.account, result.balance_fen, True)
    await _balance_changed(ctx, a.account)


async def _balance_changed(ctx: CommandContext, account: str) -> None:
    await ctx.power.balance_changed(account)
    await ctx.water.balance_changed(account)


# --- cards ----------------------------------------------------------------------


async def _card_put(ctx: CommandContext, cmd: ParsedCommand, a: ct.CardPut) -> None:
    card = Card(a.card, a.account, str(a.kind), str(a.status), a.expires)
    await _put_card(ctx, cmd, card, CardResult(card=card.uid))


async def _card_block(ctx: CommandContext, cmd: ParsedCommand, uid: str, *, blocked: bool) -> None:
    card = ctx.cards.get(uid)
    if card is None:
        raise Refused(ErrorCode.NOT_FOUND, f"no card {uid}")
    if blocked:
        if card.status == "cancelled":
            # Cancelled is final: it stays cancelled (and its taps keep saying so).
            new = card
        else:
            new = Card(card.uid, card.account, card.kind, "lost", card.expires)
    else:
        if card.status == "cancelled":
            raise Refused(ErrorCode.CONFLICT, f"card {uid} is cancelled, not lost")
        new = Card(card.uid, card.account, card.kind, "active", card.expires)
    await _put_card(ctx, cmd, new, CardStatusResult(card=uid, status=CardStatus(new.status)))


async def _put_card(ctx: CommandContext, cmd: ParsedCommand, card: Card,
                    result: CardResult | CardStatusResult) -> None:
    """Store `card` with `cmd`'s result, then update the mirror."""
    def job(txn: Txn) -> None:
        Cards.put(txn, card)
        ctx.remember(cmd, encode_result_ok(cmd.id, result))(txn)

    await ctx.store.run(job)
    ctx.cards.note(card)


async def _cards_load(ctx: CommandContext, cmd: ParsedCommand, a: ct.CardsLoad) -> None:
    current = ctx.cards.version
    if current is not None and a.version < current:
        raise Refused(ErrorCode.CONFLICT,
                      f"version {a.version} is older than the loaded version {current}")

    def job(txn: Txn) -> dict[str, Card]:
        # Built here, in the writer thread: a load of tens of thousands of
        # cards must not hold the loop that serves taps.
        new = {c.card: Card(c.card, c.account, str(c.kind), str(c.status), c.expires)
               for c in a.cards}
        if a.full:
            Cards.clear(txn)
        for card in new.values():
            Cards.put(txn, card)
        Cards.set_version(txn, a.version)
        ctx.remember(cmd, encode_result_ok(
            cmd.id, CardsLoadResult(version=a.version, full=a.full, cards=len(new))))(txn)
        return new

    new = await ctx.store.run(job)
    ctx.cards.load_many(new, a.version, replace=a.full)


# --- tariffs and rooms ----------------------------------------------------------


async def _tariff(ctx: CommandContext, cmd: ParsedCommand, a: ct.TariffSet) -> None:
    service, unit = str(a.service), str(a.unit)
    if service != "power":
        problem = ctx.water.tariff_problem(service, unit)
        if problem:
            raise Refused(ErrorCode.CONFLICT, problem)

    def job(txn: Txn) -> None:
        meta.save_tariff(txn, service, a.price, unit)
        ctx.remember(cmd, encode_result_ok(
            cmd.id, TariffResult(service=a.service, price=str(a.price), unit=a.unit)))(txn)

    await ctx.store.run(job)
    if service == "power":
        ctx.power.set_tariff(a.price, unit)
    else:
        ctx.water.set_tariff(service, a.price, unit)


async def _room(ctx: CommandContext, cmd: ParsedCommand,
                a: ct.RoomCut | ct.RoomRestore | ct.RoomLimit) -> None:
    if ctx.power.room(a.room) is None:
        raise Refused(ErrorCode.NOT_FOUND, f"no room {a.room!r} in this building")

    def remember(txn: Txn, state: RoomState) -> None:
        # The state the command leads to: a restore leaves a room cut while
        # its balance or a curfew still says so.
        cut = state.cut_reason is not None
        result = (RoomLimitResult(room=a.room, cut=cut, cut_reason=state.cut_reason, hold=state.hold,
                                  max_power_w=a.max_power_w) if isinstance(a, ct.RoomLimit)
                  else RoomResult(room=a.room, cut=cut, cut_reason=state.cut_reason, hold=state.hold))
        ctx.remember(cmd, encode_result_ok(cmd.id, result))(txn)

    if isinstance(a, ct.RoomCut):
        await ctx.power.cut(a.room, hold=a.hold, also=remember)
    elif isinstance(a, ct.RoomRestore):
        await ctx.power.restore(a.room, also=remember)
    else:
        await ctx.power.limit(a.room, a.max_power_w, also=remember)


# --- events and state -------------------------------------------------------------


async def _resend(ctx: CommandContext, cmd: ParsedCommand, a: ct.EventsResend) -> None:
    def job(txn: Txn) -> None:
        r = outbox.resend(txn, a.from_seq, a.to_seq)
        # Seqs no longer kept (older than keep_events_days), as inclusive ranges.
        result = ResendResult(from_seq=r.from_seq, to_seq=r.to_seq, queued=r.queued,
                              missing=r.missing or None)
        ctx.remember(cmd, encode_result_ok(cmd.id, result))(txn)

    await ctx.store.run(job)


async def _state(ctx: CommandContext, cmd: ParsedCommand, a: ct.StateGet) -> None:
    result: msgspec.Struct | Mapping[str, Any]
    if a.room is not None:
        rt = ctx.power.room(a.room)
        if rt is None:
            raise Refused(ErrorCode.NOT_FOUND, f"no room {a.room!r} in this building")
        result = RoomStateResult(room=RoomSnapshot(**ctx.power.describe(rt)))
    elif a.account is not None:
        known = ctx.ledger.is_known(a.account) or a.account in ctx.ledger.balances
        if not known:
            raise Refused(ErrorCode.NOT_FOUND, f"no account {a.account!r} here")
        result = AccountStateResult(account=AccountSnapshot(
            account=a.account, balance_fen=ctx.ledger.balance(a.account),
            known=ctx.ledger.is_known(a.account)))
    elif a.card is not None:
        card = ctx.cards.get(a.card)
        if card is None:
            raise Refused(ErrorCode.NOT_FOUND, f"no card {a.card}")
        result = CardStateResult(card=CardSnapshot(
            card=card.uid, account=card.account, kind=CardKind(card.kind),
            status=CardStatus(card.status), expires=card.expires))
    else:
        # The status document as published now (a Mapping: the link decoded it).
        result = dict(await ctx.status()) if ctx.status else EmptyResult()
    await ctx.store.run(ctx.remember(cmd, encode_result_ok(cmd.id, result)))
