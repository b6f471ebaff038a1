"""Every enumeration the center-link contract names, and its delivery classes.

Event types, command types, error codes, alarm codes, cut/restore/end and tap
reasons, breaker and point states, services, tariff units, card kinds and
statuses, as ``StrEnum`` so that the rest of the code cannot misspell them;
which event types move money; and the delivery classes of "Delivery"
(``Priority``), the order in which the outbox publishes.

Contract of the layer: pure, no I/O. A value added here is a change of the
contract: docs/center-link.md lists every one.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum, StrEnum
from typing import Final, Literal

__all__ = [
    "MONEY_EVENT_TYPES",
    "AlarmCode",
    "BreakerState",
    "CardKind",
    "CardStatus",
    "CommandType",
    "CutReason",
    "EndReason",
    "ErrorCode",
    "EventType",
    "MoneyDirection",
    "PointState",
    "Priority",
    "RestoreReason",
    "Service",
    "TapReason",
    "TariffUnit",
    "WaterUse",
    "money_direction",
    "priority_of",
]


# --------------------------------------------------------------------------
# Enumerations of the contract
# --------------------------------------------------------------------------


class EventType(StrEnum):
    """Event ``type`` values (center-link.md "Events")."""

    TAP = "tap"
    WATER_SESSION = "water.session"
    POWER_USAGE = "power.usage"
    ACCOUNT_CREDITED = "account.credited"
    BREAKER_CUT = "breaker.cut"
    BREAKER_RESTORED = "breaker.restored"
    BALANCE_LOW = "balance.low"
    ALARM = "alarm"


class MoneyDirection(StrEnum):
    """The "money?" column of the event table."""

    DEBIT = "debit"
    CREDIT = "credit"


_MONEY: Final[Mapping[EventType, MoneyDirection]] = {
    EventType.WATER_SESSION: MoneyDirection.DEBIT,
    EventType.POWER_USAGE: MoneyDirection.DEBIT,
    EventType.ACCOUNT_CREDITED: MoneyDirection.CREDIT,
}

#: Events that move money: never dropped from the outbox, second delivery class.
MONEY_EVENT_TYPES: Final[frozenset[EventType]] = frozenset(_MONEY)


def money_direction(event_type: EventType) -> MoneyDirection | None:
    """Return whether an event type debits or credits an account, or None."""
    return _MONEY.get(event_type)


class CommandType(StrEnum):
    """Command ``type`` values (center-link.md "Commands")."""

    ACCOUNT_CREDIT = "account.credit"
    ACCOUNT_SYNC = "account.sync"
    CARD_PUT = "card.put"
    CARD_BLOCK = "card.block"
    CARD_UNBLOCK = "card.unblock"
    CARDS_LOAD = "cards.load"
    TARIFF_SET = "tariff.set"
    ROOM_CUT = "room.cut"
    ROOM_RESTORE = "room.restore"
    ROOM_LIMIT = "room.limit"
    EVENTS_RESEND = "events.resend"
    STATE_GET = "state.get"
    PING = "ping"


class ErrorCode(StrEnum):
    """``error.code`` of a failed command result."""

    BAD_JSON = "bad_json"
    BAD_REQUEST = "bad_request"
    BAD_SIGNATURE = "bad_signature"
    STALE = "stale"
    UNKNOWN_TYPE = "unknown_type"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    INTERNAL = "internal"


class AlarmCode(StrEnum):
    """``alarm.code`` values. The contract says "includes": new codes may be added."""

    METER_OFFLINE = "meter_offline"
    METER_RESET = "meter_reset"
    METER_JUMP = "meter_jump"
    BREAKER_MISMATCH = "breaker_mismatch"
    READER_OFFLINE = "reader_offline"
    VALVE_FAULT = "valve_fault"
    CLOCK_UNSYNCED = "clock_unsynced"
    OUTBOX_FULL = "outbox_full"
    # Added: the store could not commit (disk full or failing); raised in memory
    # only (logs, metrics, status.json), its clearing is recorded once it recovers.
    STORE_FAILING = "store_failing"
    # Added: a room's readings keep failing to be handled (device room:ID); its
    # protection goes on, what cannot be recorded waits (docs/decisions.md).
    ROOM_FAILING = "room_failing"
    # Added: a reader sends more refused taps a minute than
    # `gateway.refused_taps_per_min` (device reader:ID); its refusals are folded.
    READER_FLOOD = "reader_flood"


class CutReason(StrEnum):
    """``breaker.cut`` reasons."""

    BALANCE = "balance"
    OVERLOAD = "overload"
    RESISTIVE = "resistive"
    CURFEW = "curfew"
    REMOTE = "remote"
    LOCKOUT = "lockout"
    METER_OFFLINE = "meter_offline"


class RestoreReason(StrEnum):
    """``breaker.restored`` reasons."""

    BALANCE = "balance"
    RECLOSE = "reclose"
    LOCKOUT_END = "lockout_end"
    CURFEW_END = "curfew_end"
    REMOTE = "remote"
    METER_ONLINE = "meter_online"


class EndReason(StrEnum):
    """``water.session`` ``end_reason`` values."""

    TAP = "tap"
    BALANCE = "balance"
    MAX_DURATION = "max_duration"
    IDLE = "idle"
    FAULT = "fault"
    SHUTDOWN = "shutdown"
    REMOTE = "remote"
    RESTART = "restart"


class TapReason(StrEnum):
    """``tap`` ``reason`` values.

    The contract names only ``busy``; the others are this gateway's names for
    the refusals of behaviour.md "Accounts and cards" and for granted taps, so
    that every ``tap`` event carries one of a fixed, documented set.
    """

    START = "start"  # granted: the valve opened, a session started
    STOP = "stop"  # granted: the holder's own session ended
    UNKNOWN_CARD = "unknown"
    LOST = "lost"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    KIND = "kind"  # the card's kind is not allowed at this point
    UNKNOWN_ACCOUNT = "unknown_account"
    BALANCE = "balance"  # below the point's minimum balance
    OFFLINE_LIMIT = "offline_limit"  # water.offline_limit_fen spent today
    BUSY = "busy"  # another card's session is open at this point
    NO_POINT = "no_point"  # the reader serves no point
    FAULT = "fault"  # the point's valve or meter is faulty
    SHUTDOWN = "shutdown"  # the gateway is stopping and takes no taps


class BreakerState(StrEnum):
    """Telemetry ``breaker`` values."""

    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


class PointState(StrEnum):
    """Telemetry point ``state`` values."""

    CLOSED = "closed"
    OPEN = "open"
    FAULT = "fault"


class Service(StrEnum):
    """Tariff services (``tariff.set`` ``service``)."""

    POWER = "power"
    SHOWER = "shower"
    DRINKING = "drinking"


class WaterUse(StrEnum):
    """Services a water point provides (``water.session`` ``service``)."""

    SHOWER = "shower"
    DRINKING = "drinking"


class TariffUnit(StrEnum):
    """Tariff units (``tariff.set`` ``unit``)."""

    KWH = "kWh"
    LITRE = "L"
    MINUTE = "min"


class CardKind(StrEnum):
    """Card kinds (``card.put`` ``kind``)."""

    TEACHER = "teacher"
    STUDENT = "student"
    MERCHANT = "merchant"
    FAMILY = "family"
    TEMPORARY = "temporary"


class CardStatus(StrEnum):
    """Card statuses (``card.put`` ``status``)."""

    ACTIVE = "active"
    LOST = "lost"
    CANCELLED = "cancelled"


# --------------------------------------------------------------------------
# Delivery classes
# --------------------------------------------------------------------------


class Priority(IntEnum):
    """Delivery classes of center-link.md "Delivery"; a lower value goes first."""

    RESULT = 0
    MONEY = 1
    EVENT = 2
    TELEMETRY = 3


def priority_of(kind: EventType | Literal["result", "telemetry"]) -> Priority:
    """Return the delivery class of a command result, an event type or telemetry.

    The status document has no class: it is a retained latest value that the
    link publishes directly and that supersedes itself, not an outbox entry.
    """
    if kind == "result":
        return Priority.RESULT
    if kind == "telemetry":
        return Priority.TELEMETRY
    return Priority.MONEY if kind in MONEY_EVENT_TYPES else Priority.EVENT
