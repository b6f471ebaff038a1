"""`systemctl reload gatewayd` (SIGHUP) against real peers: the daemon as a process, a
pymodbus building, a card reader on a pty, a mosquitto for the center's telemetry.

Asserted where staff and the center see it: relay coils, telemetry, the store's events
and balances, the journal's lines, and the sd_notify messages systemd gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gatewayd.config.changes import compare
from gatewayd.config.load import load_config
from gatewayd.rules.water import Card
from sim.modbus import SimBuilding
from sim.serial_card import PtyPort
from tests.mqtt_fixtures import Broker, Collector, broker, collecting, needs_mosquitto
from tests.soak.harness import (
    Checks,
    Daemon,
    Layout,
    check_all,
    coil,
    hold_card,
    read_store,
    seed,
    start_building,
    until,
)

__all__ = ["broker"]  # a fixture used by name

CARD = "0D150F0000"
TOPIC = "ecard/v1/b07"


def layout(tmp: Path, broker: Broker, rooms: int, **kw: Any) -> Layout:
    """Rooms 101.. (meters 1.., breakers on relay board 201), one shower on board 202."""
    return Layout(
        tmp, rooms=rooms, points=1, poll_s=0.2,
        power_rules={"max_power_w": 1000, "trip_after_s": 0.5, "reclose_after_s": 600},
        water_rules={"max_session_s": 600, "idle_close_s": 600},
        center={"broker": broker.url, "insecure_unsigned_commands": True,
                "telemetry_interval_s": 0.3},
        **kw)


@pytest.fixture
async def building(tmp_path: Path, broker: Broker) -> AsyncIterator[SimBuilding]:
    sim = await start_building(layout(tmp_path, broker, rooms=3))
    try:
        yield sim
    finally:
        await sim.stop()


def records(daemon: Daemon, event: str) -> list[dict[str, Any]]:
    return [r for r in daemon.log_records() if r.get("event") == event]


async def reload(daemon: Daemon) -> list[str]:
    """SIGHUP, as `systemctl reload` sends it; the sd_notify lines of the reload."""
    assert daemon.proc is not None
    since = time.monotonic()
    daemon.proc.send_signal(signal.SIGHUP)
    reloading = await daemon.notify.wait_for("RELOADING=1", since, 20)
    await daemon.notify.wait_for("READY=1", reloading, 20)
    return [line for at, line in daemon.notify.got if at >= reloading]


def telemetry_rooms(center: Collector) -> dict[str, dict[str, Any]]:
    """The rooms of the latest telemetry message, by id."""
    docs = center.on("/telemetry")
    return {r["room"]: r for r in docs[-1].json()["rooms"]} if docs else {}


@needs_mosquitto
async def test_reload_adds_removes_and_changes_rooms_and_keeps_a_running_shower(
        tmp_path: Path, broker: Broker, building: SimBuilding) -> None:
    sim = building
    two, three = layout(tmp_path, broker, rooms=2), layout(tmp_path, broker, rooms=3)
    accounts = {two.account(i): 1_000_000 for i in range(3)}
    seed(two.state_dir, {**accounts, "stu-0": 100_000},
         [Card(CARD, "stu-0", "student", "active", None)])
    port = PtyPort(two.tty(0))
    for i, watts in enumerate((500, 800, 300)):
        sim.set_load(i, watts)
    fu, fch = two.flow(0)
    sim.set_flow(fu - SimBuilding.COUNTER_BASE, fch, 5.0)    # 50 mL/s, 5 fen/s
    valve = two.valve(0)
    daemon = Daemon(two.config(sim), tmp_path)
    try:
        async with collecting(broker, [f"{TOPIC}/telemetry"]) as center:
            await daemon.start()
            await daemon.ready()
            await hold_card(port, CARD)
            assert await until(lambda: coil(sim, *valve), 5), "the shower did not open"
            await center.wait_for(lambda _: set(telemetry_rooms(center)) == {"101", "102"})

            # 1. Room 103 added, room 102's limit lowered below what it draws.
            dataclasses.replace(three, room_extra=lambda i: "max_power_w = 600" if i == 1 else "",
                                ).config(sim)
            lines = await reload(daemon)
            assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
            assert "READY=1" in lines
            (done,) = records(daemon, "config_reloaded")
            assert done["rooms"] == {"added": 1, "removed": 0, "changed": 1}
            await center.wait_for(lambda _: telemetry_rooms(center).get("103", {})
                                  .get("power_w") == 300)
            assert await until(lambda: not coil(sim, *two.breaker(1)), 10), "102 was not tripped"
            cuts = read_store(two.db).of("breaker.cut")
            assert [(e["room"], e["reason"]) for e in cuts] == [("102", "overload")]
            assert coil(sim, *two.breaker(0)) and coil(sim, *two.breaker(2))
            assert coil(sim, *valve), "the reload closed a running shower"

            # 2. An invalid file changes nothing and says why, in one line.
            good = (tmp_path / "gateway.toml").read_text()
            (tmp_path / "gateway.toml").write_text(
                good.replace("max_power_w = 600", 'max_power_w = "lots"'))
            await reload(daemon)
            (bad,) = records(daemon, "config_reload_invalid")
            assert bad["level"] == "error" and "rooms[1].max_power_w" in bad["detail"]

            # 3. A changed building id is refused whole: room 101 removed there stays.
            (tmp_path / "gateway.toml").write_text(
                good.replace('building = "b07"', 'building = "b08"'))
            await reload(daemon)
            (refused,) = records(daemon, "config_reload_refused")
            assert "gateway.building" in refused["detail"]
            assert records(daemon, "config_reloaded") == [done]

            # 4. Room 103 removed again: its telemetry stops, its breaker stays on.
            two.config(sim)
            await reload(daemon)
            assert records(daemon, "config_reloaded")[-1]["rooms"] == {
                "added": 0, "removed": 1, "changed": 1}
            await center.wait_for(lambda _: set(telemetry_rooms(center)) == {"101", "102"})
            assert coil(sim, *two.breaker(2)) and coil(sim, *two.breaker(0))
            assert coil(sim, *valve), "the reload closed a running shower"

            await asyncio.sleep(1.0)
            await hold_card(port, CARD)
            assert await until(lambda: not coil(sim, *valve), 5), "the shower did not stop"
            await asyncio.sleep(0.5)
        assert await daemon.stop() == 0
    finally:
        await daemon.close()
        port.close()
    snap = read_store(two.db)
    (session,) = snap.of("water.session")
    assert session["end_reason"] == "tap" and session["amount_fen"] > 0
    checks = Checks()
    check_all(None, snap, {two.account(i): two.account(i) for i in range(3)}, checks, "reload")
    assert not checks.violations, checks.violations
    assert not daemon.log_problems()


DEAD_ROOM = """
[[buses]]
name = "dead"
type = "tcp"
host = "127.0.0.1"
port = {port}
timeout_s = 0.3
[[rooms]]
id = "199"
meter = {{ bus = "dead", unit = 1, profile = "eastron-sdm120-import" }}
breaker = {{ bus = "dead", unit = 201, profile = "relay-board", channel = 0 }}
"""


async def _never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A Modbus TCP endpoint that accepts and never answers (a hung gateway module)."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(4096):
            pass
    writer.close()


@needs_mosquitto
async def test_a_reload_onto_a_dead_bus_never_holds_the_live_rooms(
        tmp_path: Path, broker: Broker, building: SimBuilding) -> None:
    """A room added on a bus whose endpoint never answers: the reload still ends (READY=1),
    the live rooms are still cut on overload, and the new room's meter is an alarm."""
    sim = building
    two = layout(tmp_path, broker, rooms=2)
    seed(two.state_dir, {two.account(i): 1_000_000 for i in range(2)} | {"room-b07-199": 1000})
    silent = await asyncio.start_server(_never_answer, "127.0.0.1", 0)
    daemon = Daemon(two.config(sim), tmp_path)
    try:
        await daemon.start()
        await daemon.ready()
        config = tmp_path / "gateway.toml"
        config.write_text(config.read_text() + DEAD_ROOM.format(
            port=silent.sockets[0].getsockname()[1]))
        assert "READY=1" in await reload(daemon)   # within 20 s, or reload() raises
        (done,) = records(daemon, "config_reloaded")
        assert done["rooms"]["added"] == 1
        sim.set_load(0, 1500)   # room 101 over its 1000 W limit
        assert await until(lambda: not coil(sim, *two.breaker(0)), 10), "101 was not cut"
        assert coil(sim, *two.breaker(1))

        def meter_199_offline() -> bool:
            return any(e["code"] == "meter_offline" and e["device"] == "meter:199"
                       and e["active"] for e in read_store(two.db).of("alarm"))

        assert await until(meter_199_offline, 20), "room 199's dead meter raised no alarm"
        assert daemon.alive
        assert await daemon.stop() == 0
    finally:
        await daemon.close()
        silent.close()
        await silent.wait_closed()
    cuts = read_store(two.db).of("breaker.cut")
    assert [(e["room"], e["reason"]) for e in cuts] == [("101", "overload")]
    assert not daemon.log_problems()


def test_a_changed_bus_rewires_its_devices_and_restart_keys_are_named(tmp_path: Path) -> None:
    """The pure comparison: what a reload would do with a file."""
    base = """
[gateway]
building = "b07"
state_dir = "{state}"
[[buses]]
name = "a"
type = "tcp"
host = "127.0.0.1"
timeout_s = {timeout}
[[buses]]
name = "b"
type = "tcp"
host = "127.0.0.2"
[[rooms]]
id = "301"
meter = {{ bus = "a", unit = 1, profile = "eastron-sdm120" }}
breaker = {{ bus = "b", unit = 31, profile = "relay-board", channel = 0 }}
[[rooms]]
id = "302"
max_power_w = {limit}
meter = {{ bus = "b", unit = 2, profile = "eastron-sdm120" }}
breaker = {{ bus = "b", unit = 31, profile = "relay-board", channel = 1 }}
"""

    def config(name: str, **kw: Any) -> Any:
        values = {"state": tmp_path / "state", "timeout": 1.0, "limit": 1500, **kw}
        (tmp_path / name).write_text(base.format(**values))
        return load_config(tmp_path / name)

    running = config("a.toml")
    changes = compare(running, config("b.toml", timeout=0.5, limit=1000))
    assert changes.restart == ()
    assert changes.buses.changed == {"a"}
    assert changes.rooms.changed == {"301", "302"}
    assert changes.rewired_rooms == {"301"}          # 302 keeps its devices, takes its limit
    moved = compare(running, config("c.toml", state=tmp_path / "elsewhere"))
    assert moved.restart and moved.restart[0].startswith("gateway.state_dir: ")


async def test_sighup_never_kills_the_daemon_even_while_it_starts(tmp_path: Path) -> None:
    """SIGHUP's default action ends a process; the daemon takes it as a reload, and one
    sent before READY runs once the daemon is ready."""
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nbuilding = "b07"\nstate_dir = "{tmp_path / "state"}"\n')
    daemon = Daemon(config, tmp_path)
    try:
        await daemon.start()
        assert daemon.proc is not None
        assert await until(lambda: records(daemon, "starting"), 30)
        daemon.proc.send_signal(signal.SIGHUP)
        await daemon.ready()
        assert await until(lambda: records(daemon, "config_reloaded"), 20)
        for _ in range(3):
            daemon.proc.send_signal(signal.SIGHUP)
        assert await until(lambda: len(records(daemon, "config_reloaded")) >= 2, 20)
        assert daemon.alive
        assert await daemon.stop() == 0
    finally:
        await daemon.close()
    assert os.path.exists(tmp_path / "state" / "gatewayd.db")


def test_the_unit_reloads_with_sighup() -> None:
    """`systemctl reload gatewayd` sends SIGHUP to the daemon (test_systemd verifies the unit)."""
    unit = (Path(__file__).resolve().parent.parent / "systemd" / "gatewayd.service").read_text()
    assert "\nExecReload=/bin/kill -HUP $MAINPID\n" in unit
    assert "\nType=notify\n" in unit
