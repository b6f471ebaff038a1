"""The machine-readable contract: docs/schemas/ and docs/asyncapi.yaml.

They are generated from the code (`make schemas`); here they are held to it:
the committed files are what the generator writes, every schema is valid draft
2020-12, the AsyncAPI document is valid AsyncAPI 3.0 (the official schema,
vendored in tests/asyncapi/) and names only the code's topics and messages,
and every message type the gateway publishes, encoded by the contract code,
matches its schema. The end-to-end tests validate what the running gateway
publishes (tests/mqtt_fixtures.py).
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gatewayd.center.topics import Topics
from gatewayd.contract.enums import (
    AlarmCode,
    CommandType,
    EndReason,
    EventType,
    PointState,
    TapReason,
    WaterUse,
)
from gatewayd.contract.events import Alarm, EventBody, EventEnvelope, Tap, WaterSession, encode_event
from gatewayd.contract.wire import (
    Faults,
    PointReading,
    Status,
    Telemetry,
    encode_status,
    encode_telemetry,
    encode_will,
)
from gatewayd.tools.asyncapi import asyncapi_document
from gatewayd.tools.contract_docs import main as contract_docs
from tests import contract_check

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
ASYNCAPI_SCHEMA = Path(__file__).resolve().parent / "asyncapi" / "asyncapi-3.0.0.schema.json"
TS = "2026-11-23T21:04:05.120+08:00"


def _valid(name: str, message: Any) -> bool:
    return bool(contract_check.validator(name).is_valid(message))


# --------------------------------------------------------------------------
# The files are the code's
# --------------------------------------------------------------------------


def test_the_committed_files_are_what_the_code_generates() -> None:
    assert contract_docs(["--docs", str(DOCS), "--check"]) == 0, "run `make schemas` and commit"


@pytest.mark.parametrize("path", sorted((DOCS / "schemas").glob("*.json")), ids=lambda p: p.name)
def test_every_schema_is_a_valid_2020_12_schema(path: Path) -> None:
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_there_is_a_schema_per_event_command_and_result() -> None:
    names = {p.name for p in (DOCS / "schemas").glob("*.json")}
    assert {f"event.{t}.json" for t in EventType} <= names
    assert {f"command.{t}.json" for t in CommandType} <= names
    assert {f"result.{t}.json" for t in CommandType} <= names
    assert {"event.json", "command.json", "result.json", "status.json", "will.json",
            "telemetry.json"} <= names


# --------------------------------------------------------------------------
# AsyncAPI
# --------------------------------------------------------------------------


def _asyncapi() -> Any:
    return yaml.safe_load((DOCS / "asyncapi.yaml").read_text(encoding="utf-8"))


def test_asyncapi_yaml_holds_the_generated_document() -> None:
    assert _asyncapi() == asyncapi_document()


def test_asyncapi_document_is_valid_asyncapi_3() -> None:
    validator = jsonschema.Draft7Validator(json.loads(ASYNCAPI_SCHEMA.read_text(encoding="utf-8")))
    document = _asyncapi()
    assert [e.message for e in validator.iter_errors(document)] == []
    broken = copy.deepcopy(document)
    broken["operations"]["sendEvents"]["action"] = "publish"   # AsyncAPI 2's word: not 3.0
    assert not validator.is_valid(broken)


def test_asyncapi_names_the_codes_topics_and_messages() -> None:
    document = _asyncapi()
    topics = Topics.of("{prefix}", "{building}")
    addresses = {c["address"] for c in document["channels"].values()}
    assert addresses == {topics.status, topics.events, topics.telemetry, topics.cmd, topics.broadcast,
                         topics.result}
    messages = document["components"]["messages"]
    for message in messages.values():
        assert (DOCS / message["payload"]["schema"]["$ref"]).is_file()
    assert {f"command.{t}" for t in CommandType} | {f"result.{t}" for t in CommandType} <= set(messages)
    receive = document["operations"]["receiveCommands"]
    assert receive["reply"]["channel"] == {"$ref": "#/channels/results"}
    assert messages["command.ping"]["correlationId"]["location"] == "$message.payload#/id"
    bindings = {name: op["bindings"]["mqtt"] for name, op in document["operations"].items()}
    assert bindings["sendStatus"]["retain"] is True and bindings["sendStatus"]["qos"] == 1
    assert bindings["sendTelemetry"]["qos"] == 0 and bindings["sendEvents"]["qos"] == 1


# --------------------------------------------------------------------------
# Published messages, as the contract code encodes them
# --------------------------------------------------------------------------


def _event(body: EventBody, seq: int = 1) -> Any:
    envelope = EventEnvelope(id=str(uuid.uuid4()), seq=seq, ts=TS, building="b07")
    return json.loads(encode_event(envelope, body))


def _water(volume_ml: Any = 5200) -> WaterSession:
    return WaterSession(
        session=str(uuid.uuid4()), point="shower-1", service=WaterUse.SHOWER, card="04A1B2C3",
        account="stu-1", started=TS, ended=TS, volume_ml=volume_ml, seconds=300, amount_fen=260,
        end_reason=EndReason.TAP, offline=False)


def test_events_match_their_schema_and_the_union() -> None:
    for body in (_water(), Tap(reader="r1", card="04A1", point="shower-1", granted=True,
                               reason=TapReason.START),
                 Tap(reader="r1", card="04A1", point=None, granted=False, reason=TapReason.NO_POINT,
                     count=7),
                 Alarm(code=AlarmCode.METER_JUMP, device="meter:301", detail=5000, active=True),
                 Alarm(code=AlarmCode.READER_OFFLINE, device="reader:r1", detail="", active=False)):
        message = _event(body)
        assert _valid("event.json", message), message
        assert _valid(f"event.{message['type']}.json", message), message


@pytest.mark.parametrize(("body", "seq"), [
    (_water(volume_ml=None), 1),                                     # water is integer mL
    (_water(), 0),                                                   # seq starts at 1
    (Tap(reader="r1", card="04A1", point="p", granted=True, reason=TapReason.BUSY), 1),
    (Alarm(code=AlarmCode.METER_JUMP, device="meter:301", detail="5000 Wh", active=True), 1),
])
def test_the_schemas_refuse_what_the_contract_rules_out(body: EventBody, seq: int) -> None:
    assert not _valid("event.json", _event(body, seq))


def test_status_will_and_telemetry_match() -> None:
    status = Status(building="b07", boot_id=str(uuid.uuid4()), store_id=str(uuid.uuid4()),
                    version="1.2.0", started=TS, clock_synced=True, cards_version=0, last_seq=0,
                    pending=0, accounts_unknown=0, rooms=1, points=1, readers=1, faults=Faults())
    assert _valid("status.json", json.loads(encode_status(status)))
    assert _valid("will.json", json.loads(encode_will("b07", str(uuid.uuid4()))))
    closed = PointReading(point="shower-2", state=PointState.CLOSED, card=None, volume_ml=None)
    telemetry = json.loads(encode_telemetry(Telemetry(ts=TS, building="b07", rooms=(), points=(closed,))))
    assert _valid("telemetry.json", telemetry)
    assert not _valid("status.json", {**json.loads(encode_status(status)), "store_id": "not-a-uuid"})
    assert not _valid("telemetry.json", {**telemetry, "ts": "2026-11-23 21:04"})
