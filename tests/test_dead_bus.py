"""Dead buses and devices (issue 14, items 2 and 3; behaviour.md "Faults").

Against the real daemon and real peers (pymodbus, silent and closing TCP
endpoints, a refused port, a serial port that does not exist): a dead bus,
port or device costs a bounded count of operations, connection attempts and
log lines, never holds READY, and the live rooms' rules keep being enforced.
Counts, never times: the window is a few seconds, the bounds are what the
back-off allows, and a busy loop makes thousands.
"""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
from pathlib import Path

import pytest

import gatewayd.services.water.recovery as water_mod
from drivers.errors import DeviceError
from drivers.health import DeviceHealth
from drivers.modbus.bus import ModbusBus
from drivers.profile import SHIPPED_DIR, load_profile
from drivers.protocols import CardTap
from drivers.retry import HALF_TO_FULL, Backoff, FailureLog
from gatewayd.app.sdnotify import Notifier
from gatewayd.app.supervisor import Supervisor
from gatewayd.rules.water import Card
from gatewayd.services.component import Heartbeat
from gatewayd.store.cards import Cards
from gatewayd.store.ledger import Ledger
from gatewayd.store.txn import Txn
from sim.modbus import SimBuilding
from tests.soak.dead_bus import (
    DEAD_BUSES,
    DEVICES_PER_BUS,
    FEW_AT_START,
    FEW_PER_S,
    READY_WALL_S,
    DeadEndpoint,
    run_mixed,
    run_silent,
)
from tests.test_water_service import running_water

RELAY = SimBuilding.RELAY_BASE


async def test_dead_buses_cost_bounded_requests_and_log_lines_and_live_rooms_are_cut(
        tmp_path: Path) -> None:
    """A valve and flow meter on an RTU bus whose port is missing, and a room and a
    shower on each of a refused, a closing and a silent TCP bus: a few operations
    and connection attempts a second at most, one `valve_fault` line per point
    (repeats are summarised once a minute), and the live rooms beside them are cut
    for overload and for balance. (Before the fix: some 10,000 valve_fault lines a
    second, and a connection per request to the endpoint that closes at once.)"""
    run = await run_mixed(tmp_path, 6.0)
    few = FEW_PER_S * run.seconds + FEW_AT_START
    assert run.overload_cut, "the live room 101 was not cut for overload"
    assert run.balance_cut, "the live room 102 was not cut for balance"
    assert run.valve_lines == {f"shower-{k + 1}": 1 for k in range(len(DEAD_BUSES))}
    assert run.events["valve_recovered"] == 0
    assert max(run.operations.values()) <= few, run.operations
    assert {"valve:shower-1", "flow:shower-1", "meter:201", "breaker:201"} & set(run.operations)
    assert 1 <= run.attempts["dead-rtu"] <= few and 1 <= run.attempts["refused"] <= few
    assert 1 <= run.peer["closing"] <= few, run.peer
    assert run.peer["silent"] <= few * DEVICES_PER_BUS * 2, run.peer
    # Readers on missing ports: one WARNING each, the retries at DEBUG.
    assert run.events["card_reader_offline"] == len(DEAD_BUSES)
    assert run.lines <= 80, run.events.most_common(10)
    assert not run.events["component_crashed"] and not run.events["point_loop_failed"]


async def test_ready_comes_whatever_is_dead_and_the_live_room_is_enforced(tmp_path: Path) -> None:
    """conf/generate.py's 312-room building on TCP endpoints that accept and never
    answer: READY arrives (the gateway's budget is 10 s; before the fix there was
    none after 120 s), every silent valve is reported not confirmed closed, every
    silent breaker unverified, and the one room on a live server is cut for
    overload."""
    run = await run_silent(tmp_path)
    assert run.ready_s is not None, f"no READY within {READY_WALL_S:g} s"
    assert (run.rooms, run.points) == (312, 36)
    assert run.unconfirmed == 36
    assert run.unverified == 311
    assert run.cut, "the live room 601 was not cut for overload"


async def test_a_valve_that_does_not_answer_at_start_is_faulty_until_it_answers_and_is_closed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The start does not wait for a silent relay board: its valve is not confirmed
    closed within the start's budget, so its point refuses taps (`fault`) with
    `valve_fault` raised; once the board answers, the point's loop closes the valve
    (back-off, not at once) and the point serves again."""
    monkeypatch.setattr(water_mod, "START_IO_S", 0.5)
    sim = await SimBuilding.tcp(1, per_endpoint=1)
    ep = sim.endpoints[0]
    await ep.set_coil(RELAY, 0, True)   # left open by the crash
    ep.set_fault(RELAY, "silent")
    (tmp_path / "gw.toml").write_text(f"""
[gateway]
building = "b07"
state_dir = "{tmp_path / 'state'}"
poll_interval_s = 0.2
[tariffs]
shower = {{ price = "6", unit = "min" }}
[[buses]]
name = "b"
type = "tcp"
host = "127.0.0.1"
port = {sim.ports[0]}
timeout_s = 1.0
[[points]]
id = "shower-1"
service = "shower"
reader = "r1"
valve = {{ bus = "b", unit = {RELAY}, profile = "relay-board", channel = 0 }}
[[readers]]
id = "r1"
type = "serial"
port = "/dev/null"
""")

    def seed(txn: Txn) -> None:
        Ledger.credit(txn, "stu-1", 10_000)
        Cards.put(txn, Card("04A1B2C3D5", "stu-1", "student", "active", None))

    async def events(store: object, type_: str) -> list[dict[str, object]]:
        rows = await store.read(lambda t: t.execute(  # type: ignore[attr-defined]
            "SELECT payload FROM events WHERE type = ? ORDER BY seq", (type_,)).fetchall())
        return [json.loads(r[0]) for r in rows]

    try:
        async with running_water(tmp_path / "gw.toml", seed, lambda: True) as (service, store):
            pt = service.points["shower-1"]
            assert pt.fault == "not confirmed closed within 0.5 s of start"
            await service.on_tap(CardTap("r1", "04A1B2C3D5", time.monotonic()))
            taps = await events(store, "tap")
            assert [(t["granted"], t["reason"]) for t in taps] == [(False, "fault")]
            alarms = await events(store, "alarm")
            assert [(a["code"], a["active"]) for a in alarms] == [("valve_fault", True)]
            ep.set_fault(RELAY, None)
            for _ in range(300):   # the retry comes within VALVE_RETRY_MAX_S (+25 %)
                if pt.fault is None:
                    break
                await asyncio.sleep(0.1)
            assert pt.fault is None
            assert (await ep.coils(RELAY, 0, 1)) == [False]
            alarms = await events(store, "alarm")
            assert [(a["code"], a["active"]) for a in alarms] == [("valve_fault", True),
                                                                  ("valve_fault", False)]
            await service.on_tap(CardTap("r1", "04A1B2C3D5", time.monotonic()))
            assert (await ep.coils(RELAY, 0, 1)) == [True]
    finally:
        await sim.stop()


async def test_an_endpoint_that_accepts_and_closes_is_backed_off_like_a_refused_one() -> None:
    """A Modbus TCP server that accepts and closes at once (a gateway at its
    connection limit): a connection lost before any answer is a failed attempt,
    so 50 reads in a row cost a connection or two, not two each (before the fix:
    100 connections)."""
    closing = DeadEndpoint("close")
    await closing.start()
    try:
        async with ModbusBus.tcp("floor", "127.0.0.1", closing.port, timeout_s=0.3,
                                 retries=1) as bus:
            meter = bus.meter("meter:101", 1, load_profile("eastron-sdm120-import",
                                                           [SHIPPED_DIR]))
            for _ in range(50):
                with pytest.raises(DeviceError):
                    await meter.read()
        assert 1 <= closing.connections <= 3
    finally:
        await closing.stop()


class _Waits:
    """A component whose start needs another's start to be under way."""

    heartbeat_s: float | None = None

    def __init__(self, name: str, other: asyncio.Event, mine: asyncio.Event) -> None:
        self.name, self.other, self.mine = name, other, mine

    async def start(self) -> None:
        self.mine.set()
        async with asyncio.timeout(5.0):
            await self.other.wait()

    async def run(self, heartbeat: Heartbeat) -> None:
        await asyncio.Event().wait()

    async def shutdown(self) -> None:
        return None


async def test_components_start_at_once() -> None:
    """The starts run together (one's dead devices never hold another's): a start
    that waits for the next component's start to begin would time out in turn."""
    a, b = asyncio.Event(), asyncio.Event()
    sup = Supervisor([_Waits("a", b, a), _Waits("b", a, b)], Notifier(""))
    started = await sup._start_components()
    assert [c.name for c in started] == ["a", "b"]


def test_failure_log_says_the_first_failure_then_once_a_minute_then_the_recovery(
        capsys: pytest.CaptureFixture[str]) -> None:
    now = [0.0]
    log = FailureLog(_PrintLog(), "valve_fault", recovered="valve_recovered",
                     clock=lambda: now[0], point="p1")
    assert log.failed(detail="x") is True
    for _ in range(1000):          # a thousand failures within the minute: no line
        now[0] += 0.05
        assert log.failed(detail="x") is False
    now[0] += 11.0                 # past the minute: one summary
    log.failed(detail="y")
    log.failed(detail="y")
    assert log.ok() is True and log.ok() is False
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "30 valve_fault {'point': 'p1', 'detail': 'x'}",
        "30 valve_fault {'point': 'p1', 'repeats': 1001, 'failing_s': 61, 'detail': 'y'}",
        "20 valve_recovered {'point': 'p1', 'failures': 1003, 'failing_s': 61}",
    ]


def test_backoff_grows_to_its_cap_and_starts_again_after_a_success() -> None:
    b = Backoff(1.0, 10.0, jitter=0.0)
    assert [b.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    b.reset()
    assert b.next_delay() == 1.0
    jittery = Backoff(1.0, 10.0, jitter=0.25)
    assert all(0.75 <= jittery.next_delay() <= 12.5 for _ in range(50))



def test_backoff_half_to_full_jitter_a_longest_delay_and_days_of_failures() -> None:
    b = Backoff(1.0, 4.0, jitter=HALF_TO_FULL, longest_s=60.0)
    for base in [1.0, 2.0, 4.0, 4.0]:
        assert base / 2 <= b.next_delay() <= base
    assert 30.0 <= b.longest() <= 60.0
    assert b.attempt == 5  # the longest wait is still an attempt
    assert 1.0 <= b.delay(1) <= 2.0 and b.attempt == 5  # delay(n) changes nothing
    # A thing failing for days: the schedule stays at its cap (2.0**1024 overflows).
    b.attempt = 5000
    assert 2.0 <= b.next_delay() <= 4.0
    with pytest.raises(ValueError):
        Backoff(1.0, 4.0, jitter=(1.0, 0.5))


def test_a_building_of_backoffs_shares_one_jitter_generator() -> None:
    """A thousand devices' back-offs and health records cost no random generator each
    (2.5 KB of state apiece: 2.5 MB on a 500-room building), and a crowd that failed
    together still spreads out."""
    tracemalloc.start()
    try:
        backoffs = [Backoff(1.0, 10.0, jitter=HALF_TO_FULL) for _ in range(1000)]
        healths = [DeviceHealth(f"meter-{i}", "floor1", i) for i in range(1000)]
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size < 1_000_000, f"{size} bytes for 1000 back-offs and health records"
    assert len({b.next_delay() for b in backoffs}) > 900
    assert len(healths) == 1000


class _PrintLog:
    """A structlog-like logger that prints `level event fields` (levels as numbers)."""

    def __init__(self, **context: object) -> None:
        self.context = context

    def bind(self, **context: object) -> _PrintLog:
        return _PrintLog(**self.context, **context)

    def log(self, level: int, event: str, **fields: object) -> None:
        print(level, event, {**self.context, **fields})

    def warning(self, event: str, **fields: object) -> None:
        self.log(30, event, **fields)

    def info(self, event: str, **fields: object) -> None:
        self.log(20, event, **fields)
