"""The water service in this process, on a real store and a pymodbus relay board,
where the test decides whether the center is reachable. Asserted in the store:
events, offline spend, balances."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drivers.protocols import CardTap
from gatewayd.config.load import load_config
from gatewayd.contract.enums import EndReason
from gatewayd.contract.events import flow_device, valve_device
from gatewayd.rules.water import Card
from gatewayd.services.alarms import Alarms
from gatewayd.services.clock import Clock
from gatewayd.services.component import Heartbeat
from gatewayd.services.hardware import Hardware
from gatewayd.services.water.service import WaterService
from gatewayd.store.cards import Cards
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger
from gatewayd.store.txn import Txn
from sim.modbus import SimBuilding

RELAY = SimBuilding.RELAY_BASE
CARD = "04A1B2C3D5"
LIMIT_FEN = 30


@dataclass
class Water:
    service: WaterService
    store: Store
    sim: SimBuilding
    center: list[bool]   # [reachable]

    async def events(self, type_: str) -> list[dict[str, Any]]:
        rows = await self.store.read(lambda t: t.execute(
            "SELECT payload FROM events WHERE type = ? ORDER BY seq", (type_,)).fetchall())
        return [json.loads(r[0]) for r in rows]

    async def offline_spent(self) -> int:
        row = await self.store.read(lambda t: t.execute(
            "SELECT COALESCE(SUM(fen), 0) FROM offline_spend WHERE card = ?", (CARD,)).fetchone())
        return int(row[0])

    async def valve(self) -> bool:
        return (await self.sim.endpoints[0].coils(RELAY, 0, 1))[0]


@pytest.fixture
async def water(tmp_path: Path) -> AsyncIterator[Water]:
    sim = await SimBuilding.tcp(1, per_endpoint=1)
    (tmp_path / "gw.toml").write_text(f"""
[gateway]
building = "b07"
state_dir = "{tmp_path / 'state'}"
poll_interval_s = 0.2
[tariffs]
shower = {{ price = "6", unit = "min" }}   # 10 fen a second, billed by time
[water]
min_balance_fen = 1
offline_limit_fen = {LIMIT_FEN}
max_session_s = 600
[[buses]]
name = "b"
type = "tcp"
host = "127.0.0.1"
port = {sim.ports[0]}
timeout_s = 0.3
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
        Cards.put(txn, Card(CARD, "stu-1", "student", "active", None))

    center = [True]
    try:
        async with running_water(tmp_path / "gw.toml", seed, lambda: center[0]) as (service, store):
            yield Water(service, store, sim, center)
    finally:
        await sim.stop()


@contextlib.asynccontextmanager
async def running_water(
    config_path: Path, seed: Callable[[Txn], None], center_online: Callable[[], bool]
) -> AsyncIterator[tuple[WaterService, Store]]:
    """The water service of `config_path` (valves and flow counters built as the
    daemon builds them) running on a store seeded by `seed`; stopped (if the
    test did not) and closed afterwards."""
    config = load_config(config_path)
    store = Store.open(config.gateway.state_dir, "b07")
    store.call(seed)
    ledger, cards = Ledger(), Cards()
    await store.read(ledger.load)
    await store.read(cards.load)
    hw = Hardware(config)
    await hw.start()
    service = WaterService(
        config, store, ledger=ledger, cards=cards, alarms=Alarms(store, Clock("UTC", "yes")),
        clock=Clock(config.gateway.timezone, "yes"),
        devices={p.id: (hw.switch(valve_device(p.id), p.valve),
                        hw.counter(flow_device(p.id), p.flow) if p.flow else None)
                 for p in config.points},
        readers={}, center_online=center_online)
    await service.start()
    task = asyncio.get_running_loop().create_task(service.run(Heartbeat("water", None)))
    try:
        yield service, store
    finally:
        if service.accepting:
            await service.shutdown()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await hw.close()
        store.close()


async def until_ended(w: Water, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not (sessions := await w.events("water.session")):
        assert time.monotonic() < deadline, "the session did not end"
        await asyncio.sleep(0.1)
    session: dict[str, Any] = sessions[0]
    return session


async def test_a_session_started_online_is_limited_once_the_center_is_unreachable(
    water: Water,
) -> None:
    w = water
    await w.service.on_tap(CardTap("r1", CARD, time.monotonic()))
    assert await w.valve() is True
    await asyncio.sleep(1.5)   # a whole second charged (10 fen) while reachable: not counted
    w.center[0] = False
    session = await until_ended(w)
    assert session["end_reason"] == "balance"   # the offline limit stands in for the balance
    assert session["offline"] is False          # it started while the center was reachable
    assert await w.valve() is False
    spent = await w.offline_spent()
    assert 0 < spent <= LIMIT_FEN
    assert session["amount_fen"] > spent        # the online part is not offline spend
    assert sum(fen for (c, _), fen in w.service.offline_spend.spent.items() if c == CARD) == spent
    # A new tap while still offline: the day's limit is spent.
    await asyncio.sleep(0.5)
    await w.service.on_tap(CardTap("r1", CARD, time.monotonic()))
    taps = await w.events("tap")
    assert taps[-1]["reason"] == "offline_limit" and taps[-1]["granted"] is False


async def test_a_session_started_offline_is_not_limited_once_the_center_is_back(
    water: Water,
) -> None:
    w = water
    w.center[0] = False
    await w.service.on_tap(CardTap("r1", CARD, time.monotonic()))
    assert await w.valve() is True
    await asyncio.sleep(1.5)   # a whole second charged (10 fen) while unreachable
    w.center[0] = True
    await asyncio.sleep(3.0)   # 30 fen more: past the limit, were it still offline
    assert await w.valve() is True
    await w.service.on_tap(CardTap("r1", CARD, time.monotonic()))
    session = await until_ended(w)
    assert session["end_reason"] == "tap" and session["offline"] is True
    spent = await w.offline_spent()
    assert 0 < spent <= LIMIT_FEN < session["amount_fen"]


async def test_no_tap_event_at_all_once_shutdown_began(water: Water) -> None:
    w = water
    await w.service.shutdown()
    await w.service.on_tap(CardTap("r1", CARD, time.monotonic()))
    await w.service.on_tap(CardTap("no-such-reader", CARD, time.monotonic()))
    assert await w.events("tap") == []
    assert await w.valve() is False


async def test_an_idle_valve_found_open_is_closed(water: Water, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone opens the valve by hand (or its relay did not follow): the idle check
    finds it open with no session and closes it; no session, no charge."""
    import gatewayd.services.water.point_devices as water_mod

    monkeypatch.setattr(water_mod, "IDLE_CHECK_S", 0.3)
    w = water
    w.service.points["shower-1"].idle_check_at = 0.0
    w.service.points["shower-1"].wake.set()
    await asyncio.sleep(0.5)  # the first check, at the new period
    await w.sim.endpoints[0].set_coil(RELAY, 0, True)
    deadline = time.monotonic() + 5.0
    while await w.valve():
        assert time.monotonic() < deadline, "the open idle valve was not closed"
        await asyncio.sleep(0.05)
    assert await w.events("water.session") == []
    assert await w.events("tap") == []


async def test_account_sync_counts_a_session_ending_meanwhile_once(water: Water) -> None:
    """A sync whose store job runs after a session's end (queued behind it)
    counts the session's charge once: in its water.session event, not also as
    an open session's debit."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gatewayd.center.apply import CommandService
    from gatewayd.contract.signing import sign_command
    from gatewayd.services.power.service import PowerService

    svc = water.service
    key = Ed25519PrivateKey.generate()
    clock = Clock("UTC", "yes")
    power = PowerService(svc.config, water.store, ledger=svc.ledger, alarms=Alarms(water.store, clock),
                         clock=clock, devices={})
    commands = CommandService(svc.config, water.store, clock, ledger=svc.ledger, cards=svc.cards,
                              power=power, water=svc, public_key=key.public_key())
    await svc.on_tap(CardTap("r1", CARD, time.monotonic()))
    pt = svc.points["shower-1"]
    while pt.session is None or pt.session.charged_fen < 20:
        await asyncio.sleep(0.05)
    last = await water.store.read(lambda t: t.execute(
        "SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()[0])
    water.store.submit(lambda t: time.sleep(0.5))   # the writer busy: both jobs queue
    command = sign_command({"id": "sync-1", "to": "b07", "type": "account.sync", "ts": clock.stamp(),
                            "args": {"account": "stu-1", "balance_fen": 10_000,
                                     "through_seq": last}}, key)
    # The sync's duplicate lookup queues behind the busy writer; the session's
    # end is queued next, so the sync runs after it, with the session still
    # open in memory when the lookup returns.
    sync = asyncio.create_task(commands.handle(json.dumps(command).encode(), "building"))
    await asyncio.sleep(0.05)

    async def end() -> None:
        async with pt.lock:
            await svc.point_loop.end(pt, EndReason.TAP)

    await asyncio.gather(sync, end())
    (session,) = await water.events("water.session")
    assert session["amount_fen"] >= 20
    assert svc.ledger.balance("stu-1") == 10_000 - session["amount_fen"]
    row = await water.store.read(lambda t: t.execute(
        "SELECT balance_fen FROM accounts WHERE account = 'stu-1'").fetchone())
    assert row[0] == 10_000 - session["amount_fen"]


async def test_a_valve_found_closed_during_a_session_ends_it(
    water: Water, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay board resets mid-shower (its coil reads off): on this time-billed
    point nothing else would tell, so the read-back ends the session with `fault`
    and raises (then clears, once a close command is obeyed) `valve_fault`."""
    import gatewayd.services.water.point_devices as water_mod

    monkeypatch.setattr(water_mod, "VALVE_CHECK_S", 0.3)
    w = water
    await w.service.on_tap(CardTap("r1", CARD, time.monotonic()))
    assert await w.valve() is True
    await w.sim.endpoints[0].set_coil(RELAY, 0, False)
    session = await until_ended(w)
    assert session["end_reason"] == "fault"
    alarms = [(a["code"], a["device"], a["active"]) for a in await w.events("alarm")]
    assert alarms == [("valve_fault", "valve:shower-1", True), ("valve_fault", "valve:shower-1", False)]
    assert (await w.events("alarm"))[0]["detail"] == "found closed during a session"


async def test_shutdown_closes_an_idle_valve_found_open(water: Water) -> None:
    """SIGTERM closes every valve: one opened by hand since the last idle check too."""
    w = water
    await w.sim.endpoints[0].set_coil(RELAY, 0, True)
    await w.service.shutdown()
    assert await w.valve() is False
    assert await w.events("water.session") == []


async def test_shutdown_with_a_dead_relay_board_ends_every_session_in_time(tmp_path: Path) -> None:
    """Six showers open when their relay board dies, then SIGTERM: closing six dead
    valves one after another on the bus would take 12 s (1 s timeout, 1 retry).
    The stop ends every session anyway, charged once, within its I/O budget,
    leaving the rest of the 10 s to tell the center."""
    import gatewayd.services.water.recovery as water_mod

    sim = await SimBuilding.tcp(1, per_endpoint=1)
    points = "".join(
        f'[[points]]\nid = "shower-{i}"\nservice = "shower"\nreader = "r{i}"\n'
        f'valve = {{ bus = "b", unit = {RELAY}, profile = "relay-board", channel = {i} }}\n'
        f'[[readers]]\nid = "r{i}"\ntype = "serial"\nport = "/dev/null-{i}"\n' for i in range(6))
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
{points}""")

    def seed(txn: Txn) -> None:
        for i in range(6):
            Ledger.credit(txn, f"stu-{i}", 10_000)
            Cards.put(txn, Card(f"0400{i:06X}", f"stu-{i}", "student", "active", None))

    try:
        async with running_water(tmp_path / "gw.toml", seed, lambda: False) as (service, store):
            for i in range(6):
                await service.on_tap(CardTap(f"r{i}", f"0400{i:06X}", time.monotonic()))
            assert all(pt.session is not None for pt in service.points.values())
            await asyncio.sleep(0.5)
            sim.endpoints[0].set_fault(RELAY, "silent")
            began = time.monotonic()
            await service.shutdown()
            took = time.monotonic() - began
            assert took < water_mod.SHUTDOWN_IO_S + water_mod.SHUTDOWN_IDLE_CLOSE_S + 1.0, took
            rows = await store.read(lambda t: t.execute(
                "SELECT payload FROM events WHERE type = 'water.session' ORDER BY seq").fetchall())
            sessions = [json.loads(r[0]) for r in rows]
            assert sorted(s["point"] for s in sessions) == [f"shower-{i}" for i in range(6)]
            assert {s["end_reason"] for s in sessions} == {"shutdown"}
            assert await store.read(lambda t: t.execute(
                "SELECT COUNT(*) FROM water_sessions").fetchone()[0]) == 0
            balances = dict(await store.read(lambda t: t.execute(
                "SELECT account, balance_fen FROM accounts").fetchall()))
            for s in sessions:   # charged once: the balance is the credit less the one event
                paid = 10_000 - s["amount_fen"]
                assert balances[s["account"]] == paid == service.ledger.balance(s["account"])
    finally:
        await sim.stop()
