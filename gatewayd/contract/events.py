"""The events the gateway publishes (center-link.md "Events"), as typed bodies.

``EventEnvelope`` holds what every event carries (id, seq, ts, building);
each event type is a frozen ``msgspec`` Struct tagged with its ``type``.
Services build a body (``BreakerCut(room=..., reason=CutReason.OVERLOAD, ...)``)
and the store's ``Txn.event`` adds the envelope: no event is a hand-written
dict, and mypy checks every field. ``encode_event`` gives the published bytes:
the envelope, ``type``, then the type's fields, compact UTF-8 JSON; keys the
contract marks as present are always present (``null`` when unknown).

An alarm's ``device`` names what it is about, ``kind:id`` (``meter:301``):
the functions at the end are the one place those names are made.

Contract of the layer: pure, no I/O, no clock.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec
from msgspec import Meta

from gatewayd.contract.enums import (
    AlarmCode,
    CutReason,
    EndReason,
    EventType,
    RestoreReason,
    TapReason,
    WaterUse,
)
from gatewayd.contract.scalars import Fen, Seq, Timestamp, Uuid, Wh

__all__ = [
    "AccountCredited",
    "Alarm",
    "BalanceLow",
    "BreakerCut",
    "BreakerRestored",
    "EventBody",
    "EventEnvelope",
    "PowerUsage",
    "Tap",
    "WaterSession",
    "breaker_device",
    "decode_event",
    "encode_event",
    "event_type_of",
    "flow_device",
    "meter_device",
    "reader_device",
    "room_device",
    "valve_device",
]


# --------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------


class EventEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    """The fields every event carries besides its type's own.

    ``id`` is unique for ever; ``seq`` rises by exactly 1 per event in the
    building; ``ts`` is an RFC 3339 string (see ``rfc3339``).
    """

    id: Annotated[Uuid, Meta(description="Unique for ever: de-duplicate on it.")]
    seq: Seq
    ts: Annotated[Timestamp, Meta(description="When it happened (a folded tap: when the minute ended).")]
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
    point: Annotated[str | None, Meta(
        description="The point the reader serves; null only with reason no_point.")]
    granted: bool
    reason: Annotated[TapReason, Meta(
        description="start or stop when granted; else the refusal, the first that applies.")]
    count: Annotated[Annotated[int, Meta(ge=1)] | None, Meta(
        description="Only on a folded event: how many refused taps it stands for.")] = None


class WaterSession(_EventBody, frozen=True, kw_only=True, tag=EventType.WATER_SESSION.value):
    """A finished water session with its whole charge (debit)."""

    session: Annotated[Uuid, Meta(description="The session's id.")]
    point: str
    service: WaterUse
    card: str
    account: str
    started: Timestamp
    ended: Timestamp
    volume_ml: Annotated[int, Meta(ge=0, description="Water measured, integer mL; 0 without a flow meter.")]
    seconds: Annotated[int, Meta(ge=0, description="Whole seconds the valve was open.")]
    amount_fen: Annotated[Fen, Meta(ge=0, description="The whole charge, debited from account.")]
    end_reason: EndReason
    offline: bool


class PowerUsage(_EventBody, frozen=True, kw_only=True, tag=EventType.POWER_USAGE.value):
    """Accrued electricity usage of a room (debit); reports of a room chain."""

    room: str
    account: str
    wh: Annotated[Wh, Meta(ge=0, description="Energy charged: meter_wh_to - meter_wh_from.")]
    amount_fen: Annotated[Fen, Meta(ge=0, description="Its price, debited from account.")]
    meter_wh_from: Annotated[Wh, Meta(
        description="The register at the start: the previous report's meter_wh_to.")]
    meter_wh_to: Annotated[Wh, Meta(description="The register at the end of the charged span.")]
    balance_fen: Annotated[Fen, Meta(description="The account's balance after this charge.")]


class AccountCredited(_EventBody, frozen=True, kw_only=True, tag=EventType.ACCOUNT_CREDITED.value):
    """A top-up applied; ``command`` is the ``account.credit`` command's id."""

    account: str
    amount_fen: Annotated[Fen, Meta(ge=1, description="The credit.")]
    balance_fen: Annotated[Fen, Meta(description="The balance after it.")]
    command: Annotated[str, Meta(description="The id of the account.credit command.")]


class BreakerCut(_EventBody, frozen=True, kw_only=True, tag=EventType.BREAKER_CUT.value):
    """A room's supply cut; ``power_w`` is None when no reading is at hand."""

    room: str
    reason: CutReason
    power_w: Annotated[float | None, Meta(description="The last power read, W; null when none is at hand.")]


class BreakerRestored(_EventBody, frozen=True, kw_only=True, tag=EventType.BREAKER_RESTORED.value):
    """A room's supply restored."""

    room: str
    reason: RestoreReason


class BalanceLow(_EventBody, frozen=True, kw_only=True, tag=EventType.BALANCE_LOW.value):
    """An account fell under ``power.low_balance_fen`` (sent once per fall)."""

    account: str
    balance_fen: Annotated[Fen, Meta(description="The balance now.")]


class Alarm(_EventBody, frozen=True, kw_only=True, tag=EventType.ALARM.value):
    """An alarm raised (``active`` true) or cleared (false).

    ``detail`` is free-form for people, except where the contract gives it a
    meaning (``meter_jump``: the uncharged Wh, an integer).
    """

    code: AlarmCode
    device: Annotated[str, Meta(description="What it is about: meter:ROOM, breaker:ROOM, room:ROOM, "
                                "valve:POINT, flow:POINT, reader:READER, clock, outbox, store.")]
    detail: Annotated[str | int | float | None, Meta(
        description='Text for people ("" when cleared), except for meter_jump: '
        "the uncharged Wh, an integer.")]
    active: Annotated[bool, Meta(description="true raised, false cleared.")]


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
# Alarm devices
# --------------------------------------------------------------------------


def meter_device(room: str) -> str:
    """The device of a room's meter alarms: ``meter:301``."""
    return f"meter:{room}"


def breaker_device(room: str) -> str:
    """The device of a room's breaker alarms: ``breaker:301``."""
    return f"breaker:{room}"


def room_device(room: str) -> str:
    """The device of a room's own alarms (``room_failing``): ``room:301``."""
    return f"room:{room}"


def valve_device(point: str) -> str:
    """The device of a water point's valve alarms: ``valve:shower-1``."""
    return f"valve:{point}"


def flow_device(point: str) -> str:
    """The device of a water point's flow meter alarms: ``flow:shower-1``."""
    return f"flow:{point}"


def reader_device(reader: str) -> str:
    """The device of a card reader's alarms: ``reader:r1``."""
    return f"reader:{reader}"
