"""Issue 18: a meter's values as it resolves them, in the telemetry the center gets
and in `gatewayd status`: a register of 0.1 V shows 230.1, never 230.10000000000002."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.profile import SHIPPED_DIR, load_profile, parse_profile
from drivers.resolution import resolved
from sim.modbus import SimBuilding
from tests.mqtt_fixtures import Broker, collecting, mosquitto, needs_mosquitto
from tests.test_power import ROOT, Daemon

TOPIC = "ecard/v1/b07"
# Integer registers with a scale, as many Chinese meters have them: in these units
# the scaled value is not exact in binary (2301 * 0.1 = 230.10000000000002).
SITE_PROFILE = """\
kind = "meter"
model = "integer registers"
[fields]
energy_wh = { table = "holding", address = 0, type = "u32", scale = 10 }
power_w   = { table = "holding", address = 2, type = "u16", scale = 0.1 }
voltage_v = { table = "holding", address = 3, type = "u16", scale = 0.1 }
current_a = { table = "holding", address = 4, type = "u16", scale = 0.01 }
pf        = { table = "holding", address = 5, type = "u16", scale = 0.001 }
"""
# energy 1000 (10,000 Wh), power 4807 (480.7 W), 2301 (230.1 V), 1233 (12.33 A), 953 (0.953)
REGISTERS = [0, 1000, 4807, 2301, 1233, 953]
EXPECTED = {"power_w": 480.7, "voltage_v": 230.1, "current_a": 12.33, "pf": 0.953}


def test_resolution_follows_the_profile() -> None:
    site = parse_profile("site", SITE_PROFILE, "site.toml")
    # What the driver computes (raw times scale) is what the profile resolves, rounded.
    assert 4807 * 0.1 != 480.7 and resolved(site, "power_w", 4807 * 0.1) == 480.7
    assert resolved(site, "voltage_v", 2301 * 0.1) == 230.1
    assert resolved(site, "pf", 953 * 0.001) == 0.953
    dlt = load_profile("dlt645-2007", [SHIPPED_DIR])  # kW with 4 decimals: W with 1
    assert resolved(dlt, "power_w", 1234.5678) == 1234.6
    assert resolved(dlt, "current_a", 5.12345) == 5.123
    sdm = load_profile("eastron-sdm120", [SHIPPED_DIR])  # f32: 7 significant digits
    assert resolved(sdm, "pf", 0.9300000071525574) == 0.93
    assert resolved(sdm, "voltage_v", 229.89999389648438) == 229.9


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with mosquitto(tmp_path / "mosquitto") as b:
        yield b


@pytest.fixture
async def building() -> AsyncIterator[SimBuilding]:
    sim = await SimBuilding.tcp(1, per_endpoint=1)
    try:
        yield sim
    finally:
        await sim.stop()


def _config(tmp_path: Path, broker: Broker, port: int) -> Path:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "int-meter.toml").write_text(SITE_PROFILE)
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[gateway]
building = "b07"
state_dir = "{tmp_path / 'state'}"
profiles_dir = "{tmp_path / 'profiles'}"
poll_interval_s = 0.2
clock_synced = "yes"
[center]
broker = "{broker.url}"
insecure_unsigned_commands = true
telemetry_interval_s = 1
[[buses]]
name = "b"
type = "tcp"
host = "127.0.0.1"
port = {port}
[[rooms]]
id = "101"
meter = {{ bus = "b", unit = 1, profile = "int-meter" }}
breaker = {{ bus = "b", unit = {SimBuilding.RELAY_BASE}, profile = "relay-board", channel = 0 }}
""")
    return config


@needs_mosquitto
async def test_telemetry_and_status_show_what_the_meter_resolves(
    tmp_path: Path, broker: Broker, building: SimBuilding
) -> None:
    await building.endpoints[0].set_holding(1, 0, REGISTERS)
    config = _config(tmp_path, broker, building.ports[0])
    daemon = Daemon(config)
    async with collecting(broker, [f"{TOPIC}/telemetry"]) as center:
        await daemon.start()
        try:
            def read(seen: list[Any]) -> bool:
                return any(r.get("online") for s in seen for r in json.loads(s.payload)["rooms"])

            seen = await center.wait_for(read, timeout=30)
            payload = next(s.payload for s in seen if read([s]))
            room = json.loads(payload)["rooms"][0]
            assert {k: room[k] for k in EXPECTED} == EXPECTED
            assert b"230.10000000000002" not in payload and b"480.70000000000005" not in payload
            shown: dict[str, Any] = {}
            for _ in range(100):  # status.json is rewritten every 2 s: wait for a reading in it
                shown = (await _status_json(config))["rooms"][0]
                if shown["online"]:
                    break
                await asyncio.sleep(0.2)
            assert {k: shown[k] for k in EXPECTED} == EXPECTED
        finally:
            assert await daemon.stop() == 0


async def _status_json(config: Path) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd.app.cli", "status", "-c", str(config), "--json",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    doc: dict[str, Any] = json.loads(out)
    return doc
