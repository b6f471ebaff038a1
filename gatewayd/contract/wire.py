"""What the gateway publishes to the center, as bytes: center-link.md, contract version 1.

This module is the single place where the published JSON is shaped: the event
envelope and every event type's fields, command results, the status document
and its will, telemetry, and the RFC 3339 timestamps they carry. It also holds
every enumeration the contract names (event types, error codes, alarm codes,
cut/restore/end reasons, ...) as ``StrEnum`` so that the rest of the code
cannot misspell them, and the delivery classes of "Delivery".

Contract of the layer: pure functions and frozen ``msgspec`` Structs, no I/O,
no clock (callers pass epoch seconds and a ``tzinfo``). Output is compact
UTF-8 JSON from ``msgspec.json``; keys the contract marks as present are
always present (``null`` when a value is unknown, e.g. a meter that is
offline), so a center developer never has to guess whether a key may be
missing. Non-finite floats encode as ``null``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from enum import IntEnum, StrEnum
from typing import Any, Final, Literal

import msgspec

__all__ = [
    "MONEY_EVENT_TYPES",
    "AccountCredited",
    "Alarm",
    "AlarmCode",
    "BalanceLow",
    "BreakerCut",
    "BreakerRestored",
    "BreakerState",
    "CardKind",
    "CardStatus",
    "CommandType",
    "CutReason",
    "EndReason",
    "ErrorCode",
    "EventBody",
    "EventEnvelope",
    "EventType",
    "Faults",
    "MoneyDirection",
    "PointReading",
    "PointState",
    "PowerUsage",
    "Priority",
    "RestoreReason",
    "RoomReading",
    "Service",
    "Status",
    "Tap",
    "TapReason",
    "TariffUnit",
    "Telemetry",
    "WaterSession",
    "WaterUse",
    "as_duplicate",
    "decode_event",
    "encode_event",
    "encode_result_error",
    "encode_result_ok",
    "encode_status",
    "encode_telemetry",
    "encode_will",
    "event_type_of",
    "money_direction",
    "parse_rfc3339",
    "priority_of",
    "rfc3339",
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


# --------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------


def rfc3339(epoch: float, tz: tzinfo) -> str:
    """Format epoch seconds as RFC 3339 in ``tz``, with milliseconds and offset.

    ``rfc3339(1795439045.12, ZoneInfo("Asia/Shanghai"))`` is
    ``"2026-11-23T21:04:05.120+08:00"``. The time is rounded to the
    microsecond (as ``datetime`` does, which absorbs float noise such as
    ``.1199999``), then truncated to the millisecond: never reported more
    than 0.5 us later than it happened. UTC is written ``+00:00``.
    """
    return datetime.fromtimestamp(epoch, tz).isoformat(timespec="milliseconds")


# Strict RFC 3339 date-time (section 5.6); Python's fromisoformat accepts much
# more (basic format, missing offset, week dates), which the contract does not.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)


def parse_rfc3339(text: str) -> datetime | None:
    """Parse an RFC 3339 date-time with offset; return an aware datetime or None.

    Accepts ``T``/``t``/space as separator, ``Z``/``z`` or ``±hh:mm``, and up
    to 9 fractional digits (truncated to microseconds). A leap second
    (``:60``) reads as ``:59.999999``. Anything else, including a time
    without an offset, returns None.
    """
    m = _RFC3339.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    frac, zulu, sign, off_h, off_m = m.group(7, 8, 9, 10, 11)
    micro = int((frac or "0")[:6].ljust(6, "0"))
    if second == 60:
        second, micro = 59, 999_999
    try:
        if zulu:
            tz: tzinfo = UTC
        else:
            oh, om = int(off_h), int(off_m)
            if oh > 23 or om > 59:
                return None
            offset = timedelta(hours=oh, minutes=om)
            tz = timezone(-offset if sign == "-" else offset)
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError:  # day 31 of a 30-day month, hour 24, ...
        return None


# --------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------


class EventEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    """The fields every event carries besides its type's own.

    ``id`` is unique for ever; ``seq`` rises by exactly 1 per event in the
    building; ``ts`` is an RFC 3339 string (see ``rfc3339``).
    """

    id: str
    seq: int
    ts: str
    building: str


class _EventBody(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of the per-type event fields; the tag is the event ``type``."""


class Tap(_EventBody, frozen=True, kw_only=True, omit_defaults=True, tag=EventType.TAP.value):
    """A card presented to a reader, granted or refused.

    ``count``, when present, is how many refused taps of the reader and
    reason the event stands for (folded during a reader flood; ``card`` and
    ``point`` are then the last one's).
    """

    reader: str
    card: str
    point: str | None
    granted: bool
    reason: TapReason
    count: int | None = None


class WaterSession(_EventBody, frozen=True, kw_only=True, tag=EventType.WATER_SESSION.value):
    """A finished water session with its whole charge (debit)."""

    session: str
    point: str
    service: WaterUse
    card: str
    account: str
    started: str
    ended: str
    volume_ml: int
    seconds: int
    amount_fen: int
    end_reason: EndReason
    offline: bool


class PowerUsage(_EventBody, frozen=True, kw_only=True, tag=EventType.POWER_USAGE.value):
    """Accrued electricity usage of a room (debit); reports of a room chain."""

    room: str
    account: str
    wh: int
    amount_fen: int
    meter_wh_from: int
    meter_wh_to: int
    balance_fen: int


class AccountCredited(_EventBody, frozen=True, kw_only=True, tag=EventType.ACCOUNT_CREDITED.value):
    """A top-up applied; ``command`` is the ``account.credit`` command's id."""

    account: str
    amount_fen: int
    balance_fen: int
    command: str


class BreakerCut(_EventBody, frozen=True, kw_only=True, tag=EventType.BREAKER_CUT.value):
    """A room's supply cut; ``power_w`` is None when no reading is at hand."""

    room: str
    reason: CutReason
    power_w: float | None


class BreakerRestored(_EventBody, frozen=True, kw_only=True, tag=EventType.BREAKER_RESTORED.value):
    """A room's supply restored."""

    room: str
    reason: RestoreReason


class BalanceLow(_EventBody, frozen=True, kw_only=True, tag=EventType.BALANCE_LOW.value):
    """An account fell under ``power.low_balance_fen`` (sent once per fall)."""

    account: str
    balance_fen: int


class Alarm(_EventBody, frozen=True, kw_only=True, tag=EventType.ALARM.value):
    """An alarm raised (``active`` true) or cleared (false).

    ``detail`` is free-form for people, except where the contract gives it a
    meaning (``meter_jump``: the uncharged Wh, an integer).
    """

    code: AlarmCode
    device: str
    detail: str | int | float | None
    active: bool


EventBody = (
    Tap
    | WaterSession
    | PowerUsage
    | AccountCredited
    | BreakerCut
    | BreakerRestored
    | BalanceLow
    | Alarm
)

_ENCODER: Final = msgspec.json.Encoder()
_BODY_DECODER: Final = msgspec.json.Decoder(EventBody)
_ENVELOPE_DECODER: Final = msgspec.json.Decoder(EventEnvelope)


def event_type_of(body: EventBody) -> EventType:
    """Return the event ``type`` of an event body."""
    tag = body.__struct_config__.tag
    assert isinstance(tag, str)
    return EventType(tag)


def encode_event(envelope: EventEnvelope, body: EventBody) -> bytes:
    """Encode one event message: the envelope, ``type``, then the type's fields.

    >>> encode_event(EventEnvelope(id="e1", seq=7, ts="...", building="b07"),
    ...              BalanceLow(account="a1", balance_fen=420))
    b'{"id":"e1","seq":7,"ts":"...","building":"b07","type":"balance.low",'
    b'"account":"a1","balance_fen":420}'
    """
    # Two objects spliced: the body's encoding starts with its tag, "type".
    return _ENCODER.encode(envelope)[:-1] + b"," + _ENCODER.encode(body)[1:]


def decode_event(payload: bytes) -> tuple[EventEnvelope, EventBody]:
    """Decode an event message; fields a newer contract adds are ignored.

    Raises ``msgspec.ValidationError`` or ``msgspec.DecodeError`` on a payload
    that is not a known event. Meant for tests, simulators and outbox tooling.
    """
    return _ENVELOPE_DECODER.decode(payload), _BODY_DECODER.decode(payload)


# --------------------------------------------------------------------------
# Command results
# --------------------------------------------------------------------------


class _Error(msgspec.Struct, frozen=True):
    code: ErrorCode
    message: str


class _Result(msgspec.Struct, frozen=True, omit_defaults=True):
    # ``id`` has no default so that a null id is still written out.
    id: str | None
    ok: bool
    result: Mapping[str, Any] | None = None
    error: _Error | None = None
    duplicate: bool = False


def encode_result_ok(command_id: str, result: Mapping[str, Any] | None = None) -> bytes:
    """Encode a success result: ``{"id":..,"ok":true,"result":{..}}``.

    ``result`` must be msgspec-encodable (builtins, Structs, enums); None and
    an empty mapping both give ``"result":{}``, as ``ping`` answers.
    """
    return _ENCODER.encode(_Result(id=command_id, ok=True, result=result or {}))


def encode_result_error(command_id: str | None, code: ErrorCode, message: str) -> bytes:
    """Encode a failure: ``{"id":..,"ok":false,"error":{"code":..,"message":..}}``.

    ``command_id`` is None when the command had no usable id (``bad_json``,
    ``bad_request``); the result then carries ``"id":null``.
    """
    return _ENCODER.encode(_Result(id=command_id, ok=False, error=_Error(code, message)))


def as_duplicate(first_result: bytes) -> bytes:
    """Return the stored first result of a command with ``"duplicate":true`` added.

    ``first_result`` must be a result this module encoded. Applying it twice
    gives the same bytes.
    """
    decoded: dict[str, Any] = msgspec.json.decode(first_result)
    decoded["duplicate"] = True
    return _ENCODER.encode(decoded)


# --------------------------------------------------------------------------
# Status and will
# --------------------------------------------------------------------------


class Faults(msgspec.Struct, frozen=True, kw_only=True):
    """Counts of devices currently faulty, by family."""

    meters: int = 0
    readers: int = 0
    valves: int = 0


class Status(msgspec.Struct, frozen=True, kw_only=True):
    """The retained status document, published online.

    ``cards_version`` is 0 until a ``cards.load`` has been applied;
    ``started`` is RFC 3339.
    """

    building: str
    boot_id: str
    store_id: str
    version: str
    started: str
    clock_synced: bool
    cards_version: int
    last_seq: int
    pending: int
    accounts_unknown: int
    rooms: int
    points: int
    readers: int
    faults: Faults


def encode_status(status: Status) -> bytes:
    """Encode the status document, ``"online":true`` first."""
    fields: dict[str, Any] = {"online": True}
    fields.update(msgspec.to_builtins(status))
    return _ENCODER.encode(fields)


def encode_will(building: str, boot_id: str) -> bytes:
    """Encode the will, also published on a clean shutdown.

    ``{"online":false,"building":"b07","boot_id":"..."}``
    """
    return _ENCODER.encode({"online": False, "building": building, "boot_id": boot_id})


# --------------------------------------------------------------------------
# Telemetry
# --------------------------------------------------------------------------


class RoomReading(msgspec.Struct, frozen=True, kw_only=True):
    """A room's latest readings; a value the meter does not give, or has not
    given since it went offline, is None (``null``), and the key stays."""

    room: str
    online: bool
    power_w: float | None
    energy_wh: int | None
    voltage_v: float | None
    current_a: float | None
    pf: float | None
    breaker: BreakerState
    balance_fen: int | None


class PointReading(msgspec.Struct, frozen=True, kw_only=True):
    """A water point's state; ``card`` and ``volume_ml`` are those of the open
    session, None when the point is closed."""

    point: str
    state: PointState
    card: str | None
    volume_ml: int | None


class Telemetry(msgspec.Struct, frozen=True, kw_only=True):
    """The periodic telemetry document (QoS 0, lowest delivery class)."""

    ts: str
    building: str
    rooms: tuple[RoomReading, ...]
    points: tuple[PointReading, ...]


def encode_telemetry(telemetry: Telemetry) -> bytes:
    """Encode a telemetry document."""
    return _ENCODER.encode(telemetry)
