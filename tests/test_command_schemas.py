"""The command and result schemas of docs/schemas/ say what the code does.

Commands: for each sample `args`, the published schema of its command type and
the gateway's own parser (`command_args.parse_args`) give the same verdict;
the few things JSON Schema cannot say are listed, and held, as `LOOSER`.
Results: every shape the gateway answers with, encoded by the contract code,
matches its command's result schema and the `result.json` union (closed: no
key the schema does not list).
"""

from __future__ import annotations

import json
import uuid
from datetime import date
from typing import Any

import msgspec
import pytest

from gatewayd.contract import results as r
from gatewayd.contract.command_args import parse_args
from gatewayd.contract.command_fields import MISSING, InvalidField
from gatewayd.contract.enums import (
    BreakerState,
    CardKind,
    CardStatus,
    CommandType,
    CutReason,
    ErrorCode,
    Service,
    TariffUnit,
)
from gatewayd.contract.wire import as_duplicate, encode_result_error, encode_result_ok
from tests import contract_check

MAX = 2**53 - 1
T = CommandType
CARD = {"card": "04A1B2C3", "account": "stu-1", "kind": "student", "status": "active"}

SAMPLES: list[tuple[CommandType, Any]] = [
    (T.ACCOUNT_CREDIT, {"account": "stu-1", "amount_fen": 1}),
    (T.ACCOUNT_CREDIT, {"account": "stu-1", "amount_fen": MAX}),
    (T.ACCOUNT_CREDIT, {"account": "stu-1", "amount_fen": MAX + 1}),
    (T.ACCOUNT_CREDIT, {"account": "stu-1", "amount_fen": 0}),
    (T.ACCOUNT_CREDIT, {"account": "stu-1", "amount_fen": "5"}),
    (T.ACCOUNT_CREDIT, {"account": "stu-1", "amount_fen": True}),
    (T.ACCOUNT_CREDIT, {"account": "", "amount_fen": 5}),
    (T.ACCOUNT_CREDIT, {"account": "x" * 128, "amount_fen": 5}),
    (T.ACCOUNT_CREDIT, {"account": "x" * 129, "amount_fen": 5}),
    (T.ACCOUNT_CREDIT, {"account": "A栋 301", "amount_fen": 5}),
    (T.ACCOUNT_CREDIT, {"account": "a\tb", "amount_fen": 5}),
    (T.ACCOUNT_CREDIT, {"account": "a\x85b", "amount_fen": 5}),
    (T.ACCOUNT_CREDIT, {"account": "stu-1", "amount_fen": 5, "until": "later"}),
    (T.ACCOUNT_CREDIT, None),
    (T.ACCOUNT_CREDIT, MISSING),
    (T.ACCOUNT_SYNC, {"account": "stu-1", "balance_fen": -MAX, "through_seq": 0}),
    (T.ACCOUNT_SYNC, {"account": "stu-1", "balance_fen": -MAX - 1, "through_seq": 0}),
    (T.ACCOUNT_SYNC, {"account": "stu-1", "balance_fen": 5, "through_seq": -1}),
    (T.ACCOUNT_SYNC, {"account": "stu-1", "balance_fen": 5}),
    (T.CARD_PUT, CARD),
    (T.CARD_PUT, {**CARD, "card": "04a1b2c3"}),
    (T.CARD_PUT, {**CARD, "card": "04A1B2C"}),
    (T.CARD_PUT, {**CARD, "card": "0"}),
    (T.CARD_PUT, {**CARD, "card": "04:A1"}),
    (T.CARD_PUT, {**CARD, "card": "AB" * 16}),
    (T.CARD_PUT, {**CARD, "card": "AB" * 17}),
    (T.CARD_PUT, {**CARD, "kind": "staff"}),
    (T.CARD_PUT, {**CARD, "status": "frozen"}),
    (T.CARD_PUT, {**CARD, "expires": "2027-07-31"}),
    (T.CARD_PUT, {**CARD, "expires": "2027-07-31T23:59:59+08:00"}),
    (T.CARD_PUT, {**CARD, "expires": None}),
    (T.CARD_PUT, {**CARD, "expires": "2027-02-30"}),
    (T.CARD_PUT, {**CARD, "expires": "tomorrow"}),
    (T.CARD_PUT, {**CARD, "expires": 20270731}),
    (T.CARD_BLOCK, {"card": "04A1B2C3"}),
    (T.CARD_BLOCK, {}),
    (T.CARD_UNBLOCK, {"card": "zz"}),
    (T.CARDS_LOAD, {"version": 3, "full": True, "cards": [CARD]}),
    (T.CARDS_LOAD, {"version": 3, "full": True, "cards": []}),
    (T.CARDS_LOAD, {"version": -1, "full": True, "cards": []}),
    (T.CARDS_LOAD, {"version": 3, "full": "yes", "cards": []}),
    (T.CARDS_LOAD, {"version": 3, "full": False, "cards": [{**CARD, "kind": "staff"}]}),
    (T.CARDS_LOAD, {"version": 3, "full": False, "cards": [{**CARD, "expires": None}]}),
    *[(T.TARIFF_SET, {"service": "power", "price": price, "unit": "kWh"})
      for price in ("0", "0.56", "100", "100.000000", "99.999999", "100.01", "101", "0.5600001",
                    "01", "-1", "1e2", " 1", "1.", ".5", 1)],
    (T.TARIFF_SET, {"service": "power", "price": "0.56", "unit": "L"}),
    (T.TARIFF_SET, {"service": "shower", "price": "0.56", "unit": "kWh"}),
    (T.TARIFF_SET, {"service": "shower", "price": "0.56", "unit": "min"}),
    (T.TARIFF_SET, {"service": "gas", "price": "0.56", "unit": "min"}),
    (T.ROOM_CUT, {"room": "301"}),
    (T.ROOM_CUT, {"room": "301", "hold": None}),
    (T.ROOM_CUT, {"room": "301", "hold": True}),
    (T.ROOM_CUT, {"room": "301", "hold": "yes"}),
    (T.ROOM_RESTORE, {"room": "301"}),
    (T.ROOM_LIMIT, {"room": "301", "max_power_w": 100}),
    (T.ROOM_LIMIT, {"room": "301", "max_power_w": 99}),
    (T.EVENTS_RESEND, {"from_seq": 0}),
    (T.EVENTS_RESEND, {"from_seq": 1, "to_seq": None}),
    (T.EVENTS_RESEND, {"from_seq": 1, "to_seq": 1}),
    (T.EVENTS_RESEND, {"from_seq": -1}),
    (T.STATE_GET, MISSING),
    (T.STATE_GET, None),
    (T.STATE_GET, {}),
    (T.STATE_GET, {"room": "301"}),
    (T.STATE_GET, {"account": "stu-1", "card": None}),
    (T.STATE_GET, {"room": "301", "card": "04A1"}),
    (T.STATE_GET, {"card": "zz"}),
    (T.STATE_GET, []),
    (T.PING, MISSING),
    (T.PING, {}),
    (T.PING, "now"),
]

#: What the parser refuses and the schema cannot: a rule across fields without a
#: fixed bound, and JSON Schema's "integer", which counts 1500.0 as one.
LOOSER: list[tuple[CommandType, Any]] = [
    (T.EVENTS_RESEND, {"from_seq": 5, "to_seq": 4}),
    (T.CARDS_LOAD, {"version": 1, "full": True, "cards": [CARD, CARD]}),
    (T.ACCOUNT_CREDIT, {"account": "stu-1", "amount_fen": 5.0}),
]


def _parses(ctype: CommandType, args: Any) -> bool:
    try:
        parse_args(ctype, args, "ignore", [])
    except InvalidField:
        return False
    return True


def _schema_accepts(ctype: CommandType, args: Any) -> bool:
    command: dict[str, Any] = {"id": str(uuid.uuid4()), "to": "b07", "type": ctype.value,
                               "ts": "2026-11-23T21:04:05+08:00", "sig": "A" * 86 + "=="}
    if args is not MISSING:
        command["args"] = args
    open_schema = contract_check.validator(f"command.{ctype}.json", strict=False)
    union = contract_check.validator("command.json", strict=False)
    assert open_schema.is_valid(command) == union.is_valid(command)
    return bool(open_schema.is_valid(command))


@pytest.mark.parametrize(("ctype", "args"), SAMPLES, ids=lambda v: repr(v)[:40])
def test_the_args_schema_and_the_parser_agree(ctype: CommandType, args: Any) -> None:
    assert _schema_accepts(ctype, args) == _parses(ctype, args)


@pytest.mark.parametrize(("ctype", "args"), LOOSER, ids=lambda v: repr(v)[:40])
def test_what_the_schema_cannot_say(ctype: CommandType, args: Any) -> None:
    assert _schema_accepts(ctype, args) and not _parses(ctype, args)


ROOM = r.RoomSnapshot(
    room="301", account="room-301", balance_fen=4210, account_known=True, breaker=BreakerState.ON,
    cut_reason=None, hold=False, lockout=False, max_power_w=1500, online=True, failing=False,
    power_w=212.5, energy_wh=1834567, voltage_v=None, current_a=None, pf=None, accrued_fen=12)

RESULTS: list[tuple[CommandType, msgspec.Struct]] = [
    (T.ACCOUNT_CREDIT, r.CreditResult(account="stu-1", balance_fen=9210)),
    (T.ACCOUNT_SYNC, r.SyncResult(account="stu-1", balance_fen=-20, unreported_fen=120)),
    (T.CARD_PUT, r.CardResult(card="04A1B2C3")),
    (T.CARD_BLOCK, r.CardStatusResult(card="04A1B2C3", status=CardStatus.LOST)),
    (T.CARDS_LOAD, r.CardsLoadResult(version=4, full=True, cards=2)),
    (T.TARIFF_SET, r.TariffResult(service=Service.POWER, price="0.56", unit=TariffUnit.KWH)),
    (T.ROOM_CUT, r.RoomResult(room="301", cut=True, cut_reason=CutReason.REMOTE, hold=True)),
    (T.ROOM_LIMIT, r.RoomLimitResult(room="301", cut=False, cut_reason=None, hold=False,
                                     max_power_w=1500)),
    (T.EVENTS_RESEND, r.ResendResult(from_seq=1, to_seq=812, queued=700)),
    (T.EVENTS_RESEND, r.ResendResult(from_seq=1, to_seq=812, queued=700, missing=((1, 100), (300, 311)))),
    (T.STATE_GET, r.RoomStateResult(room=ROOM)),
    (T.STATE_GET, r.AccountStateResult(account=r.AccountSnapshot(account="a", balance_fen=1, known=False))),
    (T.STATE_GET, r.CardStateResult(card=r.CardSnapshot(
        card="04A1B2C3", account="a", kind=CardKind.STUDENT, status=CardStatus.ACTIVE,
        expires=date(2027, 7, 31)))),
    (T.PING, r.EmptyResult()),
]


@pytest.mark.parametrize(("ctype", "result"), RESULTS, ids=lambda v: repr(v)[:40])
def test_every_result_shape_matches(ctype: CommandType, result: msgspec.Struct) -> None:
    assert type(result) in r.RESULT_SHAPES[ctype]
    for payload in (encode_result_ok("c-1", result), as_duplicate(encode_result_ok("c-1", result))):
        message = json.loads(payload)
        assert contract_check.validator(f"result.{ctype}.json").is_valid(message), message
        assert contract_check.validator("result.json").is_valid(message), message


def test_failures_match_and_a_wrong_shape_does_not() -> None:
    for payload in (encode_result_error(None, ErrorCode.BAD_JSON, "not JSON"),
                    as_duplicate(encode_result_error("c-2", ErrorCode.CONFLICT, "older version"))):
        assert contract_check.validator("result.json").is_valid(json.loads(payload))
    credit = json.loads(encode_result_ok("c-3", r.CreditResult(account="a", balance_fen=1)))
    assert not contract_check.validator("result.account.sync.json").is_valid(credit)
    assert not contract_check.validator("result.json").is_valid({**credit, "ok": False})
