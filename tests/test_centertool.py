"""gatewayd keygen, send and tail, run as staff run them, against a real mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gatewayd.app.cli import main
from gatewayd.contract.signing import load_private_key, load_public_key, verify_command
from gatewayd.contract.wire import parse_rfc3339
from gatewayd.tools.centertool_send import parse_args_list
from gatewayd.tools.centertool_tail import describe
from tests.mqtt_fixtures import WAIT_S, Broker, mosquitto, needs_mosquitto

ROOT = "ecard/v1/b07"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with mosquitto(tmp_path / "mosquitto") as b:
        yield b


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "center.key", tmp_path / "center.pub"
    assert main(["keygen", "--out-private", str(private), "--out-public", str(public)]) == 0
    return private, public


# --- keygen ----------------------------------------------------------------------------


def test_keygen_writes_a_matching_pair_private_0600(keys: tuple[Path, Path]) -> None:
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    signed_by = load_private_key(private)
    assert load_public_key(public).public_bytes_raw() == signed_by.public_key().public_bytes_raw()


def test_keygen_refuses_to_overwrite_without_force(keys: tuple[Path, Path], capsys: Any) -> None:
    private, public = keys
    before = private.read_bytes()
    assert main(["keygen", "--out-private", str(private), "--out-public", str(public)]) == 2
    assert "exists" in capsys.readouterr().err
    assert private.read_bytes() == before
    assert main(["keygen", "--out-private", str(private), "--out-public", str(public), "--force"]) == 0
    assert private.read_bytes() != before
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_key_value_arguments_are_json_when_they_parse() -> None:
    assert parse_args_list(["amount_fen=500", "account=s2023001", "hold=true", "cards=[1,2]",
                            'o={"a":1}', "price=0.56", 'quoted="42"', "empty=", "room=102",
                            "card=0042", "n:=7"]) == {
        "amount_fen": 500, "account": "s2023001", "hold": True, "cards": [1, 2], "o": {"a": 1},
        "price": "0.56", "quoted": "42", "empty": "", "room": "102", "card": "0042", "n": 7}
    with pytest.raises(ValueError, match="not JSON"):
        parse_args_list(["x:=nope"])
    with pytest.raises(ValueError, match="key=value"):
        parse_args_list(["novalue"])


# --- send ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def responder(broker: Broker, public: Path) -> AsyncIterator[list[dict[str, Any]]]:
    """A stand-in gateway: verifies each command's signature and answers on its result topic."""
    key = load_public_key(public)
    received: list[dict[str, Any]] = []
    ready = asyncio.Event()

    async def serve() -> None:
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            await client.subscribe([(f"{ROOT}/cmd", 1), ("ecard/v1/all/cmd", 1)])
            ready.set()
            async for m in client.messages:
                cmd = json.loads(m.payload if isinstance(m.payload, bytes) else b"")
                received.append(cmd)
                if cmd["type"] == "silent":
                    continue
                if not verify_command(cmd, key):
                    result: dict[str, Any] = {"id": cmd["id"], "ok": False,
                                              "error": {"code": "bad_signature", "message": "sig"}}
                elif cmd["type"] == "room.cut":
                    result = {"id": cmd["id"], "ok": False, "error": {"code": "not_found", "message": "room"}}
                else:
                    result = {"id": cmd["id"], "ok": True, "result": {"args": cmd["args"], "to": cmd["to"]}}
                await client.publish(f"{ROOT}/cmd/result", json.dumps(result).encode(), qos=1)

    task = asyncio.create_task(serve())
    try:
        async with asyncio.timeout(WAIT_S):
            await ready.wait()
        yield received
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def gatewayd(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd.app.cli", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    async with asyncio.timeout(WAIT_S):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@needs_mosquitto
async def test_send_signs_publishes_and_prints_the_result(broker: Broker, keys: tuple[Path, Path]) -> None:
    private, public = keys
    async with responder(broker, public) as received:
        code, out, err = await gatewayd("send", "--key", str(private), "--broker", f"mqtt://127.0.0.1:{broker.port}",
                                        "--building", "b07", "account.credit", "account=s2023001",
                                        "amount_fen=500")
        assert code == 0, err
        result = json.loads(out)
        assert result["ok"] is True
        assert result["result"] == {"args": {"account": "s2023001", "amount_fen": 500}, "to": "b07"}
        (cmd,) = received
        assert cmd["id"] == result["id"] and cmd["type"] == "account.credit"
        assert verify_command(cmd, load_public_key(public))
        assert cmd["ts"][-6] in "+-"  # RFC 3339 with an offset


@needs_mosquitto
async def test_send_expires_in_queues_a_command_for_an_offline_gateway(
    broker: Broker, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    url = f"mqtt://127.0.0.1:{broker.port}"
    async with responder(broker, public) as received:
        code, _, err = await gatewayd("send", "--key", str(private), "--broker", url,
                                      "--building", "b07", "--expires-in", "172800", "ping")
        assert code == 0, err
        (cmd,) = received
        assert verify_command(cmd, load_public_key(public))
        ts, expires = parse_rfc3339(cmd["ts"]), parse_rfc3339(cmd["expires"])
        assert ts is not None and expires is not None
        assert abs((expires - ts).total_seconds() - 172800) < 0.002
    code, _, err = await gatewayd("send", "--key", str(private), "--broker", url,
                                  "--building", "b07", "--expires-in", "604801", "ping")
    assert code == 2 and "7 days" in err


@needs_mosquitto
async def test_send_broadcast_refused_and_timeout_exit_codes(broker: Broker, keys: tuple[Path, Path]) -> None:
    private, public = keys
    url = f"mqtt://127.0.0.1:{broker.port}"
    async with responder(broker, public) as received:
        code, out, _ = await gatewayd("send", "--key", str(private), "--broker", url, "--building", "b07",
                                      "--to", "all", "ping")
        assert code == 0 and json.loads(out)["result"]["to"] == "all"
        code, out, _ = await gatewayd("send", "--key", str(private), "--broker", url, "--building", "b07",
                                      "room.cut", "room=999")
        assert code == 1 and json.loads(out)["error"]["code"] == "not_found"
        code, out, err = await gatewayd("send", "--key", str(private), "--broker", url, "--building", "b07",
                                        "--timeout", "0.5", "silent")
        assert code == 3 and out == "" and "no result" in err
        code, out, _ = await gatewayd("send", "--key", str(private), "--broker", url, "--building", "b07",
                                      "--id", "my-id-1", "ping")
        assert code == 0 and json.loads(out)["id"] == "my-id-1"
        assert [c["type"] for c in received] == ["ping", "room.cut", "silent", "ping"]
        assert received[-1]["id"] == "my-id-1"


async def test_send_and_tail_refuse_a_building_that_is_not_one(tmp_path: Path) -> None:
    """A topic wildcard or upper case would subscribe to nothing, or crash the client."""
    for building in ("a/#", "B07", "+"):
        code, _, err = await gatewayd("send", "--key", "k", "--broker", "mqtt://127.0.0.1:1",
                                      "--building", building, "ping")
        assert code == 2 and "is not a building id" in err and "Traceback" not in err
    code, _, err = await gatewayd("tail", "--broker", "mqtt://127.0.0.1:1", "--building", "a/#")
    assert code == 2 and "is not a building id" in err


def test_keygen_writes_center_key_and_pub_here_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["keygen"]) == 0
    assert load_public_key(tmp_path / "center.pub") is not None
    assert (tmp_path / "center.key").stat().st_mode & 0o777 == 0o600


async def test_send_with_a_bad_key_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-key.pem"
    bad.write_text("hello\n")
    code, _, err = await gatewayd("send", "--key", str(bad), "--broker", "mqtt://127.0.0.1:1",
                                  "--building", "b07", "ping")
    assert code == 2 and "not-a-key.pem" in err


async def test_send_refuses_to_sign_a_number_that_is_not_an_integer(keys: tuple[Path, Path]) -> None:
    """Issue 17: a command carries integers only; send says so rather than sign it."""
    code, _, err = await gatewayd("send", "--key", str(keys[0]), "--broker", "mqtt://127.0.0.1:1",
                                  "--building", "b07", "room.limit", "room=101", "max_power_w:=1500.0")
    assert code == 2 and "Traceback" not in err
    assert err.strip() == ("gatewayd send: cannot sign: args.max_power_w: 1500.0 is not an integer; "
                           "a command carries integers only (prices are decimal strings)")


# --- tail ------------------------------------------------------------------------------


@needs_mosquitto
async def test_tail_prints_one_line_per_message(broker: Broker) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd.app.cli", "tail", "--broker", f"mqtt://127.0.0.1:{broker.port}",
        "--count", "3", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stderr is not None and proc.stdout is not None
    async with asyncio.timeout(WAIT_S):
        assert (await proc.stderr.readline()).startswith(b"listening on ")
    event = {"id": "e1", "seq": 7, "ts": "2026-11-25T10:00:00.000+08:00", "building": "b07",
             "type": "power.usage", "room": "301", "amount_fen": 12}
    status = {"online": False, "building": "b07", "boot_id": "boot-1"}
    result = {"id": "c1", "ok": False, "error": {"code": "stale", "message": "too old"}}
    async with aiomqtt.Client("127.0.0.1", broker.port) as gw:
        await gw.publish(f"{ROOT}/events", json.dumps(event).encode(), qos=1)
        await gw.publish(f"{ROOT}/status", json.dumps(status).encode(), qos=1)
        await gw.publish(f"{ROOT}/cmd/result", json.dumps(result).encode(), qos=1)
    async with asyncio.timeout(WAIT_S):
        out, _ = await proc.communicate()
    lines = out.decode().splitlines()
    assert proc.returncode == 0
    assert lines == [
        "2026-11-25T10:00:00.000+08:00 b07 events #7 power.usage room=301 amount_fen=12",
        "b07 status OFFLINE boot=boot-1",
        "b07 cmd/result c1 REFUSED stale: too old",
    ]


@needs_mosquitto
async def test_tail_json(broker: Broker) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd.app.cli", "tail", "--broker", f"mqtt://127.0.0.1:{broker.port}",
        "--building", "b07", "--json", "--count", "1", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stderr is not None
    async with asyncio.timeout(WAIT_S):
        await proc.stderr.readline()
    async with aiomqtt.Client("127.0.0.1", broker.port) as gw:
        await gw.publish("ecard/v1/b08/events", b'{"seq": 1}', qos=1)  # another building: not shown
        await gw.publish(f"{ROOT}/events", b'{"seq": 2}', qos=1)
    async with asyncio.timeout(WAIT_S):
        out, _ = await proc.communicate()
    assert json.loads(out) == {"topic": f"{ROOT}/events", "retained": False, "payload": {"seq": 2}}


def test_describe_status_and_telemetry() -> None:
    status = {"online": True, "building": "b07", "boot_id": "x", "version": "0.1.0", "last_seq": 12,
              "pending": 0, "clock_synced": True, "faults": {"meters": 1, "readers": 0, "valves": 0}}
    assert describe(f"{ROOT}/status", json.dumps(status).encode(), retained=True) == (
        "b07 status online v0.1.0 last_seq=12 pending=0 faults=meters=1 clock synced (retained)")
    telemetry = {"ts": "T", "building": "b07", "rooms": [{}, {}], "points": []}
    assert describe(f"{ROOT}/telemetry", json.dumps(telemetry).encode()) == "T b07 telemetry rooms=2 points=0"
    assert describe(f"{ROOT}/events", b"\xff") .startswith("b07 events (not JSON")


# --- issue 18: send --help, send's exit codes, tail before the broker, words not reprs --------


def test_send_help_lists_every_command_type_with_its_arguments(capsys: Any) -> None:
    import typing

    import msgspec

    from gatewayd.contract.command_types import CommandArgs
    from gatewayd.contract.enums import CommandType

    with pytest.raises(SystemExit):
        main(["send", "--help"])
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0]: line for line in lines if line.startswith("  ") and "." in line.split()[0]}
    assert set(listed) | {"ping"} == {t.value for t in CommandType}
    assert any(line.split()[:1] == ["ping"] for line in lines)
    text = "\n".join(lines)
    for struct in typing.get_args(CommandArgs):
        for f in msgspec.structs.fields(struct):
            assert f"{f.name}=" in text, (struct, f.name)
    assert "room.cut        room=TEXT [hold=true|false]" in text
    assert "service=power|shower|drinking price=DECIMAL unit=kWh|L|min" in text
    assert "4 the broker cannot be reached (nothing sent)" in text
    assert max(len(line) for line in lines) <= 80


async def test_send_to_a_broker_nobody_answers_exits_4(keys: tuple[Path, Path]) -> None:
    from tests.mqtt_fixtures import free_port

    code, out, err = await gatewayd("send", "--key", str(keys[0]), "--broker",
                                    f"mqtt://127.0.0.1:{free_port()}", "--building", "b07", "ping")
    assert code == 4 and out == ""
    assert "gatewayd send: cannot reach the broker mqtt://127.0.0.1:" in err
    assert "nothing was sent" in err


@needs_mosquitto
async def test_tail_started_before_the_broker_keeps_trying(tmp_path: Path) -> None:
    from tests.mqtt_fixtures import free_port

    late = Broker(tmp_path / "late", free_port())
    late.dir.mkdir()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd.app.cli", "tail", "--broker", f"mqtt://127.0.0.1:{late.port}",
        "--count", "1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(WAIT_S):
            first = (await proc.stderr.readline()).decode()
        assert first.startswith("gatewayd tail: cannot connect (") and "trying again in 1 s" in first
        late.start()
        async with asyncio.timeout(WAIT_S):
            while not (line := await proc.stderr.readline()).startswith(b"listening on "):
                assert line, "tail ended before connecting"
        event = {"id": "e1", "seq": 3, "ts": "T", "building": "b07", "type": "tap", "point": "s1",
                 "granted": True, "reasons": ["a", "b"], "note": None}
        async with aiomqtt.Client("127.0.0.1", late.port) as gw:
            await gw.publish(f"{ROOT}/events", json.dumps(event).encode(), qos=1)
        async with asyncio.timeout(WAIT_S):
            out, _ = await proc.communicate()
        assert proc.returncode == 0
        assert out.decode() == "T b07 events #3 tap point=s1 granted=yes reasons=a,b note=-\n"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        late.stop()
