"""The typed center commands: one frozen Struct of arguments per v1 command type, and the
two outcomes of reading a payload (center-link.md "Commands").

Contract of the module: data only, no parsing. ``commands.parse_command`` and
``command_admission.accept_command`` produce a ``ParsedCommand`` (its ``args``
one of ``CommandArgs``) or a ``CommandRejection``, whose ``encode()`` is the
result to publish. The limits below bound what a payload may hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Final, Generic, Literal, TypeVar

import msgspec
from msgspec import Meta

from gatewayd.contract.enums import CardKind, CardStatus, CommandType, ErrorCode, Service, TariffUnit
from gatewayd.contract.scalars import JSON_INT_MAX
from gatewayd.contract.wire import encode_result_error

__all__ = [
    "BROADCAST_TARGET",
    "MAX_AMOUNT_FEN",
    "MAX_BALANCE_FEN",
    "MAX_COMMAND_BYTES",
    "MAX_DEPTH",
    "MAX_EXPIRES_S",
    "MAX_ID_CHARS",
    "MAX_NAME_CHARS",
    "MAX_PRICE_YUAN",
    "PRICE_PATTERN",
    "AccountCredit",
    "AccountSync",
    "CardBlock",
    "CardPut",
    "CardUnblock",
    "CardsLoad",
    "Command",
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
#: The money bound (docs/decisions.md "Money stays exact in a double"): the
#: largest ``amount_fen`` one ``account.credit`` carries, 10**12 fen (ten
#: billion yuan), and the largest balance in either sign, 2**53 - 1 (the
#: integers an IEEE double holds exactly, as ``command_fields.MAX_INT``). A
#: credit or sync that would carry a balance past it is ``conflict``.
MAX_AMOUNT_FEN: Final = 10**12
MAX_BALANCE_FEN: Final = 2**53 - 1
#: Latest ``expires`` after ``ts`` (center-link.md "Signing").
MAX_EXPIRES_S: Final = 7 * 86400
#: ``tariff.set`` ``price`` as the JSON Schemas state it: a plain decimal string
#: from 0 to ``MAX_PRICE_YUAN`` with at most 6 decimal places (``command_args``
#: checks the same; a test holds the two together).
PRICE_PATTERN: Final = r"^(?:(?:0|[1-9][0-9]?)(?:\.[0-9]{1,6})?|100(?:\.0{1,6})?)$"

# What the arguments are on the wire, for the JSON Schemas (``contract.schemas``).
# ``command_args`` reads them by hand; constructing a Struct checks nothing.
_Name = Annotated[str, Meta(
    min_length=1, max_length=MAX_NAME_CHARS, pattern=r"^[^\u0000-\u001f\u007f-\u009f]*$",
    description=f"1 to {MAX_NAME_CHARS} characters without control characters.")]
_CardId = Annotated[str, Meta(
    pattern=r"^(?:[0-9A-Fa-f]{2}){1,16}$",
    description="In the building's card_format: hex, 2 to 32 hex digits (whole bytes, upper or "
    "lower case, stored upper case); or dec10, exactly 10 digits, at most 4294967295.")]
_Time = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]
_Int = Annotated[int, Meta(ge=-JSON_INT_MAX, le=JSON_INT_MAX)]
_Count = Annotated[int, Meta(ge=0, le=JSON_INT_MAX)]


# --------------------------------------------------------------------------
# Typed arguments, one Struct per command type
# --------------------------------------------------------------------------


class AccountCredit(msgspec.Struct, frozen=True, kw_only=True):
    """``account.credit``: top up ``account`` by ``amount_fen`` (> 0)."""

    TYPE: ClassVar[CommandType] = CommandType.ACCOUNT_CREDIT
    account: _Name
    amount_fen: Annotated[int, Meta(ge=1, le=MAX_AMOUNT_FEN,
                                    description="The credit, fen (at most 10^12).")]


class AccountSync(msgspec.Struct, frozen=True, kw_only=True):
    """``account.sync``: the center's balance after this building's events up to ``through_seq``."""

    TYPE: ClassVar[CommandType] = CommandType.ACCOUNT_SYNC
    account: _Name
    balance_fen: Annotated[_Int, Meta(description="The center's balance, fen, any sign.")]
    through_seq: Annotated[_Count, Meta(
        description="The highest seq of this building the center has applied; "
        "beyond the last seq: conflict.")]


class CardPut(msgspec.Struct, frozen=True, kw_only=True):
    """``card.put`` (and each entry of ``cards.load``): issue or change a card.

    ``card`` is in the building's ``card_format`` (upper-case hex, or 10
    digits); ``expires`` is the last valid day, or None.
    """

    TYPE: ClassVar[CommandType] = CommandType.CARD_PUT
    card: _CardId
    account: _Name
    kind: CardKind
    status: CardStatus
    expires: Annotated[date | None, Meta(
        description="The last valid day (YYYY-MM-DD), or an RFC 3339 date-time (its date as "
        "written); absent or null: no end.")] = None


class CardBlock(msgspec.Struct, frozen=True, kw_only=True):
    """``card.block``: refuse every tap of ``card`` from now on."""

    TYPE: ClassVar[CommandType] = CommandType.CARD_BLOCK
    card: _CardId


class CardUnblock(msgspec.Struct, frozen=True, kw_only=True):
    """``card.unblock``: lift a ``card.block``."""

    TYPE: ClassVar[CommandType] = CommandType.CARD_UNBLOCK
    card: _CardId


class CardsLoad(msgspec.Struct, frozen=True, kw_only=True):
    """``cards.load``: bulk sync; ``full`` replaces every card, else upserts.

    No two entries name the same card.
    """

    TYPE: ClassVar[CommandType] = CommandType.CARDS_LOAD
    version: Annotated[_Count, Meta(description="Not older than the loaded version (else conflict).")]
    full: bool
    cards: Annotated[tuple[CardPut, ...], Meta(description="card.put arguments; no card twice.")]


class TariffSet(msgspec.Struct, frozen=True, kw_only=True):
    """``tariff.set``: ``price`` yuan per ``unit`` of ``service`` from now on."""

    TYPE: ClassVar[CommandType] = CommandType.TARIFF_SET
    service: Service
    price: Annotated[Decimal, Meta(
        extra_json_schema={"pattern": PRICE_PATTERN},
        description=f'Yuan per unit: a plain decimal string from "0" to "{MAX_PRICE_YUAN}", '
        "at most 6 decimals, no sign, exponent, spaces or leading zeros.")]
    unit: Annotated[TariffUnit, Meta(description="kWh for power; L or min for water.")]


class RoomCut(msgspec.Struct, frozen=True, kw_only=True):
    """``room.cut``: cut by hand; with ``hold`` no automatic restore."""

    TYPE: ClassVar[CommandType] = CommandType.ROOM_CUT
    room: _Name
    hold: Annotated[bool, Meta(description="Stay cut until room.restore; absent or null: false.")] = False


class RoomRestore(msgspec.Struct, frozen=True, kw_only=True):
    """``room.restore``: restore by hand, clearing holds and lockouts."""

    TYPE: ClassVar[CommandType] = CommandType.ROOM_RESTORE
    room: _Name


class RoomLimit(msgspec.Struct, frozen=True, kw_only=True):
    """``room.limit``: set the room's overload limit (>= 100 W)."""

    TYPE: ClassVar[CommandType] = CommandType.ROOM_LIMIT
    room: _Name
    max_power_w: Annotated[int, Meta(ge=100, le=JSON_INT_MAX)]


class EventsResend(msgspec.Struct, frozen=True, kw_only=True):
    """``events.resend``: publish kept events ``from_seq..to_seq`` (inclusive;
    open-ended when ``to_seq`` is None)."""

    TYPE: ClassVar[CommandType] = CommandType.EVENTS_RESEND
    from_seq: _Count
    to_seq: Annotated[_Count | None, Meta(
        description="At least from_seq; absent or null: up to the last seq.")] = None


class StateGet(msgspec.Struct, frozen=True, kw_only=True):
    """``state.get``: a snapshot; at most one selector is set (none: the building)."""

    TYPE: ClassVar[CommandType] = CommandType.STATE_GET
    room: _Name | None = None
    account: _Name | None = None
    card: _CardId | None = None


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


#: The ``args`` of a ``Command``.
A = TypeVar("A")


class Command(msgspec.Struct, Generic[A], frozen=True, kw_only=True):
    """A command as the center publishes it, on ``{root}/cmd`` or ``{prefix}/all/cmd``.

    The JSON Schemas are generated from this class; ``commands.parse_command``
    reads a payload field by field, in the contract's order of checks, not
    through it. Other top-level fields are ignored, and signed.
    """

    id: Annotated[str, Meta(
        min_length=1, max_length=MAX_ID_CHARS,
        description="Unique across every center tool, for ever (use a UUID); the result carries it.")]
    to: Annotated[str, Meta(
        pattern=r"^[a-z0-9-]{1,32}$",
        description='The building id on {root}/cmd; "all" on {prefix}/all/cmd.')]
    type: CommandType
    ts: Annotated[_Time, Meta(description="When the center issued it: an RFC 3339 date-time with an offset.")]
    expires: Annotated[_Time | None, Meta(
        description="End of validity, RFC 3339: not before ts, at most 7 days after it; "
        "absent or null: ts + center.max_command_age_s.")] = None
    args: A
    sig: Annotated[str, Meta(
        pattern=r"^[A-Za-z0-9+/]{86}==$",
        description="Standard base64, padded, of the Ed25519 signature of the canonical form "
        "of the command without sig (center-link.md \"Signing\").")]


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
