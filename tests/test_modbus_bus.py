"""The Modbus driver against real pymodbus 3.16 servers (the simulated building)."""

from __future__ import annotations

import asyncio
import math
import re

import pytest

from drivers.errors import DeviceError, SwitchMismatch
from drivers.health import OFFLINE_AFTER
from drivers.modbus import ModbusBus
from drivers.profile import SHIPPED_DIR, Profile, load_profile
from sim.modbus import SimBuilding
from sim.modbus_rtu import SimRtu

# The fixtures sim_building and sim_rtu.
pytest_plugins = ("tests.modbus_fixtures",)

# Short timeouts keep fault tests fast; they are not performance thresholds.
TEST_TIMEOUT_S = 0.2


def shipped(name: str) -> Profile:
    return load_profile(name, [SHIPPED_DIR])


def tcp_bus(sim: SimBuilding, endpoint: int = 0, **kw: object) -> ModbusBus:
    opts: dict[str, object] = {"timeout_s": TEST_TIMEOUT_S, "retries": 1}
    opts.update(kw)
    return ModbusBus.tcp("floor", "127.0.0.1", sim.ports[endpoint], **opts)  # type: ignore[arg-type]


async def test_sdm120_total_energy_takes_two_requests(sim_building: SimBuilding) -> None:
    """The contract's sdm120 profile reads total energy at 0x0156, far from the rest."""
    sim_building.meter(1).energy_kwh = 12.3456
    async with tcp_bus(sim_building) as bus:
        meter = bus.meter("room-102", 2, shipped("eastron-sdm120"))
        endpoint = sim_building.endpoints[0]
        before = endpoint.request_count[2]
        reading = await meter.read()
    assert endpoint.request_count[2] - before == 2
    assert reading.energy_wh == 12346


async def test_meter_read_in_one_request_with_values(sim_building: SimBuilding) -> None:
    sim_building.set_load(1, 1234.5, 0.9)
    sim_building.meter(1).energy_kwh = 1234.5678  # 1234567.8 Wh -> rounds to 1234568
    async with tcp_bus(sim_building) as bus:
        meter = bus.meter("room-102", 2, shipped("eastron-sdm120-import"))
        endpoint = sim_building.endpoints[0]
        before = endpoint.request_count[2]
        reading = await meter.read()
    assert endpoint.request_count[2] - before == 1
    assert endpoint.requests[-1] == (2, 4)
    assert reading.power_w == pytest.approx(1234.5)
    assert reading.pf == pytest.approx(0.9)
    assert reading.voltage_v == pytest.approx(230.0)
    assert reading.current_a == pytest.approx(1234.5 / (230 * 0.9), rel=1e-5)
    # float32 resolution near 1234.57 kWh is ~0.12 Wh: rounding stays within 1 Wh.
    assert reading.energy_wh is not None and abs(reading.energy_wh - 1234568) <= 1
    assert isinstance(reading.energy_wh, int)


async def test_energy_integrates_power_over_time(sim_building: SimBuilding) -> None:
    sim_building.set_load(0, 36_000.0)  # 10 Wh per second
    async with tcp_bus(sim_building) as bus:
        meter = bus.meter("room-101", 1, shipped("eastron-sdm120"))
        first = await meter.read()
        await asyncio.sleep(0.5)
        second = await meter.read()
    elapsed = second.mono - first.mono
    assert first.energy_wh is not None and second.energy_wh is not None
    assert second.energy_wh > first.energy_wh
    assert second.energy_wh - first.energy_wh == pytest.approx(10 * elapsed, abs=2)


async def test_meters_on_second_endpoint(sim_building: SimBuilding) -> None:
    sim_building.set_load(3, 500.0)
    async with tcp_bus(sim_building, endpoint=1) as bus:
        reading = await bus.meter("room-104", 2, shipped("eastron-sdm120")).read()
    assert reading.power_w == pytest.approx(500.0)


async def test_switch_set_get_round_trip_at_the_coil(sim_building: SimBuilding) -> None:
    endpoint = sim_building.endpoints[0]
    async with tcp_bus(sim_building) as bus:
        breaker = bus.switch("breaker-101", 201, shipped("relay-board"), channel=5)
        await breaker.set(True)
        assert await endpoint.coils(201, 0, 8) == [False] * 5 + [True, False, False]
        assert await breaker.get() is True
        await breaker.set(False)
        assert await endpoint.coils(201, 5) == [False]
        assert await breaker.get() is False


async def test_inverted_switch(sim_building: SimBuilding) -> None:
    endpoint = sim_building.endpoints[0]
    async with tcp_bus(sim_building) as bus:
        valve = bus.switch("valve", 201, shipped("relay-board"), channel=2, invert=True)
        await valve.set(True)
        assert await endpoint.coils(201, 2) == [False]
        await endpoint.set_coil(201, 2, True)
        assert await valve.get() is False


async def test_holding_register_switch_writes_on_off_values(sim_building: SimBuilding) -> None:
    endpoint = sim_building.endpoints[0]
    async with tcp_bus(sim_building) as bus:
        relay = bus.switch("relay", 201, shipped("relay-board-holding"), channel=3)
        await relay.set(True)
        assert await endpoint.holding(201, 3) == [1]
        await relay.set(False)
        assert await endpoint.holding(201, 3) == [0]
        await endpoint.set_holding(201, 3, [7])
        with pytest.raises(DeviceError, match="neither on"):
            await relay.get()


async def test_switch_that_does_not_follow_raises_mismatch(sim_building: SimBuilding) -> None:
    endpoint = sim_building.endpoints[0]
    async with tcp_bus(sim_building) as bus:
        breaker = bus.switch("breaker", 201, shipped("relay-board"), channel=0)
        stuck = asyncio.Event()

        def trace(sending: bool, data: bytes) -> bytes:
            # A relay that acknowledges the write but keeps its contact: undo the write
            # before the read-back arrives by answering the read with the old state.
            if sending and len(data) > 7 and data[7] == 1:
                stuck.set()
                return data[:9] + b"\x00"
            return data

        original = endpoint.server.trace_packet  # type: ignore[union-attr]
        endpoint.server.trace_packet = trace  # type: ignore[union-attr]
        # Per-connection handlers copy the hook at connect time: set it before connecting.
        try:
            with pytest.raises(SwitchMismatch) as info:
                await breaker.set(True)
        finally:
            endpoint.server.trace_packet = original  # type: ignore[union-attr]
    assert stuck.is_set()
    assert info.value.wanted is True and info.value.actual is False


async def test_counter_rises_with_flow(sim_building: SimBuilding) -> None:
    async with tcp_bus(sim_building) as bus:
        flow = bus.counter("flow-1", 231, shipped("pulse-counter"), channel=1)
        assert flow.bits == 32
        start = await flow.read()
        sim_building.set_flow(0, 1, 1000.0)
        await asyncio.sleep(0.3)
        later = await flow.read()
    assert later - start >= 100


async def test_counter_wraps_as_raw_u32(sim_building: SimBuilding) -> None:
    counter = sim_building.endpoints[0].counters[231]
    counter.counts[0] = 2**32 + 5  # the module counts on; the register wraps
    async with tcp_bus(sim_building) as bus:
        value = await bus.counter("flow-0", 231, shipped("pulse-counter"), channel=0).read()
    assert value == 5


async def test_writes_go_ahead_of_queued_polls(sim_building: SimBuilding) -> None:
    endpoint = sim_building.endpoints[0]
    async with tcp_bus(sim_building, max_in_flight=1) as bus:
        meters = [bus.meter(f"m{u}", u, shipped("eastron-sdm120-import")) for u in (1, 2)]
        breaker = bus.switch("breaker", 201, shipped("relay-board"), channel=1)
        await meters[0].read()  # connect first, so every request below is queued
        endpoint.requests.clear()
        polls = [asyncio.create_task(meters[i % 2].read()) for i in range(10)]
        await asyncio.sleep(0)  # the polls are queued (the first may be in flight)
        await breaker.set(True)
        await asyncio.gather(*polls)
    order = [fc for _, fc in endpoint.requests]
    write, read_back = order.index(5), order.index(1)
    assert order.count(4) == 10
    # Ahead of the queued polls: at most the one poll already in flight runs before each
    # (the worker takes the next job while the switch's coroutine is being resumed).
    assert write <= 1, f"write waited behind {write} polls: {order}"
    assert write < read_back <= write + 2, f"read-back waited behind polls: {order}"


async def test_silent_device_times_out_goes_offline_and_recovers(
    sim_building: SimBuilding,
) -> None:
    endpoint = sim_building.endpoints[0]
    changes: list[tuple[str, bool, str]] = []
    async with tcp_bus(sim_building, on_health=lambda *c: changes.append(c)) as bus:
        meter = bus.meter("room-101", 1, shipped("eastron-sdm120"))
        other = bus.meter("room-102", 2, shipped("eastron-sdm120"))
        await meter.read()
        endpoint.set_fault(1, "silent")
        for _ in range(OFFLINE_AFTER):
            with pytest.raises(DeviceError, match="timeout") as info:
                await meter.read()
        assert info.value.device == "room-101"
        assert meter.health.online is False
        assert meter.health.consecutive_failures == OFFLINE_AFTER
        assert changes == [("room-101", False, meter.health.last_error)]
        assert meter.health.poll_delay(1.0) > 1.0
        await other.read()  # the rest of the bus is unaffected
        assert other.health.online
        endpoint.set_fault(1, None)
        await meter.read()
    assert meter.health.online is True
    assert meter.health.poll_delay(1.0) == 1.0
    assert changes[-1] == ("room-101", True, "")


@pytest.mark.parametrize("fault", ["garbage", "exception"])
async def test_bad_answers_become_device_errors(sim_building: SimBuilding, fault: str) -> None:
    endpoint = sim_building.endpoints[0]
    async with tcp_bus(sim_building) as bus:
        meter = bus.meter("room-101", 1, shipped("eastron-sdm120"))
        endpoint.set_fault(1, fault)  # type: ignore[arg-type]
        with pytest.raises(DeviceError, match=r"garbage|exception 4"):
            await meter.read()
        endpoint.set_fault(1, None)
        reading = await meter.read()  # the bus reconnects after garbage
    assert reading.power_w is not None and math.isfinite(reading.power_w)


FLT_MAX = 3.4028234663852886e38


async def test_a_value_no_meter_can_report_is_no_reading_and_a_failure(
    sim_building: SimBuilding,
) -> None:
    """behaviour.md "Bad readings": an energy register at 1e17 kWh or FLT_MAX (some
    meters' "invalid") is None in the reading, the power beside it is kept, and
    the device's health counts it as a failed read (offline after OFFLINE_AFTER).
    Neither energy nor power usable: a DeviceError, as a read that failed."""
    sim_building.set_load(0, 3000.0)
    async with tcp_bus(sim_building) as bus:
        meter = bus.meter("room-101", 1, shipped("eastron-sdm120"))
        good = await meter.read()
        assert good.energy_wh is not None and good.fault == ""
        for kwh in (1e17, FLT_MAX, -5.0):
            sim_building.meter(0).energy_kwh = kwh
            reading = await meter.read()
            assert reading.energy_wh is None and "energy register" in reading.fault
            assert reading.power_w == pytest.approx(3000.0)
        assert not meter.health.online and meter.health.consecutive_failures == 3
        sim_building.set_load(0, 2e6)
        sim_building.meter(0).energy_kwh = 1.0   # rises ~0.6 Wh a ms at 2 MW
        reading = await meter.read()
        assert reading.power_w is None
        assert reading.energy_wh is not None and reading.energy_wh >= 1000
        assert "power register" in reading.fault
        sim_building.meter(0).energy_kwh = math.inf
        with pytest.raises(DeviceError, match=r"energy register is inf.*power register"):
            await meter.read()
        sim_building.set_load(0, 10.0)
        sim_building.meter(0).energy_kwh = 1.0
        reading = await meter.read()
    assert reading.fault == "" and reading.energy_wh == 1000 and meter.health.online


async def test_illegal_address_is_not_retried(sim_building: SimBuilding) -> None:
    endpoint = sim_building.endpoints[0]
    profile = shipped("relay-board")
    async with tcp_bus(sim_building, retries=3) as bus:
        switch = bus.switch("far", 201, profile, channel=40)  # beyond the 16 coils
        endpoint.requests.clear()
        with pytest.raises(DeviceError, match="illegal data address"):
            await switch.get()
    assert len(endpoint.requests) == 1


async def test_tcp_reconnects_after_server_drops_connection(sim_building: SimBuilding) -> None:
    async with tcp_bus(sim_building, retries=0) as bus:
        meter = bus.meter("room-101", 1, shipped("eastron-sdm120"))
        await meter.read()
        assert sim_building.endpoints[0].drop_connections() >= 1
        await asyncio.sleep(0.05)
        await meter.read()
        assert bus.connected


async def test_unreachable_endpoint_fails_fast_after_first_attempt() -> None:
    async with ModbusBus.tcp("nowhere", "127.0.0.1", 1, timeout_s=TEST_TIMEOUT_S,
                             retries=2) as bus:
        meter = bus.meter("m", 1, shipped("eastron-sdm120"))
        with pytest.raises(DeviceError, match="cannot connect"):
            await meter.read()
        with pytest.raises(DeviceError, match=r"cannot connect .* \(reconnecting\)"):
            await meter.read()
        assert not bus.connected


async def test_a_dead_endpoint_gives_its_alarm_a_detail_that_does_not_tick() -> None:
    """The meter_offline alarm's detail is the error of the failure that took the meter
    offline: it names the cause, never a countdown ("retrying in 0.6 s") frozen in it."""
    changes: list[tuple[str, bool, str]] = []
    async with ModbusBus.tcp("nowhere", "127.0.0.1", 1, timeout_s=TEST_TIMEOUT_S, retries=0,
                             on_health=lambda *change: changes.append(change)) as bus:
        meter = bus.meter("meter:101", 1, shipped("eastron-sdm120"))
        errors = []
        for _ in range(5):
            with pytest.raises(DeviceError) as e:
                await meter.read()
            errors.append(str(e.value))
    assert len(set(errors[1:])) == 1, errors
    ((device, online, detail),) = changes
    assert (device, online) == ("meter:101", False)
    assert "cannot connect to 127.0.0.1:1" in detail and "(reconnecting)" in detail, detail
    assert not re.search(r"\d s\b", detail), detail


async def test_closed_bus_refuses_requests(sim_building: SimBuilding) -> None:
    bus = tcp_bus(sim_building)
    meter = bus.meter("m", 1, shipped("eastron-sdm120"))
    with pytest.raises(DeviceError, match="not started"):
        await meter.read()


async def test_rtu_over_pty(sim_rtu: SimRtu) -> None:
    sim_rtu.endpoint.meters[2].power_w = 800.0
    async with ModbusBus.rtu("rs485-a", sim_rtu.client_port, baudrate=9600,
                             timeout_s=TEST_TIMEOUT_S) as bus:
        meter = bus.meter("room-301", 2, shipped("eastron-sdm120"))
        breaker = bus.switch("breaker-301", 31, shipped("relay-board"), channel=0)
        reading = await meter.read()
        await breaker.set(True)
        assert await sim_rtu.endpoint.coils(31, 0) == [True]
        results = await asyncio.gather(*(meter.read() for _ in range(5)))
    assert reading.power_w == pytest.approx(800.0)
    assert all(r.power_w == pytest.approx(800.0) for r in results)


async def test_rtu_silent_and_garbage(sim_rtu: SimRtu) -> None:
    async with ModbusBus.rtu("rs485-a", sim_rtu.client_port, timeout_s=TEST_TIMEOUT_S,
                             retries=0) as bus:
        meter = bus.meter("room-301", 1, shipped("eastron-sdm120"))
        sim_rtu.endpoint.set_fault(1, "silent")
        with pytest.raises(DeviceError, match="timeout"):
            await meter.read()
        sim_rtu.endpoint.set_fault(1, "garbage")
        link = bus._links[0]
        with pytest.raises(DeviceError, match="garbage"):
            await meter.read()
        sim_rtu.endpoint.set_fault(1, None)
        await meter.read()
        # One noisy device does not close the serial port under the others.
        assert bus._links[0] is link and bus.stats.reconnects == 0
    assert meter.health.online


async def test_rtu_with_wire_time(sim_rtu: SimRtu) -> None:
    rtu = SimRtu(sim_rtu.endpoint.__class__(meters=[7]), baudrate=19200)
    await rtu.start()
    try:
        async with ModbusBus.rtu("slow", rtu.client_port, baudrate=19200, timeout_s=0.5) as bus:
            reading = await bus.meter("m", 7, shipped("eastron-sdm120")).read()
    finally:
        await rtu.stop()
    assert reading.voltage_v == pytest.approx(230.0)


async def test_missing_serial_port_is_device_error() -> None:
    async with ModbusBus.rtu("gone", "/nonexistent/ttyUSB9", timeout_s=TEST_TIMEOUT_S) as bus:
        with pytest.raises(DeviceError, match="cannot open"):
            await bus.meter("m", 1, shipped("eastron-sdm120")).read()


async def test_device_factories_check_their_arguments(sim_building: SimBuilding) -> None:
    bus = tcp_bus(sim_building)
    with pytest.raises(ValueError, match="not a switch"):
        bus.switch("x", 1, shipped("eastron-sdm120"))
    with pytest.raises(ValueError, match="unit id"):
        bus.meter("x", 300, shipped("eastron-sdm120"))
    bus.meter("dup", 1, shipped("eastron-sdm120"))
    with pytest.raises(ValueError, match="already"):
        bus.meter("dup", 2, shipped("eastron-sdm120"))
