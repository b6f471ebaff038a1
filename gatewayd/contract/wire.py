"""What the gateway publishes besides events, as bytes: center-link.md, contract version 1.

Command results, the status document and its will, telemetry, and the RFC
3339 timestamps every message carries. Events are in ``contract.events``,
the enumerations and delivery classes in ``contract.enums``; together the
three are the single place where the published JSON is shaped.

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
from typing import Annotated, Any, Final, Generic, TypeVar

import msgspec
from msgspec import Meta

from gatewayd.contract.enums import BreakerState, ErrorCode, PointState
from gatewayd.contract.scalars import Fen, Timestamp, Uuid, Wh

__all__ = [
    "CommandError",
    "Faults",
    "PointReading",
    "ResultError",
    "ResultOk",
    "RoomReading",
    "Status",
    "Telemetry",
    "Will",
    "as_duplicate",
    "encode_result_error",
    "encode_result_ok",
    "encode_status",
    "encode_telemetry",
    "encode_will",
    "parse_rfc3339",
    "rfc3339",
]

_ENCODER: Final = msgspec.json.Encoder()


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
# Command results
# --------------------------------------------------------------------------


#: The shape of a success result's ``result`` (a ``contract.results`` Struct).
R = TypeVar("R")

_DUPLICATE: Final = Meta(
    extra_json_schema={"const": True},
    description="Present, true, when the id was seen before: this is the first result again, "
    "and the command was not applied again.",
)


class CommandError(msgspec.Struct, frozen=True):
    """Why a command failed."""

    code: ErrorCode
    message: Annotated[str, Meta(
        description="For people; for bad_request it names the field, JSON-path style.")]


class ResultOk(msgspec.Struct, Generic[R], frozen=True, kw_only=True, omit_defaults=True):
    """A command's success result, on ``{root}/cmd/result``."""

    id: Annotated[str, Meta(min_length=1, max_length=64, description="The command's id.")]
    ok: Annotated[bool, Meta(extra_json_schema={"const": True})]
    result: R
    duplicate: Annotated[bool, _DUPLICATE] = False


class ResultError(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A command's failure result, on ``{root}/cmd/result``."""

    # ``id`` has no default so that a null id is still written out.
    id: Annotated[str | None, Meta(description="The command's id; null when it had no usable one.")]
    ok: Annotated[bool, Meta(extra_json_schema={"const": False})]
    error: CommandError
    duplicate: Annotated[bool, _DUPLICATE] = False


def encode_result_ok(command_id: str, result: Mapping[str, Any] | msgspec.Struct | None = None) -> bytes:
    """Encode a success result: ``{"id":..,"ok":true,"result":{..}}``.

    ``result`` is a ``contract.results`` Struct (or a msgspec-encodable
    mapping); None and an empty mapping both give ``"result":{}``, as
    ``ping`` answers.
    """
    return _ENCODER.encode(ResultOk(id=command_id, ok=True, result={} if result is None else result))


def encode_result_error(command_id: str | None, code: ErrorCode, message: str) -> bytes:
    """Encode a failure: ``{"id":..,"ok":false,"error":{"code":..,"message":..}}``.

    ``command_id`` is None when the command had no usable id (``bad_json``,
    ``bad_request``); the result then carries ``"id":null``.
    """
    return _ENCODER.encode(ResultError(id=command_id, ok=False, error=CommandError(code, message)))


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


_COUNT: Final = Meta(ge=0)


class Status(msgspec.Struct, frozen=True, kw_only=True):
    """The retained status document, published online.

    ``online`` is always true here (the will says false) and comes first;
    ``cards_version`` is 0 until a ``cards.load`` has been applied.
    """

    online: Annotated[bool, Meta(extra_json_schema={"const": True})] = True
    building: str
    boot_id: Annotated[Uuid, Meta(description="This run of the daemon; new at every start.")]
    store_id: Annotated[Uuid, Meta(
        description="The store the events come from; seq starts again at 1 only under a new one.")]
    version: Annotated[str, Meta(description="The gateway's software version.")]
    started: Annotated[Timestamp, Meta(description="When this run started.")]
    clock_synced: bool
    cards_version: Annotated[int, _COUNT]
    last_seq: Annotated[int, Meta(ge=0, description="The last seq assigned; 0 before the first event.")]
    pending: Annotated[int, Meta(ge=0, description="Results and events not yet acknowledged by the broker.")]
    accounts_unknown: Annotated[int, _COUNT]
    rooms: Annotated[int, _COUNT]
    points: Annotated[int, _COUNT]
    readers: Annotated[int, _COUNT]
    faults: Faults


class Will(msgspec.Struct, frozen=True, kw_only=True):
    """The will: the broker publishes it when the gateway's connection is lost,
    and the gateway itself on a clean stop."""

    online: Annotated[bool, Meta(extra_json_schema={"const": False})] = False
    building: str
    boot_id: Uuid


def encode_status(status: Status) -> bytes:
    """Encode the status document, ``"online":true`` first."""
    return _ENCODER.encode(status)


def encode_will(building: str, boot_id: str) -> bytes:
    """Encode the will, also published on a clean shutdown.

    ``{"online":false,"building":"b07","boot_id":"..."}``
    """
    return _ENCODER.encode(Will(building=building, boot_id=boot_id))


# --------------------------------------------------------------------------
# Telemetry
# --------------------------------------------------------------------------


class RoomReading(msgspec.Struct, frozen=True, kw_only=True):
    """A room's latest readings; a value the meter does not give, or has not
    given since it went offline, is None (``null``), and the key stays."""

    room: str
    online: Annotated[bool, Meta(description="false while the meter is offline or has not answered yet.")]
    power_w: float | None
    energy_wh: Wh | None
    voltage_v: float | None
    current_a: float | None
    pf: float | None
    breaker: Annotated[BreakerState, Meta(description="unknown until the breaker has been read.")]
    balance_fen: Fen | None


class PointReading(msgspec.Struct, frozen=True, kw_only=True):
    """A water point's state; ``card`` and ``volume_ml`` are those of the open
    session, None when the point is closed."""

    point: str
    state: PointState
    card: Annotated[str | None, Meta(description="The open session's card; null when none is open.")]
    volume_ml: Annotated[int | None, Meta(
        description="The open session's water so far, mL (0 without a flow meter); "
        "null when no session is open.")]


class Telemetry(msgspec.Struct, frozen=True, kw_only=True):
    """The periodic telemetry document (QoS 0, lowest delivery class)."""

    ts: Timestamp
    building: str
    rooms: tuple[RoomReading, ...]
    points: tuple[PointReading, ...]


def encode_telemetry(telemetry: Telemetry) -> bytes:
    """Encode a telemetry document."""
    return _ENCODER.encode(telemetry)
