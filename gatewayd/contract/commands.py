"""Center commands from payload bytes to typed, checked commands (center-link.md "Commands").

Contract of the layer: pure functions, no I/O, no clock (callers pass ``now``
as epoch seconds); ``parse_command`` and ``accept_command`` never raise,
whatever the payload: every outcome is a ``ParsedCommand`` or a
``CommandRejection`` whose ``encode()`` is the result to publish. A typical
command parses in well under a millisecond, but a ``cards.load`` near
``MAX_COMMAND_BYTES`` takes about half a second on a desktop CPU: the link
should call these from a worker thread, not the loop that serves taps (they
are thread-safe).

Order of checks (the first failure is the result; later checks never run):

1. ``bad_json``, id ``null``: payload larger than ``max_bytes``, not UTF-8,
   not JSON (including a byte order mark, ``NaN``/``Infinity``, numbers
   that overflow a float, integers of more than 4300 digits, and duplicate
   keys, which would make what is signed ambiguous), or not a JSON object.
2. ``bad_request``, id ``null``: no usable ``id`` (a string of 1 to 64
   characters that UTF-8 can carry).
3. ``bad_json``, with the id: nesting deeper than ``MAX_DEPTH`` or a string
   with an unpaired surrogate escape (``"\\ud800"``), which no canonical
   UTF-8 form can carry, so it could never be signed.
4. ``bad_signature`` (``accept_command`` only; ``verify_signature``):
   missing or wrong ``sig``. It comes before every schema check: what an
   unauthenticated sender gets back says nothing about the schema, and the
   contract's "missing or wrong sig: refused with bad_signature" holds
   whatever else is wrong.
5. ``bad_request``: ``to`` is not this building on the building topic, or not
   ``all`` on the broadcast topic.
6. ``bad_request`` if ``type`` is not a string, ``unknown_type`` if it is not
   a v1 command type.
7. ``bad_request``: ``ts`` is not an RFC 3339 date-time with offset;
   ``expires``, when given, is not one, is before ``ts``, or is more than
   ``MAX_EXPIRES_S`` (7 days) after it.
8. ``bad_request``: ``args`` does not match the type's schema; the message
   names the field, JSON-path style: ``args.cards[3].kind: expected one of
   ...``. Fields are checked in the contract's order.
9. ``stale`` (``check_age``; ``accept_command`` step unless ``now`` is None):
   outside the command's validity (center-link.md "Signing"), from
   ``ts - max_age_s`` until ``expires``, else ``ts + max_age_s``. While the
   clock is not synchronised only the end counts: the caller's ``now`` is
   then the later of the clock and the newest applied ``ts``, and no command
   is refused for lying in the future.

Schema choices, where the contract leaves room:

- Integers are JSON integers: ``true``, ``1.0`` and ``"1"`` are refused
  (``bool`` is an ``int`` in Python, so every check is ``type(x) is int``).
  All integers must lie within +-(2**53 - 1), the range every JSON peer
  (and SQLite) represents exactly.
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
- Card UIDs are 2 to 32 hex digits (the longest ISO 14443 UID, 10 bytes,
  has 20); lower case is accepted and normalised to upper case (behaviour.md
  "UIDs are upper-case hex without separators"); separators are refused.
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

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, ClassVar, Final, Literal, NoReturn, TypeVar

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gatewayd.contract.signing import SIGNATURE_FIELD, canonical_json, decode_signature, verify_command
from gatewayd.contract.wire import (
    CardKind,
    CardStatus,
    CommandType,
    ErrorCode,
    Service,
    TariffUnit,
    encode_result_error,
    parse_rfc3339,
)

__all__ = [
    "BROADCAST_TARGET",
    "MAX_COMMAND_BYTES",
    "MAX_DEPTH",
    "MAX_EXPIRES_S",
    "MAX_ID_CHARS",
    "MAX_NAME_CHARS",
    "MAX_PRICE_YUAN",
    "AccountCredit",
    "AccountSync",
    "CardBlock",
    "CardPut",
    "CardUnblock",
    "CardsLoad",
    "CommandArgs",
    "CommandRejection",
    "EventsResend",
    "ParsedCommand",
    "Ping",
    "RoomCut",
    "RoomLimit",
    "RoomRestore",
    "StateGet",
    "TariffSet",
    "TopicKind",
    "UnknownFields",
    "accept_command",
    "check_age",
    "parse_command",
    "valid_window",
    "verify_signature",
]

TopicKind = Literal["building", "broadcast"]
UnknownFields = Literal["ignore", "reject"]

#: ``to`` of a command on ``{prefix}/all/cmd``.
BROADCAST_TARGET: Final = "all"
#: Largest payload parsed. A full ``cards.load`` is one message; at ~100 bytes
#: a card this admits ~80,000 cards, a large campus, while bounding the memory
#: and time one message can take.
MAX_COMMAND_BYTES: Final = 8 * 1024 * 1024
#: Deepest nesting accepted anywhere in a payload; v1 needs 3 levels.
MAX_DEPTH: Final = 32
MAX_ID_CHARS: Final = 64
MAX_NAME_CHARS: Final = 128
MAX_PRICE_YUAN: Final = Decimal(100)
_MAX_INT: Final = 2**53 - 1
_PRICE_DECIMALS: Final = 6
_MIN_POWER_LIMIT_W: Final = 100

_CARD_RE: Final = re.compile(r"[0-9A-Fa-f]{2,32}", re.ASCII)
_DATE_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_PRICE_RE: Final = re.compile(r"(?:0|[1-9][0-9]{0,2})(?:\.[0-9]{1,6})?", re.ASCII)
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAME_EXPECTED: Final = f"a string of 1 to {MAX_NAME_CHARS} characters without control characters"
#: Latest ``expires`` after ``ts`` (center-link.md "Signing").
MAX_EXPIRES_S: Final = 7 * 86400
_TOP_LEVEL_FIELDS: Final = frozenset({"id", "to", "type", "ts", "expires", "args", SIGNATURE_FIELD})


# --------------------------------------------------------------------------
# Typed arguments, one Struct per command type
# --------------------------------------------------------------------------


class AccountCredit(msgspec.Struct, frozen=True, kw_only=True):
    """``account.credit``: top up ``account`` by ``amount_fen`` (> 0)."""

    TYPE: ClassVar[CommandType] = CommandType.ACCOUNT_CREDIT
    account: str
    amount_fen: int


class AccountSync(msgspec.Struct, frozen=True, kw_only=True):
    """``account.sync``: the center's balance after this building's events up to ``through_seq``."""

    TYPE: ClassVar[CommandType] = CommandType.ACCOUNT_SYNC
    account: str
    balance_fen: int
    through_seq: int


class CardPut(msgspec.Struct, frozen=True, kw_only=True):
    """``card.put`` (and each entry of ``cards.load``): issue or change a card.

    ``card`` is upper-case hex; ``expires`` is the last valid day, or None.
    """

    TYPE: ClassVar[CommandType] = CommandType.CARD_PUT
    card: str
    account: str
    kind: CardKind
    status: CardStatus
    expires: date | None = None


class CardBlock(msgspec.Struct, frozen=True, kw_only=True):
    """``card.block``: refuse every tap of ``card`` from now on."""

    TYPE: ClassVar[CommandType] = CommandType.CARD_BLOCK
    card: str


class CardUnblock(msgspec.Struct, frozen=True, kw_only=True):
    """``card.unblock``: lift a ``card.block``."""

    TYPE: ClassVar[CommandType] = CommandType.CARD_UNBLOCK
    card: str


class CardsLoad(msgspec.Struct, frozen=True, kw_only=True):
    """``cards.load``: bulk sync; ``full`` replaces every card, else upserts.

    No two entries name the same card.
    """

    TYPE: ClassVar[CommandType] = CommandType.CARDS_LOAD
    version: int
    full: bool
    cards: tuple[CardPut, ...]


class TariffSet(msgspec.Struct, frozen=True, kw_only=True):
    """``tariff.set``: ``price`` yuan per ``unit`` of ``service`` from now on."""

    TYPE: ClassVar[CommandType] = CommandType.TARIFF_SET
    service: Service
    price: Decimal
    unit: TariffUnit


class RoomCut(msgspec.Struct, frozen=True, kw_only=True):
    """``room.cut``: cut by hand; with ``hold`` no automatic restore."""

    TYPE: ClassVar[CommandType] = CommandType.ROOM_CUT
    room: str
    hold: bool = False


class RoomRestore(msgspec.Struct, frozen=True, kw_only=True):
    """``room.restore``: restore by hand, clearing holds and lockouts."""

    TYPE: ClassVar[CommandType] = CommandType.ROOM_RESTORE
    room: str


class RoomLimit(msgspec.Struct, frozen=True, kw_only=True):
    """``room.limit``: set the room's overload limit (>= 100 W)."""

    TYPE: ClassVar[CommandType] = CommandType.ROOM_LIMIT
    room: str
    max_power_w: int


class EventsResend(msgspec.Struct, frozen=True, kw_only=True):
    """``events.resend``: publish kept events ``from_seq..to_seq`` (inclusive;
    open-ended when ``to_seq`` is None)."""

    TYPE: ClassVar[CommandType] = CommandType.EVENTS_RESEND
    from_seq: int
    to_seq: int | None = None


class StateGet(msgspec.Struct, frozen=True, kw_only=True):
    """``state.get``: a snapshot; at most one selector is set (none: the building)."""

    TYPE: ClassVar[CommandType] = CommandType.STATE_GET
    room: str | None = None
    account: str | None = None
    card: str | None = None


class Ping(msgspec.Struct, frozen=True, kw_only=True):
    """``ping``: answered with an empty result."""

    TYPE: ClassVar[CommandType] = CommandType.PING


CommandArgs = (
    AccountCredit
    | AccountSync
    | CardPut
    | CardBlock
    | CardUnblock
    | CardsLoad
    | TariffSet
    | RoomCut
    | RoomRestore
    | RoomLimit
    | EventsResend
    | StateGet
    | Ping
)


# --------------------------------------------------------------------------
# Outcomes
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandRejection:
    """A command refused before it was applied; ``encode()`` is the result to publish.

    ``id`` is None when the payload had no usable id.
    """

    id: str | None
    code: ErrorCode
    message: str

    def encode(self) -> bytes:
        """Return the ``{root}/cmd/result`` payload."""
        return encode_result_error(self.id, self.code, self.message)


@dataclass(frozen=True, slots=True)
class ParsedCommand:
    """A well-formed command for this building; not yet signature- or age-checked.

    ``raw`` is the object as parsed (``sig`` included), what
    ``verify_signature`` checks; do not mutate it. ``ignored`` lists the
    unknown fields that were ignored (``"args.until"``), for a log line.
    ``expires`` is the parsed ``expires``, None when absent.
    """

    id: str
    type: CommandType
    to: str
    ts: str
    issued_at: datetime
    args: CommandArgs
    raw: Mapping[str, Any]
    ignored: tuple[str, ...] = ()
    expires: datetime | None = None


# --------------------------------------------------------------------------
# Schema helpers
# --------------------------------------------------------------------------


class _Invalid(Exception):
    """A schema error; its text, ``path: problem``, is the ``bad_request`` message."""


_MISSING: Final[Any] = object()


def _encodable(text: str) -> bool:
    """Whether UTF-8 can carry ``text`` (JSON can smuggle in unpaired surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _describe(value: Any) -> str:
    """A short JSON-like rendering of a refused value, for error messages."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value) if abs(value) < 10**24 else f"an integer of {len(str(abs(value)))} digits"
    if isinstance(value, float):
        return json.dumps(value)
    if isinstance(value, str):
        shown = json.dumps(value[:40], ensure_ascii=False)
        if not _encodable(shown):  # an unpaired surrogate: show it escaped
            shown = json.dumps(value[:40])
        return shown if len(value) <= 40 else f"{shown[:-1]}...\" ({len(value)} characters)"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__  # pragma: no cover - json.loads yields nothing else


def _problem(path: str, expected: str, value: Any) -> str:
    """``path: missing, expected X`` or ``path: expected X, got Y``."""
    if value is _MISSING:
        return f"{path}: missing, expected {expected}"
    return f"{path}: expected {expected}, got {_describe(value)}"


def _fail(path: str, expected: str, value: Any) -> NoReturn:
    raise _Invalid(_problem(path, expected, value))


def _is_int(value: Any) -> bool:
    return type(value) is int  # not isinstance: a JSON true must not count as 1


def _int(path: str, value: Any, expected: str, minimum: int = -_MAX_INT) -> int:
    if not _is_int(value) or not minimum <= value <= _MAX_INT:
        _fail(path, expected, value)
    result: int = value
    return result


def _bool(path: str, value: Any) -> bool:
    if type(value) is not bool:
        _fail(path, "true or false", value)
    result: bool = value
    return result


def _name(path: str, value: Any) -> str:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_NAME_CHARS
        or _CONTROL_RE.search(value)
    ):
        _fail(path, _NAME_EXPECTED, value)
    return value


def _card(path: str, value: Any) -> str:
    if not isinstance(value, str) or not _CARD_RE.fullmatch(value):
        _fail(path, "a card UID of 2 to 32 hex digits", value)
    return value.upper()


_E = TypeVar("_E", CardKind, CardStatus, Service, TariffUnit)


def _choice(path: str, value: Any, enum: type[_E]) -> _E:
    if isinstance(value, str):
        try:
            return enum(value)
        except ValueError:
            pass
    _fail(path, "one of " + ", ".join(f'"{member.value}"' for member in enum), value)


class _Fields:
    """Reads the keys of one JSON object, remembering which were known."""

    __slots__ = ("_obj", "_path", "_seen")

    def __init__(self, obj: Mapping[str, Any], path: str) -> None:
        self._obj = obj
        self._path = path
        self._seen: set[str] = set()

    def path(self, key: str) -> str:
        return f"{self._path}.{key}"

    def get(self, key: str) -> Any:
        """The value, or ``_MISSING`` when absent."""
        self._seen.add(key)
        return self._obj.get(key, _MISSING)

    def optional(self, key: str) -> Any:
        """The value, or None when absent or null."""
        value = self.get(key)
        return None if value is _MISSING else value

    def finish(self, unknown: UnknownFields, ignored: list[str]) -> None:
        extra = sorted(key for key in self._obj if key not in self._seen)
        if extra and unknown == "reject":
            raise _Invalid(f"{self.path(extra[0])}: unknown field")
        ignored.extend(self.path(key) for key in extra)


def _args_object(path: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        _fail(path, "an object", value)
    return value


# --------------------------------------------------------------------------
# Per-type argument parsers
# --------------------------------------------------------------------------


def _account_credit(f: _Fields) -> AccountCredit:
    return AccountCredit(
        account=_name(f.path("account"), f.get("account")),
        amount_fen=_int(f.path("amount_fen"), f.get("amount_fen"), "an integer > 0", 1),
    )


def _account_sync(f: _Fields) -> AccountSync:
    return AccountSync(
        account=_name(f.path("account"), f.get("account")),
        balance_fen=_int(f.path("balance_fen"), f.get("balance_fen"), "an integer"),
        through_seq=_int(f.path("through_seq"), f.get("through_seq"), "an integer >= 0", 0),
    )


def _card_put(f: _Fields) -> CardPut:
    card = _card(f.path("card"), f.get("card"))
    account = _name(f.path("account"), f.get("account"))
    kind = _choice(f.path("kind"), f.get("kind"), CardKind)
    status = _choice(f.path("status"), f.get("status"), CardStatus)
    expires: date | None = None
    raw_expires = f.optional("expires")
    if raw_expires is not None:
        expected = "an RFC 3339 date (YYYY-MM-DD), date-time or null"
        if not isinstance(raw_expires, str):
            _fail(f.path("expires"), expected, raw_expires)
        if _DATE_RE.fullmatch(raw_expires):
            try:
                expires = date.fromisoformat(raw_expires)
            except ValueError:
                _fail(f.path("expires"), expected, raw_expires)
        else:
            moment = parse_rfc3339(raw_expires)
            if moment is None:
                _fail(f.path("expires"), expected, raw_expires)
            expires = moment.date()  # the date as written, in its own offset
    return CardPut(card=card, account=account, kind=kind, status=status, expires=expires)


def _card_block(f: _Fields) -> CardBlock:
    return CardBlock(card=_card(f.path("card"), f.get("card")))


def _card_unblock(f: _Fields) -> CardUnblock:
    return CardUnblock(card=_card(f.path("card"), f.get("card")))


def _tariff_set(f: _Fields) -> TariffSet:
    service = _choice(f.path("service"), f.get("service"), Service)
    raw_price = f.get("price")
    expected = (
        f'a decimal string of yuan from "0" to "{MAX_PRICE_YUAN}"'
        f" with at most {_PRICE_DECIMALS} decimal places"
    )
    if not isinstance(raw_price, str) or not _PRICE_RE.fullmatch(raw_price):
        _fail(f.path("price"), expected, raw_price)
    price = Decimal(raw_price)
    if price > MAX_PRICE_YUAN:
        _fail(f.path("price"), expected, raw_price)
    unit = _choice(f.path("unit"), f.get("unit"), TariffUnit)
    if service is Service.POWER and unit is not TariffUnit.KWH:
        _fail(f.path("unit"), '"kWh" for service "power"', unit.value)
    if service is not Service.POWER and unit is TariffUnit.KWH:
        _fail(f.path("unit"), f'"L" or "min" for service "{service.value}"', unit.value)
    return TariffSet(service=service, price=price, unit=unit)


def _room_cut(f: _Fields) -> RoomCut:
    room = _name(f.path("room"), f.get("room"))
    hold = f.optional("hold")
    return RoomCut(room=room, hold=False if hold is None else _bool(f.path("hold"), hold))


def _room_restore(f: _Fields) -> RoomRestore:
    return RoomRestore(room=_name(f.path("room"), f.get("room")))


def _room_limit(f: _Fields) -> RoomLimit:
    raw = f.get("max_power_w")
    if type(raw) is float and raw.is_integer() and abs(raw) <= _MAX_INT:
        raw = int(raw)  # 2000.0 from a JSON encoder that writes every number as a float
    return RoomLimit(
        room=_name(f.path("room"), f.get("room")),
        max_power_w=_int(
            f.path("max_power_w"),
            raw,
            f"an integer >= {_MIN_POWER_LIMIT_W}",
            _MIN_POWER_LIMIT_W,
        ),
    )


def _events_resend(f: _Fields) -> EventsResend:
    from_seq = _int(f.path("from_seq"), f.get("from_seq"), "an integer >= 0", 0)
    raw_to = f.optional("to_seq")
    to_seq = None
    if raw_to is not None:
        to_seq = _int(
            f.path("to_seq"), raw_to, f"an integer >= from_seq ({from_seq}) or null", from_seq
        )
    return EventsResend(from_seq=from_seq, to_seq=to_seq)


def _state_get(f: _Fields) -> StateGet:
    room, account, card = f.optional("room"), f.optional("account"), f.optional("card")
    given = [key for key, value in (("room", room), ("account", account), ("card", card))
             if value is not None]
    if len(given) > 1:
        raise _Invalid(
            f"{f.path(given[1])}: at most one of room, account and card, got {' and '.join(given)}"
        )
    return StateGet(
        room=None if room is None else _name(f.path("room"), room),
        account=None if account is None else _name(f.path("account"), account),
        card=None if card is None else _card(f.path("card"), card),
    )


def _ping(f: _Fields) -> Ping:
    return Ping()


_SIMPLE_PARSERS: Final[Mapping[CommandType, Callable[[_Fields], CommandArgs]]] = {
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


def _cards_load(f: _Fields, unknown: UnknownFields, ignored: list[str]) -> CardsLoad:
    version = _int(f.path("version"), f.get("version"), "an integer >= 0", 0)
    full = _bool(f.path("full"), f.get("full"))
    raw_cards = f.get("cards")
    if not isinstance(raw_cards, list):
        _fail(f.path("cards"), "a list of card.put arguments", raw_cards)
    cards: list[CardPut] = []
    first_index: dict[str, int] = {}
    for index, raw_card in enumerate(raw_cards):
        path = f"{f.path('cards')}[{index}]"
        entry = _Fields(_args_object(path, raw_card), path)
        card = _card_put(entry)
        entry.finish(unknown, ignored)
        if card.card in first_index:
            raise _Invalid(
                f'{path}.card: card "{card.card}" is also at'
                f" {f.path('cards')}[{first_index[card.card]}]"
            )
        first_index[card.card] = index
        cards.append(card)
    return CardsLoad(version=version, full=full, cards=tuple(cards))


def _parse_args(
    command_type: CommandType, raw_args: Any, unknown: UnknownFields, ignored: list[str]
) -> CommandArgs:
    if raw_args is _MISSING or raw_args is None:
        if command_type not in _ARGS_OPTIONAL:
            _fail("args", "an object", raw_args)
        raw_args = {}
    fields = _Fields(_args_object("args", raw_args), "args")
    if command_type is CommandType.CARDS_LOAD:
        args: CommandArgs = _cards_load(fields, unknown, ignored)
    else:
        args = _SIMPLE_PARSERS[command_type](fields)
    fields.finish(unknown, ignored)
    return args


# --------------------------------------------------------------------------
# JSON decoding
# --------------------------------------------------------------------------


class _BadJson(Exception):
    """The payload is not an acceptable JSON text; the message says why."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _BadJson(f"duplicate key {_describe(key)}")
            seen.add(key)
    return obj


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadJson(f"number {text[:40]} is out of range")
    return value


def _no_constants(name: str) -> NoReturn:
    raise _BadJson(f"{name} is not JSON")


def _decode(payload: bytes, max_bytes: int) -> dict[str, Any]:
    if len(payload) > max_bytes:
        raise _BadJson(f"payload is {len(payload)} bytes, more than the {max_bytes} accepted")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadJson(f"not UTF-8: invalid byte at offset {exc.start}") from None
    if text.startswith("\ufeff"):
        raise _BadJson("not JSON: starts with a byte order mark (U+FEFF)")
    try:
        obj = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_float=_finite_float,
            parse_constant=_no_constants,
        )
    except json.JSONDecodeError as exc:
        raise _BadJson(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise _BadJson(f"nesting deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        # The scanner has checked the syntax by then; what is left is
        # int()'s guard against integers of more than 4300 digits.
        raise _BadJson("not JSON: a number has too many digits") from None
    if not isinstance(obj, dict):
        raise _BadJson(f"payload is {_describe(obj)}, expected a JSON object")
    return obj


def _check_depth(obj: dict[str, Any]) -> None:
    """Refuse nesting deeper than MAX_DEPTH, iteratively (no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _BadJson(f"nesting deeper than {MAX_DEPTH} levels")
        values = container.values() if isinstance(container, dict) else container
        stack.extend((value, depth + 1) for value in values if isinstance(value, dict | list))


def _usable_id(value: Any) -> str | None:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS or not _encodable(value):
        return None
    return value


# --------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------


def parse_command(
    payload: bytes,
    *,
    topic_kind: TopicKind,
    building: str,
    unknown_fields: UnknownFields = "ignore",
    max_bytes: int = MAX_COMMAND_BYTES,
    signature: Callable[[dict[str, Any], str], CommandRejection | None] | None = None,
) -> ParsedCommand | CommandRejection:
    """Parse and schema-check one command payload (checks 1 to 8 of the module doc).

    Never raises. The signature is checked (step 4) only when ``signature``
    is given (``accept_command`` does); the age never is here: see
    ``verify_signature``, ``check_age`` and ``accept_command``.

    Args:
        payload: the MQTT message payload as received.
        topic_kind: ``"building"`` for ``{root}/cmd``, ``"broadcast"`` for
            ``{prefix}/all/cmd``; decides what ``to`` must be.
        building: this gateway's building id.
        unknown_fields: ``"ignore"`` (the contract's rule) or ``"reject"``
            unknown keys inside ``args``.
        max_bytes: payloads larger than this are refused unparsed.
        signature: called with the decoded object and its id after step 3;
            a rejection it returns is the result.
    """
    found_id: list[str] = []
    try:
        return _parse(
            payload,
            topic_kind=topic_kind,
            building=building,
            unknown=unknown_fields,
            max_bytes=max_bytes,
            found_id=found_id,
            signature=signature,
        )
    except Exception as exc:
        # Nothing a command carries may crash the gateway (center-link.md): a
        # bug here becomes an ``internal`` result, answered under the id if
        # it was read, and the link keeps serving.
        return CommandRejection(
            found_id[0] if found_id else None,
            ErrorCode.INTERNAL,
            f"the gateway failed to parse the command ({type(exc).__name__})",
        )


def _parse(
    payload: bytes,
    *,
    topic_kind: TopicKind,
    building: str,
    unknown: UnknownFields,
    max_bytes: int,
    found_id: list[str],
    signature: Callable[[dict[str, Any], str], CommandRejection | None] | None,
) -> ParsedCommand | CommandRejection:
    try:
        obj = _decode(bytes(payload), max_bytes)
    except _BadJson as exc:
        return CommandRejection(None, ErrorCode.BAD_JSON, str(exc))

    command_id = _usable_id(obj.get("id"))
    if command_id is None:
        expected = f"a string of 1 to {MAX_ID_CHARS} characters"
        message = _problem("id", expected, obj.get("id", _MISSING))
        return CommandRejection(None, ErrorCode.BAD_REQUEST, message)
    found_id.append(command_id)

    try:
        _check_depth(obj)
        canonical_json(obj)
    except _BadJson as exc:
        return CommandRejection(command_id, ErrorCode.BAD_JSON, str(exc))
    except UnicodeEncodeError:
        return CommandRejection(
            command_id,
            ErrorCode.BAD_JSON,
            "a string holds an unpaired surrogate escape, which UTF-8 cannot carry",
        )
    if signature is not None and (refused := signature(obj, command_id)) is not None:
        return refused

    def bad_request(message: str) -> CommandRejection:
        return CommandRejection(command_id, ErrorCode.BAD_REQUEST, message)

    to = obj.get("to", _MISSING)
    if topic_kind == "broadcast":
        wanted, where = BROADCAST_TARGET, "the broadcast command topic"
    else:
        wanted, where = building, "this building's command topic"
    if to != wanted:
        got = "missing" if to is _MISSING else f"got {_describe(to)}"
        return bad_request(f'to: expected "{wanted}" on {where}, {got}')

    raw_type = obj.get("type", _MISSING)
    if not isinstance(raw_type, str):
        return bad_request(_problem("type", "a command type string", raw_type))
    try:
        command_type = CommandType(raw_type)
    except ValueError:
        return CommandRejection(
            command_id, ErrorCode.UNKNOWN_TYPE, f"type: unknown command type {_describe(raw_type)}"
        )

    ignored: list[str] = []
    try:
        raw_ts = obj.get("ts", _MISSING)
        issued_at = parse_rfc3339(raw_ts) if isinstance(raw_ts, str) else None
        if issued_at is None:
            _fail("ts", "an RFC 3339 date-time with offset", raw_ts)
        expires = _expires(obj.get("expires"), issued_at)
        args = _parse_args(command_type, obj.get("args", _MISSING), unknown, ignored)
    except _Invalid as exc:
        return bad_request(str(exc))

    ignored[:0] = sorted(key for key in obj if key not in _TOP_LEVEL_FIELDS)
    return ParsedCommand(
        id=command_id,
        type=command_type,
        to=to,
        ts=raw_ts,
        issued_at=issued_at,
        args=args,
        raw=obj,
        ignored=tuple(ignored),
        expires=expires,
    )


def _expires(raw: Any, issued_at: datetime) -> datetime | None:
    """The command's ``expires`` (None when absent or null), within 7 days after ``ts``."""
    if raw is None:
        return None
    expected = "an RFC 3339 date-time with offset or null"
    moment = parse_rfc3339(raw) if isinstance(raw, str) else None
    if moment is None:
        _fail("expires", expected, raw)
    after = moment.timestamp() - issued_at.timestamp()
    if after < 0:
        # A command that was never valid: a bug at the center, said as such
        # rather than `stale`, which would read as a delivery delay.
        _fail("expires", "a time at or after ts", raw)
    if after > MAX_EXPIRES_S:
        _fail("expires", f"at most {MAX_EXPIRES_S // 86400} days after ts", raw)
    return moment


def verify_signature(raw_obj: Mapping[str, Any], public_key: Ed25519PublicKey) -> bool:
    """Return True when ``raw_obj["sig"]`` is the center's signature of ``raw_obj``.

    ``raw_obj`` is ``ParsedCommand.raw``. Never raises.
    """
    return verify_command(raw_obj, public_key)


def valid_window(
    issued_at: datetime, expires: datetime | None, max_age_s: float
) -> tuple[float, float]:
    """The command's validity, epoch seconds: from ``ts - max_age_s`` until
    ``expires`` when given, else until ``ts + max_age_s`` (center-link.md "Signing")."""
    issued = issued_at.timestamp()
    until = expires.timestamp() if expires is not None else issued + max_age_s
    return issued - max_age_s, until


def check_age(
    ts: str | datetime,
    now: float,
    max_age_s: float,
    *,
    expires: str | datetime | None = None,
    clock_synced: bool = True,
    command_id: str | None = None,
) -> CommandRejection | None:
    """Return a ``stale`` rejection when ``now`` is outside the command's validity.

    While the clock is synchronised both ends count: a command from further
    in the future than ``max_age_s`` is as suspect as a replayed one. While
    it is not, only the end does: the local clock may be behind, and the
    caller's ``now`` never goes back (center-link.md "Signing"). An
    unparseable ``ts`` or ``expires`` string gives ``bad_request``.

    Args:
        ts: the command's ``ts``, as text or as parsed (``ParsedCommand.issued_at``).
        now: the gateway's "now", epoch seconds.
        max_age_s: ``center.max_command_age_s``.
        expires: the command's ``expires`` (``ParsedCommand.expires``), or None.
        clock_synced: whether the clock is synchronised.
        command_id: the id the rejection answers.
    """
    issued = parse_rfc3339(ts) if isinstance(ts, str) else ts
    if issued is None:
        message = f"ts: expected an RFC 3339 date-time with offset, got {_describe(ts)}"
        return CommandRejection(command_id, ErrorCode.BAD_REQUEST, message)
    if issued.tzinfo is None:
        return CommandRejection(command_id, ErrorCode.BAD_REQUEST, "ts: has no offset")
    until_dt = parse_rfc3339(expires) if isinstance(expires, str) else expires
    if isinstance(expires, str) and until_dt is None:
        message = f"expires: expected an RFC 3339 date-time with offset, got {_describe(expires)}"
        return CommandRejection(command_id, ErrorCode.BAD_REQUEST, message)
    valid_from, valid_until = valid_window(issued, until_dt, max_age_s)
    unsynced = "" if clock_synced else (
        " (the clock is not synchronised: now is at least the newest applied command's ts)")
    if now > valid_until:
        if until_dt is not None:
            message = f"expires: passed {now - valid_until:.0f} s ago{unsynced}"
        else:
            message = (f"ts: {now - issued.timestamp():.0f} s old, more than the "
                       f"{max_age_s:g} s accepted{unsynced}")
        return CommandRejection(command_id, ErrorCode.STALE, message)
    if clock_synced and now < valid_from:
        return CommandRejection(
            command_id,
            ErrorCode.STALE,
            f"ts: {issued.timestamp() - now:.0f} s ahead of this gateway's clock, more than "
            f"the {max_age_s:g} s accepted",
        )
    return None


def accept_command(
    payload: bytes,
    *,
    topic_kind: TopicKind,
    building: str,
    public_key: Ed25519PublicKey | None,
    now: float | None,
    clock_synced: bool,
    max_age_s: float = 300.0,
    insecure_unsigned: bool = False,
    unknown_fields: UnknownFields = "ignore",
    max_bytes: int = MAX_COMMAND_BYTES,
) -> ParsedCommand | CommandRejection:
    """Run every check of the module doc, in order; the link's single entry point.

    Never raises. Duplicate ids are not this module's business: the link
    looks the id up in the store after this returns a ``ParsedCommand``.

    Args:
        payload: the MQTT message payload as received.
        topic_kind: ``"building"`` or ``"broadcast"``, the topic it came on.
        building: this gateway's building id.
        public_key: ``center.command_public_key_file``, loaded. With None
            every command is refused with ``bad_signature`` unless
            ``insecure_unsigned``.
        now: the gateway's "now", epoch seconds (while the clock is not
            synchronised, the later of the clock and the newest applied
            ``ts``); None leaves the validity to the caller, who checks it
            with ``check_age`` (after its duplicate lookup, say).
        clock_synced: whether the clock is synchronised (see ``check_age``).
        max_age_s: ``center.max_command_age_s``.
        insecure_unsigned: ``center.insecure_unsigned_commands`` (lab only):
            a command without ``sig`` is accepted; one with a ``sig`` is
            still verified when a key is configured, so a tampered command
            is refused even in a lab.
        unknown_fields: see ``parse_command``.
        max_bytes: see ``parse_command``.
    """
    def signature(raw: dict[str, Any], command_id: str) -> CommandRejection | None:
        return _signature_problem(raw, command_id, public_key, insecure_unsigned)

    parsed = parse_command(
        payload,
        topic_kind=topic_kind,
        building=building,
        unknown_fields=unknown_fields,
        max_bytes=max_bytes,
        signature=signature,
    )
    if isinstance(parsed, CommandRejection):
        return parsed
    if now is None:
        return parsed
    rejection = check_age(parsed.issued_at, now, max_age_s, expires=parsed.expires,
                          clock_synced=clock_synced, command_id=parsed.id)
    return parsed if rejection is None else rejection


def _signature_problem(
    raw: dict[str, Any], command_id: str, public_key: Ed25519PublicKey | None,
    insecure_unsigned: bool,
) -> CommandRejection | None:
    sig = raw.get(SIGNATURE_FIELD)
    if insecure_unsigned and (sig is None or public_key is None):
        return None
    if public_key is None:
        message = "no command public key is configured, so no command can be verified"
    elif sig is None:
        message = "sig: missing; commands must be signed"
    elif decode_signature(sig) is None:
        message = "sig: expected the standard base64 of a 64-byte Ed25519 signature"
    elif not verify_signature(raw, public_key):
        message = "sig: does not verify with the center's public key"
    else:
        return None
    return CommandRejection(command_id, ErrorCode.BAD_SIGNATURE, message)
