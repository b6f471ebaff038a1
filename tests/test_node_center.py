"""A center in a second language, written from docs/ only (issue 17): the Node.js
client in examples/center-node reproduces the signing vectors byte for byte, and,
against the real daemon (signatures enforced) and a real mosquitto, credits an
account, is refused a command changed after signing, refills with events.resend,
and finds every message it received valid by the published schemas (ajv)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from sim.modbus import SimBuilding
from tests.mqtt_fixtures import Broker
from tests.mqtt_fixtures import collecting as collecting_checked
from tests.test_gateway_e2e import broker, building, gatewayd
from tests.test_power import ROOT, Daemon

__all__ = ["broker", "building"]  # fixtures used by name

pytestmark = pytest.mark.skipif(shutil.which("node") is None,
                                reason="node is not installed (Debian: apt-get install nodejs npm)")

EXAMPLE = ROOT / "examples" / "center-node"
CENTER = EXAMPLE / "center.mjs"
ACCOUNT = "张三-2024001"   # non-ASCII, signed as UTF-8
# Generous guard on one run of the client; it fails the test, it times nothing.
NODE_RUN_S = 120.0


async def node(*args: str) -> tuple[int, list[dict[str, Any]], str]:
    """Run center.mjs; its exit code, its JSON lines, its stderr."""
    proc = await asyncio.create_subprocess_exec(
        "node", str(CENTER), *args, cwd=EXAMPLE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), NODE_RUN_S)
    lines = [json.loads(line) for line in out.decode().splitlines() if line]
    return proc.returncode or 0, lines, err.decode()


async def test_the_node_center_reproduces_the_signing_vectors() -> None:
    code, lines, err = await node("--vectors")
    assert code == 0, err
    assert [v["vector"] for v in lines if "vector" in v] == [
        "ping", "credit-non-ascii", "cards-load-nested", "unknown-top-level-field", "integers-at-the-bound"]
    assert all(v["ok"] for v in lines if "vector" in v)
    assert len([r for r in lines if "refused" in r]) == 3


async def test_the_node_center_finds_a_changed_byte_or_signature(tmp_path: Path) -> None:
    data = json.loads((ROOT / "docs" / "signing-vectors.json").read_text(encoding="utf-8"))
    hex_ = data["vectors"][3]["canonical_hex"]
    data["vectors"][3]["canonical_hex"] = hex_[:-2] + "7e"   # the last "}" made "~"
    data["vectors"][1]["sig"] = "A" + data["vectors"][1]["sig"][1:]
    changed = tmp_path / "vectors.json"
    changed.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    code, lines, err = await node("--vectors", "--vectors-file", str(changed))
    assert code == 1
    assert [v["vector"] for v in lines if "vector" in v and not v["ok"]] == [
        "credit-non-ascii", "unknown-top-level-field"]
    assert "DIFFERENT unknown-top-level-field: canonical bytes" in err
    assert "DIFFERENT credit-non-ascii: sig" in err


def write_config(tmp: Path, sim: SimBuilding, broker: Broker) -> Path:
    path = tmp / "gateway.toml"
    path.write_text(f"""
[gateway]
building = "b07"
state_dir = "{tmp / 'state'}"
poll_interval_s = 0.2
clock_synced = "yes"

[center]
broker = "{broker.url}"
command_public_key_file = "{tmp / 'center.pub'}"
telemetry_interval_s = 1

[[buses]]
name = "b"
type = "tcp"
host = "127.0.0.1"
port = {sim.ports[0]}
timeout_s = 0.3

[[rooms]]
id = "101"
meter = {{ bus = "b", unit = 1, profile = "eastron-sdm120" }}
breaker = {{ bus = "b", unit = {SimBuilding.RELAY_BASE}, profile = "relay-board", channel = 0 }}
""", encoding="utf-8")
    return path


def credit(fen: int) -> str:
    return "account.credit=" + json.dumps({"account": ACCOUNT, "amount_fen": fen}, ensure_ascii=False)


STATE_OF_ACCOUNT = "state.get=" + json.dumps({"account": ACCOUNT}, ensure_ascii=False)
# center.mjs's steps: signed commands ("!": changed after signing), "@telemetry": wait for one.
STEPS = ["ping", "state.get", credit(5000), STATE_OF_ACCOUNT, "!" + credit(100000),
         credit(700), STATE_OF_ACCOUNT, 'events.resend={"from_seq":1}', "@telemetry"]


def results(lines: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(command type, its result) in the order sent, matched by id."""
    sent = {line["sent"]["id"]: line["sent"]["type"] for line in lines if "sent" in line}
    answers = [line["message"] for line in lines if line.get("seen") == "cmd/result"]
    return [(sent[m["id"]], m) for m in answers if m["id"] in sent]


async def test_a_node_center_credits_is_refused_a_changed_command_and_refills(
    tmp_path: Path, broker: Broker, building: SimBuilding
) -> None:
    code, _, err = await gatewayd("keygen", "--out-private", str(tmp_path / "center.key"),
                                  "--out-public", str(tmp_path / "center.pub"))
    assert code == 0, err
    daemon = Daemon(write_config(tmp_path, building, broker))
    async with collecting_checked(broker, ["ecard/v1/b07/#"], client_id="python-watch") as watch:
        await daemon.start()
        try:
            await watch.wait_for(lambda seen: any(
                s.topic.endswith("/status") and s.json()["online"] for s in seen), timeout=30)
            code, lines, err = await node("--broker", broker.url, "--building", "b07",
                                          "--key", str(tmp_path / "center.key"),
                                          "--client-id", "center-main", *STEPS)
            # The same client with a schema that no result of ping can pass: it must say so.
            schemas = tmp_path / "schemas"
            shutil.copytree(ROOT / "docs" / "schemas", schemas)
            (schemas / "result.ping.json").write_text('{"not": {}}')
            refused = await node("--broker", broker.url, "--key", str(tmp_path / "center.key"),
                                 "--schemas", str(schemas), "ping")
        finally:
            assert await daemon.stop() == 0, daemon.output.decode()[-3000:]
    assert code == 0, err + "\n".join(map(str, lines[-5:]))
    seen = [line for line in lines if "seen" in line]
    assert [line for line in seen if not line["valid"]] == []
    assert {line["seen"] for line in seen} >= {"status", "events", "cmd/result", "telemetry"}

    by_type = results(lines)
    assert [t for t, _ in by_type] == ["ping", "state.get", "account.credit", "state.get",
                                       "account.credit", "account.credit", "state.get", "events.resend"]
    ping, building_state, first, after_first, forged, second, after_second, resend = (
        r for _, r in by_type)
    assert ping["result"] == {} and building_state["result"]["building"] == "b07"
    assert first["result"] == {"account": ACCOUNT, "balance_fen": 5000}
    assert after_first["result"]["account"] == {"account": ACCOUNT, "balance_fen": 5000, "known": True}
    assert forged["ok"] is False and forged["error"]["code"] == "bad_signature"
    assert second["result"]["balance_fen"] == 5700
    assert after_second["result"]["account"]["balance_fen"] == 5700   # the forged 100000 never landed

    credited = [line["message"] for line in seen if line["seen"] == "events"
                and line["message"]["type"] == "account.credited"]
    # Each twice: as it happened, and again from events.resend under the same id and seq.
    assert [(e["balance_fen"], e["command"]) for e in credited] == [
        (5000, first["id"]), (5700, second["id"]), (5000, first["id"]), (5700, second["id"])]
    assert credited[0]["id"] == credited[2]["id"] and credited[0]["seq"] == credited[2]["seq"]
    summary = lines[-1]["summary"]
    last = resend["result"]["to_seq"]
    assert resend["result"] == {"from_seq": 1, "to_seq": last, "queued": last}
    assert summary["seqs"] == list(range(1, last + 1))
    assert summary["events"] == last   # every event, whether seen live or only resent

    code, lines, _ = refused
    (bad,) = [line for line in lines if "seen" in line and not line["valid"]]
    assert code == 1 and bad["seen"] == "cmd/result" and bad["message"]["ok"] is True
    assert lines[-1]["summary"]["invalid"] == 1
