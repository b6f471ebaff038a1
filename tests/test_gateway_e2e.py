"""The whole gateway as the center sees it: the daemon with a [center] section,
a real mosquitto, a simulated building, and the staff tools (`gatewayd keygen`,
`gatewayd send`). Asserted on the broker: the retained status, the events,
one result per command; and at the building: the breaker coil."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gatewayd.contract.events import decode_event
from sim.modbus import SimBuilding
from tests.mqtt_fixtures import Broker, Seen, collecting, mosquitto, retained
from tests.test_power import ROOT, Daemon

RELAY = SimBuilding.RELAY_BASE
TOPIC = "ecard/v1/b07"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with mosquitto(tmp_path / "mosquitto") as b:
        yield b


@pytest.fixture
async def building() -> AsyncIterator[SimBuilding]:
    sim = await SimBuilding.tcp(2, per_endpoint=2)
    try:
        yield sim
    finally:
        await sim.stop()


async def gatewayd(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd.app.cli", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_commands_in_events_out_through_the_broker(
    tmp_path: Path, broker: Broker, building: SimBuilding
) -> None:
    sim = building
    for ch in range(2):
        await sim.endpoints[0].set_coil(RELAY, ch, True)
    code, _, err = await gatewayd("keygen", "--out-private", str(tmp_path / "center.key"),
                                  "--out-public", str(tmp_path / "center.pub"))
    assert code == 0, err
    config = tmp_path / "gateway.toml"
    rooms = "\n".join(
        f'[[rooms]]\nid = "{101 + i}"\n'
        f'meter = {{ bus = "b", unit = {i + 1}, profile = "eastron-sdm120" }}\n'
        f'breaker = {{ bus = "b", unit = {RELAY}, profile = "relay-board", channel = {i} }}\n'
        for i in range(2))
    config.write_text(f"""
[gateway]
building = "b07"
state_dir = "{tmp_path / 'state'}"
poll_interval_s = 0.2
clock_synced = "yes"
[center]
broker = "{broker.url}"
command_public_key_file = "{tmp_path / 'center.pub'}"
telemetry_interval_s = 1
[[buses]]
name = "b"
type = "tcp"
host = "127.0.0.1"
port = {sim.ports[0]}
timeout_s = 0.3
{rooms}
""")

    async def send(*args: str) -> dict[str, object]:
        _, out, err = await gatewayd("send", "--key", str(tmp_path / "center.key"),
                                        "--broker", broker.url, "--building", "b07",
                                        "--timeout", "20", *args)
        assert out, err
        result: dict[str, object] = json.loads(out)
        return result

    daemon = Daemon(config)
    async with collecting(broker, [f"{TOPIC}/#"]) as center:
        await daemon.start()
        try:
            await center.wait_for(lambda seen: any(
                s.topic == f"{TOPIC}/status" and s.json()["online"] for s in seen), timeout=30)
            # Both rooms' accounts are unknown until the center speaks.
            status = [s.json() for s in center.on("/status")][-1]
            assert status["accounts_unknown"] == 2 and status["rooms"] == 2

            r = await send("account.credit", "account=room-b07-101", "amount_fen=500")
            assert r["ok"] is True and r["result"] == {"account": "room-b07-101", "balance_fen": 500}
            r = await send("room.cut", "room=102", "hold=true")
            assert r["ok"] is True, r
            assert r["result"]["cut_reason"] == "remote"  # type: ignore[index]
            for _ in range(50):
                if not (await sim.endpoints[0].coils(RELAY, 1, 1))[0]:
                    break
                await asyncio.sleep(0.1)
            assert (await sim.endpoints[0].coils(RELAY, 1, 1)) == [False]
            r = await send("room.cut", "room=999")
            assert r["ok"] is False and r["error"]["code"] == "not_found"  # type: ignore[index]
            # state.get without args: the status document as it stands.
            r = await send("state.get")
            state = r["result"]
            assert isinstance(state, dict)
            assert state["online"] is True and state["building"] == "b07"
            assert state["last_seq"] >= 2 and state["rooms"] == 2 and "boot_id" in state

            await center.wait_for(lambda seen: any(
                s.topic == f"{TOPIC}/events" and s.json()["type"] == "breaker.cut" for s in seen))
            await center.wait_for(lambda seen: any(s.topic == f"{TOPIC}/telemetry" for s in seen))
            # Room 102's meter goes silent: telemetry says offline, with no
            # readings (null, not the last ones), while room 101 keeps its own.
            sim.endpoints[0].set_fault(2, "silent")

            def rooms_now() -> dict[str, dict[str, Any]]:
                docs = center.on("/telemetry")
                return {r["room"]: r for r in docs[-1].json()["rooms"]} if docs else {}

            await center.wait_for(
                lambda seen: rooms_now().get("102", {}).get("online") is False, timeout=30)
            now = rooms_now()
            assert [now["102"][k] for k in ("power_w", "energy_wh", "voltage_v", "current_a",
                                              "pf")] == [None] * 5
            assert now["102"]["breaker"] == "off"
            assert now["101"]["online"] is True and isinstance(now["101"]["energy_wh"], int)
        finally:
            assert await daemon.stop() == 0
        # A clean stop says offline, retained.
        final = await retained(broker, f"{TOPIC}/status")
        assert final.json()["online"] is False

    events = center.on("/events")
    for s in events:
        decode_event(s.payload)  # every event is a valid contract event
    docs = [s.json() for s in events]
    seqs = sorted({d["seq"] for d in docs})
    assert seqs == list(range(1, len(seqs) + 1))  # consecutive, none lost
    credited = [d for d in docs if d["type"] == "account.credited"]
    assert len(credited) == 1 and credited[0]["amount_fen"] == 500
    results = [s.json() for s in center.on("/cmd/result")]
    assert len({r["id"] for r in results}) == len(results) == 4  # one result per command
    telemetry = center.on("/telemetry")[-1].json()
    assert {r["room"] for r in telemetry["rooms"]} == {"101", "102"}


async def test_will_says_offline_when_the_daemon_dies(tmp_path: Path, broker: Broker) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[gateway]
building = "b07"
state_dir = "{tmp_path / 'state'}"
[center]
broker = "{broker.url}"
insecure_unsigned_commands = true
""")
    daemon = Daemon(config)
    async with collecting(broker, [f"{TOPIC}/status"]) as center:
        await daemon.start()
        try:
            await center.wait_for(lambda seen: any(s.json()["online"] for s in seen), timeout=30)
        finally:
            await daemon.stop(signal.SIGKILL)
        seen = await center.wait_for(lambda seen: not seen[-1].json()["online"], timeout=30)
    assert seen[-1].json()["building"] == "b07"
    out = daemon.output.decode()
    # Warned at start, once, under one name.
    warned = [json.loads(line) for line in out.splitlines() if "insecure_unsigned" in line]
    assert [(w["event"], w["level"]) for w in warned] == [
        ("center_insecure_unsigned_commands", "warning")], warned


async def test_backlog_survives_sigkill_mid_drain_and_resend_keeps_ids(
    tmp_path: Path, broker: Broker
) -> None:
    """Broker down while usage accrues; SIGKILL while the backlog drains; restart:
    every seq arrives, each under one id; events.resend repeats the original ids."""
    n = 16
    sim = await SimBuilding.tcp(n, per_endpoint=n)
    try:
        for ch in range(n):
            await sim.endpoints[0].set_coil(RELAY, ch, True)
            sim.set_load(ch, 3600)  # 1 Wh/s each
        rooms = "\n".join(
            f'[[rooms]]\nid = "{101 + i}"\n'
            f'meter = {{ bus = "b", unit = {i + 1}, profile = "eastron-sdm120-import" }}\n'
            f'breaker = {{ bus = "b", unit = {RELAY}, profile = "relay-board", channel = {i} }}\n'
            for i in range(n))
        code, _, err = await gatewayd("keygen", "--out-private", str(tmp_path / "center.key"),
                                      "--out-public", str(tmp_path / "center.pub"))
        assert code == 0, err
        config = tmp_path / "gateway.toml"
        config.write_text(f"""
[gateway]
building = "b07"
state_dir = "{tmp_path / 'state'}"
poll_interval_s = 0.2
[center]
broker = "{broker.url}"
command_public_key_file = "{tmp_path / 'center.pub'}"
[tariffs]
power = {{ price = "50", unit = "kWh" }}   # 5 fen per Wh: a report every poll or two
[power]
report_fen = 1
[[buses]]
name = "b"
type = "tcp"
host = "127.0.0.1"
port = {sim.ports[0]}
{rooms}
""")
        async with collecting(broker, [f"{TOPIC}/events", f"{TOPIC}/status"]) as center:
            daemon = Daemon(config)
            await daemon.start()
            try:
                await center.wait_for(lambda seen: any(
                    s.topic.endswith("status") and s.json()["online"] for s in seen), timeout=30)
                broker.stop()
                await asyncio.sleep(6)  # usage accrues in the outbox
                broker.start()
                await asyncio.sleep(0.3)  # the backlog starts draining...
            finally:
                await daemon.stop(signal.SIGKILL)  # ...and the gateway dies mid-way
            backlog_at_kill = len(center.on("/events"))
            daemon = Daemon(config)
            await daemon.start()
            try:
                def drained(seen: list[Seen]) -> bool:
                    statuses = [s.json() for s in seen if s.topic.endswith("status")]
                    return bool(statuses) and statuses[-1].get("pending") == 0 and statuses[-1][
                        "online"] and len(seen) > backlog_at_kill
                await center.wait_for(drained, timeout=60)
                for ch in range(n):
                    sim.set_load(ch, 0)
                before_resend = len(center.on("/events"))
                code, out, err = await gatewayd(
                    "send", "--key", str(tmp_path / "center.key"), "--broker", broker.url,
                    "--building", "b07", "--timeout", "20", "events.resend", "from_seq=1",
                    "to_seq=3")
                assert code == 0, out + err
                assert json.loads(out)["result"]["queued"] == 3
                resent = await center.wait_for(
                    lambda seen: len([s for s in seen if s.topic.endswith("/events")])
                    >= before_resend + 3)
                again = [s.json() for s in resent if s.topic.endswith("/events")][before_resend:]
                assert {d["seq"] for d in again} >= {1, 2, 3}
            finally:
                assert await daemon.stop() == 0
    finally:
        await sim.stop()
    docs = [s.json() for s in center.on("/events")]
    by_seq: dict[int, set[str]] = {}
    for d in docs:
        by_seq.setdefault(d["seq"], set()).add(d["id"])
    assert all(len(ids) == 1 for ids in by_seq.values()), "a seq was published under two ids"
    last = max(by_seq)
    assert sorted(by_seq) == list(range(1, last + 1)), "a gap in seq"
    usage = [d for d in docs if d["type"] == "power.usage"]
    assert len(usage) > n  # the outage really built a backlog
    # The resent events carry their original ids (checked by the one-id-per-seq rule
    # above, since seqs 1 to 3 arrived at least twice).
    assert sum(1 for d in docs if d["seq"] == 1) >= 2
