"""The schema of each command's ``args`` (center-link.md "Commands"): step 8 of
``commands.parse_command``.

Contract of the module: pure. ``parse_args`` turns the ``args`` object of a
command of a known type into its typed Struct (``command_types``), or raises
``command_fields.InvalidField`` naming the first field that is wrong; fields are
checked in the contract's order. Unknown keys are listed in ``ignored``, or
refused with ``unknown_fields="reject"``.

Schema choices, where the contract leaves room:

- Integers are JSON integers: ``true``, ``1.0`` and ``"1"`` are refused
  (``bool`` is an ``int`` in Python, so every check is ``type(x) is int``).
  All integers must lie within +-(2**53 - 1), the range every JSON peer
  (and SQLite) represents exactly. A command carries no other number at all,
  anywhere (``canonical``, checked before the signature): the schema never
  sees a float.
- Money: ``amount_fen`` is at most ``MAX_AMOUNT_FEN`` (10**12 fen, ten
  billion yuan) and ``balance_fen`` within +-``MAX_BALANCE_FEN``
  (2**53 - 1), so that every amount and balance stays exact in an IEEE
  double; a credit that would carry a balance past it is ``conflict``
  (``command_effects``).
- Optional fields (``expires``, ``to_seq``, ``hold``, the ``state.get``
  selectors) may be absent or ``null``; both mean "not given". ``args`` may
  be absent or ``null`` only for ``ping`` and ``state.get``.
- Unknown keys: the contract grows "only by adding new optional fields" and
  says "consumers ignore fields ... they do not know", so by default unknown
  keys at the top level and inside ``args`` (and each ``cards[i]``) are
  ignored and listed in ``ParsedCommand.ignored`` for the link to log. They
  are still covered by the signature. ``unknown_fields="reject"`` refuses
  unknown keys inside ``args`` with ``bad_request`` instead; top-level keys
  are always ignored.
- Card ids (``card.put``, each ``cards.load`` entry, ``card.block``,
  ``card.unblock``, ``state.get``) are in the building's ``card_format``
  (behaviour.md "Card readers"); an id in the other format is refused. In
  ``hex``: 2 to 32 hex digits, an even number (whole bytes; the longest ISO
  14443 UID, 10 bytes, has 20); lower case is accepted and normalised to
  upper case; separators are refused. In ``dec10``: exactly 10 digits, at
  most 4294967295 (4 bytes).
- ``expires`` is an RFC 3339 ``full-date`` (``2027-07-31``): the card is
  valid through that day in the building's time zone. An RFC 3339 date-time
  (``2027-07-31T23:59:59+08:00``), which center software often sends for a
  "date", is accepted too and means the calendar date it is written with.
- Account and room ids are 1 to 128 characters without control characters.
- ``tariff.set`` ``price`` is a plain decimal string (``"0.56"``: no sign,
  exponent, white space or leading zeros), from 0 to ``MAX_PRICE_YUAN`` with
  at most 6 decimal places; ``unit`` must fit the service: ``kWh`` for
  power, ``L`` or ``min`` for shower and drinking (``min`` where a point has
  no flow meter).
- ``cards.load`` refuses a list naming a card twice: which entry wins would
  be a guess.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date
from decimal import Decimal
from typing import Any, Final

from gatewayd.contract.command_fields import (
    MISSING,
    CardFormat,
    Fields,
    InvalidField,
    fail,
    json_object,
    read_bool,
    read_card,
    read_choice,
    read_int,
    read_name,
)
from gatewayd.contract.command_types import (
    MAX_AMOUNT_FEN,
    MAX_PRICE_YUAN,
    AccountCredit,
    AccountSync,
    CardBlock,
    CardPut,
    CardsLoad,
    CardUnblock,
    CommandArgs,
    EventsResend,
    Ping,
    RoomCut,
    RoomLimit,
    RoomRestore,
    StateGet,
    TariffSet,
    UnknownFields,
)
from gatewayd.contract.enums import CardKind, CardStatus, CommandType, Service, TariffUnit
from gatewayd.contract.wire import parse_rfc3339

__all__ = ["parse_args"]

_PRICE_DECIMALS: Final = 6
_MIN_POWER_LIMIT_W: Final = 100
_DATE_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_PRICE_RE: Final = re.compile(r"(?:0|[1-9][0-9]{0,2})(?:\.[0-9]{1,6})?", re.ASCII)


def _account_credit(f: Fields) -> AccountCredit:
    account = read_name(f.path("account"), f.get("account"))
    amount = read_int(f.path("amount_fen"), f.get("amount_fen"), "an integer > 0", 1)
    if amount > MAX_AMOUNT_FEN:
        fail(f.path("amount_fen"), f"at most {MAX_AMOUNT_FEN} (ten billion yuan)", amount)
    return AccountCredit(account=account, amount_fen=amount)


def _account_sync(f: Fields) -> AccountSync:
    return AccountSync(
        account=read_name(f.path("account"), f.get("account")),
        balance_fen=read_int(f.path("balance_fen"), f.get("balance_fen"), "an integer"),
        through_seq=read_int(f.path("through_seq"), f.get("through_seq"), "an integer >= 0", 0),
    )


def _card_put(f: Fields) -> CardPut:
    card = read_card(f.path("card"), f.get("card"), f.card_format)
    account = read_name(f.path("account"), f.get("account"))
    kind = read_choice(f.path("kind"), f.get("kind"), CardKind)
    status = read_choice(f.path("status"), f.get("status"), CardStatus)
    expires: date | None = None
    raw_expires = f.optional("expires")
    if raw_expires is not None:
        expected = "an RFC 3339 date (YYYY-MM-DD), date-time or null"
        if not isinstance(raw_expires, str):
            fail(f.path("expires"), expected, raw_expires)
        if _DATE_RE.fullmatch(raw_expires):
            try:
                expires = date.fromisoformat(raw_expires)
            except ValueError:
                fail(f.path("expires"), expected, raw_expires)
        else:
            moment = parse_rfc3339(raw_expires)
            if moment is None:
                fail(f.path("expires"), expected, raw_expires)
            expires = moment.date()  # the date as written, in its own offset
    return CardPut(card=card, account=account, kind=kind, status=status, expires=expires)


def _card_block(f: Fields) -> CardBlock:
    return CardBlock(card=read_card(f.path("card"), f.get("card"), f.card_format))


def _card_unblock(f: Fields) -> CardUnblock:
    return CardUnblock(card=read_card(f.path("card"), f.get("card"), f.card_format))


def _tariff_set(f: Fields) -> TariffSet:
    service = read_choice(f.path("service"), f.get("service"), Service)
    raw_price = f.get("price")
    expected = (
        f'a decimal string of yuan from "0" to "{MAX_PRICE_YUAN}"'
        f" with at most {_PRICE_DECIMALS} decimal places"
    )
    if not isinstance(raw_price, str) or not _PRICE_RE.fullmatch(raw_price):
        fail(f.path("price"), expected, raw_price)
    price = Decimal(raw_price)
    if price > MAX_PRICE_YUAN:
        fail(f.path("price"), expected, raw_price)
    unit = read_choice(f.path("unit"), f.get("unit"), TariffUnit)
    if service is Service.POWER and unit is not TariffUnit.KWH:
        fail(f.path("unit"), '"kWh" for service "power"', unit.value)
    if service is not Service.POWER and unit is TariffUnit.KWH:
        fail(f.path("unit"), f'"L" or "min" for service "{service.value}"', unit.value)
    return TariffSet(service=service, price=price, unit=unit)


def _room_cut(f: Fields) -> RoomCut:
    room = read_name(f.path("room"), f.get("room"))
    hold = f.optional("hold")
    return RoomCut(room=room, hold=False if hold is None else read_bool(f.path("hold"), hold))


def _room_restore(f: Fields) -> RoomRestore:
    return RoomRestore(room=read_name(f.path("room"), f.get("room")))


def _room_limit(f: Fields) -> RoomLimit:
    return RoomLimit(
        room=read_name(f.path("room"), f.get("room")),
        max_power_w=read_int(
            f.path("max_power_w"),
            f.get("max_power_w"),
            f"an integer >= {_MIN_POWER_LIMIT_W}",
            _MIN_POWER_LIMIT_W,
        ),
    )


def _events_resend(f: Fields) -> EventsResend:
    from_seq = read_int(f.path("from_seq"), f.get("from_seq"), "an integer >= 0", 0)
    raw_to = f.optional("to_seq")
    to_seq = None
    if raw_to is not None:
        to_seq = read_int(
            f.path("to_seq"), raw_to, f"an integer >= from_seq ({from_seq}) or null", from_seq
        )
    return EventsResend(from_seq=from_seq, to_seq=to_seq)


def _state_get(f: Fields) -> StateGet:
    room, account, card = f.optional("room"), f.optional("account"), f.optional("card")
    given = [key for key, value in (("room", room), ("account", account), ("card", card))
             if value is not None]
    if len(given) > 1:
        raise InvalidField(
            f"{f.path(given[1])}: at most one of room, account and card, got {' and '.join(given)}"
        )
    return StateGet(
        room=None if room is None else read_name(f.path("room"), room),
        account=None if account is None else read_name(f.path("account"), account),
        card=None if card is None else read_card(f.path("card"), card, f.card_format),
    )


def _ping(f: Fields) -> Ping:
    return Ping()


_SIMPLE_PARSERS: Final[Mapping[CommandType, Callable[[Fields], CommandArgs]]] = {
    CommandType.ACCOUNT_CREDIT: _account_credit,
    CommandType.ACCOUNT_SYNC: _account_sync,
    CommandType.CARD_PUT: _card_put,
    CommandType.CARD_BLOCK: _card_block,
    CommandType.CARD_UNBLOCK: _card_unblock,
    CommandType.TARIFF_SET: _tariff_set,
    CommandType.ROOM_CUT: _room_cut,
    CommandType.ROOM_RESTORE: _room_restore,
    CommandType.ROOM_LIMIT: _room_limit,
    CommandType.EVENTS_RESEND: _events_resend,
    CommandType.STATE_GET: _state_get,
    CommandType.PING: _ping,
}
# Types whose every argument is optional, so ``args`` itself may be left out.
_ARGS_OPTIONAL: Final = frozenset({CommandType.STATE_GET, CommandType.PING})


def _cards_load(f: Fields, unknown: UnknownFields, ignored: list[str]) -> CardsLoad:
    version = read_int(f.path("version"), f.get("version"), "an integer >= 0", 0)
    full = read_bool(f.path("full"), f.get("full"))
    raw_cards = f.get("cards")
    if not isinstance(raw_cards, list):
        fail(f.path("cards"), "a list of card.put arguments", raw_cards)
    cards: list[CardPut] = []
    first_index: dict[str, int] = {}
    for index, raw_card in enumerate(raw_cards):
        path = f"{f.path('cards')}[{index}]"
        entry = Fields(json_object(path, raw_card), path, f.card_format)
        card = _card_put(entry)
        entry.finish(unknown, ignored)
        if card.card in first_index:
            raise InvalidField(
                f'{path}.card: card "{card.card}" is also at'
                f" {f.path('cards')}[{first_index[card.card]}]"
            )
        first_index[card.card] = index
        cards.append(card)
    return CardsLoad(version=version, full=full, cards=tuple(cards))


def parse_args(
    command_type: CommandType, raw_args: Any, unknown: UnknownFields, ignored: list[str],
    card_format: CardFormat = "hex",
) -> CommandArgs:
    """The typed ``args`` of a ``command_type`` command (``raw_args`` is ``MISSING`` when absent).

    Raises ``InvalidField`` for the first field that is wrong; appends to
    ``ignored`` the unknown keys it ignored (``"args.until"``). Card ids are
    read in ``card_format``, the building's.
    """
    if raw_args is MISSING or raw_args is None:
        if command_type not in _ARGS_OPTIONAL:
            fail("args", "an object", raw_args)
        raw_args = {}
    fields = Fields(json_object("args", raw_args), "args", card_format)
    if command_type is CommandType.CARDS_LOAD:
        args: CommandArgs = _cards_load(fields, unknown, ignored)
    else:
        args = _SIMPLE_PARSERS[command_type](fields)
    fields.finish(unknown, ignored)
    return args
