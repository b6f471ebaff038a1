"""What each command answers when it succeeds: the ``result`` of its success result
(center-link.md "Result shapes"), one frozen Struct per shape.

``center.command_effects`` builds these and ``wire.encode_result_ok`` encodes
them, so the published bytes are these fields in this order; the JSON Schemas
(``contract.schemas``) are generated from the same classes. ``RESULT_SHAPES``
says which shapes each command type may answer with (``state.get`` has four).

Contract of the layer: pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Annotated, Final

import msgspec
from msgspec import Meta

from gatewayd.contract.enums import (
    BreakerState,
    CardKind,
    CardStatus,
    CommandType,
    CutReason,
    Service,
    TariffUnit,
)
from gatewayd.contract.scalars import Fen, Wh
from gatewayd.contract.wire import Status

__all__ = [
    "RESULT_SHAPES",
    "AccountSnapshot",
    "AccountStateResult",
    "CardResult",
    "CardSnapshot",
    "CardStateResult",
    "CardStatusResult",
    "CardsLoadResult",
    "CreditResult",
    "EmptyResult",
    "ResendResult",
    "RoomLimitResult",
    "RoomResult",
    "RoomSnapshot",
    "RoomStateResult",
    "SyncResult",
    "TariffResult",
]

_COUNT: Final = Meta(ge=0)


class CreditResult(msgspec.Struct, frozen=True, kw_only=True):
    """``account.credit``: the account's balance after the credit."""

    account: str
    balance_fen: Fen


class SyncResult(msgspec.Struct, frozen=True, kw_only=True):
    """``account.sync``: the gateway's balance now, and what it subtracted from the
    center's figure (charges the center had not seen at ``through_seq``)."""

    account: str
    balance_fen: Fen
    unreported_fen: Fen


class CardResult(msgspec.Struct, frozen=True, kw_only=True):
    """``card.put``: the card stored (its id as stored, upper case)."""

    card: str


class CardStatusResult(msgspec.Struct, frozen=True, kw_only=True):
    """``card.block`` and ``card.unblock``: the card's status now (a cancelled card
    stays cancelled)."""

    card: str
    status: CardStatus


class CardsLoadResult(msgspec.Struct, frozen=True, kw_only=True):
    """``cards.load``: the version loaded, whether it replaced every card, and how
    many cards the list held."""

    version: Annotated[int, _COUNT]
    full: bool
    cards: Annotated[int, _COUNT]


class TariffResult(msgspec.Struct, frozen=True, kw_only=True):
    """``tariff.set``: the price in force from now on."""

    service: Service
    price: Annotated[str, Meta(description="Yuan per unit, the decimal string as sent.")]
    unit: TariffUnit


class RoomResult(msgspec.Struct, frozen=True, kw_only=True):
    """``room.cut`` and ``room.restore``: the state the command led to (a restore
    leaves a room cut while its balance or a curfew says so)."""

    room: str
    cut: bool
    cut_reason: Annotated[CutReason | None, Meta(description="Why it is cut; null when it is not.")]
    hold: bool


class RoomLimitResult(RoomResult, frozen=True, kw_only=True):
    """``room.limit``: the state the command led to, and the limit set."""

    max_power_w: Annotated[int, Meta(ge=100)]


class ResendResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``events.resend``: the range served and how many kept events were queued again."""

    from_seq: Annotated[int, Meta(description="The from_seq asked for.")]
    to_seq: Annotated[int | None, Meta(
        description="The end of the range served: the to_seq asked, or the last seq assigned; "
        "null when from_seq is beyond the last seq assigned (nothing to serve).")]
    queued: Annotated[int, _COUNT]
    missing: Annotated[tuple[tuple[int, int], ...] | None, Meta(
        description="Present only when some seqs in range are no longer kept: inclusive "
        "[from, to] ranges.")] = None


class RoomSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A room as ``state.get`` shows it: its account, breaker, rules' state, and
    the last values read (null before any; kept while the meter is offline)."""

    room: str
    account: str
    balance_fen: Fen
    account_known: bool
    breaker: BreakerState
    cut_reason: CutReason | None
    hold: bool
    lockout: bool
    max_power_w: int
    online: bool
    failing: bool
    power_w: float | None
    energy_wh: Wh | None
    voltage_v: float | None
    current_a: float | None
    pf: float | None
    accrued_fen: Annotated[Fen, Meta(description="Charged, not yet reported.")]


class RoomStateResult(msgspec.Struct, frozen=True, kw_only=True):
    """``state.get`` with ``room``."""

    room: RoomSnapshot


class AccountSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """An account as the gateway holds it; ``known``: credited or synced by the center."""

    account: str
    balance_fen: Fen
    known: bool


class AccountStateResult(msgspec.Struct, frozen=True, kw_only=True):
    """``state.get`` with ``account``."""

    account: AccountSnapshot


class CardSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A card as the gateway holds it; ``expires`` is its last valid day."""

    card: str
    account: str
    kind: CardKind
    status: CardStatus
    expires: date | None


class CardStateResult(msgspec.Struct, frozen=True, kw_only=True):
    """``state.get`` with ``card``."""

    card: CardSnapshot


class EmptyResult(msgspec.Struct, frozen=True):
    """``ping``: an empty object."""


#: The shapes each command type answers with; ``state.get`` without a selector
#: answers with the status document as it would be published now.
RESULT_SHAPES: Final[Mapping[CommandType, tuple[type[msgspec.Struct], ...]]] = {
    CommandType.ACCOUNT_CREDIT: (CreditResult,),
    CommandType.ACCOUNT_SYNC: (SyncResult,),
    CommandType.CARD_PUT: (CardResult,),
    CommandType.CARD_BLOCK: (CardStatusResult,),
    CommandType.CARD_UNBLOCK: (CardStatusResult,),
    CommandType.CARDS_LOAD: (CardsLoadResult,),
    CommandType.TARIFF_SET: (TariffResult,),
    CommandType.ROOM_CUT: (RoomResult,),
    CommandType.ROOM_RESTORE: (RoomResult,),
    CommandType.ROOM_LIMIT: (RoomLimitResult,),
    CommandType.EVENTS_RESEND: (ResendResult,),
    CommandType.STATE_GET: (Status, RoomStateResult, AccountStateResult, CardStateResult),
    CommandType.PING: (EmptyResult,),
}
