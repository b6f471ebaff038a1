"""Published payloads, byte for byte as the center receives them."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.contract.enums import (
    MONEY_EVENT_TYPES,
    AlarmCode,
    BreakerState,
    CardKind,
    CardStatus,
    CommandType,
    CutReason,
    EndReason,
    ErrorCode,
    EventType,
    MoneyDirection,
    PointState,
    Priority,
    RestoreReason,
    TapReason,
    TariffUnit,
    WaterUse,
    money_direction,
    priority_of,
)
from gatewayd.contract.events import (
    AccountCredited,
    Alarm,
    BalanceLow,
    BreakerCut,
    BreakerRestored,
    EventBody,
    EventEnvelope,
    PowerUsage,
    Tap,
    WaterSession,
    decode_event,
    encode_event,
    event_type_of,
)
from gatewayd.contract.wire import (
    Faults,
    PointReading,
    RoomReading,
    Status,
    Telemetry,
    as_duplicate,
    encode_result_error,
    encode_result_ok,
    encode_status,
    encode_telemetry,
    encode_will,
    parse_rfc3339,
    rfc3339,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
EPOCH = 1795439045.12  # 2026-11-23T21:04:05.120+08:00
TS = "2026-11-23T21:04:05.120+08:00"

# --------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epoch", "tz", "expected"),
    [
        (EPOCH, SHANGHAI, TS),
        (EPOCH, UTC, "2026-11-23T13:04:05.120+00:00"),
        (EPOCH, ZoneInfo("America/New_York"), "2026-11-23T08:04:05.120-05:00"),
        (1782000000.0, ZoneInfo("Europe/Berlin"), "2026-06-21T02:00:00.000+02:00"),  # summer time
        (1795439045.0, SHANGHAI, "2026-11-23T21:04:05.000+08:00"),
        (1795439045.9999, SHANGHAI, "2026-11-23T21:04:05.999+08:00"),  # truncated, not rounded up
        (0.0, timezone(timedelta(hours=5, minutes=30)), "1970-01-01T05:30:00.000+05:30"),
    ],
)
def test_rfc3339(epoch: float, tz: ZoneInfo | timezone, expected: str) -> None:
    assert rfc3339(epoch, tz) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (TS, datetime(2026, 11, 23, 13, 4, 5, 120000, tzinfo=UTC)),
        ("2026-11-23T13:04:05Z", datetime(2026, 11, 23, 13, 4, 5, tzinfo=UTC)),
        ("2026-11-23t13:04:05z", datetime(2026, 11, 23, 13, 4, 5, tzinfo=UTC)),
        ("2026-11-23 13:04:05+00:00", datetime(2026, 11, 23, 13, 4, 5, tzinfo=UTC)),
        ("2026-11-23T08:04:05.5-05:00", datetime(2026, 11, 23, 13, 4, 5, 500000, tzinfo=UTC)),
        ("2026-11-23T13:04:05.123456789Z", datetime(2026, 11, 23, 13, 4, 5, 123456, tzinfo=UTC)),
        ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ],
)
def test_parse_rfc3339_accepts(text: str, expected: datetime) -> None:
    parsed = parse_rfc3339(text)
    assert parsed is not None
    assert parsed.tzinfo is not None
    assert parsed == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-23T13:04:05",  # no offset
        "2026-11-23",
        "20261123T130405Z",  # ISO 8601 basic format
        "2026-11-23T13:04Z",
        "2026-11-23T13:04:05.Z",
        "2026-11-23T13:04:05+0800",
        "2026-11-23T13:04:05+24:00",
        "2026-02-30T13:04:05Z",
        "2026-11-23T24:00:00Z",
        " 2026-11-23T13:04:05Z",
        "2026-11-23T13:04:05Z\n",
        "２０２６-11-23T13:04:05Z",  # full-width digits
        "",
    ],
)
def test_parse_rfc3339_refuses(text: str) -> None:
    assert parse_rfc3339(text) is None


@given(
    st.floats(min_value=0, max_value=4_102_444_800),
    st.sampled_from(["Asia/Shanghai", "UTC", "America/Sao_Paulo"]),
)
def test_rfc3339_round_trips_to_the_millisecond(epoch: float, zone: str) -> None:
    parsed = parse_rfc3339(rfc3339(epoch, ZoneInfo(zone)))
    assert parsed is not None
    # Rounded to the microsecond, then truncated to the millisecond.
    assert -1e-6 <= epoch - parsed.timestamp() < 0.001  # 1e-6: float resolution near 2100


# --------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------

ENVELOPE = EventEnvelope(id="0b7e5c1e-9f0e-4a55-8a57-2f1c6d1e0001", seq=1234, ts=TS, building="b07")
HEAD = f'{{"id":"{ENVELOPE.id}","seq":1234,"ts":"{TS}","building":"b07",'

EVENTS: list[tuple[EventBody, str]] = [
    (
        Tap(reader="r-shower-1", card="04A1B2C3D4", point="shower-1", granted=True, reason=TapReason.START),
        '"type":"tap","reader":"r-shower-1","card":"04A1B2C3D4","point":"shower-1",'
        '"granted":true,"reason":"start"}',
    ),
    (
        Tap(reader="r-lobby", card="04A1", point=None, granted=False, reason=TapReason.NO_POINT),
        '"type":"tap","reader":"r-lobby","card":"04A1","point":null,"granted":false,"reason":"no_point"}',
    ),
    (
        Tap(reader="r-lobby", card="04A1", point=None, granted=False, reason=TapReason.UNKNOWN_CARD,
            count=170),
        '"type":"tap","reader":"r-lobby","card":"04A1","point":null,"granted":false,"reason":"unknown",'
        '"count":170}',
    ),
    (
        WaterSession(
            session="s-77",
            point="shower-1",
            service=WaterUse.SHOWER,
            card="04A1B2C3D4",
            account="s2023001",
            started="2026-11-23T20:58:00.000+08:00",
            ended=TS,
            volume_ml=5200,
            seconds=365,
            amount_fen=16,
            end_reason=EndReason.TAP,
            offline=False,
        ),
        '"type":"water.session","session":"s-77","point":"shower-1","service":"shower",'
        '"card":"04A1B2C3D4","account":"s2023001","started":"2026-11-23T20:58:00.000+08:00",'
        f'"ended":"{TS}","volume_ml":5200,"seconds":365,"amount_fen":16,"end_reason":"tap",'
        '"offline":false}',
    ),
    (
        PowerUsage(
            room="301",
            account="room-b07-301",
            wh=1786,
            amount_fen=100,
            meter_wh_from=1832781,
            meter_wh_to=1834567,
            balance_fen=4210,
        ),
        '"type":"power.usage","room":"301","account":"room-b07-301","wh":1786,"amount_fen":100,'
        '"meter_wh_from":1832781,"meter_wh_to":1834567,"balance_fen":4210}',
    ),
    (
        AccountCredited(account="张三", amount_fen=5000, balance_fen=5420, command="c-1"),
        '"type":"account.credited","account":"张三","amount_fen":5000,"balance_fen":5420,"command":"c-1"}',
    ),
    (
        BreakerCut(room="301", reason=CutReason.RESISTIVE, power_w=1212.5),
        '"type":"breaker.cut","room":"301","reason":"resistive","power_w":1212.5}',
    ),
    (
        BreakerCut(room="301", reason=CutReason.REMOTE, power_w=None),
        '"type":"breaker.cut","room":"301","reason":"remote","power_w":null}',
    ),
    (
        BreakerRestored(room="301", reason=RestoreReason.LOCKOUT_END),
        '"type":"breaker.restored","room":"301","reason":"lockout_end"}',
    ),
    (
        BalanceLow(account="room-b07-301", balance_fen=480),
        '"type":"balance.low","account":"room-b07-301","balance_fen":480}',
    ),
    (
        Alarm(code=AlarmCode.METER_JUMP, device="meter:301", detail=52000, active=True),
        '"type":"alarm","code":"meter_jump","device":"meter:301","detail":52000,"active":true}',
    ),
    (
        Alarm(code=AlarmCode.READER_OFFLINE, device="r-shower-1", detail=None, active=False),
        '"type":"alarm","code":"reader_offline","device":"r-shower-1","detail":null,"active":false}',
    ),
]


@pytest.mark.parametrize(("body", "fields"), EVENTS)
def test_event_bytes(body: EventBody, fields: str) -> None:
    encoded = encode_event(ENVELOPE, body)
    assert encoded == (HEAD + fields).encode()
    assert decode_event(encoded) == (ENVELOPE, body)


def test_every_event_type_is_covered() -> None:
    assert {event_type_of(body) for body, _ in EVENTS} == set(EventType)


def test_decode_event_ignores_fields_a_newer_contract_adds() -> None:
    encoded = encode_event(ENVELOPE, BalanceLow(account="a", balance_fen=1))
    newer = encoded[:-1] + b',"threshold_fen":500,"extra":{"x":1}}'
    assert decode_event(newer) == (ENVELOPE, BalanceLow(account="a", balance_fen=1))


def test_decode_event_refuses_unknown_types() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_event(HEAD.encode() + b'"type":"door.open","door":"d1"}')


def test_event_types_and_money_classes_match_the_contract() -> None:
    assert [t.value for t in EventType] == [
        "tap",
        "water.session",
        "power.usage",
        "account.credited",
        "breaker.cut",
        "breaker.restored",
        "balance.low",
        "alarm",
    ]
    assert {t.value for t in MONEY_EVENT_TYPES} == {"water.session", "power.usage", "account.credited"}
    assert money_direction(EventType.WATER_SESSION) is MoneyDirection.DEBIT
    assert money_direction(EventType.POWER_USAGE) is MoneyDirection.DEBIT
    assert money_direction(EventType.ACCOUNT_CREDITED) is MoneyDirection.CREDIT
    assert money_direction(EventType.TAP) is None


def test_priority_classes_order_results_money_events_telemetry() -> None:
    assert priority_of("result") is Priority.RESULT
    assert priority_of("telemetry") is Priority.TELEMETRY
    for event_type in EventType:
        expected = Priority.MONEY if event_type in MONEY_EVENT_TYPES else Priority.EVENT
        assert priority_of(event_type) is expected
    assert Priority.RESULT < Priority.MONEY < Priority.EVENT < Priority.TELEMETRY


def test_enumerations_match_the_contract() -> None:
    assert [c.value for c in AlarmCode] == [
        "meter_offline",
        "meter_reset",
        "meter_jump",
        "breaker_mismatch",
        "reader_offline",
        "valve_fault",
        "clock_unsynced",
        "outbox_full",
        "store_failing",  # added (the contract's list "includes" these codes)
        "room_failing",   # added
        "reader_flood",   # added
    ]
    assert [r.value for r in CutReason] == ["balance", "overload", "resistive", "curfew", "remote", "lockout",
                                            "meter_offline"]
    assert [r.value for r in RestoreReason] == ["balance", "reclose", "lockout_end", "curfew_end", "remote",
                                                "meter_online"]
    assert [r.value for r in EndReason] == [
        "tap",
        "balance",
        "max_duration",
        "idle",
        "fault",
        "shutdown",
        "remote",
        "restart",
    ]
    assert [c.value for c in ErrorCode] == [
        "bad_json",
        "bad_request",
        "bad_signature",
        "stale",
        "unknown_type",
        "not_found",
        "conflict",
        "internal",
    ]
    assert [k.value for k in CardKind] == ["teacher", "student", "merchant", "family", "temporary"]
    assert [s.value for s in CardStatus] == ["active", "lost", "cancelled"]
    assert [u.value for u in TariffUnit] == ["kWh", "L", "min"]
    assert [s.value for s in BreakerState] == ["on", "off", "unknown"]
    assert [s.value for s in PointState] == ["closed", "open", "fault"]
    assert "busy" in {r.value for r in TapReason}
    assert len(CommandType) == 13


# --------------------------------------------------------------------------
# Command results
# --------------------------------------------------------------------------


def test_result_ok() -> None:
    assert (
        encode_result_ok("c-1", {"account": "张三", "balance_fen": 5420})
        == '{"id":"c-1","ok":true,"result":{"account":"张三","balance_fen":5420}}'.encode()
    )


def test_ping_result_is_empty() -> None:
    assert encode_result_ok("c-2") == b'{"id":"c-2","ok":true,"result":{}}'
    assert encode_result_ok("c-2", {}) == b'{"id":"c-2","ok":true,"result":{}}'


def test_result_may_carry_structs_and_enums() -> None:
    snapshot = {"room": "301", "breaker": BreakerState.OFF, "faults": Faults(readers=1)}
    assert encode_result_ok("c-3", snapshot) == (
        b'{"id":"c-3","ok":true,"result":{"room":"301","breaker":"off",'
        b'"faults":{"meters":0,"readers":1,"valves":0}}}'
    )


def test_result_error() -> None:
    assert encode_result_error("c-4", ErrorCode.NOT_FOUND, 'room "999" is not in this building') == (
        b'{"id":"c-4","ok":false,'
        b'"error":{"code":"not_found","message":"room \\"999\\" is not in this building"}}'
    )


def test_result_error_without_a_usable_id_has_a_null_id() -> None:
    assert encode_result_error(None, ErrorCode.BAD_JSON, "not JSON") == (
        b'{"id":null,"ok":false,"error":{"code":"bad_json","message":"not JSON"}}'
    )


def test_duplicate_repeats_the_first_result_marked() -> None:
    first = encode_result_ok("c-5", {"balance_fen": 5420})
    again = as_duplicate(first)
    assert again == b'{"id":"c-5","ok":true,"result":{"balance_fen":5420},"duplicate":true}'
    assert as_duplicate(again) == again
    failed = encode_result_error("c-6", ErrorCode.CONFLICT, "older than the loaded cards version")
    assert json.loads(as_duplicate(failed)) == json.loads(failed) | {"duplicate": True}


# --------------------------------------------------------------------------
# Status, will, telemetry
# --------------------------------------------------------------------------


def test_status_document() -> None:
    status = Status(
        building="b07",
        boot_id="6f1c",
        store_id="9a2e",
        version="1.2.0",
        started="2026-11-23T06:00:00.000+08:00",
        clock_synced=True,
        cards_version=41,
        last_seq=1234,
        pending=0,
        accounts_unknown=0,
        rooms=312,
        points=40,
        readers=40,
        faults=Faults(meters=0, readers=1, valves=0),
    )
    assert encode_status(status) == (
        b'{"online":true,"building":"b07","boot_id":"6f1c","store_id":"9a2e","version":"1.2.0",'
        b'"started":"2026-11-23T06:00:00.000+08:00","clock_synced":true,"cards_version":41,'
        b'"last_seq":1234,"pending":0,"accounts_unknown":0,"rooms":312,"points":40,"readers":40,'
        b'"faults":{"meters":0,"readers":1,"valves":0}}'
    )


def test_will_message() -> None:
    assert encode_will("b07", "6f1c") == b'{"online":false,"building":"b07","boot_id":"6f1c"}'


def test_telemetry_document_keeps_keys_of_unknown_values_as_null() -> None:
    telemetry = Telemetry(
        ts=TS,
        building="b07",
        rooms=(
            RoomReading(
                room="301",
                online=True,
                power_w=212.5,
                energy_wh=1834567,
                voltage_v=229.8,
                current_a=0.98,
                pf=0.94,
                breaker=BreakerState.ON,
                balance_fen=4210,
            ),
            RoomReading(
                room="302",
                online=False,
                power_w=math.nan,
                energy_wh=None,
                voltage_v=None,
                current_a=None,
                pf=None,
                breaker=BreakerState.UNKNOWN,
                balance_fen=None,
            ),
        ),
        points=(
            PointReading(point="shower-1", state=PointState.OPEN, card="04A1B2C3", volume_ml=5200),
            PointReading(point="drink-1", state=PointState.CLOSED, card=None, volume_ml=None),
        ),
    )
    assert (
        encode_telemetry(telemetry)
        == (
            f'{{"ts":"{TS}","building":"b07","rooms":['
            '{"room":"301","online":true,"power_w":212.5,"energy_wh":1834567,"voltage_v":229.8,'
            '"current_a":0.98,"pf":0.94,"breaker":"on","balance_fen":4210},'
            '{"room":"302","online":false,"power_w":null,"energy_wh":null,"voltage_v":null,'
            '"current_a":null,"pf":null,"breaker":"unknown","balance_fen":null}],'
            '"points":[{"point":"shower-1","state":"open","card":"04A1B2C3","volume_ml":5200},'
            '{"point":"drink-1","state":"closed","card":null,"volume_ml":null}]}'
        ).encode()
    )
