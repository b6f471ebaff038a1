"""`gatewayd demo` end to end, and the simulated building's wiring (breakers feed
meters, valves feed flow counters) seen through a Modbus client as the gateway sees it."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from gatewayd.contract.signing import generate_keypair, load_public_key, sign_command, verify_command
from gatewayd.errors import KeyFileError
from gatewayd.tools.demo_keys import demo_keys, signing_note
from sim.building import BREAKER_BASE, COUNTER_BASE, VALVE_UNIT, SimulatedBuilding
from sim.modbus_units import REG_POWER, REG_TOTAL_KWH

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_to_its_end_and_its_summary_matches_the_store(tmp_path: Path) -> None:
    """The Makefile's example, `--duration 30` at the default speed, tells the whole story."""
    proc = subprocess.run(
        [sys.executable, "-m", "gatewayd.app.cli", "demo", "--duration", "30",
         "--dir", str(tmp_path / "demo")],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "matches the store: yes" in out
    # The story was told and the summary counts what the store holds.
    assert "Morning in building demo" in out
    for heading in ("taps:", "sessions:", "cuts:", "electricity:", "money charged in all:"):
        assert heading in out
    assert "event #" in out  # plain output: stdout is not a terminal
    # Issue 18: every scene of the day happened within the 30 s, as the store says.
    assert re.search(r"CUT room \d+ \(resistive", out) and re.search(r"CUT room \d+ \(overload", out)
    assert "meter_offline cleared 1" in out and "meter_offline raised 1" in out  # wire loose, fixed
    assert "(ended: idle)" in out  # the forgotten tap-out, closed for no flow
    assert re.search(r"REFUSED \(lost\)", out) and re.search(r"REFUSED \(balance\)", out)
    if "private mosquitto" in out:  # the top-up, signed, applied, the room restored
        assert "credits:     1, ¥20.00" in out and "Credit applied" in out
        assert re.search(r"restored room \d+ \(balance\)", out)
    assert not re.search(r"\b(True|False|None)\b|\['", out)  # no Python values in plain lines
    # With --dir the files stay: the daemon's JSON log shows a clean stop.
    log = (tmp_path / "demo" / "daemon.log").read_text()
    assert '"event": "stopped"' in log
    # Issue 17: the demo's gateway enforces signatures with the pair in --dir, and says so.
    keys = tmp_path / "demo"
    if "private mosquitto" in out:
        assert (f"commands are signed: the gateway verifies them with {keys / 'center.pub'}; "
                f"the demo's center signs with {keys / 'center.key'}") in out
        assert f"gatewayd send --key {keys / 'center.key'} --broker mqtt://" in out
    assert (keys / "center.key").stat().st_mode & 0o077 == 0
    config = (keys / "gateway.toml").read_text()
    assert f'command_public_key_file = "{keys / "center.pub"}"' in config
    assert "insecure_unsigned_commands" not in config and "insecure_unsigned_commands" not in log


async def _f32(client: AsyncModbusTcpClient, unit: int, address: int) -> float:
    regs = (await client.read_input_registers(address, count=2, device_id=unit)).registers
    value: float = struct.unpack(">f", struct.pack(">HH", *regs))[0]
    return value


async def test_breakers_feed_meters_and_valves_feed_counters(tmp_path: Path) -> None:
    sim = SimulatedBuilding(tmp_path, rooms=2, showers_per_floor=1, drinking_per_floor=0)
    await sim.start()
    client = AsyncModbusTcpClient("127.0.0.1", port=sim.floors[0].port)
    await client.connect()
    try:
        sim.set_load("101", 3600.0)
        assert await _f32(client, 1, REG_POWER) == 3600.0  # breakers start on
        await client.write_coil(0, False, device_id=BREAKER_BASE)
        assert await _f32(client, 1, REG_POWER) == 0.0
        energy = await _f32(client, 1, REG_TOTAL_KWH)
        assert await _f32(client, 1, REG_TOTAL_KWH) == energy  # no supply, no energy
        assert sim.rooms["101"].breaker_on is False
        assert await _f32(client, 2, REG_POWER) >= 0.0  # the other room is untouched
        await client.write_coil(0, True, device_id=BREAKER_BASE)
        assert await _f32(client, 1, REG_POWER) == 3600.0

        point = sim.points["shower-1-1"]

        async def count() -> int:
            hi, lo = (await client.read_holding_registers(0, count=2, device_id=COUNTER_BASE)).registers
            return int(hi << 16 | lo)

        start = await count()
        point.set_flow(1000.0)  # 100 pulses/s, but the valve is closed
        point.counter.advance(point.counter.last_mono + 1.0)
        assert await count() == start
        await client.write_coil(point.valve_channel, True, device_id=VALVE_UNIT)
        assert point.valve_open
        point.counter.advance(point.counter.last_mono + 1.0)
        assert await count() >= start + 100
        await client.write_coil(point.valve_channel, False, device_id=VALVE_UNIT)
        stopped = await count()
        point.counter.advance(point.counter.last_mono + 1.0)
        assert await count() == stopped
    finally:
        client.close()
        await sim.stop()


def test_summary_check_leaves_out_accounts_the_center_synced() -> None:
    """A center's account.sync sets a balance no event explains: the summary says
    so instead of reporting a mismatch; other accounts are still checked."""
    from gatewayd.store.readonly import Ledgers, StoredEvent
    from gatewayd.tools.demo_summary import summarize

    credit = StoredEvent(1, "account.credited", {"account": "a", "amount_fen": 100,
                                                 "balance_fen": 100, "command": "c1"}, True)
    before = Ledgers({"a": 0, "b": 50}, {}, 0)
    after = Ledgers({"a": 100, "b": 7000}, {}, 1, frozenset({"b"}))
    out = summarize([credit], before, after, 1.0, "day 1")
    assert out.matches
    assert any("accounts set by the center's account.sync are not checked: b" in line
               for line in out.lines)
    wrong = Ledgers({"a": 90, "b": 7000}, {}, 1, frozenset({"b"}))
    assert not summarize([credit], before, wrong, 1.0, "day 1").matches


def test_demo_keys_are_made_once_in_the_dir_or_taken_from_the_center(tmp_path: Path) -> None:
    """Issue 17: the demo's gateway enforces signatures (gatewayd.tools.demo_keys)."""
    made = demo_keys(tmp_path, None)
    assert (made.public_path, made.private_path) == (tmp_path / "center.pub", tmp_path / "center.key")
    assert made.private_key is not None
    assert verify_command(sign_command({"id": "x"}, made.private_key), load_public_key(made.public_path))
    again = demo_keys(tmp_path, None)  # a second run with the same --dir keeps the pair
    assert again.public_path.read_bytes() == made.public_path.read_bytes()
    note = signing_note(made, "mqtt://127.0.0.1:1883", "demo")
    assert note.endswith(f"gatewayd send --key {tmp_path / 'center.key'} --broker "
                         "mqtt://127.0.0.1:1883 --building demo ping")
    theirs = tmp_path / "theirs.pub"
    theirs.write_bytes(generate_keypair().public_pem)
    given = demo_keys(tmp_path / "other", theirs)
    assert (given.public_path, given.private_path, given.private_key) == (theirs, None, None)
    assert "sign yours with your center's private key" in signing_note(given, None, "demo")
    with pytest.raises(KeyFileError, match="holds a private key"):
        demo_keys(tmp_path, tmp_path / "center.key")
