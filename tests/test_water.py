"""Showers end to end: a serial reader on a pty, a pymodbus relay board and pulse
counter, the real daemon as a subprocess. Asserted where a user would look:
the valve's coil, the events and balances in the store."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gatewayd.rules.water import Card
from gatewayd.store.cards import Cards
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger
from sim.modbus import SimBuilding
from sim.serial_card import PtyPort, frame
from tests.test_power import Daemon, events, until

RELAY = SimBuilding.RELAY_BASE
COUNTER = SimBuilding.COUNTER_BASE
CARD = "04A1B2C3D5"
LOST = "0000000042"
STRANGER = "00DEADBEEF"
OTHER = "0011223344"   # another good card of stu-1
FLOW = "flow:shower-1"


@pytest.fixture
async def building() -> AsyncIterator[SimBuilding]:
    sim = await SimBuilding.tcp(1, per_endpoint=1)
    try:
        yield sim
    finally:
        await sim.stop()


def write_config(tmp: Path, sim: SimBuilding, tty: Path) -> Path:
    path = tmp / "gateway.toml"
    path.write_text(f"""
[gateway]
building = "b07"
state_dir = "{tmp / 'state'}"
poll_interval_s = 0.2
tap_debounce_s = 0.4

[tariffs]
shower = {{ price = "1", unit = "L" }}   # 0.1 fen per mL: 1 fen per 10 mL pulse

[water]
min_balance_fen = 50
max_session_s = 600
idle_close_s = 60

[[buses]]
name = "b"
type = "tcp"
host = "127.0.0.1"
port = {sim.ports[0]}
timeout_s = 0.3

[[readers]]
id = "r1"
type = "serial"
port = "{tty}"

[[points]]
id = "shower-1"
service = "shower"
reader = "r1"
valve = {{ bus = "b", unit = {RELAY}, profile = "relay-board", channel = 0 }}
flow = {{ bus = "b", unit = {COUNTER}, profile = "pulse-counter", channel = 0, ml_per_pulse = 10 }}
""")
    return path


def seed(tmp: Path, cards: tuple[tuple[str, str], ...] = ((CARD, "active"), (LOST, "lost"))) -> None:
    """Account stu-1 with 10 yuan, known to the center, and its cards (uid, status)."""
    store = Store.open(tmp / "state", "b07")
    try:
        store.call(lambda t: Ledger.credit(t, "stu-1", 1000))
        for uid, status in cards:
            store.call(lambda t, u=uid, st=status: Cards.put(  # type: ignore[misc]
                t, Card(u, "stu-1", "student", st, None)))
    finally:
        store.close()


async def hold(pty: PtyPort, uid: str, seconds: float = 0.3) -> None:
    """A card held on an RDM6300: the frame repeats about every 100 ms."""
    for _ in range(int(seconds / 0.1)):
        pty.write(frame(uid, "rdm6300"))
        await asyncio.sleep(0.1)


async def ready(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    while True:
        data = await loop.sock_recv(sock, 4096)
        if b"READY=1" in data:
            return


def balance(tmp: Path, account: str) -> int:
    import sqlite3

    conn = sqlite3.connect(f"file:{tmp / 'state' / 'gatewayd.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT balance_fen FROM accounts WHERE account = ?",
                                (account,)).fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def notify(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.setblocking(False)
    return sock


async def start(daemon: Daemon, sock: socket.socket, tmp: Path) -> None:
    os.environ["NOTIFY_SOCKET"] = str(tmp / "notify")
    try:
        await daemon.start()
    finally:
        del os.environ["NOTIFY_SOCKET"]
    await asyncio.wait_for(ready(sock), 30)
    await asyncio.sleep(0.3)  # the reader opens its port right after READY


async def valve(sim: SimBuilding) -> bool:
    return (await sim.endpoints[0].coils(RELAY, 0, 1))[0]


async def valve_becomes(sim: SimBuilding, value: bool) -> None:
    for _ in range(100):
        if await valve(sim) is value:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"valve did not become {value}")


async def test_shower_session_refusals_and_crash_recovery(
    tmp_path: Path, building: SimBuilding, notify: socket.socket
) -> None:
    sim = building
    await sim.endpoints[0].set_coil(RELAY, 0, True)  # left open by someone: closed at start
    pty = PtyPort(tmp_path / "ttyR1")
    seed(tmp_path)
    config = write_config(tmp_path, sim, pty.path)
    daemon = Daemon(config)
    await start(daemon, notify, tmp_path)
    try:
        assert await valve(sim) is False  # fail closed before READY

        # Refusals, each with one tap event and its reason.
        await hold(pty, STRANGER)
        await until(lambda: [e for e in events(tmp_path, "tap") if e["card"] == STRANGER])
        await hold(pty, LOST)
        await until(lambda: [e for e in events(tmp_path, "tap") if e["card"] == LOST])
        taps = {e["card"]: e for e in events(tmp_path, "tap")}
        assert taps[STRANGER]["granted"] is False and taps[STRANGER]["reason"] == "unknown"
        assert taps[STRANGER]["point"] == "shower-1"
        assert taps[LOST]["reason"] == "lost"
        assert await valve(sim) is False

        # A session: open, 20 pulses/s of 10 mL, close on the second tap.
        await asyncio.sleep(0.5)
        await hold(pty, CARD)
        await valve_becomes(sim, True)
        sim.set_flow(0, 0, 20.0)
        await asyncio.sleep(1.5)
        sim.set_flow(0, 0, 0.0)
        await asyncio.sleep(0.5)
        await hold(pty, CARD)
        await valve_becomes(sim, False)
        (session,) = await until(lambda: events(tmp_path, "water.session"))
        assert session["end_reason"] == "tap" and session["card"] == CARD
        assert session["offline"] is True  # no center configured
        assert session["volume_ml"] >= 200 and session["volume_ml"] % 10 == 0
        assert session["amount_fen"] == session["volume_ml"] // 10
        assert balance(tmp_path, "stu-1") == 1000 - session["amount_fen"]
        grants = [e["reason"] for e in events(tmp_path, "tap") if e["card"] == CARD]
        assert grants == ["start", "stop"]

        # A crash during a session: SIGKILL with the valve open.
        await asyncio.sleep(0.5)
        await hold(pty, CARD)
        await valve_becomes(sim, True)
        sim.set_flow(0, 0, 10.0)
        await asyncio.sleep(1.0)
    finally:
        await daemon.stop(signal.SIGKILL)
    sim.set_flow(0, 0, 0.0)
    assert await valve(sim) is True  # nobody closed it: the daemon is dead
    paid_before = balance(tmp_path, "stu-1")

    daemon = Daemon(config)
    await start(daemon, notify, tmp_path)
    try:
        assert await valve(sim) is False
        sessions = await until(lambda: events(tmp_path, "water.session")[1:])
        assert len(sessions) == 1
        recovered = sessions[0]
        assert recovered["end_reason"] == "restart"
        assert recovered["amount_fen"] == recovered["volume_ml"] // 10 > 0
        total = sum(e["amount_fen"] for e in events(tmp_path, "water.session"))
        assert balance(tmp_path, "stu-1") == 1000 - total
        assert balance(tmp_path, "stu-1") <= paid_before
    finally:
        code = await daemon.stop()
    assert code == 0
    # Charged once: a clean stop adds no session.
    assert len(events(tmp_path, "water.session")) == 2


def board_restarts(sim: SimBuilding, count: int = 0) -> None:
    """The counter board lost power and came back: its counts start again at `count`."""
    c = sim.endpoints[0].counters[COUNTER]
    c.advance(time.monotonic())
    c.counts[0] = float(count)


def alarms(tmp: Path, code: str, device: str = FLOW) -> list[dict[str, object]]:
    return [e for e in events(tmp, "alarm") if e["code"] == code and e["device"] == device]


def refusals(tmp: Path, card: str) -> list[str]:
    return [e["reason"] for e in events(tmp, "tap") if e["card"] == card and not e["granted"]]


async def test_counter_reset_flow_meter_outage_and_refusal_order(
    tmp_path: Path, building: SimBuilding, notify: socket.socket
) -> None:
    sim = building
    pty = PtyPort(tmp_path / "ttyR1")
    seed(tmp_path, ((CARD, "active"), (OTHER, "active"), (LOST, "lost")))
    daemon = Daemon(write_config(tmp_path, sim, pty.path))
    await start(daemon, notify, tmp_path)
    try:
        # A session during which the counter board restarts at 0.
        await hold(pty, CARD)
        await valve_becomes(sim, True)
        sim.set_flow(0, 0, 20.0)
        await asyncio.sleep(1.0)
        # Another good card is refused as busy; a lost one as lost, busy or not.
        await hold(pty, OTHER)
        await until(lambda: refusals(tmp_path, OTHER))
        await hold(pty, LOST)
        await until(lambda: refusals(tmp_path, LOST))
        assert refusals(tmp_path, OTHER) == ["busy"]
        assert refusals(tmp_path, LOST) == ["lost"]
        board_restarts(sim)
        (reset,) = await until(lambda: alarms(tmp_path, "meter_reset"))
        assert reset["active"] is True and "not charged" in str(reset["detail"])
        await asyncio.sleep(1.0)   # flow after the restart is charged from the new baseline
        sim.set_flow(0, 0, 0.0)
        await asyncio.sleep(0.5)
        await hold(pty, CARD)
        await valve_becomes(sim, False)
        (session,) = await until(lambda: events(tmp_path, "water.session"))
        assert session["end_reason"] == "tap"
        # About 2 s of 200 mL/s, not the 43 million litres of a 32-bit wrap.
        assert 200 <= session["volume_ml"] <= 1000
        assert session["amount_fen"] == session["volume_ml"] // 10
        assert balance(tmp_path, "stu-1") == 1000 - session["amount_fen"]
        assert len(alarms(tmp_path, "meter_reset")) == 1

        # The flow meter stops answering during a session: ended with fault, alarmed.
        await asyncio.sleep(0.5)
        await hold(pty, CARD)
        await valve_becomes(sim, True)
        sim.endpoints[0].set_fault(COUNTER, "exception")
        sessions = await until(lambda: events(tmp_path, "water.session")[1:])
        assert sessions[0]["end_reason"] == "fault"
        await valve_becomes(sim, False)
        (raised,) = alarms(tmp_path, "meter_offline")
        assert raised["active"] is True
        # The point refuses taps meanwhile; a lost card is still reported as lost.
        await asyncio.sleep(0.5)
        await hold(pty, CARD)
        await until(lambda: refusals(tmp_path, CARD))
        await hold(pty, LOST)
        await until(lambda: len(refusals(tmp_path, LOST)) == 2)
        assert refusals(tmp_path, CARD) == ["fault"]
        assert refusals(tmp_path, LOST) == ["lost", "lost"]
        assert await valve(sim) is False

        # The meter answers again: the probe clears the alarm and the point serves.
        sim.endpoints[0].set_fault(COUNTER, None)
        await until(lambda: len(alarms(tmp_path, "meter_offline")) == 2, timeout=15)
        assert [a["active"] for a in alarms(tmp_path, "meter_offline")] == [True, False]
        await hold(pty, CARD)
        await valve_becomes(sim, True)
        await asyncio.sleep(0.5)
        await hold(pty, CARD)
        await valve_becomes(sim, False)
        await until(lambda: len(events(tmp_path, "water.session")) == 3)
    finally:
        code = await daemon.stop()
    assert code == 0
    assert [a["active"] for a in alarms(tmp_path, "meter_offline")] == [True, False]


async def test_a_counter_reset_while_the_gateway_was_down_is_not_charged_at_recovery(
    tmp_path: Path, building: SimBuilding, notify: socket.socket
) -> None:
    sim = building
    pty = PtyPort(tmp_path / "ttyR1")
    seed(tmp_path)
    config = write_config(tmp_path, sim, pty.path)
    daemon = Daemon(config)
    await start(daemon, notify, tmp_path)
    try:
        await hold(pty, CARD)
        await valve_becomes(sim, True)
        sim.set_flow(0, 0, 20.0)
        await asyncio.sleep(1.0)
    finally:
        await daemon.stop(signal.SIGKILL)
    sim.set_flow(0, 0, 0.0)
    board_restarts(sim, 3)   # the same power cut took the counter board down
    daemon = Daemon(config)
    await start(daemon, notify, tmp_path)
    try:
        (recovered,) = await until(lambda: events(tmp_path, "water.session"))
        assert recovered["end_reason"] == "restart"
        assert recovered["volume_ml"] <= 1000   # what was counted before the crash, no wrap
        assert recovered["amount_fen"] == recovered["volume_ml"] // 10
        assert balance(tmp_path, "stu-1") == 1000 - recovered["amount_fen"]
        (reset,) = alarms(tmp_path, "meter_reset")
        assert "from" in str(reset["detail"]) and "to 3 " in str(reset["detail"])
    finally:
        code = await daemon.stop()
    assert code == 0
