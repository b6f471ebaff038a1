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

import pytest

from gatewayd.sim.modbus import SimBuilding
from gatewayd.wire import decode_event
from tests.mqtt_fixtures import Broker, collecting, mosquitto, retained
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
        sys.executable, "-m", "gatewayd.cli", *args, cwd=ROOT,
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

            await center.wait_for(lambda seen: any(
                s.topic == f"{TOPIC}/events" and s.json()["type"] == "breaker.cut" for s in seen))
            await center.wait_for(lambda seen: any(s.topic == f"{TOPIC}/telemetry" for s in seen))
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
    assert len({r["id"] for r in results}) == len(results) == 3  # one result per command
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
    assert "insecure_unsigned_commands" in out  # warned at start
