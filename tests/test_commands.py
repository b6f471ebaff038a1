"""Command parsing and admission: every command type, every error a center can see."""

from __future__ import annotations

import json
from datetime import UTC, date
from decimal import Decimal
from types import EllipsisType
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.contract import command_admission, command_args
from gatewayd.contract.command_admission import accept_command, check_age, verify_signature
from gatewayd.contract.command_fields import CardFormat
from gatewayd.contract.command_types import (
    MAX_COMMAND_BYTES,
    AccountCredit,
    AccountSync,
    CardBlock,
    CardPut,
    CardsLoad,
    CardUnblock,
    CommandArgs,
    CommandRejection,
    EventsResend,
    ParsedCommand,
    Ping,
    RoomCut,
    RoomLimit,
    RoomRestore,
    StateGet,
    TariffSet,
    TopicKind,
)
from gatewayd.contract.commands import parse_command
from gatewayd.contract.enums import CardKind, CardStatus, CommandType, ErrorCode, Service, TariffUnit
from gatewayd.contract.signing import sign_command
from gatewayd.contract.wire import parse_rfc3339, rfc3339

BUILDING = "b07"
TS = "2026-11-23T21:04:05.120+08:00"
NOW = 1795439045.12  # TS as epoch seconds
KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key()

CARD_A = {"card": "04a1b2c3d4", "account": "s2023001", "kind": "student", "status": "active"}
CARD_B = {
    "card": "E0040150A1B2C3D4",
    "account": "t-wang",
    "kind": "teacher",
    "status": "lost",
    "expires": "2027-07-31",
}


def command(type_: str = "account.credit", args: Any = None, **top: Any) -> dict[str, Any]:
    """A well-formed command for BUILDING; ``args=None`` leaves args out."""
    obj: dict[str, Any] = {"id": "c-1", "to": BUILDING, "type": type_, "ts": TS}
    if args is not None:
        obj["args"] = args
    obj.update(top)
    return obj


def payload(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def parse(obj: Any, topic_kind: TopicKind = "building", **kw: Any) -> ParsedCommand | CommandRejection:
    data = obj if isinstance(obj, bytes) else payload(obj)
    return parse_command(data, topic_kind=topic_kind, building=BUILDING, **kw)


# Issue 17: a command carries integers within +-(2**53 - 1) only, anywhere; other
# numbers are refused before the schema looks (the canonical form has none).
NOT_AN_INTEGER = "is not an integer; a command carries integers only (prices are decimal strings)"
BEYOND_2_53 = ("is not an integer from -9007199254740991 to 9007199254740991; "
               "a command carries no larger number")


def result_json(outcome: ParsedCommand | CommandRejection) -> Any:
    """What the center reads on {root}/cmd/result for a rejection."""
    assert isinstance(outcome, CommandRejection), outcome
    return json.loads(outcome.encode())


def error(command_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {"id": command_id, "ok": False, "error": {"code": code, "message": message}}


# --------------------------------------------------------------------------
# Every command type, accepted
# --------------------------------------------------------------------------

VALID: list[tuple[str, Any, CommandArgs]] = [
    (
        "account.credit",
        {"account": "room-b07-301", "amount_fen": 500},
        AccountCredit(account="room-b07-301", amount_fen=500),
    ),
    (
        "account.sync",
        {"account": "s2023001", "balance_fen": -120, "through_seq": 0},
        AccountSync(account="s2023001", balance_fen=-120, through_seq=0),
    ),
    (
        "card.put",
        CARD_A,
        CardPut(card="04A1B2C3D4", account="s2023001", kind=CardKind.STUDENT, status=CardStatus.ACTIVE),
    ),
    (
        "card.put",
        CARD_B,
        CardPut(
            card="E0040150A1B2C3D4",
            account="t-wang",
            kind=CardKind.TEACHER,
            status=CardStatus.LOST,
            expires=date(2027, 7, 31),
        ),
    ),
    (
        "card.put",
        {**CARD_A, "expires": "2027-07-31T23:59:59+08:00"},
        CardPut(card="04A1B2C3D4", account="s2023001", kind=CardKind.STUDENT,
                status=CardStatus.ACTIVE, expires=date(2027, 7, 31)),
    ),
    (
        "card.put",
        {**CARD_A, "kind": "temporary", "status": "cancelled", "expires": None},
        CardPut(
            card="04A1B2C3D4",
            account="s2023001",
            kind=CardKind.TEMPORARY,
            status=CardStatus.CANCELLED,
        ),
    ),
    ("card.block", {"card": "04A1B2C3D4"}, CardBlock(card="04A1B2C3D4")),
    ("card.unblock", {"card": "04a1b2c3d4"}, CardUnblock(card="04A1B2C3D4")),
    (
        "cards.load",
        {"version": 42, "full": False, "cards": [CARD_A, CARD_B]},
        CardsLoad(
            version=42,
            full=False,
            cards=(
                CardPut(
                    card="04A1B2C3D4",
                    account="s2023001",
                    kind=CardKind.STUDENT,
                    status=CardStatus.ACTIVE,
                ),
                CardPut(
                    card="E0040150A1B2C3D4",
                    account="t-wang",
                    kind=CardKind.TEACHER,
                    status=CardStatus.LOST,
                    expires=date(2027, 7, 31),
                ),
            ),
        ),
    ),
    ("cards.load", {"version": 0, "full": True, "cards": []}, CardsLoad(version=0, full=True, cards=())),
    (
        "tariff.set",
        {"service": "power", "price": "0.56", "unit": "kWh"},
        TariffSet(service=Service.POWER, price=Decimal("0.56"), unit=TariffUnit.KWH),
    ),
    (
        "tariff.set",
        {"service": "shower", "price": "0.030", "unit": "L"},
        TariffSet(service=Service.SHOWER, price=Decimal("0.030"), unit=TariffUnit.LITRE),
    ),
    (
        "tariff.set",
        {"service": "drinking", "price": "100", "unit": "min"},
        TariffSet(service=Service.DRINKING, price=Decimal(100), unit=TariffUnit.MINUTE),
    ),
    (
        "tariff.set",
        {"service": "shower", "price": "0", "unit": "min"},
        TariffSet(service=Service.SHOWER, price=Decimal(0), unit=TariffUnit.MINUTE),
    ),
    (
        "tariff.set",
        {"service": "power", "price": "99.123456", "unit": "kWh"},
        TariffSet(service=Service.POWER, price=Decimal("99.123456"), unit=TariffUnit.KWH),
    ),
    ("room.cut", {"room": "301"}, RoomCut(room="301", hold=False)),
    ("room.cut", {"room": "301", "hold": True}, RoomCut(room="301", hold=True)),
    ("room.cut", {"room": "301", "hold": None}, RoomCut(room="301", hold=False)),
    ("room.restore", {"room": "301"}, RoomRestore(room="301")),
    ("room.limit", {"room": "301", "max_power_w": 100}, RoomLimit(room="301", max_power_w=100)),
    ("events.resend", {"from_seq": 1}, EventsResend(from_seq=1)),
    ("events.resend", {"from_seq": 0}, EventsResend(from_seq=0)),
    ("events.resend", {"from_seq": 5, "to_seq": 5}, EventsResend(from_seq=5, to_seq=5)),
    ("events.resend", {"from_seq": 5, "to_seq": None}, EventsResend(from_seq=5)),
    ("state.get", None, StateGet()),
    ("state.get", {}, StateGet()),
    ("state.get", {"room": "301"}, StateGet(room="301")),
    ("state.get", {"account": "s2023001", "card": None}, StateGet(account="s2023001")),
    ("state.get", {"card": "04a1b2c3d4"}, StateGet(card="04A1B2C3D4")),
    ("ping", None, Ping()),
    ("ping", {}, Ping()),
]


@pytest.mark.parametrize(("type_", "args", "expected"), VALID)
def test_every_command_type_parses_to_typed_args(type_: str, args: Any, expected: CommandArgs) -> None:
    outcome = parse(command(type_, args))
    assert isinstance(outcome, ParsedCommand), outcome
    assert outcome.type is CommandType(type_)
    assert outcome.args == expected
    assert type(outcome.args).TYPE is outcome.type
    assert (outcome.id, outcome.to, outcome.ts) == ("c-1", BUILDING, TS)
    assert outcome.issued_at.timestamp() == pytest.approx(NOW)
    assert outcome.ignored == ()


def test_every_v1_command_type_is_covered() -> None:
    assert {CommandType(type_) for type_, _, _ in VALID} == set(CommandType)


def test_null_args_is_allowed_where_every_argument_is_optional() -> None:
    outcome = parse(command("ping", args=None) | {"args": None})
    assert isinstance(outcome, ParsedCommand)
    assert outcome.args == Ping()


def test_broadcast_command_is_addressed_to_all() -> None:
    outcome = parse(command("card.block", {"card": "04A1"}, to="all"), topic_kind="broadcast")
    assert isinstance(outcome, ParsedCommand)
    assert outcome.to == "all"


def test_unknown_fields_are_ignored_and_listed() -> None:
    obj = command("room.cut", {"room": "301", "until": TS, "hold": False}, trace="t-9", note=1)
    outcome = parse(obj)
    assert isinstance(outcome, ParsedCommand)
    assert outcome.args == RoomCut(room="301")
    assert outcome.ignored == ("note", "trace", "args.until")
    assert outcome.raw == obj  # what the signature covers, unknown fields included


def test_unknown_fields_inside_cards_are_ignored_and_listed() -> None:
    outcome = parse(command("cards.load", {"version": 1, "full": True, "cards": [{**CARD_A, "x": 1}]}))
    assert isinstance(outcome, ParsedCommand)
    assert outcome.ignored == ("args.cards[0].x",)


def test_unicode_identifiers_are_kept_as_sent() -> None:
    outcome = parse(command("account.credit", {"account": "张三-宿舍🏠", "amount_fen": 1}, id="指令-1"))
    assert isinstance(outcome, ParsedCommand)
    assert outcome.id == "指令-1"
    assert outcome.args == AccountCredit(account="张三-宿舍🏠", amount_fen=1)


# --------------------------------------------------------------------------
# Every error the parser can produce, as the center reads it
# --------------------------------------------------------------------------

ID64 = "x" * 64
REJECTED: list[tuple[str, bytes | dict[str, Any], dict[str, Any]]] = [
    # Step 1: bad_json, id null.
    ("empty", b"", error(None, "bad_json", "not JSON: Expecting value at line 1 column 1")),
    ("not utf-8", b'{"id":"c-1\xff"}', error(None, "bad_json", "not UTF-8: invalid byte at offset 10")),
    (
        "truncated",
        b'{"id": "c-1"',
        error(None, "bad_json", "not JSON: Expecting ',' delimiter at line 1 column 13"),
    ),
    ("trailing data", b"{} x", error(None, "bad_json", "not JSON: Extra data at line 1 column 4")),
    (
        "byte order mark",
        "\ufeff{}".encode(),
        error(None, "bad_json", "not JSON: starts with a byte order mark (U+FEFF)"),
    ),
    ("NaN", b'{"id":"c-1","x":NaN}', error(None, "bad_json", "NaN is not JSON")),
    ("Infinity", b'{"id":"c-1","x":-Infinity}', error(None, "bad_json", "-Infinity is not JSON")),
    ("float overflow", b'{"id":"c-1","x":1e999}', error(None, "bad_json", "number 1e999 is out of range")),
    (
        "huge integer",
        b'{"id":"c-1","x":' + b"9" * 5000 + b"}",
        error(None, "bad_json", "not JSON: a number has too many digits"),
    ),
    ("duplicate key", b'{"id":"c-1","id":"c-2"}', error(None, "bad_json", 'duplicate key "id"')),
    ("list", b"[]", error(None, "bad_json", "payload is a list, expected a JSON object")),
    ("string", b'"ping"', error(None, "bad_json", 'payload is "ping", expected a JSON object')),
    ("null", b"null", error(None, "bad_json", "payload is null, expected a JSON object")),
    ("number", b"7", error(None, "bad_json", "payload is 7, expected a JSON object")),
    (
        "very deep",
        b"[" * 100_000 + b"]" * 100_000,
        error(None, "bad_json", "nesting deeper than 32 levels"),
    ),
    # Step 2: no usable id, id null.
    (
        "id missing",
        {"to": BUILDING},
        error(None, "bad_request", "id: missing, expected a string of 1 to 64 characters"),
    ),
    (
        "id null",
        {"id": None},
        error(None, "bad_request", "id: expected a string of 1 to 64 characters, got null"),
    ),
    (
        "id empty",
        {"id": ""},
        error(None, "bad_request", 'id: expected a string of 1 to 64 characters, got ""'),
    ),
    (
        "id number",
        {"id": 7},
        error(None, "bad_request", "id: expected a string of 1 to 64 characters, got 7"),
    ),
    (
        "id true",
        {"id": True},
        error(None, "bad_request", "id: expected a string of 1 to 64 characters, got true"),
    ),
    (
        "id object",
        {"id": {}},
        error(None, "bad_request", "id: expected a string of 1 to 64 characters, got an object"),
    ),
    (
        "id 65 characters",
        {"id": ID64 + "y"},
        error(
            None,
            "bad_request",
            f'id: expected a string of 1 to 64 characters, got "{"x" * 40}..." (65 characters)',
        ),
    ),
    (
        "id unpaired surrogate",
        b'{"id":"\\ud800"}',
        error(None, "bad_request", 'id: expected a string of 1 to 64 characters, got "\\ud800"'),
    ),
    # Step 3: malformed text, with the id.
    (
        "surrogate elsewhere",
        b'{"id":"c-1","note":"\\udfff"}',
        error("c-1", "bad_json", "a string holds an unpaired surrogate escape, which UTF-8 cannot carry"),
    ),
    (
        "33 levels",
        b'{"id":"c-1","x":' + b"[" * 32 + b"]" * 32 + b"}",
        error("c-1", "bad_json", "nesting deeper than 32 levels"),
    ),
    # Step 3, issue 17: no canonical form (a non-integer number, an integer beyond
    # +-(2**53 - 1), a non-ASCII key), anywhere: bad_request, before the signature.
    (
        "max_power_w 1500.0",
        command("room.limit", {"room": "301", "max_power_w": 1500.0}),
        error("c-1", "bad_request", f"args.max_power_w: 1500.0 {NOT_AN_INTEGER}"),
    ),
    (
        "float in an unknown top-level field",
        command("ping", trace=1.25),
        error("c-1", "bad_request", f"trace: 1.25 {NOT_AN_INTEGER}"),
    ),
    (
        "float in an unknown args field",
        command("card.block", {"card": "04A1", "weight": {"g": [1, 2e3]}}),
        error("c-1", "bad_request", f"args.weight.g[1]: 2000.0 {NOT_AN_INTEGER}"),
    ),
    (
        "integer beyond 2**53 in an unknown field",
        command("ping", n=-(2**53)),
        error("c-1", "bad_request", f"n: -9007199254740992 {BEYOND_2_53}"),
    ),
    (
        "non-ASCII key at the top level",
        command("ping", 备注="x"),
        error("c-1", "bad_request", 'the command: key "备注" is not ASCII; keys are ASCII only'),
    ),
    (
        "non-ASCII key in args",
        command("ping", {"é": 1}),
        error("c-1", "bad_request", 'args: key "é" is not ASCII; keys are ASCII only'),
    ),
    # Step 4: to.
    (
        "to missing",
        {"id": "c-1", "type": "ping", "ts": TS},
        error("c-1", "bad_request", 'to: expected "b07" on this building\'s command topic, missing'),
    ),
    (
        "to other building",
        command("ping", to="b08"),
        error("c-1", "bad_request", 'to: expected "b07" on this building\'s command topic, got "b08"'),
    ),
    (
        "broadcast on building topic",
        command("ping", to="all"),
        error("c-1", "bad_request", 'to: expected "b07" on this building\'s command topic, got "all"'),
    ),
    # Step 5: type.
    (
        "type missing",
        {"id": "c-1", "to": BUILDING, "ts": TS},
        error("c-1", "bad_request", "type: missing, expected a command type string"),
    ),
    (
        "type number",
        command(type=3),
        error("c-1", "bad_request", "type: expected a command type string, got 3"),
    ),
    (
        "type unknown",
        command("account.debit", {}),
        error("c-1", "unknown_type", 'type: unknown command type "account.debit"'),
    ),
    ("type case", command("PING"), error("c-1", "unknown_type", 'type: unknown command type "PING"')),
    # Step 6: ts.
    (
        "ts missing",
        {"id": "c-1", "to": BUILDING, "type": "ping"},
        error("c-1", "bad_request", "ts: missing, expected an RFC 3339 date-time with offset"),
    ),
    (
        "ts without offset",
        command("ping", ts="2026-11-23T21:04:05"),
        error(
            "c-1",
            "bad_request",
            'ts: expected an RFC 3339 date-time with offset, got "2026-11-23T21:04:05"',
        ),
    ),
    (
        "ts epoch number",
        command("ping", ts=1795439045),
        error("c-1", "bad_request", "ts: expected an RFC 3339 date-time with offset, got 1795439045"),
    ),
    # Step 7: args.
    (
        "args missing",
        command("account.credit"),
        error("c-1", "bad_request", "args: missing, expected an object"),
    ),
    (
        "args null",
        command("room.restore", args=None) | {"args": None},
        error("c-1", "bad_request", "args: expected an object, got null"),
    ),
    (
        "args list",
        command("ping", []),
        error("c-1", "bad_request", "args: expected an object, got a list"),
    ),
]

# (type, args, message): schema errors, each naming its field.
NAME = "a string of 1 to 128 characters without control characters"
UID = "a card UID of 2 to 32 hex digits"
KINDS = 'one of "teacher", "student", "merchant", "family", "temporary"'
STATUSES = 'one of "active", "lost", "cancelled"'
DATE = "an RFC 3339 date (YYYY-MM-DD), date-time or null"
PRICE = 'a decimal string of yuan from "0" to "100" with at most 6 decimal places'
LOAD = {"version": 1, "full": True}
POWER = {"service": "power", "unit": "kWh"}
SCHEMA_ERRORS: list[tuple[str, Any, str]] = [
    ("account.credit", {"amount_fen": 5}, f"args.account: missing, expected {NAME}"),
    ("account.credit", {"account": "", "amount_fen": 5}, f'args.account: expected {NAME}, got ""'),
    ("account.credit", {"account": "a\nb", "amount_fen": 5}, f'args.account: expected {NAME}, got "a\\nb"'),
    ("account.credit", {"account": 12, "amount_fen": 5}, f"args.account: expected {NAME}, got 12"),
    ("account.credit", {"account": "a"}, "args.amount_fen: missing, expected an integer > 0"),
    ("account.credit", {"account": "a", "amount_fen": 0}, "args.amount_fen: expected an integer > 0, got 0"),
    (
        "account.credit",
        {"account": "a", "amount_fen": -5},
        "args.amount_fen: expected an integer > 0, got -5",
    ),
    (
        "account.credit",
        {"account": "a", "amount_fen": True},
        "args.amount_fen: expected an integer > 0, got true",
    ),
    (
        "account.credit",
        {"account": "a", "amount_fen": 5.0},
        f"args.amount_fen: 5.0 {NOT_AN_INTEGER}",
    ),
    (
        "account.credit",
        {"account": "a", "amount_fen": "500"},
        'args.amount_fen: expected an integer > 0, got "500"',
    ),
    (
        "account.credit",
        {"account": "a", "amount_fen": None},
        "args.amount_fen: expected an integer > 0, got null",
    ),
    (
        "account.credit",
        {"account": "a", "amount_fen": 2**53},
        f"args.amount_fen: 9007199254740992 {BEYOND_2_53}",
    ),
    (
        "account.credit",
        {"account": "a", "amount_fen": 10**30},
        f"args.amount_fen: an integer of 31 digits {BEYOND_2_53}",
    ),
    (
        "account.sync",
        {"account": "a", "balance_fen": 1.5, "through_seq": 0},
        f"args.balance_fen: 1.5 {NOT_AN_INTEGER}",
    ),
    (
        "account.sync",
        {"account": "a", "balance_fen": -(2**53), "through_seq": 0},
        f"args.balance_fen: -9007199254740992 {BEYOND_2_53}",
    ),
    (
        "account.sync",
        {"account": "a", "balance_fen": 0, "through_seq": -1},
        "args.through_seq: expected an integer >= 0, got -1",
    ),
    (
        "account.sync",
        {"account": "a", "balance_fen": 0, "through_seq": False},
        "args.through_seq: expected an integer >= 0, got false",
    ),
    ("card.put", {**CARD_A, "card": "04:A1:B2"}, f'args.card: expected {UID}, got "04:A1:B2"'),
    ("card.put", {**CARD_A, "card": "XYZ1"}, f'args.card: expected {UID}, got "XYZ1"'),
    ("card.put", {**CARD_A, "card": "0"}, f'args.card: expected {UID}, got "0"'),
    ("card.put", {**CARD_A, "card": "A" * 33}, f'args.card: expected {UID}, got "{"A" * 33}"'),
    ("card.put", {**CARD_A, "card": "٠٤"}, f'args.card: expected {UID}, got "٠٤"'),
    ("card.put", {**CARD_A, "card": 1234}, f"args.card: expected {UID}, got 1234"),
    ("card.put", {**CARD_A, "kind": "staff"}, f'args.kind: expected {KINDS}, got "staff"'),
    ("card.put", {**CARD_A, "kind": "Student"}, f'args.kind: expected {KINDS}, got "Student"'),
    ("card.put", {**CARD_A, "status": "blocked"}, f'args.status: expected {STATUSES}, got "blocked"'),
    ("card.put", {**CARD_A, "status": None}, f"args.status: expected {STATUSES}, got null"),
    (
        "card.put",
        {k: v for k, v in CARD_A.items() if k != "status"},
        f"args.status: missing, expected {STATUSES}",
    ),
    (
        "card.put",
        {**CARD_A, "expires": "2027-07-31T23:59:59"},
        f'args.expires: expected {DATE}, got "2027-07-31T23:59:59"',
    ),
    ("card.put", {**CARD_A, "expires": "2027-02-30"}, f'args.expires: expected {DATE}, got "2027-02-30"'),
    ("card.put", {**CARD_A, "expires": "20270731"}, f'args.expires: expected {DATE}, got "20270731"'),
    ("card.put", {**CARD_A, "expires": 20270731}, f"args.expires: expected {DATE}, got 20270731"),
    ("card.block", {}, f"args.card: missing, expected {UID}"),
    ("card.unblock", {"card": ""}, f'args.card: expected {UID}, got ""'),
    ("cards.load", {"full": True, "cards": []}, "args.version: missing, expected an integer >= 0"),
    (
        "cards.load",
        {"version": -1, "full": True, "cards": []},
        "args.version: expected an integer >= 0, got -1",
    ),
    ("cards.load", {"version": 1, "full": 1, "cards": []}, "args.full: expected true or false, got 1"),
    ("cards.load", LOAD, "args.cards: missing, expected a list of card.put arguments"),
    (
        "cards.load",
        LOAD | {"cards": {}},
        "args.cards: expected a list of card.put arguments, got an object",
    ),
    ("cards.load", LOAD | {"cards": [CARD_A, "04A1"]}, 'args.cards[1]: expected an object, got "04A1"'),
    (
        "cards.load",
        LOAD | {"cards": [CARD_A, CARD_B, {**CARD_B, "card": "0A"}, {**CARD_A, "kind": "x"}]},
        f'args.cards[3].kind: expected {KINDS}, got "x"',
    ),
    (
        "cards.load",
        LOAD | {"cards": [CARD_A, CARD_B, {**CARD_A, "card": "04A1B2C3D4"}]},
        'args.cards[2].card: card "04A1B2C3D4" is also at args.cards[0]',
    ),
    (
        "tariff.set",
        {"service": "gas", "price": "1", "unit": "L"},
        'args.service: expected one of "power", "shower", "drinking", got "gas"',
    ),
    ("tariff.set", POWER | {"price": 0.56}, f"args.price: 0.56 {NOT_AN_INTEGER}"),
    ("tariff.set", POWER | {"price": "1e3"}, f'args.price: expected {PRICE}, got "1e3"'),
    ("tariff.set", POWER | {"price": "-0.5"}, f'args.price: expected {PRICE}, got "-0.5"'),
    ("tariff.set", POWER | {"price": "0.1234567"}, f'args.price: expected {PRICE}, got "0.1234567"'),
    ("tariff.set", POWER | {"price": "100.01"}, f'args.price: expected {PRICE}, got "100.01"'),
    ("tariff.set", POWER | {"price": "00.5"}, f'args.price: expected {PRICE}, got "00.5"'),
    ("tariff.set", POWER | {"price": " 0.5"}, f'args.price: expected {PRICE}, got " 0.5"'),
    ("tariff.set", POWER | {"price": ".5"}, f'args.price: expected {PRICE}, got ".5"'),
    ("tariff.set", POWER | {"price": "NaN"}, f'args.price: expected {PRICE}, got "NaN"'),
    (
        "tariff.set",
        POWER | {"price": "0.56", "unit": "kwh"},
        'args.unit: expected one of "kWh", "L", "min", got "kwh"',
    ),
    (
        "tariff.set",
        POWER | {"price": "0.56", "unit": "L"},
        'args.unit: expected "kWh" for service "power", got "L"',
    ),
    (
        "tariff.set",
        {"service": "shower", "price": "0.03", "unit": "kWh"},
        'args.unit: expected "L" or "min" for service "shower", got "kWh"',
    ),
    (
        "tariff.set",
        {"service": "drinking", "price": "0.03", "unit": "kWh"},
        'args.unit: expected "L" or "min" for service "drinking", got "kWh"',
    ),
    ("room.cut", {"hold": True}, f"args.room: missing, expected {NAME}"),
    ("room.cut", {"room": "301", "hold": "yes"}, 'args.hold: expected true or false, got "yes"'),
    ("room.cut", {"room": "301", "hold": 0}, "args.hold: expected true or false, got 0"),
    (
        "room.restore",
        {"room": "r" * 129},
        f'args.room: expected {NAME}, got "{"r" * 40}..." (129 characters)',
    ),
    (
        "room.limit",
        {"room": "301", "max_power_w": 99},
        "args.max_power_w: expected an integer >= 100, got 99",
    ),
    (
        "room.limit",
        {"room": "301", "max_power_w": 1500.5},
        f"args.max_power_w: 1500.5 {NOT_AN_INTEGER}",
    ),
    (
        "room.limit",
        {"room": "301", "max_power_w": "1.5k"},
        'args.max_power_w: expected an integer >= 100, got "1.5k"',
    ),
    ("events.resend", {}, "args.from_seq: missing, expected an integer >= 0"),
    ("events.resend", {"from_seq": -1}, "args.from_seq: expected an integer >= 0, got -1"),
    (
        "events.resend",
        {"from_seq": 5, "to_seq": 4},
        "args.to_seq: expected an integer >= from_seq (5) or null, got 4",
    ),
    (
        "events.resend",
        {"from_seq": 5, "to_seq": "9"},
        'args.to_seq: expected an integer >= from_seq (5) or null, got "9"',
    ),
    (
        "state.get",
        {"room": "301", "card": "04A1"},
        "args.card: at most one of room, account and card, got room and card",
    ),
    (
        "state.get",
        {"room": "301", "account": "a", "card": "04A1"},
        "args.account: at most one of room, account and card, got room and account and card",
    ),
    ("state.get", {"card": "zz"}, f'args.card: expected {UID}, got "zz"'),
    ("state.get", {"room": ""}, f'args.room: expected {NAME}, got ""'),
]


@pytest.mark.parametrize(
    ("payload_or_obj", "expected"),
    [pytest.param(p, e, id=name) for name, p, e in REJECTED],
)
def test_rejections_read_as_the_center_sees_them(
    payload_or_obj: bytes | dict[str, Any], expected: dict[str, Any]
) -> None:
    assert result_json(parse(payload_or_obj)) == expected


@pytest.mark.parametrize(
    ("type_", "args", "message"),
    [pytest.param(t, a, m, id=m.split(":")[0] + f"-{i}") for i, (t, a, m) in enumerate(SCHEMA_ERRORS)],
)
def test_schema_errors_name_the_field(type_: str, args: Any, message: str) -> None:
    assert result_json(parse(command(type_, args))) == error("c-1", "bad_request", message)


def test_every_command_type_has_a_schema_error_case() -> None:
    with_args = {CommandType(t) for t, _, _ in SCHEMA_ERRORS}
    assert with_args == set(CommandType) - {CommandType.PING}


# --------------------------------------------------------------------------
# Card ids in the building's card_format (behaviour.md "Card readers")
# --------------------------------------------------------------------------

DEC10 = "a card number of 10 digits from 0000000000 to 4294967295"
DEC_CARD = {"card": "0040856634", "account": "s2023001", "kind": "student", "status": "active"}


@pytest.mark.parametrize(
    ("type_", "args", "expected"),
    [
        ("card.put", DEC_CARD, CardPut(card="0040856634", account="s2023001",
                                       kind=CardKind.STUDENT, status=CardStatus.ACTIVE, expires=None)),
        ("card.block", {"card": "4294967295"}, CardBlock(card="4294967295")),
        ("card.unblock", {"card": "0000000000"}, CardUnblock(card="0000000000")),
        ("state.get", {"card": "0040856634"}, StateGet(card="0040856634")),
    ],
)
def test_a_dec10_building_takes_10_digit_card_numbers(type_: str, args: Any, expected: CommandArgs) -> None:
    outcome = parse(command(type_, args), card_format="dec10")
    assert isinstance(outcome, ParsedCommand), outcome
    assert outcome.args == expected


def test_a_dec10_cards_load() -> None:
    cards = [DEC_CARD, {**DEC_CARD, "card": "2712847316", "account": "s2"}]
    outcome = parse(command("cards.load", {**LOAD, "cards": cards}), card_format="dec10")
    assert isinstance(outcome, ParsedCommand) and isinstance(outcome.args, CardsLoad)
    assert [c.card for c in outcome.args.cards] == ["0040856634", "2712847316"]


@pytest.mark.parametrize(
    ("card", "shown"),
    [
        ("04A1B2C3", '"04A1B2C3"'),          # a hex UID in a dec10 building
        ("0040856634A", '"0040856634A"'),
        ("40856634", '"40856634"'),          # not zero-padded
        ("00040856634", '"00040856634"'),    # 11 digits
        ("4294967296", '"4294967296"'),      # 2^32
        ("0040 856634", '"0040 856634"'),
        ("٠٠٤٠٨٥٦٦٣٤", '"٠٠٤٠٨٥٦٦٣٤"'),      # Arabic-Indic digits
        (40856634, "40856634"),              # a JSON number
        ("", '""'),
    ],
)
def test_a_dec10_building_refuses_every_other_card_id(card: Any, shown: str) -> None:
    message = f"args.card: expected {DEC10}, got {shown}"
    for type_, args in [("card.put", {**DEC_CARD, "card": card}), ("card.block", {"card": card}),
                        ("card.unblock", {"card": card}), ("state.get", {"card": card})]:
        outcome = parse(command(type_, args), card_format="dec10")
        assert result_json(outcome) == error("c-1", "bad_request", message), type_
    load = command("cards.load", {**LOAD, "cards": [DEC_CARD, {**DEC_CARD, "card": card}]})
    assert result_json(parse(load, card_format="dec10")) == error(
        "c-1", "bad_request", f"args.cards[1].card: expected {DEC10}, got {shown}")


@pytest.mark.parametrize("card", ["04A1B2C", "ABC", "0" * 31])
def test_a_hex_building_refuses_an_odd_number_of_hex_digits(card: str) -> None:
    message = f'args.card: expected a card UID of an even number of hex digits (whole bytes), got "{card}"'
    put = command("card.put", {**CARD_A, "card": card})
    assert result_json(parse(put)) == error("c-1", "bad_request", message)
    assert result_json(parse(put, card_format="hex")) == error("c-1", "bad_request", message)


def test_a_hex_building_still_takes_a_10_digit_number_as_hex() -> None:
    # "0040856634" is valid hex too: in a hex building it is the 5-byte UID 00 40 85 66 34.
    outcome = parse(command("card.put", DEC_CARD))
    assert isinstance(outcome, ParsedCommand) and isinstance(outcome.args, CardPut)
    assert outcome.args.card == "0040856634"


@pytest.mark.parametrize(("card_format", "ok"), [("hex", True), ("dec10", False)])
def test_admission_and_the_screen_read_card_ids_in_the_buildings_format(
    card_format: CardFormat, ok: bool
) -> None:
    from gatewayd.center.screen import screen_command

    data = payload(sign_command(command("card.put", {**CARD_A, "card": "04A1B2C3"}), KEY))
    outcome = accept_command(data, topic_kind="building", building=BUILDING, public_key=PUBLIC,
                             now=NOW, clock_synced=True, card_format=card_format)
    assert isinstance(outcome, ParsedCommand) is ok, outcome
    screened = screen_command(data, topic_kind="building", building=BUILDING,
                              public_key=PUBLIC.public_bytes_raw(), insecure_unsigned=False,
                              card_format=card_format)
    assert (screened is None) is ok, screened
    if not ok:
        assert isinstance(outcome, CommandRejection) and outcome == screened
        assert outcome.message == f'args.card: expected {DEC10}, got "04A1B2C3"'


def test_wrong_target_on_the_broadcast_topic() -> None:
    outcome = parse(command("card.block", {"card": "04A1"}), topic_kind="broadcast")
    assert result_json(outcome) == error(
        "c-1", "bad_request", 'to: expected "all" on the broadcast command topic, got "b07"'
    )


def test_payload_over_the_cap_is_refused_unparsed() -> None:
    data = payload(command("ping"))
    assert isinstance(parse(data, max_bytes=len(data)), ParsedCommand)
    assert result_json(parse(data, max_bytes=len(data) - 1)) == error(
        None, "bad_json", f"payload is {len(data)} bytes, more than the {len(data) - 1} accepted"
    )


def test_default_cap_admits_a_large_cards_load_and_refuses_more() -> None:
    cards = [
        {"card": f"{i:010X}", "account": f"s{i}", "kind": "student", "status": "active"}
        for i in range(20_000)
    ]
    outcome = parse(command("cards.load", {"version": 9, "full": True, "cards": cards}))
    assert isinstance(outcome, ParsedCommand)
    assert isinstance(outcome.args, CardsLoad)
    assert len(outcome.args.cards) == 20_000
    huge = payload(command("ping", note="x" * MAX_COMMAND_BYTES))
    assert result_json(parse(huge))["error"]["code"] == "bad_json"


def test_strict_mode_rejects_unknown_args_fields() -> None:
    outcome = parse(command("room.cut", {"room": "301", "until": TS}), unknown_fields="reject")
    assert result_json(outcome) == error("c-1", "bad_request", "args.until: unknown field")
    nested = command("cards.load", {"version": 1, "full": True, "cards": [{**CARD_A, "pin": "1"}]})
    assert result_json(parse(nested, unknown_fields="reject")) == error(
        "c-1", "bad_request", "args.cards[0].pin: unknown field"
    )
    # Top-level fields stay ignorable: the envelope grows by optional fields.
    assert isinstance(parse(command("ping", trace="x"), unknown_fields="reject"), ParsedCommand)


def test_a_parser_bug_becomes_an_internal_result(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_: object) -> CommandArgs:
        raise KeyError("bug")

    monkeypatch.setitem(command_args._SIMPLE_PARSERS, CommandType.PING, broken)
    assert result_json(parse(command("ping"))) == error(
        "c-1", "internal", "the gateway failed to parse the command (KeyError)"
    )


def test_first_failing_check_wins() -> None:
    # Wrong building, unknown type, bad ts and bad args at once: `to` is reported.
    obj = {"id": "c-1", "to": "b08", "type": "nope", "ts": "yesterday", "args": 5}
    assert result_json(parse(obj))["error"]["message"].startswith("to:")
    obj["to"] = BUILDING
    assert result_json(parse(obj))["error"]["code"] == "unknown_type"
    obj["type"] = "ping"
    assert result_json(parse(obj))["error"]["message"].startswith("ts:")
    obj["ts"] = TS
    assert result_json(parse(obj))["error"]["message"].startswith("args:")


# --------------------------------------------------------------------------
# Signature and age (accept_command)
# --------------------------------------------------------------------------


def accept(data: bytes | dict[str, Any], **kw: Any) -> ParsedCommand | CommandRejection:
    options: dict[str, Any] = {
        "topic_kind": "building",
        "building": BUILDING,
        "public_key": PUBLIC,
        "now": NOW,
        "clock_synced": True,
    }
    options.update(kw)
    raw = data if isinstance(data, bytes) else payload(data)
    return accept_command(raw, **options)


CREDIT = command("account.credit", {"account": "张三", "amount_fen": 500})


def test_signed_command_is_accepted_whatever_the_wire_formatting() -> None:
    signed = sign_command(CREDIT, KEY)
    # The center may send any key order and spacing; the canonical form is the same.
    spaced = json.dumps(dict(reversed(list(signed.items()))), indent=2).encode()
    for data in (payload(signed), spaced):
        outcome = accept(data)
        assert isinstance(outcome, ParsedCommand), outcome
        assert outcome.args == AccountCredit(account="张三", amount_fen=500)
        assert verify_signature(outcome.raw, PUBLIC)


def test_signature_covers_unknown_fields() -> None:
    signed = sign_command(CREDIT | {"trace": "t-1"}, KEY)
    assert isinstance(accept(signed), ParsedCommand)
    tampered = signed | {"trace": "t-2"}
    assert result_json(accept(tampered)) == error(
        "c-1", "bad_signature", "sig: does not verify with the center's public key"
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda c: c | {"args": {"account": "张三", "amount_fen": 50000}},
            "sig: does not verify with the center's public key",
        ),
        (
            lambda c: c | {"ts": "2026-11-23T21:04:06.120+08:00"},
            "sig: does not verify with the center's public key",
        ),
        (lambda c: c | {"id": "c-2"}, "sig: does not verify with the center's public key"),
        (lambda c: {k: v for k, v in c.items() if k != "sig"}, "sig: missing; commands must be signed"),
        (lambda c: c | {"sig": None}, "sig: missing; commands must be signed"),
        (lambda c: c | {"sig": 5}, "sig: expected the standard base64 of a 64-byte Ed25519 signature"),
        (
            lambda c: c | {"sig": c["sig"].rstrip("=")},
            "sig: expected the standard base64 of a 64-byte Ed25519 signature",
        ),
        (
            lambda c: c | {"sig": "-" * 86 + "=="},
            "sig: expected the standard base64 of a 64-byte Ed25519 signature",
        ),
        (
            lambda c: c | {"sig": "_" * 86 + "=="},
            "sig: expected the standard base64 of a 64-byte Ed25519 signature",
        ),
        (
            lambda c: c | {"sig": c["sig"][:40] + " " + c["sig"][41:]},
            "sig: expected the standard base64 of a 64-byte Ed25519 signature",
        ),
        (lambda c: c | {"sig": "A" * 86 + "=="}, "sig: does not verify with the center's public key"),
    ],
)
def test_bad_signatures(mutate: Any, message: str) -> None:
    mutated = mutate(sign_command(CREDIT, KEY))
    assert result_json(accept(mutated)) == error(mutated["id"], "bad_signature", message)


def test_command_signed_by_another_key_is_refused() -> None:
    forged = sign_command(CREDIT, Ed25519PrivateKey.generate())
    assert result_json(accept(forged))["error"]["code"] == "bad_signature"


def test_command_signed_for_another_building_cannot_be_replayed_here() -> None:
    signed = sign_command(command("room.cut", {"room": "301"}, to="b08"), KEY)
    assert result_json(accept(signed)) == error(
        "c-1", "bad_request", 'to: expected "b07" on this building\'s command topic, got "b08"'
    )
    assert result_json(accept(signed, topic_kind="broadcast"))["error"]["message"].startswith(
        'to: expected "all"'
    )


def test_the_signature_is_checked_before_the_schema() -> None:
    """"Missing or wrong sig: refused with bad_signature", whatever else is wrong:
    an unauthenticated sender learns nothing about the schema."""
    unsigned_bad = command("account.credit", {"account": "a", "amount_fen": 0})
    assert result_json(accept(unsigned_bad))["error"]["code"] == "bad_signature"
    unknown = command("no.such", {}, to="b08")
    assert result_json(accept(unknown))["error"]["code"] == "bad_signature"
    signed_bad = sign_command(unsigned_bad, KEY)
    assert result_json(accept(signed_bad))["error"] == {
        "code": "bad_request", "message": "args.amount_fen: expected an integer > 0, got 0"}


def test_a_command_without_a_canonical_form_is_a_bad_request_signed_or_not() -> None:
    """Issue 17: nothing can sign it, so the answer is the number, not the signature."""
    unsigned = command("room.limit", {"room": "301", "max_power_w": 1500.0})
    expected = error("c-1", "bad_request", f"args.max_power_w: 1500.0 {NOT_AN_INTEGER}")
    assert result_json(accept(unsigned)) == expected
    # A center that signed the JCS form (1500) and sent 1500.0 gets the same answer.
    jcs_signed = sign_command(unsigned | {"args": {"room": "301", "max_power_w": 1500}}, KEY)
    assert result_json(accept(jcs_signed | {"args": unsigned["args"]})) == expected
    assert result_json(accept(unsigned, public_key=None, insecure_unsigned=True)) == expected


@pytest.mark.parametrize(
    ("now", "message"),
    [
        (NOW + 300.001, "ts: 300 s old, more than the 300 s accepted"),
        (NOW + 3600, "ts: 3600 s old, more than the 300 s accepted"),
        (NOW - 301, "ts: 301 s ahead of this gateway's clock, more than the 300 s accepted"),
    ],
)
def test_stale_commands_are_refused_when_the_clock_is_synced(now: float, message: str) -> None:
    signed = sign_command(CREDIT, KEY)
    assert result_json(accept(signed, now=now)) == error("c-1", "stale", message)
    # now=None: the caller checks the validity itself (after its duplicate lookup).
    assert isinstance(accept(signed, now=None), ParsedCommand)


def test_unsynchronised_a_command_past_its_validity_is_stale_one_ahead_is_not() -> None:
    """While the clock is not synchronised, "now" (the caller's, never behind the
    newest applied ts) still ends a command's validity; the future does not count."""
    signed = sign_command(CREDIT, KEY)
    replay = accept(signed, now=NOW + 10 * 86400, clock_synced=False)
    assert result_json(replay)["error"]["code"] == "stale"
    assert "not synchronised" in result_json(replay)["error"]["message"]
    assert isinstance(accept(signed, now=NOW - 30 * 86400, clock_synced=False), ParsedCommand)
    assert isinstance(accept(signed, now=NOW + 300, clock_synced=False), ParsedCommand)


@pytest.mark.parametrize("now", [NOW - 300, NOW, NOW + 300])
def test_age_within_the_limit_is_accepted(now: float) -> None:
    assert isinstance(accept(sign_command(CREDIT, KEY), now=now), ParsedCommand)


def test_signature_is_checked_before_age() -> None:
    outcome = accept(CREDIT | {"sig": "A" * 86 + "=="}, now=NOW + 10_000)
    assert result_json(outcome)["error"]["code"] == "bad_signature"


def test_no_public_key_refuses_everything_unless_insecure() -> None:
    signed = sign_command(CREDIT, KEY)
    assert result_json(accept(signed, public_key=None)) == error(
        "c-1",
        "bad_signature",
        "no command public key is configured, so no command can be verified",
    )
    assert isinstance(accept(CREDIT, public_key=None, insecure_unsigned=True), ParsedCommand)
    assert isinstance(accept(signed, public_key=None, insecure_unsigned=True), ParsedCommand)


def test_insecure_mode_still_refuses_a_tampered_signed_command() -> None:
    assert isinstance(accept(CREDIT, insecure_unsigned=True), ParsedCommand)
    tampered = sign_command(CREDIT, KEY) | {"to": BUILDING, "args": {"account": "x", "amount_fen": 1}}
    assert result_json(accept(tampered, insecure_unsigned=True))["error"]["code"] == "bad_signature"


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2026-11-23T13:04:05.120Z", None),
        ("2026-11-23T21:04:05.120+08:00", None),
        ("2026-11-23T21:09:05.121+08:00", "stale"),
        ("2026-11-23 13:04:05.12z", None),
        ("2026-11-23T21:04:05", "bad_request"),
        ("not a time", "bad_request"),
    ],
)
def test_check_age(ts: str, expected: str | None) -> None:
    outcome = check_age(ts, NOW, 300, command_id="c-9")
    assert (outcome.code if outcome else None) == expected
    if outcome is not None:
        assert outcome.id == "c-9"


HOUR, DAY = 3600.0, 86400.0


@pytest.mark.parametrize(
    ("expires_in", "now_after_ts", "synced", "expected"),
    [
        # Without expires: ts +- max_age_s.
        (None, 300, True, None),
        (None, 301, True, "stale"),
        (None, -301, True, "stale"),
        (None, 301, False, "stale"),
        (None, -30 * DAY, False, None),     # the clock behind: never refused for the future
        # With expires: valid until then, however long after ts (up to 7 days).
        (2 * DAY, HOUR, True, None),        # a top-up queued during an outage
        (2 * DAY, 2 * DAY, True, None),
        (2 * DAY, 2 * DAY + 1, True, "stale"),
        (2 * DAY, 2 * DAY + 1, False, "stale"),
        (2 * DAY, -301, True, "stale"),     # it starts at ts - max_age_s all the same
        (2 * DAY, -30 * DAY, False, None),
        (60, 120, True, "stale"),           # expires may shorten the validity too
        (7 * DAY, 7 * DAY, True, None),
    ],
)
def test_validity_rule(expires_in: float | None, now_after_ts: float, synced: bool,
                       expected: str | None) -> None:
    """center-link.md "Signing": valid from ts - max_age_s until expires, else ts + max_age_s."""
    expires = None if expires_in is None else rfc3339(NOW + expires_in, UTC)
    outcome = check_age(TS, NOW + now_after_ts, 300, expires=expires, clock_synced=synced)
    assert (outcome.code if outcome else None) == expected
    issued = parse_rfc3339(TS)
    assert issued is not None
    window = command_admission.valid_window(issued, None if expires is None else parse_rfc3339(expires),
                                   300)
    assert window == pytest.approx((NOW - 300, NOW + (300 if expires_in is None else expires_in)))


@pytest.mark.parametrize(
    ("expires", "message"),
    [
        ("tomorrow", 'expires: expected an RFC 3339 date-time with offset or null, got "tomorrow"'),
        ("2026-11-25", 'expires: expected an RFC 3339 date-time with offset or null, got '
                       '"2026-11-25"'),
        ("2026-11-25T21:04:05", 'expires: expected an RFC 3339 date-time with offset or null, '
                                'got "2026-11-25T21:04:05"'),
        (1795439045, "expires: expected an RFC 3339 date-time with offset or null, got 1795439045"),
        ("2026-11-23T21:04:05.119+08:00", 'expires: expected a time at or after ts, got '
                                          '"2026-11-23T21:04:05.119+08:00"'),
        ("2026-11-30T21:04:05.121+08:00", 'expires: expected at most 7 days after ts, got '
                                          '"2026-11-30T21:04:05.121+08:00"'),
    ],
)
def test_bad_expires_is_a_bad_request(expires: Any, message: str) -> None:
    signed = sign_command(CREDIT | {"expires": expires}, KEY)
    assert result_json(accept(signed)) == error("c-1", "bad_request", message)


@pytest.mark.parametrize("expires", [None, TS, "2026-11-30T13:04:05.120Z"])
def test_expires_is_parsed_and_signed(expires: str | None) -> None:
    signed = sign_command(CREDIT | {"expires": expires}, KEY)
    outcome = accept(signed)
    assert isinstance(outcome, ParsedCommand), outcome
    assert outcome.expires == (None if expires is None else parse_rfc3339(expires))
    assert "expires" not in outcome.ignored
    # The signature covers it: a later expiry is a forgery.
    tampered = signed | {"expires": "2026-11-29T21:04:05.120+08:00"}
    assert result_json(accept(tampered))["error"]["code"] == "bad_signature"


# --------------------------------------------------------------------------
# Fuzz: nothing a command carries can crash the gateway
# --------------------------------------------------------------------------

PARSER_CODES = {ErrorCode.BAD_JSON, ErrorCode.BAD_REQUEST, ErrorCode.UNKNOWN_TYPE}


def usable_id(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    value = obj.get("id")
    if not isinstance(value, str) or not 1 <= len(value) <= 64:
        return None
    try:
        value.encode()
    except UnicodeEncodeError:
        return None
    return value


def check_outcome(outcome: object, expected_id: str | EllipsisType | None = ...) -> None:
    """The invariants every outcome meets; ``...`` when the id is not predictable."""
    assert isinstance(outcome, ParsedCommand | CommandRejection)
    if isinstance(outcome, CommandRejection):
        assert outcome.code in PARSER_CODES, outcome
        result = json.loads(outcome.encode())
        assert set(result) == {"id", "ok", "error"}
        assert result["ok"] is False
        assert result["error"]["code"] == outcome.code.value
        assert isinstance(result["error"]["message"], str)
        assert result["error"]["message"]
        if expected_id is not ...:
            assert outcome.id == expected_id
    else:
        assert outcome.id == usable_id(outcome.raw)
        assert outcome.to == BUILDING
        if expected_id is not ...:
            assert outcome.id == expected_id


FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=80)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=40,
)


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data: bytes) -> None:
    outcome = parse(data)
    check_outcome(outcome)
    if isinstance(outcome, CommandRejection) and outcome.id is not None:
        assert outcome.id == json.loads(data)["id"]


@FUZZ
@given(json_values)
def test_fuzz_random_json(value: Any) -> None:
    check_outcome(parse(payload(value)), usable_id(value))


@FUZZ
@given(st.integers(min_value=0, max_value=400), st.sampled_from(["[", '{"a":']), st.text(max_size=5))
def test_fuzz_deep_nesting(depth: int, opener: str, filler: str) -> None:
    closer = "]" if opener == "[" else "}"
    inner = opener * depth + json.dumps(filler) + closer * depth
    outcome = parse(f'{{"id":"c-1","to":"b07","type":"ping","ts":"{TS}","x":{inner}}}'.encode())
    check_outcome(outcome, "c-1")
    assert isinstance(outcome, ParsedCommand) == (depth < 32)


type_names = st.sampled_from([t.value for t in CommandType]) | st.text(max_size=20)
arg_names = st.sampled_from(
    [
        "account",
        "amount_fen",
        "balance_fen",
        "through_seq",
        "card",
        "kind",
        "status",
        "expires",
        "version",
        "full",
        "cards",
        "service",
        "price",
        "unit",
        "room",
        "hold",
        "max_power_w",
        "from_seq",
        "to_seq",
    ]
)
command_like = st.fixed_dictionaries(
    {
        "id": st.text(min_size=0, max_size=70) | json_scalars,
        "to": st.sampled_from([BUILDING, "all", "b08"]) | json_scalars,
        "type": type_names | json_scalars,
        "ts": st.sampled_from([TS, "2026-11-23T21:04:05Z", "bad"]) | json_scalars,
        "args": st.dictionaries(arg_names, json_values | st.lists(st.dictionaries(arg_names, json_values)))
        | json_values,
    }
)


@FUZZ
@given(command_like, st.sets(st.sampled_from(["id", "to", "type", "ts", "args"])))
def test_fuzz_command_shaped_objects(obj: dict[str, Any], drop: set[str]) -> None:
    for key in drop:
        del obj[key]
    check_outcome(parse(payload(obj)), usable_id(obj))


VALID_OBJECTS = [command(t, a) for t, a, _ in VALID]


@st.composite
def mutated_valid_commands(draw: st.DrawFn) -> dict[str, Any]:
    """A valid command with one value somewhere replaced, removed or added."""
    obj: dict[str, Any] = json.loads(json.dumps(draw(st.sampled_from(VALID_OBJECTS))))
    containers: list[Any] = [obj]
    stack: list[Any] = [obj]
    while stack:
        node = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                containers.append(child)
                stack.append(child)
    target = draw(st.sampled_from(containers))
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    if isinstance(target, dict):
        keys = sorted(target)
        if action == "add" or not keys:
            target[draw(st.text(max_size=10) | arg_names)] = draw(json_values)
        elif action == "remove":
            del target[draw(st.sampled_from(keys))]
        else:
            target[draw(st.sampled_from(keys))] = draw(json_values)
    elif target:
        index = draw(st.integers(min_value=0, max_value=len(target) - 1))
        if action == "remove":
            del target[index]
        else:
            target[index] = draw(json_values)
    else:
        target.append(draw(json_values))
    return obj


@FUZZ
@given(mutated_valid_commands())
def test_fuzz_mutated_valid_commands(obj: dict[str, Any]) -> None:
    outcome = parse(payload(obj))
    check_outcome(outcome, usable_id(obj))
    if isinstance(outcome, ParsedCommand):
        # Whatever parses is accepted once signed: signing never breaks on content.
        assert isinstance(accept(sign_command(obj, KEY)), ParsedCommand)


@FUZZ
@given(st.sampled_from(VALID_OBJECTS), st.data())
def test_fuzz_byte_mutations_of_valid_commands(obj: dict[str, Any], data: st.DataObject) -> None:
    raw = bytearray(payload(obj))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        position = data.draw(st.integers(min_value=0, max_value=len(raw)))
        kind = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if kind == "insert" or position == len(raw):
            raw[position:position] = data.draw(st.binary(min_size=1, max_size=3))
        elif kind == "delete":
            del raw[position]
        else:
            raw[position] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
    outcome = parse(bytes(raw))
    check_outcome(outcome)


@FUZZ
@given(st.text(min_size=0, max_size=200))
def test_fuzz_unicode_in_every_string(text: str) -> None:
    obj = command("card.put", {**CARD_A, "account": text}, id=text[:64] or "c", note=text)
    check_outcome(parse(payload(obj)), usable_id(obj))
