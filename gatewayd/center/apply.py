"""Applying the center's commands (center-link.md "Commands").

Contract:
- `handle(payload, topic_kind)` never raises. Checks come from
  `gatewayd.contract.command_admission.accept_command` (JSON, id, to, type, args, signature,
  age). A refused command's result is returned for the link to publish at
  once and its id is NOT remembered: a forged command must not be able to
  claim the id of a genuine one.
- Validity (center-link.md "Signing") is checked after the duplicate lookup,
  against `command_now()`: the system clock while it is synchronised, else
  the later of it and the newest `ts` of any command applied (kept in `meta`
  in the same transaction as the command's result, so it survives restarts).
- An accepted command, the ledger change and event it causes, and its result
  commit in one store transaction; the result then leaves through the outbox
  (class 0). A repeated id is answered with the first result and
  `"duplicate": true`, never applied again.
- Commands are applied one at a time, in arrival order.
- A payload over `INLINE_PARSE_BYTES` is first screened in a worker process
  (`gatewayd.center.screen`): one that fails its JSON, signature or schema
  checks is refused from there, and never parsed in the daemon, so a flood
  of big bogus commands costs the loop that serves taps only the hand-off.
- Refusals are logged within a budget (the first 20 a minute, then a
  summary); each one is still answered.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gatewayd.center.screen import BoundedLog, CommandScreen
from gatewayd.config.model import Config
from gatewayd.contract.command_admission import accept_command, check_age, valid_window
from gatewayd.contract.command_types import (
    AccountCredit,
    AccountSync,
    CardBlock,
    CardPut,
    CardsLoad,
    CardUnblock,
    CommandRejection,
    EventsResend,
    ParsedCommand,
    RoomCut,
    RoomLimit,
    RoomRestore,
    StateGet,
    TariffSet,
    TopicKind,
)
from gatewayd.contract.wire import (
    AccountCredited,
    ErrorCode,
    as_duplicate,
    encode_result_error,
    encode_result_ok,
)
from gatewayd.errors import Refused
from gatewayd.rules.ledger import synced_balance
from gatewayd.rules.power import RoomState
from gatewayd.rules.water import Card
from gatewayd.services.clock import Clock
from gatewayd.services.power import PowerService
from gatewayd.services.water import WaterService
from gatewayd.store import outbox
from gatewayd.store.cards import Cards
from gatewayd.store.db import Store, Txn
from gatewayd.store.ledger import Ledger

log = structlog.get_logger(__name__)

# `meta` key of the newest `ts` (epoch seconds) of any command applied: the
# floor of "now" while the clock is not synchronised.
NEWEST_TS_KEY = "commands.newest_ts"
# Commands larger than this are screened in the worker process, then (if they
# pass) parsed and verified in a worker thread.
INLINE_PARSE_BYTES = 64 * 1024
# Refusals logged one by one each minute; the rest are summarised.
REFUSALS_LOGGED_PER_MIN = 20


class CommandService:
    """The center link's command handler."""

    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Clock,
        *,
        ledger: Ledger,
        cards: Cards,
        power: PowerService,
        water: WaterService,
        public_key: Ed25519PublicKey | None,
        status: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.ledger = ledger
        self.cards = cards
        self.power = power
        self.water = water
        self.public_key = public_key
        self.status = status
        center = config.center
        #: The worker process for big payloads: a supervisor component of its own.
        self.screen = CommandScreen(config.gateway.building, public_key,
                                    insecure_unsigned=bool(center and center.insecure_unsigned_commands),
                                    card_format=config.gateway.card_format)
        self.refusal_log = BoundedLog("command_refused", burst=REFUSALS_LOGGED_PER_MIN, group="code")
        self.screen.logs.append(self.refusal_log)
        self._lock = asyncio.Lock()
        self.applied = 0
        self.refused = 0
        self._newest_ts: float | None = None   # NEWEST_TS_KEY, read when first needed

    async def handle(self, payload: bytes, topic_kind: TopicKind) -> bytes | None:
        if len(payload) > INLINE_PARSE_BYTES:
            refused = await self._screened(payload, topic_kind)
            if refused is not None:
                return refused
        center = self.config.center
        try:
            # The age is checked in `_apply`, after the duplicate lookup: a repeat of
            # an applied command (redelivered by the broker after a crash, say) is
            # answered with its first result even when it has grown old meanwhile;
            # `stale` would tell the center it was not applied.
            check = functools.partial(
                accept_command, payload, topic_kind=topic_kind,
                building=self.config.gateway.building, public_key=self.public_key,
                now=None, clock_synced=False,
                insecure_unsigned=bool(center and center.insecure_unsigned_commands),
                card_format=self.config.gateway.card_format,
            )
            # A big command (a cards.load of thousands of cards) takes up to half a
            # second to parse and verify: off the loop, which keeps serving taps.
            checked = check() if len(payload) <= INLINE_PARSE_BYTES else await asyncio.to_thread(check)
            if isinstance(checked, CommandRejection):
                return self._refused(checked)
            async with self._lock:
                return await self._apply(checked)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug must not kill the link: answer `internal`
            log.exception("command_failed")
            cid = _id_of(payload)
            return encode_result_error(cid, ErrorCode.INTERNAL, f"internal error: {type(e).__name__}")

    async def _screened(self, payload: bytes, topic_kind: TopicKind) -> bytes | None:
        """The refusal of a big payload, decided in the worker process; None if it passes."""
        try:
            rejection = await self.screen.screen(payload, topic_kind)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug must not kill the link: answer `internal`
            log.exception("command_screen_failed")
            return encode_result_error(None, ErrorCode.INTERNAL, f"internal error: {type(e).__name__}")
        return None if rejection is None else self._refused(rejection)

    def _refused(self, rejection: CommandRejection) -> bytes:
        self.refused += 1
        self.refusal_log.note(id=rejection.id, code=str(rejection.code), message=rejection.message)
        return rejection.encode()

    async def _apply(self, cmd: ParsedCommand) -> bytes | None:
        first = await self.store.read(lambda t: t.execute(
            "SELECT result FROM commands WHERE id = ?", (cmd.id,)).fetchone())
        if first is not None:
            log.info("command_duplicate", id=cmd.id, type=str(cmd.type))
            return as_duplicate(bytes(first[0]))
        now, synced = await self.command_now()
        stale = check_age(cmd.issued_at, now, self._max_age_s(), expires=cmd.expires,
                          clock_synced=synced, command_id=cmd.id)
        if stale is not None:
            return self._refused(stale)
        try:
            await self._dispatch(cmd)
        except Refused as e:
            self.refused += 1
            log.warning("command_not_applied", id=cmd.id, type=str(cmd.type), code=str(e.code),
                        message=e.message)
            encoded = encode_result_error(cmd.id, e.code, e.message)
            await self.store.run(self._remember(cmd, encoded))
            self._applied_ts(cmd)
            return None
        self._applied_ts(cmd)
        self.applied += 1
        log.info("command_applied", id=cmd.id, type=str(cmd.type))
        return None

    async def command_now(self) -> tuple[float, bool]:
        """The "now" commands are judged by, and whether the clock is synchronised.

        While it is not, "now" never goes back behind the newest `ts` of any
        command applied (center-link.md "Signing"): a recorded command cannot
        be replayed after its validity, whatever the local clock says.
        """
        wall = self.clock.wall()
        if self.clock.synced():
            return wall, True
        if self._newest_ts is None:
            row = await self.store.read(lambda t: t.execute(
                "SELECT value FROM meta WHERE key = ?", (NEWEST_TS_KEY,)).fetchone())
            self._newest_ts = float(row[0]) if row else float("-inf")
        return max(wall, self._newest_ts), False

    def _applied_ts(self, cmd: ParsedCommand) -> None:
        """Raise the in-memory floor once `cmd`'s result (and NEWEST_TS_KEY) committed."""
        if self._newest_ts is not None:   # else read from the store when first needed
            self._newest_ts = max(self._newest_ts, cmd.issued_at.timestamp())

    def _max_age_s(self) -> float:
        center = self.config.center
        return center.max_command_age_s if center else 300.0

    def _remember(self, cmd: ParsedCommand, result: bytes) -> Callable[[Txn], None]:
        """The store step that records `cmd` as handled: its first result, kept
        until its validity ended (outbox.prune), and the newest applied `ts`."""
        issued = cmd.issued_at.timestamp()
        _, valid_until = valid_window(cmd.issued_at, cmd.expires, self._max_age_s())

        def job(txn: Txn) -> None:
            txn.execute(
                "INSERT INTO commands (id, received, result, valid_until) VALUES (?, ?, ?, ?)",
                (cmd.id, time.time(), result, valid_until))
            txn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                "value = excluded.value WHERE CAST(excluded.value AS REAL) > CAST(value AS REAL)",
                (NEWEST_TS_KEY, repr(issued)))
        return job

    async def _dispatch(self, cmd: ParsedCommand) -> None:
        a = cmd.args
        if isinstance(a, AccountCredit):
            await self._credit(cmd, a)
        elif isinstance(a, AccountSync):
            await self._sync(cmd, a)
        elif isinstance(a, CardPut):
            await self._card_put(cmd, a)
        elif isinstance(a, CardBlock | CardUnblock):
            await self._card_block(cmd, a.card, blocked=isinstance(a, CardBlock))
        elif isinstance(a, CardsLoad):
            await self._cards_load(cmd, a)
        elif isinstance(a, TariffSet):
            await self._tariff(cmd, a)
        elif isinstance(a, RoomCut | RoomRestore | RoomLimit):
            await self._room(cmd, a)
        elif isinstance(a, EventsResend):
            await self._resend(cmd, a)
        elif isinstance(a, StateGet):
            await self._state(cmd, a)
        else:  # ping
            await self.store.run(self._remember(cmd, encode_result_ok(cmd.id, {})))

    # --- money ----------------------------------------------------------------------

    async def _credit(self, cmd: ParsedCommand, a: AccountCredit) -> None:
        stamp_wall = self.clock.wall()
        stamp = self.clock.stamp(stamp_wall)

        def job(txn: Txn) -> int:
            balance = Ledger.credit(txn, a.account, a.amount_fen)
            txn.event(AccountCredited(account=a.account, amount_fen=a.amount_fen,
                                      balance_fen=balance, command=cmd.id),
                      ts=stamp, wall=stamp_wall)
            self._remember(cmd, encode_result_ok(
                cmd.id, {"account": a.account, "balance_fen": balance}))(txn)
            return balance

        balance = await self.store.run(job)
        self.ledger.note(a.account, balance, True)
        await self._balance_changed(a.account)

    async def _sync(self, cmd: ParsedCommand, a: AccountSync) -> None:
        """balance = center's figure - own debits with seq > through_seq - accrued unreported."""
        def job(txn: Txn) -> dict[str, Any]:
            # The last seq assigned (events may have been pruned or dropped since).
            last = txn.last_seq()
            if a.through_seq > last:
                raise Refused(ErrorCode.CONFLICT,
                              f"through_seq {a.through_seq} is beyond this building's last "
                              f"seq {last}")
            unreported = Ledger.unreported(txn, a.account, a.through_seq,
                                           self._rooms_of(a.account))
            balance = synced_balance(a.balance_fen, unreported)
            Ledger.set_balance(txn, a.account, balance)
            result = {"account": a.account, "balance_fen": balance,
                      "unreported_fen": unreported.total_fen}
            self._remember(cmd, encode_result_ok(cmd.id, result))(txn)
            return result

        result = await self.store.run(job)
        self.ledger.note(a.account, int(result["balance_fen"]), True)
        await self._balance_changed(a.account)

    def _rooms_of(self, account: str) -> list[str]:
        return [r.id for r in self.config.rooms if r.account == account]

    async def _balance_changed(self, account: str) -> None:
        await self.power.balance_changed(account)
        await self.water.balance_changed(account)

    # --- cards ----------------------------------------------------------------------

    async def _card_put(self, cmd: ParsedCommand, a: CardPut) -> None:
        card = Card(a.card, a.account, str(a.kind), str(a.status), a.expires)

        def job(txn: Txn) -> None:
            Cards.put(txn, card)
            self._remember(cmd, encode_result_ok(cmd.id, {"card": card.uid}))(txn)

        await self.store.run(job)
        self.cards.note(card)

    async def _card_block(self, cmd: ParsedCommand, uid: str, *, blocked: bool) -> None:
        card = self.cards.get(uid)
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

        def job(txn: Txn) -> None:
            Cards.put(txn, new)
            self._remember(cmd, encode_result_ok(cmd.id, {"card": uid, "status": new.status}))(txn)

        await self.store.run(job)
        self.cards.note(new)

    async def _cards_load(self, cmd: ParsedCommand, a: CardsLoad) -> None:
        current = self.cards.version
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
            self._remember(cmd, encode_result_ok(
                cmd.id, {"version": a.version, "full": a.full, "cards": len(new)}))(txn)
            return new

        new = await self.store.run(job)
        self.cards.load_many(new, a.version, replace=a.full)

    # --- tariffs and rooms ----------------------------------------------------------

    async def _tariff(self, cmd: ParsedCommand, a: TariffSet) -> None:
        service, unit = str(a.service), str(a.unit)
        if service != "power":
            problem = self.water.tariff_problem(service, unit)
            if problem:
                raise Refused(ErrorCode.CONFLICT, problem)

        def job(txn: Txn) -> None:
            txn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                "value = excluded.value", (f"tariff.{service}", f"{a.price} {unit}"))
            self._remember(cmd, encode_result_ok(
                cmd.id, {"service": service, "price": str(a.price), "unit": unit}))(txn)

        await self.store.run(job)
        if service == "power":
            self.power.set_tariff(a.price, unit)
        else:
            self.water.set_tariff(service, a.price, unit)

    async def _room(self, cmd: ParsedCommand, a: RoomCut | RoomRestore | RoomLimit) -> None:
        if self.power.room(a.room) is None:
            raise Refused(ErrorCode.NOT_FOUND, f"no room {a.room!r} in this building")

        def remember(txn: Txn, state: RoomState) -> None:
            # The state the command leads to: a restore leaves a room cut while
            # its balance or a curfew still says so.
            result = {"room": a.room, "cut": state.cut_reason is not None,
                      "cut_reason": state.cut_reason, "hold": state.hold}
            if isinstance(a, RoomLimit):
                result["max_power_w"] = a.max_power_w
            self._remember(cmd, encode_result_ok(cmd.id, result))(txn)

        if isinstance(a, RoomCut):
            await self.power.cut(a.room, hold=a.hold, also=remember)
        elif isinstance(a, RoomRestore):
            await self.power.restore(a.room, also=remember)
        else:
            await self.power.limit(a.room, a.max_power_w, also=remember)

    # --- events and state -------------------------------------------------------------

    async def _resend(self, cmd: ParsedCommand, a: EventsResend) -> None:
        def job(txn: Txn) -> None:
            r = outbox.resend(txn, a.from_seq, a.to_seq)
            result: dict[str, Any] = {"from_seq": r.from_seq, "to_seq": r.to_seq,
                                      "queued": r.queued}
            if r.missing:
                # Seqs no longer kept (older than keep_events_days), as inclusive ranges.
                result["missing"] = [list(m) for m in r.missing]
            self._remember(cmd, encode_result_ok(cmd.id, result))(txn)

        await self.store.run(job)

    async def _state(self, cmd: ParsedCommand, a: StateGet) -> None:
        result: dict[str, Any]
        if a.room is not None:
            rt = self.power.room(a.room)
            if rt is None:
                raise Refused(ErrorCode.NOT_FOUND, f"no room {a.room!r} in this building")
            result = {"room": self.power.describe(rt)}
        elif a.account is not None:
            known = self.ledger.is_known(a.account) or a.account in self.ledger.balances
            if not known:
                raise Refused(ErrorCode.NOT_FOUND, f"no account {a.account!r} here")
            result = {"account": {"account": a.account, "balance_fen": self.ledger.balance(a.account),
                                  "known": self.ledger.is_known(a.account)}}
        elif a.card is not None:
            card = self.cards.get(a.card)
            if card is None:
                raise Refused(ErrorCode.NOT_FOUND, f"no card {a.card}")
            result = {"card": {"card": card.uid, "account": card.account, "kind": card.kind,
                               "status": card.status,
                               "expires": card.expires.isoformat() if card.expires else None}}
        else:
            result = dict(await self.status()) if self.status else {}
        await self.store.run(self._remember(cmd, encode_result_ok(cmd.id, result)))


def _id_of(payload: bytes) -> str | None:
    try:
        obj = json.loads(payload)
    except Exception:
        return None
    cid = obj.get("id") if isinstance(obj, dict) else None
    return cid if isinstance(cid, str) and 1 <= len(cid) <= 64 else None
