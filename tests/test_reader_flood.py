"""A reader flooded with refused taps (a card emulator cycling UIDs) cannot fill
the store (behaviour.md "Card readers").

The rule itself, pure (gatewayd/rules/reader_flood.py); then the water service with
real serial readers on ptys, a real store and a pymodbus relay board, where
the test moves the service's monotonic clock instead of waiting minutes.
Asserted in the store: the tap events and their counts, the alarm events,
and the valves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drivers.cardreader.factory import open_reader
from drivers.protocols import CardReader, StatusSink, TapSink
from gatewayd.config.load import load_config
from gatewayd.contract.enums import AlarmCode, TapReason
from gatewayd.contract.events import valve_device
from gatewayd.rules.reader_flood import RefusalFolder
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
from sim.serial_card import PtyPort, frame

# --- the rule ---------------------------------------------------------------------


def test_past_the_limit_refusals_fold_per_reason_and_minute() -> None:
    f = RefusalFolder(3)
    records = [f.refuse("r1", f"{i:08X}", "p1", TapReason.UNKNOWN_CARD, 10.0 + i).record for i in range(3)]
    assert records == [True, True, True]
    fourth = f.refuse("r1", "0000000A", "p1", TapReason.UNKNOWN_CARD, 14.0)
    assert fourth.record is False and fourth.flood == (("r1", True),)
    assert f.refuse("r1", "0000000B", "p1", TapReason.LOST, 15.0).flood == ()  # raised once
    for i in range(5):
        assert f.refuse("r1", f"1{i:07X}", "p1", TapReason.UNKNOWN_CARD, 20.0 + i).record is False
    # Another reader is judged on its own.
    assert f.refuse("r2", "0000000C", "p2", TapReason.UNKNOWN_CARD, 30.0).record is True
    assert f.roll(69.9).folds == ()
    ended = f.roll(70.0)   # r1's minute (from 10.0) is over
    assert {(x.reason, x.count, x.card) for x in ended.folds} == {
        ("unknown", 6, "10000004"), ("lost", 1, "0000000B")}
    assert ended.flood == () and f.flooded("r1")
    # The next minute follows on; under the limit, the flood ends with it.
    assert f.refuse("r1", "0000000D", "p1", TapReason.UNKNOWN_CARD, 100.0).record is True
    ended = f.roll(130.0)
    assert ended.folds == () and ended.flood == (("r1", False),)
    assert not f.flooded("r1")


def test_a_flood_that_stops_is_cleared_a_quiet_minute_later() -> None:
    f = RefusalFolder(1)
    f.refuse("r1", "01", None, TapReason.NO_POINT, 0.0)
    assert f.refuse("r1", "02", None, TapReason.NO_POINT, 1.0).flood == (("r1", True),)
    # Nothing for three minutes: the folds of the first, then the clearing.
    out = f.roll(200.0)
    assert [(x.count, x.point) for x in out.folds] == [(1, None)]
    assert out.flood == (("r1", False),)
    assert f.roll(500.0) == f.roll(501.0)


def test_under_the_limit_every_refusal_is_recorded() -> None:
    f = RefusalFolder(30)
    for minute in range(5):
        for i in range(30):
            out = f.refuse("r1", f"{i:08X}", "p1", TapReason.UNKNOWN_CARD, minute * 61.0 + i)
            assert out.record and out.flood == () and out.folds == ()


def test_flush_gives_the_minutes_folds_once() -> None:
    f = RefusalFolder(1)
    for i in range(4):
        f.refuse("r1", f"{i:02X}", "p1", TapReason.UNKNOWN_CARD, float(i))
    assert [x.count for x in f.flush().folds] == [3]
    assert f.flush().folds == ()
    assert f.roll(100.0).folds == ()


# --- the water service, with serial readers on ptys ------------------------------

RELAY = SimBuilding.RELAY_BASE
LIMIT = 30
CARD_A, CARD_B = "0400000A0A", "0400000B0B"


class SteppedClock(Clock):
    """The service's clock, whose monotonic time the test moves forward."""

    def __init__(self, timezone: str) -> None:
        super().__init__(timezone, "yes")
        self.offset = 0.0

    def mono(self) -> float:
        return time.monotonic() + self.offset


class Watched:
    """A card reader that says when its port is open (before that, bytes written
    to the pty may be flushed away by the driver's open)."""

    def __init__(self, inner: CardReader) -> None:
        self.inner = inner
        self.name = inner.name
        self.up = asyncio.Event()

    async def run(self, sink: TapSink, status: StatusSink) -> None:
        def watch(online: bool, detail: str) -> None:
            if online:
                self.up.set()
            status(online, detail)

        await self.inner.run(sink, watch)


@dataclass
class Building:
    service: WaterService
    store: Store
    sim: SimBuilding
    clock: SteppedClock
    ports: dict[str, PtyPort]

    async def taps(self) -> list[dict[str, Any]]:
        rows = await self.store.read(lambda t: t.execute(
            "SELECT payload FROM events WHERE type = 'tap' ORDER BY seq").fetchall())
        return [json.loads(r[0]) for r in rows]

    async def alarms(self) -> list[tuple[str, str, bool]]:
        rows = await self.store.read(lambda t: t.execute(
            "SELECT payload FROM events WHERE type = 'alarm' ORDER BY seq").fetchall())
        docs = [json.loads(r[0]) for r in rows]
        return [(a["code"], a["device"], a["active"]) for a in docs]

    async def valve(self, ch: int) -> bool:
        return (await self.sim.endpoints[0].coils(RELAY, ch, 1))[0]

    async def until(self, check: Any, what: str) -> None:
        deadline = time.monotonic() + 20.0   # a safety net, not a threshold
        while not await check():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.02)


@pytest.fixture
async def building(tmp_path: Path) -> AsyncIterator[Building]:
    sim = await SimBuilding.tcp(1, per_endpoint=1)
    ports = {r: PtyPort(tmp_path / f"tty-{r}") for r in ("r1", "r2")}
    points = "".join(
        f'[[points]]\nid = "shower-{i}"\nservice = "shower"\nreader = "r{i}"\n'
        f'valve = {{ bus = "b", unit = {RELAY}, profile = "relay-board", channel = {i} }}\n'
        f'[[readers]]\nid = "r{i}"\ntype = "serial"\nport = "{ports[f"r{i}"].path}"\n'
        for i in (1, 2))
    (tmp_path / "gw.toml").write_text(f"""
[gateway]
building = "b07"
state_dir = "{tmp_path / 'state'}"
poll_interval_s = 0.2
refused_taps_per_min = {LIMIT}
[tariffs]
shower = {{ price = "0.01", unit = "min" }}
[water]
max_session_s = 3600
[[buses]]
name = "b"
type = "tcp"
host = "127.0.0.1"
port = {sim.ports[0]}
timeout_s = 0.3
{points}""")
    config = load_config(tmp_path / "gw.toml")
    store = Store.open(config.gateway.state_dir, "b07")

    def seed(txn: Txn) -> None:
        for card, account in ((CARD_A, "stu-a"), (CARD_B, "stu-b")):
            Ledger.credit(txn, account, 10_000)
            Cards.put(txn, Card(card, account, "student", "active", None))

    store.call(seed)
    ledger, cards = Ledger(), Cards()
    await store.read(ledger.load)
    await store.read(cards.load)
    hw = Hardware(config)
    await hw.start()
    clock = SteppedClock(config.gateway.timezone)
    readers = {r: Watched(open_reader(r, "serial", debounce_s=config.gateway.tap_debounce_s,
                                      port=str(ports[r].path))) for r in ports}
    service = WaterService(
        config, store, ledger=ledger, cards=cards, alarms=Alarms(store, clock), clock=clock,
        devices={p.id: (hw.switch(valve_device(p.id), p.valve), None) for p in config.points},
        readers=readers, center_online=lambda: True)
    await service.start()
    task = asyncio.get_running_loop().create_task(service.run(Heartbeat("water", None)))
    try:
        async with asyncio.timeout(10):
            for r in readers.values():
                await r.up.wait()
        yield Building(service, store, sim, clock, ports)
    finally:
        if service.accepting:
            await service.shutdown()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await hw.close()
        store.close()
        for port in ports.values():
            port.close()
        await sim.stop()


def emulator(n: int, start: int) -> bytes:
    """`n` distinct unknown UIDs, as a card emulator cycling them sends."""
    return b"".join(frame(f"E0{start + i:08X}", "rdm6300") for i in range(n))


async def test_a_uid_cycling_emulator_is_folded_and_known_cards_still_open(
    building: Building,
) -> None:
    b = building
    svc = b.service

    async def processed(n: int) -> None:
        await b.until(lambda: _true(svc.taps >= n), f"{n} taps not processed (got {svc.taps})")

    # Minute 1: 200 distinct unknown UIDs at r1; meanwhile a known card at r2
    # and another at r1 itself.
    b.ports["r1"].write(emulator(120, 0))
    await processed(120)
    assert svc.alarms.is_active(AlarmCode.READER_FLOOD, "reader:r1")
    b.ports["r2"].write(frame(CARD_A, "rdm6300"))
    b.ports["r1"].write(frame(CARD_B, "rdm6300"))
    await processed(122)
    assert await b.valve(2) is True and await b.valve(1) is True
    b.ports["r1"].write(emulator(80, 1000))
    await processed(202)
    taps = await b.taps()
    refused_r1 = [t for t in taps if t["reader"] == "r1" and not t["granted"]]
    assert len(refused_r1) == LIMIT and all("count" not in t for t in refused_r1)
    granted = [(t["reader"], t["card"], t["reason"]) for t in taps if t["granted"]]
    assert sorted(granted) == [("r1", CARD_B, "start"), ("r2", CARD_A, "start")]
    assert all("count" not in t for t in taps if t["granted"])

    # The minute ends: the folded refusals are recorded, counted. Minute 2
    # floods again.
    b.clock.offset += 61
    await b.until(lambda: _any_folded(b), "the first minute's folds were not recorded")
    b.ports["r1"].write(emulator(200, 2000))
    await processed(402)
    b.clock.offset += 61
    await b.until(lambda: _folded_count(b, 2), "the second minute's folds were not recorded")
    assert svc.alarms.is_active(AlarmCode.READER_FLOOD, "reader:r1")
    # Minute 3: quiet. The flood ends with it.
    b.clock.offset += 61
    await b.until(lambda: _true(not svc.alarms.is_active(AlarmCode.READER_FLOOD, "reader:r1")),
                  "reader_flood was not cleared")

    taps = await b.taps()
    r1_refused = [t for t in taps if t["reader"] == "r1" and not t["granted"]]
    folded = [t for t in r1_refused if "count" in t]
    single = [t for t in r1_refused if "count" not in t]
    # Every refusal is accounted for: 400 refused taps, in 2 * LIMIT single
    # events and one folded event per minute (a single reason, `unknown`).
    assert len(single) == 2 * LIMIT
    assert [t["reason"] for t in folded] == ["unknown", "unknown"]
    assert len(single) + sum(t["count"] for t in folded) == 400
    assert [t["count"] for t in folded] == [200 - LIMIT, 200 - LIMIT]
    # The store's growth: what 400 refusals left behind.
    assert len(taps) == 2 * LIMIT + 2 + 2   # singles, folds, the two granted taps
    assert await b.alarms() == [("reader_flood", "reader:r1", True),
                                ("reader_flood", "reader:r1", False)]
    # r2 was never flooded; its known card's session runs on.
    assert await b.valve(2) is True


async def _true(value: bool) -> bool:
    return value


async def _any_folded(b: Building) -> bool:
    return await _folded_count(b, 1)


async def _folded_count(b: Building, n: int) -> bool:
    return sum(1 for t in await b.taps() if "count" in t) >= n
