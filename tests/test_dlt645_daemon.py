"""A floor of DL/T 645-2007 meters with their relays under the real daemon (issue 16):
the simulated meter line on a pseudo-terminal (real byte timing), a real mosquitto
for the center's credit, the daemon as a process. Asserted where a user sees it:
the relays in the meters, the events and balances in the store, the alarms.

Rooms: 401 prepaid (cut at zero, restored by a credit), 402 overloaded (trips and
recloses), 403 silent (meter_offline while the others are read), 404 whose password
file is wrong (breaker_mismatch; its answers come after stray bytes), 405 whose
answers carry another meter's address (never taken as readings).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from drivers.dlt645.credentials import Credentials
from drivers.dlt645.frames import address_bytes
from sim.dlt645 import SimDltLine, SimDltMeter
from tests.mqtt_fixtures import Broker, free_port
from tests.test_gateway_e2e import broker, gatewayd
from tests.test_metrics import scrape
from tests.test_power import Daemon, db, events, seed, switch_pending, until

__all__ = ["broker"]  # a fixture used by name

TZ = ZoneInfo("Asia/Shanghai")   # the building's gateway.timezone: the meters' clock
ADDRESS = {room: f"0000000{room}00" for room in ("401", "402", "403", "404", "405")}
BIG = 36_000.0   # W: 10 Wh a second, 10 fen a second at 1 fen/Wh
PLENTY = 1_000_000


@pytest.fixture
async def line() -> AsyncIterator[SimDltLine]:
    # 9600 baud keeps the test short; the pty runs without parity ("N"), which some
    # kernels refuse to set on a pty, while the simulator charges 8E1 wire time.
    sim = SimDltLine([SimDltMeter(a, tz=TZ) for a in ADDRESS.values()], baudrate=9600)
    sim.meters[ADDRESS["404"]].credentials = Credentials(level=2, password=0x654321, operator=1)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def write_config(tmp: Path, broker: Broker, line: SimDltLine, metrics_port: int) -> Path:
    (tmp / "meter.password").write_text("02:123456:00000001\n")
    (tmp / "meter.password").chmod(0o640)
    rooms = "".join(f"""
[[rooms]]
id = "{room}"
max_power_w = {100_000 if room in ("401", "404") else 1000}
meter = {{ bus = "dlt", address = "{address}", profile = "dlt645-2007" }}
[rooms.breaker]
bus = "dlt"
address = "{address}"
profile = "dlt645-2007-relay"
password_file = "meter.password"
""" for room, address in ADDRESS.items())
    path = tmp / "gateway.toml"
    path.write_text(f"""
[gateway]
building = "b07"
timezone = "Asia/Shanghai"
state_dir = "{tmp / 'state'}"
poll_interval_s = 0.2
clock_synced = "yes"

[center]
broker = "{broker.url}"
command_public_key_file = "{tmp / 'center.pub'}"

[metrics]
listen = "127.0.0.1:{metrics_port}"

[tariffs]
power = {{ price = "10", unit = "kWh" }}

[power]
trip_after_s = 1
reclose_after_s = 2
low_balance_fen = 0

[[buses]]
name = "dlt"
type = "rtu"
protocol = "dlt645"
port = "{line.client_port}"
baudrate = 9600
parity = "N"
timeout_s = 0.2
retries = 0
{rooms}""")
    return path


def asked(line: SimDltLine, room: str) -> int:
    """Requests the gateway sent to the meter of `room` so far."""
    wire = address_bytes(ADDRESS[room])
    return sum(1 for _, what, data in line.wire if what == "request" and wire in data)


def alarms(tmp: Path, code: str, device: str) -> list[dict[str, Any]]:
    return [e for e in events(tmp, "alarm") if e["code"] == code and e["device"] == device]


def room_events(tmp: Path, room: str) -> list[tuple[str, str]]:
    return [(e["type"], e["reason"]) for e in events(tmp)
            if e.get("room") == room and e["type"].startswith("breaker.")]


def balance(tmp: Path, account: str) -> int:
    conn = db(tmp)
    try:
        (fen,) = conn.execute("SELECT balance_fen FROM accounts WHERE account = ?",
                              (account,)).fetchone()
    finally:
        conn.close()
    return int(fen)


async def relay_becomes(line: SimDltLine, room: str, closed: bool, timeout: float = 10.0) -> None:
    meter = line.meters[ADDRESS[room]]
    await until(lambda: meter.relay_closed is closed, timeout=timeout)


def status_power(tmp: Path, room: str) -> float | None:
    try:
        doc = json.loads((tmp / "state" / "status.json").read_text())
    except (OSError, ValueError):
        return None
    value = next(r["power_w"] for r in doc["rooms"] if r["room"] == room)
    return None if value is None else float(value)


async def test_a_dlt645_floor_under_the_daemon(tmp_path: Path, broker: Broker,
                                               line: SimDltLine) -> None:
    code, _, err = await gatewayd("keygen", "--out-private", str(tmp_path / "center.key"),
                                  "--out-public", str(tmp_path / "center.pub"))
    assert code == 0, err
    meters = {room: line.meters[a] for room, a in ADDRESS.items()}
    seed(tmp_path, {"room-b07-401": 50, "room-b07-404": 20,
                    **{f"room-b07-{r}": PLENTY for r in ("402", "403", "405")}})
    meters["401"].physics.power_w = BIG
    meters["404"].physics.power_w = BIG
    meters["404"].noise = bytes.fromhex("00FF68")   # stray bytes before each answer
    meters["403"].silent = True
    meters["405"].foreign = ADDRESS["402"]   # its answers carry 402's address
    meters["405"].physics.power_w = 999.0
    port = free_port()
    config = write_config(tmp_path, broker, line, port)
    daemon = Daemon(config)
    await daemon.start()
    try:
        await _prepaid_cut_and_credit(tmp_path, broker, line)
        await _overload_trips_and_recloses(tmp_path, line)
        await _relay_closed_by_hand(tmp_path, broker, line)
        await _faulty_meters(tmp_path, line)
        # The round time, where staff look: the metrics and `gatewayd status`.
        metrics = await scrape(port)
        round_s = metrics[("gatewayd_bus_round_seconds", (("bus", "dlt"),))]
        assert 0.05 < round_s < 5.0
        assert metrics[("gatewayd_bus_foreign_frames_total", (("bus", "dlt"),))] > 0
        _, out, err = await gatewayd("status", "-c", str(config))
        assert "bus dlt (DL/T 645): round " in out and " 5 meters, " in out, out + err
    finally:
        code = await daemon.stop()
    assert code == 0, daemon.output.decode()[-3000:]


async def _prepaid_cut_and_credit(tmp: Path, broker: Broker, line: SimDltLine) -> None:
    """401 is charged exactly per the tariff, cut at zero through its relay, and
    restored by the center's credit."""
    cut = await until(lambda: [e for e in events(tmp, "breaker.cut") if e["room"] == "401"],
                      timeout=30)
    assert cut[0]["reason"] == "balance"
    await relay_becomes(line, "401", False)
    usage = [e for e in events(tmp, "power.usage") if e["room"] == "401"]
    # 10 yuan a kWh is 1 fen a Wh; the register counts 10 Wh steps: every step charged.
    charged_wh = usage[-1]["meter_wh_to"] - usage[0]["meter_wh_from"]
    assert sum(e["amount_fen"] for e in usage) == charged_wh == 50 - usage[-1]["balance_fen"]
    assert balance(tmp, "room-b07-401") == usage[-1]["balance_fen"] <= 0
    line.meters[ADDRESS["401"]].physics.power_w = 0.0
    _, out, err = await gatewayd("send", "--key", str(tmp / "center.key"), "--broker", broker.url,
                                 "--building", "b07", "--timeout", "20", "account.credit",
                                 "account=room-b07-401", "amount_fen=1000")
    assert json.loads(out)["ok"] is True, out + err
    await relay_becomes(line, "401", True)
    await until(lambda: ("breaker.restored", "balance") in room_events(tmp, "401"))


async def _overload_trips_and_recloses(tmp: Path, line: SimDltLine) -> None:
    meter = line.meters[ADDRESS["402"]]
    meter.physics.power_w = 2000.0   # against 1000 W
    await until(lambda: ("breaker.cut", "overload") in room_events(tmp, "402"))
    await relay_becomes(line, "402", False)
    meter.physics.power_w = 0.0   # what tripped it is unplugged
    await until(lambda: ("breaker.restored", "reclose") in room_events(tmp, "402"))
    await relay_becomes(line, "402", True)


async def _relay_closed_by_hand(tmp: Path, broker: Broker, line: SimDltLine) -> None:
    """402 is cut by the center (held); the tenant closes the meter's relay with its button and
    plugs in a heater. The relay is not read every round, but the load on a cut room's
    meter has it read: cut again within seconds, and a breaker_mismatch says so."""
    _, out, err = await gatewayd("send", "--key", str(tmp / "center.key"), "--broker", broker.url,
                                 "--building", "b07", "--timeout", "20", "room.cut", "room=402", "hold=true")
    assert json.loads(out)["ok"] is True, out + err
    await relay_becomes(line, "402", False)
    await until(lambda: ("breaker.cut", "remote") in room_events(tmp, "402"))
    await until(lambda: not switch_pending(tmp, "402"))   # the cut read back: nothing pending
    await asyncio.sleep(2.0)   # and settled: a load read now is no longer the cut's own lag
    meter = line.meters[ADDRESS["402"]]
    meter.physics.power_w = 1500.0
    meter.physics.set_supplied(True, time.monotonic())   # the button on the meter
    await relay_becomes(line, "402", False, timeout=20)
    found = await until(lambda: [a for a in alarms(tmp, "breaker_mismatch", "breaker:402")
                                 if "found on while cut" in str(a["detail"])], timeout=10)
    assert found[0]["active"] is True
    meter.physics.power_w = 0.0


async def _faulty_meters(tmp: Path, line: SimDltLine) -> None:
    """403 silent, 404's password wrong, 405 answering with another address."""
    raised = await until(lambda: alarms(tmp, "meter_offline", "meter:403"))
    assert raised[0]["active"] is True
    await until(lambda: alarms(tmp, "meter_offline", "meter:405"))
    # The others keep being read: a load plugged in at 401 shows within a few rounds.
    before = asked(line, "402")
    line.meters[ADDRESS["401"]].physics.power_w = 1234.0
    await until(lambda: status_power(tmp, "401") == pytest.approx(1234.0), timeout=10)
    await until(lambda: asked(line, "402") - before >= 3, timeout=10)
    # 404 ran out of money: its cut is refused (wrong password), its relay stays closed.
    mismatch = await until(lambda: alarms(tmp, "breaker_mismatch", "breaker:404"), timeout=20)
    assert mismatch[0]["active"] is True
    assert line.meters[ADDRESS["404"]].relay_closed
    assert line.meters[ADDRESS["404"]].commands, "the cut was asked for"
    # 404's answers, after stray bytes, are readings; 405's, from another address, never.
    assert status_power(tmp, "404") == pytest.approx(BIG)
    assert status_power(tmp, "405") is None
    assert not [e for e in events(tmp, "power.usage") if e["room"] == "405"]
