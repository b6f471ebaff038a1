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
from typing import Any, ClassVar, Final, Literal

import msgspec

from gatewayd.contract.enums import CardKind, CardStatus, CommandType, ErrorCode, Service, TariffUnit
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

    ``card`` is in the building's ``card_format`` (upper-case hex, or 10
    digits); ``expires`` is the last valid day, or None.
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
