"""The DL/T 645 bus and devices against the simulated meter line on a pty (real byte
timing): readings scaled right, the relay tripped, closed and read back, a silent
meter beside live ones, a refused password, a relay that does not follow, noise,
foreign and late answers never taken as readings."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drivers.dlt645.bus import Dlt645Bus
from drivers.dlt645.credentials import Credentials
from drivers.dlt645.devices import FOLLOW_READS, Dlt645Meter, Dlt645Relay, FieldSpec
from drivers.dlt645.frames import RELAY_CLOSE, RELAY_TRIP, STATUS_WORD_3
from drivers.dlt645.link import Dlt645Link
from drivers.errors import DeviceError, RelayRefused, SwitchMismatch
from drivers.health import OFFLINE_AFTER
from sim.dlt645 import DEFAULT_CREDENTIALS, SimDltLine, SimDltMeter, pty_parity

# The shipped profiles' fields (config.md "Meters and relays on DL/T 645-2007").
FIELDS = {
    "energy_wh": FieldSpec(0x00010000, 4, decimals=2, scale=1000),
    "power_w": FieldSpec(0x02030000, 3, decimals=4, signed=True, scale=1000),
    "voltage_v": FieldSpec(0x02010100, 2, decimals=1),
    "current_a": FieldSpec(0x02020100, 3, decimals=3, signed=True),
    "pf": FieldSpec(0x02060000, 2, decimals=3, signed=True),
}
RELAY_STATE = FieldSpec(STATUS_WORD_3, 2, bit=4, on=0)
TZ = dt.timezone(dt.timedelta(hours=8))   # the building's gateway.timezone (the meters' clock)
TIMEOUT_S = 0.3
PARITY = pty_parity("E")   # "N" where the kernel refuses parity on a pty
A, B, C = "000000001234", "000000005678", "100000000001"


@dataclass
class Floor:
    line: SimDltLine
    bus: Dlt645Bus
    meters: dict[str, Dlt645Meter]
    relays: dict[str, Dlt645Relay]

    def sim(self, address: str) -> SimDltMeter:
        return self.line.meters[address]


async def floor(addresses: Sequence[str], *, baudrate: int = 9600,
                credentials: Credentials = DEFAULT_CREDENTIALS) -> Floor:
    line = SimDltLine([SimDltMeter(a, tz=TZ) for a in addresses], baudrate=baudrate)
    await line.start()
    bus = Dlt645Bus("rs485-dlt", line.client_port, baudrate=baudrate, parity=PARITY,
                    timeout_s=TIMEOUT_S, retries=0)
    await bus.start()
    meters = {a: bus.meter(f"meter-{a}", a, FIELDS) for a in addresses}
    relays = {a: bus.relay(f"breaker-{a}", a, credentials, RELAY_STATE, tz=TZ)
              for a in addresses}
    return Floor(line, bus, meters, relays)


def _tasks() -> set[asyncio.Task[object]]:
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current and not t.done()}


@pytest.fixture
async def three() -> AsyncIterator[Floor]:
    before = _tasks()
    f = await floor([A, B, C])
    try:
        yield f
    finally:
        await f.bus.close()
        await f.line.stop()
    for _ in range(5):
        await asyncio.sleep(0)
    leaked = _tasks() - before
    assert not leaked, f"leaked tasks: {leaked}"


async def test_the_line_is_2400_8e1_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import serial_asyncio_fast

    asked: dict[str, object] = {}

    async def create(*args: object, **kwargs: object) -> None:
        asked.update(port=args[2], **kwargs)
        raise OSError("no such port")

    monkeypatch.setattr(serial_asyncio_fast, "create_serial_connection", create)
    async with Dlt645Bus("rs485-dlt", "/dev/ttyUSB9", retries=0) as bus:
        with pytest.raises(DeviceError, match="cannot open /dev/ttyUSB9"):
            await bus.meter("meter-1", A, FIELDS).read()
    assert asked == {"port": "/dev/ttyUSB9", "baudrate": 2400, "parity": "E", "stopbits": 1,
                     "bytesize": 8, "exclusive": True}


async def test_readings_scaled_right_at_2400() -> None:
    f = await floor([A], baudrate=2400)
    try:
        m = f.sim(A).physics
        m.energy_kwh, m.power_w, m.voltage_v, m.pf = 1234.56, 1234.5, 220.1, 0.95
        first = await f.meters[A].read()
        assert f.line.line_settings() == (2400, PARITY, 1)   # what the gateway set, via termios
        assert first.energy_wh == 1_234_560   # 1234.56 kWh in hundredths, to Wh
        assert first.power_w == pytest.approx(1234.5)   # 01.2345 kW
        assert first.voltage_v == pytest.approx(220.1)
        assert first.current_a == pytest.approx(1234.5 / (220.1 * 0.95), abs=0.0005)
        assert first.pf == pytest.approx(0.95)
        assert first.energy_step_wh == 10.0 and first.fault == ""
        m.power_w = -50.0   # export, or a current transformer fitted backwards
        second = await f.meters[A].read()
        assert second.power_w == pytest.approx(-50.0) and second.energy_wh is None
    finally:
        await f.bus.close()
        await f.line.stop()


async def test_power_each_round_energy_at_least_every_fifth(three: Floor) -> None:
    energy: dict[str, list[bool]] = {a: [] for a in three.meters}
    for _ in range(7):
        readings = await asyncio.gather(*(m.read() for m in three.meters.values()))
        for a, r in zip(three.meters, readings, strict=True):
            assert r.power_w is not None
            energy[a].append(r.energy_wh is not None)
    for a, seen in energy.items():
        gaps = "".join("E" if e else "." for e in seen)
        assert seen[0] and "....." not in gaps, (a, gaps)
    # The meters read their energy in different rounds, so no round carries them all.
    assert not all(all(energy[a][k] for a in energy) for k in range(1, 7))
    assert three.bus.stats.rounds >= 5 and three.bus.stats.round_s is not None


async def test_relay_trips_and_closes_and_reads_back(three: Floor) -> None:
    relay, sim = three.relays[A], three.sim(A)
    sim.physics.power_w = 800.0
    assert await relay.get() is True
    await relay.set(False)
    assert not sim.relay_closed and await relay.get() is False
    assert (await three.meters[A].read()).power_w == 0.0   # no supply, no power
    await relay.set(True)
    assert sim.relay_closed and await relay.get() is True
    trip, close = sim.commands
    assert (trip.action, close.action) == (RELAY_TRIP, RELAY_CLOSE)
    assert (trip.level, trip.password, trip.operator) == (2, 0x123456, 1)
    ahead = trip.deadline - dt.datetime.now(TZ).replace(tzinfo=None)
    assert dt.timedelta(minutes=3) < ahead <= dt.timedelta(minutes=10)
    assert three.sim(B).relay_closed   # only its own meter moved


async def test_silent_meter_times_out_while_the_others_are_read(three: Floor) -> None:
    three.sim(B).silent = True
    three.sim(A).physics.power_w, three.sim(C).physics.power_w = 100.0, 300.0
    for _ in range(OFFLINE_AFTER):
        a, b, c = await asyncio.gather(*(m.read() for m in three.meters.values()),
                                       return_exceptions=True)
        assert not isinstance(a, BaseException) and a.power_w == pytest.approx(100.0)
        assert not isinstance(c, BaseException) and c.power_w == pytest.approx(300.0)
        assert isinstance(b, DeviceError) and b.device == f"meter-{B}"
    assert not three.bus.health[f"meter-{B}"].online
    assert three.bus.health[f"meter-{A}"].online and three.bus.health[f"meter-{C}"].online
    assert three.bus.stats.timeouts == OFFLINE_AFTER


async def test_refused_password_is_a_mismatch_and_the_relay_stays_closed() -> None:
    f = await floor([A], credentials=Credentials(level=2, password=0x654321, operator=1))
    try:
        with pytest.raises(RelayRefused) as refused:
            await f.relays[A].set(False)
        assert isinstance(refused.value, SwitchMismatch)
        assert refused.value.wanted is False and refused.value.actual is True
        assert f.sim(A).relay_closed
    finally:
        await f.bus.close()
        await f.line.stop()


async def test_relay_that_does_not_follow_is_never_reported_cut(three: Floor) -> None:
    three.sim(A).stuck = True
    requests = three.line.requests
    with pytest.raises(SwitchMismatch) as mismatch:
        await three.relays[A].set(False)
    assert mismatch.value.actual is True and three.sim(A).relay_closed
    assert three.line.requests - requests == 1 + FOLLOW_READS   # asked, then read back


async def test_noise_and_foreign_answers_are_never_readings(three: Floor) -> None:
    three.sim(A).physics.power_w = 111.0
    three.sim(B).physics.power_w = 222.0
    three.sim(B).foreign = C   # B's answers carry C's address
    three.sim(C).noise = bytes.fromhex("00FF6813") + b"\x68" * 3
    with pytest.raises(DeviceError):
        await three.meters[B].read()
    assert three.bus.stats.foreign_frames == 1
    three.line.inject(bytes(range(0x60, 0x70)))   # noise while the line is idle
    await asyncio.sleep(0.05)
    a, c = await three.meters[A].read(), await three.meters[C].read()
    assert a.power_w == pytest.approx(111.0) and c.power_w == pytest.approx(0.0)
    assert three.bus.stats.dropped_bytes >= 16 + 7


async def test_late_answers_are_discarded(three: Floor) -> None:
    three.sim(A).physics.power_w = 111.0
    three.sim(B).physics.power_w = 222.0
    three.sim(A).late_s = TIMEOUT_S + 0.1
    with pytest.raises(DeviceError, match="no answer"):
        await three.meters[A].read()
    b = await three.meters[B].read()   # A's answer comes meanwhile: dropped, not B's
    assert b.power_w == pytest.approx(222.0)
    assert three.bus.stats.dropped_bytes > 0
    late = next(t for t, what, _ in three.line.wire if what == "answer")
    b_request = next(t for t, what, data in three.line.wire
                 if what == "request" and bytes.fromhex("78560000") in data)
    assert b_request > late   # B was asked only once A's late answer was over


async def test_an_adapter_pulled_out_mid_run_is_waited_for_and_taken_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The RS-485 adapter is unplugged while its meters are polled: the reads fail, the
    meter goes offline, the port is tried again with back-off (no busy loop), and when
    the adapter is back behind the same path the meter is read again."""
    opens = 0
    real_open = Dlt645Link.open

    async def counted_open(*args: Any, **kwargs: Any) -> Dlt645Link:
        nonlocal opens
        opens += 1
        return await real_open(*args, **kwargs)

    monkeypatch.setattr(Dlt645Link, "open", counted_open)
    line = SimDltLine([SimDltMeter(A, tz=TZ)], baudrate=9600, link=tmp_path / "ttyUSB0")
    await line.start()
    bus = Dlt645Bus("rs485-dlt", line.client_port, baudrate=9600, parity=PARITY,
                    timeout_s=TIMEOUT_S, retries=0)
    await bus.start()
    meter = bus.meter(f"meter-{A}", A, FIELDS)
    line.meters[A].physics.power_w = 120.0
    try:
        assert (await meter.read()).power_w == pytest.approx(120.0)
        await line.unplug()
        opens_before, failed = opens, 0
        loop = asyncio.get_running_loop()
        until = loop.time() + 3.0
        while loop.time() < until:   # polled every 50 ms, as a busy building would
            with contextlib.suppress(DeviceError):
                await meter.read()
                raise AssertionError("a reading from an unplugged adapter")
            failed += 1
            await asyncio.sleep(0.05)
        assert not bus.health[f"meter-{A}"].online
        assert not bus.connected
        # Back-off from 0.5 s, doubling: a handful of opens in 3 s, not one per poll.
        assert 1 <= opens - opens_before <= 6 < failed
        await line.replug()
        async with asyncio.timeout(15):
            while True:
                try:
                    reading = await meter.read()
                    break
                except DeviceError:
                    await asyncio.sleep(0.1)
        assert reading.power_w == pytest.approx(120.0)
        assert bus.health[f"meter-{A}"].online and bus.connected
    finally:
        await bus.close()
        await line.stop()
