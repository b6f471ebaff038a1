"""Electricity end to end: the real daemon against a real pymodbus building.

The daemon runs as a subprocess (`python -m gatewayd.app.cli run`); the simulated
building runs in the test's event loop. The tests look where a user would:
the relay coils on the Modbus server, the events and balances in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gatewayd.app.supervisor import Supervisor
from gatewayd.config.load import load_config
from gatewayd.contract.enums import AlarmCode
from gatewayd.contract.events import breaker_device, decode_event, meter_device
from gatewayd.services.alarms import Alarms
from gatewayd.services.clock import Clock
from gatewayd.services.hardware import Hardware
from gatewayd.services.power.service import PowerService
from gatewayd.store import rooms as rooms_table
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger
from gatewayd.store.txn import Txn
from sim.modbus import SimBuilding

ROOT = Path(__file__).resolve().parent.parent
RELAY = SimBuilding.RELAY_BASE
ROOMS = 6


def write_config(tmp: Path, sim: SimBuilding, extra_room: Callable[[int], str] = lambda i: "") -> Path:
    lines = [
        "[gateway]",
        'building = "b07"',
        f'state_dir = "{tmp / "state"}"',
        "poll_interval_s = 0.2",
        'clock_synced = "yes"',
        "[tariffs]",
        # 100 yuan per kWh: 10 fen per Wh, so money runs out in seconds.
        'power = { price = "100", unit = "kWh" }',
        "[power]",
        "trip_after_s = 0.5",
        "reclose_after_s = 1.5",
        "lockout_trips = 2",
        "lockout_s = 3600",
        "report_fen = 50",
        "low_balance_fen = 20",
        "max_power_w = 1000",
        "[[buses]]",
        'name = "floor1"',
        'type = "tcp"',
        'host = "127.0.0.1"',
        f"port = {sim.ports[0]}",
        "timeout_s = 0.3",
    ]
    for i in range(ROOMS):
        lines += [
            "[[rooms]]",
            f'id = "{101 + i}"',
            f'meter = {{ bus = "floor1", unit = {i + 1}, profile = "eastron-sdm120" }}',
            f'breaker = {{ bus = "floor1", unit = {RELAY}, profile = "relay-board", channel = {i} }}',
            extra_room(i),
        ]
    path = tmp / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
async def building() -> AsyncIterator[SimBuilding]:
    sim = await SimBuilding.tcp(ROOMS, per_endpoint=ROOMS)
    try:
        yield sim
    finally:
        await sim.stop()


class Daemon:
    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.output = b""

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gatewayd.app.cli", "run", "-c", str(self.config),
            "--log-format", "json", cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        out, _ = await asyncio.wait_for(self.proc.communicate(), 20)
        self.output += out
        return self.proc.returncode if self.proc.returncode is not None else -1


def db(tmp: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{tmp / 'state' / 'gatewayd.db'}?mode=ro", uri=True)


def switch_pending(tmp: Path, room: str) -> bool:
    """A committed cut or restore not yet read back on the coil (or no store yet)."""
    try:
        conn = db(tmp)
        row = conn.execute("SELECT switch_pending FROM rooms WHERE room = ?", (room,)).fetchone()
        conn.close()
    except sqlite3.OperationalError:
        return True
    return row is None or bool(row[0])


def events(tmp: Path, type_: str | None = None) -> list[dict[str, Any]]:
    try:
        conn = db(tmp)
        rows = conn.execute("SELECT payload FROM events ORDER BY seq").fetchall()
        conn.close()
    except sqlite3.OperationalError:
        return []
    # Every payload must be a valid contract event (wire.decode_event is strict).
    out = []
    for (payload,) in rows:
        decode_event(payload)
        out.append(json.loads(payload))
    return [e for e in out if type_ is None or e["type"] == type_]


async def until(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


def seed(tmp: Path, balances: dict[str, int]) -> None:
    store = Store.open(tmp / "state", "b07")
    try:
        for account, fen in balances.items():
            store.call(lambda t, a=account, f=fen: Ledger.credit(t, a, f))  # type: ignore[misc]
    finally:
        store.close()


async def coil(sim: SimBuilding, channel: int) -> bool:
    return (await sim.endpoints[0].coils(RELAY, channel, 1))[0]


async def coil_becomes(sim: SimBuilding, channel: int, value: bool, timeout: float = 5.0) -> None:
    """The breaker write follows the committed event within a moment."""
    for _ in range(int(timeout / 0.05)):
        if await coil(sim, channel) is value:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"coil {channel} did not become {value}")


async def test_prepaid_overload_resistive_and_unknown_accounts(
    tmp_path: Path, building: SimBuilding
) -> None:
    sim = building
    for ch in range(ROOMS):
        await sim.endpoints[0].set_coil(RELAY, ch, True)
    config = write_config(tmp_path, sim, lambda i: "resistive_cutoff = true" if i == 3 else
                          ("max_power_w = 100000" if i in (0, 1) else ""))
    # 101: known, 300 fen; 102: unknown; others plenty.
    seed(tmp_path, {"room-b07-101": 300, **{f"room-b07-{101 + i}": 100_000 for i in (2, 3, 4, 5)}})
    sim.set_load(0, 7200)   # 2 Wh/s = 20 fen/s: 300 fen last ~15 s
    sim.set_load(1, 3600)   # unknown account: charged, never cut
    sim.set_load(3, 100, pf=0.9)
    daemon = Daemon(config)
    await daemon.start()
    try:
        cut = await until(lambda: [e for e in events(tmp_path, "breaker.cut") if e["room"] == "101"],
                          timeout=40)
        assert cut[0]["reason"] == "balance"
        await coil_becomes(sim, 0, False)
        sim.set_load(0, 0)  # the supply is cut
        usage = [e for e in events(tmp_path, "power.usage") if e["room"] == "101"]
        assert usage and usage[-1]["balance_fen"] <= 0
        # Reports chain: each starts where the previous ended.
        for a, b in itertools.pairwise(usage):
            assert b["meter_wh_from"] == a["meter_wh_to"]
        # The cut reported everything charged so far.
        assert sum(e["amount_fen"] for e in usage) == 300 - usage[-1]["balance_fen"]
        low = [e for e in events(tmp_path, "balance.low") if e["account"] == "room-b07-101"]
        assert len(low) == 1

        # Overload: 2 kW against a 1 kW limit trips, recloses, trips again: lockout.
        sim.set_load(2, 2000)
        await until(lambda: [e["reason"] for e in events(tmp_path) if e.get("room") == "103"
                             and e["type"].startswith("breaker.")] == ["overload", "reclose", "lockout"])
        await coil_becomes(sim, 2, False)
        sim.set_load(2, 0)

        # A kettle: a step of 1.4 kW at pf 1.0 in a room with resistive_cutoff.
        sim.set_load(3, 1500, pf=1.0)
        await until(lambda: [e for e in events(tmp_path, "breaker.cut")
                             if e["room"] == "104" and e["reason"] == "resistive"])
        await coil_becomes(sim, 3, False)
        sim.set_load(3, 0)  # the kettle lost its supply; it stays off after the reclose
        await until(lambda: [e for e in events(tmp_path, "breaker.restored") if e["room"] == "104"])

        # Room 102's account is unknown: charged below zero, never cut.
        conn = db(tmp_path)
        (bal102,) = conn.execute(
            "SELECT balance_fen FROM accounts WHERE account = 'room-b07-102'").fetchone()
        conn.close()
        assert bal102 < 0
        assert await coil(sim, 1) is True
        assert not [e for e in events(tmp_path, "breaker.cut") if e["room"] == "102"]
    finally:
        code = await daemon.stop()
    assert code == 0, daemon.output.decode()[-3000:]

    # Restart: room 101 switched on by hand while down is cut again (its balance
    # is still <= 0); room 106 found off with no recorded cut is left off and
    # held, with an alarm; the others are not touched.
    await sim.endpoints[0].set_coil(RELAY, 0, True)
    await sim.endpoints[0].set_coil(RELAY, 5, False)
    before = len(events(tmp_path))
    writes_before = sum(1 for unit, fn in sim.endpoints[0].requests if unit == RELAY and fn in (5, 15))
    daemon = Daemon(config)
    await daemon.start()
    try:
        await until(lambda: [e for e in events(tmp_path)[before:]
                             if e["type"] == "alarm" and e["code"] == "breaker_mismatch"])
        await until(lambda: [e for e in events(tmp_path)[before:]
                             if e["type"] == "breaker.cut" and e["room"] == "101"])
        await coil_becomes(sim, 0, False)
        await asyncio.sleep(1.0)
        assert await coil(sim, 5) is False
        assert await coil(sim, 4) is True
        new = events(tmp_path)[before:]
        rooms_touched = {e["room"] for e in new if e["type"].startswith("breaker.")}
        assert rooms_touched == {"101"}
        writes = sum(1 for unit, fn in sim.endpoints[0].requests if unit == RELAY and fn in (5, 15))
        assert writes - writes_before == 1
    finally:
        code = await daemon.stop()
    assert code == 0


async def test_meter_offline_alarm_and_other_rooms_unaffected(
    tmp_path: Path, building: SimBuilding
) -> None:
    sim = building
    for ch in range(ROOMS):
        await sim.endpoints[0].set_coil(RELAY, ch, True)
    seed(tmp_path, {f"room-b07-{101 + i}": 100_000 for i in range(ROOMS)})
    config = write_config(tmp_path, sim)
    sim.set_load(4, 3600)
    daemon = Daemon(config)
    await daemon.start()
    try:
        await asyncio.sleep(1.0)
        sim.endpoints[0].set_fault(1, "silent")
        raised = await until(lambda: [e for e in events(tmp_path, "alarm")
                                      if e["code"] == "meter_offline" and e["active"]])
        assert raised[0]["device"] == "meter:101"
        # Room 105 keeps being polled and charged meanwhile.
        n = sim.endpoints[0].request_count[5]
        await asyncio.sleep(2.0)
        assert sim.endpoints[0].request_count[5] - n >= 5
        sim.endpoints[0].set_fault(1, None)
        await until(lambda: [e for e in events(tmp_path, "alarm")
                             if e["code"] == "meter_offline" and not e["active"]], timeout=40)
    finally:
        code = await daemon.stop()
    assert code == 0
    usage = [e for e in events(tmp_path, "power.usage") if e["room"] == "105"]
    assert usage, "room 105 was charged and reported while 101 was offline"


async def test_overload_is_checked_when_its_timer_runs_out_not_at_the_next_poll(
    tmp_path: Path, building: SimBuilding
) -> None:
    """A slow poll (30 s) and a short trip timer (0.5 s): the meter is read again
    when the timer runs out, and that reading cuts the room, long before the next
    poll would have (behaviour.md: cut at the first reading above the limit taken
    trip_after_s after the timer started)."""
    sim = building
    for ch in range(ROOMS):
        await sim.endpoints[0].set_coil(RELAY, ch, True)
    seed(tmp_path, {f"room-b07-{101 + i}": 100_000 for i in range(ROOMS)})
    config = write_config(tmp_path, sim)
    config.write_text(config.read_text().replace("poll_interval_s = 0.2", "poll_interval_s = 30"))
    sim.set_load(0, 2000)  # limit 1000 W
    daemon = Daemon(config)
    await daemon.start()
    try:
        cut = await until(lambda: [e for e in events(tmp_path, "breaker.cut") if e["room"] == "101"],
                          timeout=15)
        assert cut[0]["reason"] == "overload"
        assert cut[0]["power_w"] == pytest.approx(2000, rel=0.01)
        await coil_becomes(sim, 0, False)
        # At least two reads of the meter (the first poll, the trip read), two
        # requests each for this profile (more if a slow answer was retried).
        assert sim.endpoints[0].request_count[1] >= 4
    finally:
        code = await daemon.stop()
    assert code == 0


async def test_a_breaker_unreadable_at_start_is_checked_when_it_answers(
    tmp_path: Path, building: SimBuilding
) -> None:
    """The relay board is silent when the daemon starts; room 106's breaker is off
    with no cut recorded. When the board answers, that breaker is left off and
    held (breaker_mismatch), exactly as if it had been read at start; the others
    are not touched."""
    sim = building
    for ch in range(ROOMS):
        await sim.endpoints[0].set_coil(RELAY, ch, ch != 5)
    seed(tmp_path, {f"room-b07-{101 + i}": 100_000 for i in range(ROOMS)})
    config = write_config(tmp_path, sim)
    sim.endpoints[0].set_fault(RELAY, "silent")
    daemon = Daemon(config)
    await daemon.start()
    try:
        await asyncio.sleep(2.0)  # started, polling, breakers still unreadable
        sim.endpoints[0].set_fault(RELAY, None)
        alarm = await until(lambda: [e for e in events(tmp_path, "alarm")
                                     if e["code"] == "breaker_mismatch" and e["active"]])
        assert alarm[0]["device"] == "breaker:106"
        await asyncio.sleep(15.0)  # past BREAKER_RETRY_S: every room's breaker has been read
        assert await coil(sim, 5) is False
        assert all([await coil(sim, ch) for ch in range(5)])
        assert not [e for e in events(tmp_path) if e["type"].startswith("breaker.")]
        writes = sum(1 for unit, fn in sim.endpoints[0].requests if unit == RELAY and fn in (5, 15))
        assert writes == 0
    finally:
        code = await daemon.stop()
    assert code == 0


async def test_an_alarm_raised_before_a_restart_is_cleared_after_it(
    tmp_path: Path, building: SimBuilding
) -> None:
    """Meter 101 goes silent, the daemon stops with meter_offline raised; the meter
    answers again while it is down. The next daemon never sees it offline, so it
    records the clearing once its devices have settled (daemon.alarm_settle_s),
    and the center is not left with a stale alarm. Meter 102, silent throughout,
    is not raised a second time."""
    sim = building
    for ch in range(ROOMS):
        await sim.endpoints[0].set_coil(RELAY, ch, True)
    seed(tmp_path, {f"room-b07-{101 + i}": 100_000 for i in range(ROOMS)})
    config = write_config(tmp_path, sim)

    def offline_events() -> list[tuple[str, bool]]:
        return [(e["device"], e["active"]) for e in events(tmp_path, "alarm")
                if e["code"] == "meter_offline"]

    sim.endpoints[0].set_fault(1, "silent")
    sim.endpoints[0].set_fault(2, "silent")
    daemon = Daemon(config)
    await daemon.start()
    try:
        await until(lambda: len(offline_events()) == 2)
    finally:
        assert await daemon.stop() == 0
    sim.endpoints[0].set_fault(1, None)
    daemon = Daemon(config)
    await daemon.start()
    try:
        await until(lambda: ("meter:101", False) in offline_events(), timeout=60)
        await asyncio.sleep(1.0)
        assert sorted(offline_events()) == [("meter:101", False), ("meter:101", True),
                                            ("meter:102", True)]
    finally:
        assert await daemon.stop() == 0


async def test_a_breaker_that_moves_by_itself_is_seen_at_the_next_poll(
    tmp_path: Path, building: SimBuilding
) -> None:
    """Breakers are polled with the meters (config.md: poll_interval_s, "meters
    and breakers"), a relay board per request. Room 101, cut for balance, is
    switched back on by hand: cut again, with breaker_mismatch raised and
    cleared. Room 102's breaker drops (someone switched it off for work on the
    wiring): left off and held, never switched back on by the gateway."""
    sim = building
    for ch in range(ROOMS):
        await sim.endpoints[0].set_coil(RELAY, ch, True)
    seed(tmp_path, {"room-b07-101": 0})   # known, nothing left: cut at the first reading
    config = write_config(tmp_path, sim)
    daemon = Daemon(config)
    await daemon.start()
    try:
        await coil_becomes(sim, 0, False, timeout=20)
        await until(lambda: events(tmp_path, "breaker.cut"))
        # The cut is read back and finished before the hand moves: a hand between
        # the write and its read-back is a failed command, not a breaker that moved.
        await until(lambda: not switch_pending(tmp_path, "101"))
        await sim.endpoints[0].set_coil(RELAY, 0, True)    # by hand
        await coil_becomes(sim, 0, False)
        await until(lambda: [a for a in events(tmp_path, "alarm")
                             if a["device"] == "breaker:101" and not a["active"]])
        await sim.endpoints[0].set_coil(RELAY, 1, False)   # by hand
        await until(lambda: [a for a in events(tmp_path, "alarm") if a["device"] == "breaker:102"])
        await asyncio.sleep(1.0)   # five polls: it stays off
        assert await coil(sim, 1) is False
    finally:
        assert await daemon.stop() == 0
    alarms = [(a["code"], a["device"], a["active"]) for a in events(tmp_path, "alarm")]
    assert alarms == [("breaker_mismatch", "breaker:101", True),
                      ("breaker_mismatch", "breaker:101", False),
                      ("breaker_mismatch", "breaker:102", True)]
    assert "found on while cut (balance)" in events(tmp_path, "alarm")[0]["detail"]
    # One cut for room 101 on the wire of events: the breaker's own slip is the alarm.
    assert [(e["room"], e["reason"]) for e in events(tmp_path, "breaker.cut")] == [("101", "balance")]
    assert await coil(sim, 2) is True   # the others untouched


FLT_MAX = 3.4028234663852886e38


def balance(tmp: Path, account: str) -> int:
    conn = db(tmp)
    try:
        row = conn.execute("SELECT balance_fen FROM accounts WHERE account = ?", (account,)).fetchone()
    finally:
        conn.close()
    return int(row[0])


def log_records(output: bytes) -> list[dict[str, Any]]:
    records = []
    for line in output.decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return [r for r in records if isinstance(r, dict)]


async def test_an_energy_register_no_meter_can_report_is_no_reading_and_overload_still_cuts(
    tmp_path: Path, building: SimBuilding
) -> None:
    """Issue 14, item 1: a float32 energy register reading 1e17 kWh (room 101) or
    FLT_MAX (room 102, what some meters report for "invalid") while 3 kW is drawn
    against a 1 kW limit. Each poll's energy is no reading: nothing is charged,
    no meter_jump, the baseline stays, and it counts toward meter_offline; the
    power beside it still cuts the room for overload. Once the register reads a
    real value again, the energy since the old baseline is charged."""
    sim = building
    for ch in range(ROOMS):
        await sim.endpoints[0].set_coil(RELAY, ch, True)
    seed(tmp_path, {f"room-b07-{101 + i}": 100_000 for i in range(ROOMS)})
    config = write_config(tmp_path, sim)
    daemon = Daemon(config)
    await daemon.start()
    try:
        # Baselines taken: a few polls of both meters (two requests each).
        n1, n2 = sim.endpoints[0].request_count[1], sim.endpoints[0].request_count[2]
        await until(lambda: sim.endpoints[0].request_count[1] >= n1 + 6
                    and sim.endpoints[0].request_count[2] >= n2 + 6)
        for room, kwh in ((0, 1e17), (1, FLT_MAX)):
            sim.set_load(room, 3000)
            sim.meter(room).energy_kwh = kwh
        for rid in ("101", "102"):
            cut = await until(lambda: [e for e in events(tmp_path, "breaker.cut")
                                       if e["room"] == rid])  # noqa: B023 - awaited at once
            assert cut[0]["reason"] == "overload"
            assert cut[0]["power_w"] == pytest.approx(3000, rel=0.01)
        await coil_becomes(sim, 0, False)
        await coil_becomes(sim, 1, False)
        offline = await until(lambda: {e["device"] for e in events(tmp_path, "alarm")
                                       if e["code"] == "meter_offline" and e["active"]}
                              >= {"meter:101", "meter:102"})
        assert offline
        # The register reads a real value again, 1 Wh above the baseline: charged
        # (10 fen at this tariff), no meter_reset or meter_jump.
        for room in (0, 1):
            sim.set_load(room, 0)
            sim.meter(room).energy_kwh = 0.001
        await until(lambda: balance(tmp_path, "room-b07-101") == 100_000 - 10, timeout=40)
        await until(lambda: balance(tmp_path, "room-b07-102") == 100_000 - 10, timeout=40)
        await until(lambda: len([e for e in events(tmp_path, "alarm") if e["code"] == "meter_offline"
                                 and not e["active"]]) == 2, timeout=40)
    finally:
        code = await daemon.stop()
    assert code == 0, daemon.output.decode()[-3000:]
    assert not [e for e in events(tmp_path, "alarm") if e["code"] in ("meter_jump", "meter_reset")]
    assert not [e for e in events(tmp_path, "power.usage") if e["room"] in ("101", "102")
                and e["meter_wh_to"] > 1]
    logs = log_records(daemon.output)
    assert not [r for r in logs if r.get("event") == "room_evaluation_failed"]
    # The bad values are logged once per meter at WARNING, repeats at DEBUG.
    warned = [r for r in logs if r.get("event") == "modbus_device_failed"
              and r.get("level") == "warning" and r.get("device") in ("meter:101", "meter:102")]
    assert len(warned) == 2, warned
    assert "energy register" in warned[0]["error"]


async def test_meter_offline_cut_s_cuts_a_silent_meters_room_until_its_first_good_reading(
    tmp_path: Path, building: SimBuilding
) -> None:
    """Issue 14, item 10: with power.meter_offline_cut_s, a room whose meter stays
    offline that long is cut (meter_offline), across a restart, and restored
    (meter_online) at the meter's first good reading; room 102 (overridden to 0)
    and the others are not touched."""
    sim = building
    for ch in range(ROOMS):
        await sim.endpoints[0].set_coil(RELAY, ch, True)
    seed(tmp_path, {f"room-b07-{101 + i}": 100_000 for i in range(ROOMS)})
    config = write_config(tmp_path, sim, lambda i: "meter_offline_cut_s = 0" if i == 1 else "")
    config.write_text(config.read_text().replace("max_power_w = 1000",
                                                 "max_power_w = 1000\nmeter_offline_cut_s = 1"))
    daemon = Daemon(config)
    await daemon.start()
    try:
        await until(lambda: sim.endpoints[0].request_count[1] >= 4)
        sim.endpoints[0].set_fault(1, "silent")
        sim.endpoints[0].set_fault(2, "silent")
        cut = await until(lambda: events(tmp_path, "breaker.cut"))
        assert [(e["room"], e["reason"], e["power_w"]) for e in cut] == [("101", "meter_offline", None)]
        await coil_becomes(sim, 0, False)
    finally:
        assert await daemon.stop() == 0
    # Restart with the meter still silent: the room stays cut, nothing is sent.
    before = len(events(tmp_path))
    daemon = Daemon(config)
    await daemon.start()
    try:
        n = sim.endpoints[0].request_count[3]
        await until(lambda: sim.endpoints[0].request_count[3] >= n + 4)   # polling
        await asyncio.sleep(4.0)   # past the offline detection and meter_offline_cut_s
        assert await coil(sim, 0) is False
        assert not [e for e in events(tmp_path)[before:] if e["type"].startswith("breaker.")]
        sim.endpoints[0].set_fault(1, None)
        restored = await until(lambda: events(tmp_path, "breaker.restored"), timeout=40)
        assert [(e["room"], e["reason"]) for e in restored] == [("101", "meter_online")]
        await coil_becomes(sim, 0, True)
        assert await coil(sim, 1) is True   # 102: offline too, never cut (0: never)
    finally:
        assert await daemon.stop() == 0
    assert [(e["room"], e["reason"]) for e in events(tmp_path, "breaker.cut")] == [
        ("101", "meter_offline")]


async def test_a_commit_that_fails_with_any_error_still_cuts_and_raises_room_failing(
    tmp_path: Path, building: SimBuilding, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14, item 1: room 101's row can no longer be written (an OverflowError, as a
    value SQLite cannot hold gave, not a StoreError) while it draws 3 kW against
    a 1 kW limit. The overload cut still happens (the coil goes off),
    `room_failing` is raised (and recorded: other writes work) with the failure
    logged once at ERROR, and the status shows the room failing. Once the row
    can be written, the cut made meanwhile is recorded and the alarm cleared.
    The services run in-process so that the commit path can be patched."""
    sim = building
    for ch in range(ROOMS):
        await sim.endpoints[0].set_coil(RELAY, ch, True)
    seed(tmp_path, {f"room-b07-{101 + i}": 100_000 for i in range(ROOMS)})
    config = load_config(write_config(tmp_path, sim))
    broken = False
    save = rooms_table.save

    def failing_save(txn: Txn, room: str, row: tuple[Any, ...]) -> None:
        if broken and room == "101":
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        save(txn, room, row)

    monkeypatch.setattr(rooms_table, "save", failing_save)
    store = Store.open(config.gateway.state_dir, "b07")
    hardware = Hardware(config)
    clock = Clock(config.gateway.timezone, "yes")
    ledger = Ledger()
    await store.read(ledger.load)
    alarms = Alarms(store, clock)
    power = PowerService(config, store, ledger=ledger, alarms=alarms, clock=clock, devices={
        r.id: (hardware.meter(meter_device(r.id), r.meter),
               hardware.switch(breaker_device(r.id), r.breaker)) for r in config.rooms})
    hardware.on_health(power.meter_health_changed)
    supervisor = Supervisor([power])
    await hardware.start()
    rt = power.rooms["101"]
    with capture_logs() as logs:
        task = asyncio.get_running_loop().create_task(supervisor.run())
        try:
            n = sim.endpoints[0].request_count[1]
            await until(lambda: sim.endpoints[0].request_count[1] >= n + 6)   # a few polls
            broken = True   # from now on every commit of room 101 fails
            sim.set_load(0, 3000)
            await coil_becomes(sim, 0, False)
            assert rt.state.cut_reason == "overload"
            await until(lambda: alarms.is_active(AlarmCode.ROOM_FAILING, "room:101"))
            assert power.describe(rt)["failing"] is True
            raised = [e for e in events(tmp_path, "alarm") if e["code"] == "room_failing"]
            assert [(e["device"], e["active"]) for e in raised] == [("room:101", True)]
            assert "OverflowError" in raised[0]["detail"]
            assert not events(tmp_path, "breaker.cut")   # not recordable yet
            n = sim.endpoints[0].request_count[1]
            await until(lambda: sim.endpoints[0].request_count[1] >= n + 10)   # 5 more polls
            broken = False
            cut = await until(lambda: events(tmp_path, "breaker.cut"))
            assert [(e["room"], e["reason"]) for e in cut] == [("101", "overload")]
            await until(lambda: not alarms.is_active(AlarmCode.ROOM_FAILING, "room:101"))
            cleared = [e for e in events(tmp_path, "alarm") if e["code"] == "room_failing"]
            assert [e["active"] for e in cleared] == [True, False]
            assert await coil(sim, 0) is False
            assert all([await coil(sim, ch) for ch in range(1, ROOMS)])
        finally:
            supervisor.request_stop("test over")
            await asyncio.wait_for(task, 20)
            await hardware.close()
            store.close()
    failed = [r for r in logs if r["event"] == "room_evaluation_failed"]
    assert [r["log_level"] for r in failed].count("error") == 1
    assert len(failed) >= 5
