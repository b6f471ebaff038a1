"""RTU timing discipline against a real pymodbus RTU server on a pty pair: a late
answer is never taken for a later request, `gap_s` is honoured (RTU and TCP),
stray bytes are dropped and counted, and a line that never falls quiet is a bus
fault with back-off. What is asserted is what the devices and the user see: the
values returned, the charges in the store, the quiet time on the line as the
devices see it (a protocol property), counts of requests and log lines."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from drivers.errors import DeviceError
from drivers.modbus import ModbusBus
from drivers.modbus.frames.adu import encode_rtu
from drivers.profile import SHIPPED_DIR, Profile, load_profile
from drivers.protocols import CardTap
from gatewayd.rules.water import Card
from gatewayd.store.cards import Cards
from gatewayd.store.ledger import Ledger
from gatewayd.store.txn import Txn
from sim.modbus import SimBuilding
from sim.modbus_endpoint import SimEndpoint
from sim.modbus_rtu import SimRtu
from tests.test_water_service import running_water

COUNTER = 40   # a pulse-counter board: shower-1 on channel 0, shower-2 on channel 1
RELAY = 31     # the showers' valves
# The board: it answers in 0.35 s, the bus waits 0.3 s.
TIMEOUT_S = 0.3
LATE_S = 0.35


def shipped(name: str) -> Profile:
    return load_profile(name, [SHIPPED_DIR])


@pytest.fixture
async def board() -> AsyncIterator[SimRtu]:
    """One RTU line: relay board 31 and pulse counter 40, whose channels hold
    different counts (channel 0: 9960, channel 1: 7; no flow)."""
    rtu = SimRtu(SimEndpoint(relays=[RELAY], counters=[COUNTER]))
    counter = rtu.endpoint.counters[COUNTER]
    counter.counts[0], counter.counts[1] = 9960.0, 7.0
    await rtu.start()
    try:
        yield rtu
    finally:
        await rtu.stop()


async def read_or_none(read: Callable[[], Any]) -> Any:
    try:
        return await read()
    except DeviceError:
        return None


async def test_a_late_answer_is_never_taken_for_the_next_channel(board: SimRtu) -> None:
    async with ModbusBus.rtu("showers", board.client_port, timeout_s=TIMEOUT_S,
                             retries=0) as bus:
        ch0 = bus.counter("flow:shower-1", COUNTER, shipped("pulse-counter"), channel=0)
        ch1 = bus.counter("flow:shower-2", COUNTER, shipped("pulse-counter"), channel=1)
        assert (await ch0.read(), await ch1.read()) == (9960, 7)

        board.delay_replies(COUNTER, LATE_S)
        with pytest.raises(DeviceError, match="timeout"):
            await ch0.read()
        # Channel 0's answer arrives while channel 1 would be asked: it must be
        # dropped. Channel 1 reads its own count or fails, never 9960.
        assert await read_or_none(ch1.read) in (7, None)
        assert await read_or_none(ch0.read) in (9960, None)
        assert await read_or_none(ch1.read) in (7, None)
        # The late answers were dropped and counted (each 9 bytes).
        assert bus.stats.dropped_bytes >= 9

        board.delay_replies(COUNTER, None)
        assert (await ch1.read(), await ch0.read()) == (7, 9960)


async def test_late_answers_at_random_never_cross_channels(board: SimRtu) -> None:
    """Answers on time or late at random (the bus retries): every value read is
    the channel's own."""
    counter = board.endpoint.counters[COUNTER]
    for ch in range(8):
        counter.counts[ch] = 1000.0 * (ch + 1)
    board.delay_replies(COUNTER, (0.05, 0.5))
    seen: dict[int, set[int]] = {ch: set() for ch in range(8)}
    async with ModbusBus.rtu("showers", board.client_port, timeout_s=TIMEOUT_S,
                             retries=1) as bus:
        channels = [bus.counter(f"flow:{ch}", COUNTER, shipped("pulse-counter"), channel=ch)
                    for ch in range(8)]
        for i in range(16):
            value = await read_or_none(channels[i % 8].read)
            if value is not None:
                seen[i % 8].add(value)
    assert all(values <= {1000 * (ch + 1)} for ch, values in seen.items()), seen
    assert any(seen.values()), "no read succeeded: the test proved nothing"


def quiet_before_requests(rtu: SimRtu) -> list[float]:
    """For each request after the first, how long the line (as the devices see it)
    had been quiet since the previous answer or request reached it."""
    gaps = []
    last = None
    for t, kind, _ in rtu.wire:
        if kind == "request" and last is not None:
            gaps.append(t - last)
        last = t
    return gaps


async def test_rtu_gap_s_is_honoured_after_answers_and_timeouts(board: SimRtu) -> None:
    gap_s = 0.05
    async with ModbusBus.rtu("showers", board.client_port, timeout_s=0.1, retries=0,
                             gap_s=gap_s) as bus:
        ch0 = bus.counter("flow:shower-1", COUNTER, shipped("pulse-counter"), channel=0)
        valve = bus.switch("valve:shower-1", RELAY, shipped("relay-board"), channel=0)
        await asyncio.gather(*(ch0.read() for _ in range(4)), valve.get(), valve.set(True))
        board.endpoint.set_fault(COUNTER, "silent")
        with pytest.raises(DeviceError):
            await ch0.read()
        board.endpoint.set_fault(COUNTER, None)
        await ch0.read()
    gaps = quiet_before_requests(board)
    assert len(gaps) >= 7
    assert min(gaps) >= gap_s, gaps
    # After the timeout the line stayed quiet as long as the device was given to
    # answer, on top of the request's own wait: its answer could still have come.
    requests = [t for t, kind, _ in board.wire if kind == "request"]
    assert requests[-1] - requests[-2] >= 2 * 0.1


async def test_tcp_gap_s_is_honoured() -> None:
    sim = await SimBuilding.tcp(1, per_endpoint=1)
    try:
        async with ModbusBus.tcp("floor", "127.0.0.1", sim.ports[0], timeout_s=1.0,
                                 max_in_flight=4, gap_s=0.03) as bus:
            meter = bus.meter("meter:1", 1, shipped("eastron-sdm120"))
            await asyncio.gather(*(meter.read() for _ in range(6)))
    finally:
        await sim.stop()
    packets = list(sim.endpoints[0].packets)
    assert [kind for _, kind in packets] == ["request", "answer"] * (len(packets) // 2)
    gaps = [packets[i][0] - packets[i - 1][0] for i in range(2, len(packets), 2)]
    assert len(gaps) >= 5
    assert min(gaps) >= 0.03, gaps


async def test_stray_bytes_between_requests_are_dropped_and_counted(board: SimRtu) -> None:
    async with ModbusBus.rtu("showers", board.client_port, timeout_s=TIMEOUT_S,
                             retries=0) as bus:
        ch1 = bus.counter("flow:shower-2", COUNTER, shipped("pulse-counter"), channel=1)
        assert await ch1.read() == 7
        # A valid answer (count 9800) arriving when nobody asked.
        stray = encode_rtu(COUNTER, bytes.fromhex("030400002648"))
        board.inject(stray)
        await asyncio.sleep(0.05)
        assert await ch1.read() == 7
        assert bus.stats.dropped_bytes == len(stray)


async def test_a_line_that_never_falls_quiet_is_a_bus_fault_with_back_off(board: SimRtu) -> None:
    async def babble() -> None:
        while True:
            board.inject(b"\x55")
            await asyncio.sleep(0.002)

    # A byte every 2 ms; the quiet wanted is long enough that a loop stalled on
    # this shared machine does not look like a quiet line.
    async with ModbusBus.rtu("showers", board.client_port, timeout_s=TIMEOUT_S,
                             retries=1, gap_s=0.2) as bus:
        ch1 = bus.counter("flow:shower-2", COUNTER, shipped("pulse-counter"), channel=1)
        assert await ch1.read() == 7
        noise = asyncio.get_running_loop().create_task(babble())
        await asyncio.sleep(0.05)   # the line is babbling from now on
        sent = sum(kind == "request" for _, kind, _ in board.wire)
        try:
            with capture_logs() as logs:
                failures = 0
                for _ in range(30):
                    if await read_or_none(ch1.read) is None:
                        failures += 1
                    await asyncio.sleep(0.01)
        finally:
            noise.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await noise
        assert failures == 30
        # Nothing was written on the babbling line, few waits were tried (back-off),
        # and one warning said so.
        assert sum(kind == "request" for _, kind, _ in board.wire) == sent
        assert 1 <= bus.stats.noise_faults <= 4
        noisy = [e for e in logs if e["event"] == "modbus_bus_noisy"]
        assert [e["log_level"] for e in noisy] == ["warning"] + ["debug"] * (len(noisy) - 1)
        # Quiet again: the bus recovers once its back-off is over.
        deadline = time.monotonic() + 30
        while (value := await read_or_none(ch1.read)) is None:
            assert time.monotonic() < deadline, "the bus did not recover"
            await asyncio.sleep(0.2)
        assert value == 7


# --- two showers on one counter board, in the water service ------------------------------


async def test_a_shower_with_no_water_is_never_charged_for_the_other(
        board: SimRtu, tmp_path: Path) -> None:
    """The issue's building: shower-1 runs, shower-2 is open but dry; their flow
    counters share a board that answers late now and then."""
    counter = board.endpoint.counters[COUNTER]
    # Counters that have run for years: close counts, so that a reading of one
    # channel taken for the other looks like plausible flow.
    counter.counts[0], counter.counts[1] = 5000.0, 4990.0
    counter.flow[0] = 20.0   # 200 mL/s at 10 mL a pulse
    for ch in (0, 1):
        board.endpoint.follow(RELAY, ch, functools.partial(counter.set_open, ch))
    points = "".join(f"""
[[points]]
id = "shower-{i + 1}"
service = "shower"
reader = "r{i + 1}"
valve = {{ bus = "rs485-b", unit = {RELAY}, profile = "relay-board", channel = {i} }}
flow = {{ bus = "rs485-b", unit = {COUNTER}, profile = "pulse-counter", channel = {i}, ml_per_pulse = 10 }}
[[readers]]
id = "r{i + 1}"
type = "serial"
port = "/dev/null-{i}"
""" for i in range(2))
    (tmp_path / "gw.toml").write_text(f"""
[gateway]
building = "b07"
state_dir = "{tmp_path / 'state'}"
poll_interval_s = 0.2
[tariffs]
shower = {{ price = "1", unit = "L" }}   # 0.1 fen a mL
[water]
min_balance_fen = 1
max_session_s = 600
[[buses]]
name = "rs485-b"
type = "rtu"
port = "{board.client_port}"
baudrate = 9600
timeout_s = {TIMEOUT_S}
retries = 1
{points}""")
    cards = {1: "0400000001", 2: "0400000002"}

    def seed(txn: Txn) -> None:
        for i, uid in cards.items():
            Ledger.credit(txn, f"stu-{i}", 100_000)
            Cards.put(txn, Card(uid, f"stu-{i}", "student", "active", None))

    board.delay_replies(COUNTER, (0.05, 0.45))
    async with running_water(tmp_path / "gw.toml", seed, lambda: True) as (service, store):
        for i, uid in cards.items():
            await service.on_tap(CardTap(f"r{i}", uid, time.monotonic()))
        assert all(pt.session is not None for pt in service.points.values())
        await asyncio.sleep(4.0)
        for i, uid in cards.items():
            if service.points[f"shower-{i}"].session is not None:
                await service.on_tap(CardTap(f"r{i}", uid, time.monotonic()))
        rows = await store.read(lambda t: t.execute(
            "SELECT payload FROM events WHERE type = 'water.session' ORDER BY seq").fetchall())
        balances = dict(await store.read(lambda t: t.execute(
            "SELECT account, balance_fen FROM accounts").fetchall()))
    sessions = {s["point"]: s for s in (json.loads(r[0]) for r in rows)}
    assert set(sessions) == {"shower-1", "shower-2"}
    dry, wet = sessions["shower-2"], sessions["shower-1"]
    assert (dry["volume_ml"], dry["amount_fen"]) == (0, 0), dry
    assert balances["stu-2"] == 100_000
    # shower-1 is charged for its own water at most (its counter rose this much).
    assert wet["volume_ml"] <= (counter.counts[0] - 5000.0) * 10 + 10, wet
    assert wet["volume_ml"] > 0, "no reading of shower-1 succeeded: the test proved nothing"
