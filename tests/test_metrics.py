"""The Prometheus endpoint, scraped over HTTP while the real services run against a
pymodbus building whose meters sit behind their breakers.

The services run in-process under the real supervisor (as `gatewayd run` builds
them), so the endpoint is tested without depending on how daemon.py wires it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gatewayd.app.supervisor import Supervisor
from gatewayd.config.load import load_config
from gatewayd.contract.events import breaker_device, meter_device
from gatewayd.services.alarms import Alarms
from gatewayd.services.clock import Clock
from gatewayd.services.hardware import Hardware
from gatewayd.services.metrics import MetricsEndpoint
from gatewayd.services.power.service import PowerService
from gatewayd.services.water.service import WaterService
from gatewayd.store.cards import Cards
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger
from sim.modbus import SimBuilding

RELAY = SimBuilding.RELAY_BASE
ROOMS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def building() -> AsyncIterator[SimBuilding]:
    sim = await SimBuilding.tcp(ROOMS, per_endpoint=ROOMS)
    for room in range(ROOMS):
        sim.couple(room, 0, room)
        await sim.endpoints[0].set_coil(RELAY, room, True)
    try:
        yield sim
    finally:
        await sim.stop()


def write_config(tmp: Path, sim: SimBuilding, port: int) -> Path:
    lines = [
        "[gateway]", 'building = "b07"', f'state_dir = "{tmp / "state"}"',
        "poll_interval_s = 0.2", 'clock_synced = "yes"',
        "[tariffs]", 'power = { price = "100", unit = "kWh" }',  # 10 fen per Wh
        "[[buses]]", 'name = "floor1"', 'type = "tcp"', 'host = "127.0.0.1"',
        f"port = {sim.ports[0]}", "timeout_s = 0.3",
        "[metrics]", f'listen = "127.0.0.1:{port}"',
    ]
    for i in range(ROOMS):
        lines += [
            "[[rooms]]", f'id = "{101 + i}"',
            f'meter = {{ bus = "floor1", unit = {i + 1}, profile = "eastron-sdm120" }}',
            f'breaker = {{ bus = "floor1", unit = {RELAY}, profile = "relay-board", channel = {i} }}',
        ]
    path = tmp / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def until_scraped(port: int, key: tuple[str, tuple[tuple[str, str], ...]], value: float,
                        timeout: float = 30.0) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            metrics = await scrape(port)
        except OSError:
            metrics = {}
        if metrics.get(key) == value:
            return metrics
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{key} never became {value}; last scrape: "
                                 f"{ {k: v for k, v in metrics.items() if k[0] == key[0]} }")
        await asyncio.sleep(0.2)


async def test_cuts_offline_meters_and_outbox_are_scraped(tmp_path: Path, building: SimBuilding) -> None:
    sim = building
    port = free_port()
    config = load_config(write_config(tmp_path, sim, port))
    seed = Store.open(config.gateway.state_dir, "b07")
    try:
        seed.call(lambda t: Ledger.credit(t, "room-b07-101", 30))
        seed.call(lambda t: Ledger.credit(t, "room-b07-102", 100_000))
        seed.call(lambda t: Ledger.credit(t, "room-b07-103", 100_000))
    finally:
        seed.close()
    sim.set_load(0, 7200, pf=0.9)  # 2 Wh/s = 20 fen/s: 30 fen last about 1.5 s
    sim.set_load(1, 500, pf=0.9)

    store = Store.open(config.gateway.state_dir, "b07")
    hardware = Hardware(config)
    clock = Clock(config.gateway.timezone, "yes")
    ledger = Ledger()
    await store.read(ledger.load)
    alarms = Alarms()
    power = PowerService(config, store, ledger=ledger, alarms=alarms, clock=clock, devices={
        r.id: (hardware.meter(meter_device(r.id), r.meter),
               hardware.switch(breaker_device(r.id), r.breaker)) for r in config.rooms})
    hardware.on_health(power.meter_health_changed)
    water = WaterService(config, store, ledger=ledger, cards=Cards(), alarms=alarms, clock=clock,
                         devices={}, readers={}, center_online=lambda: False)
    metrics = MetricsEndpoint(config, store, hardware.buses, power=power, water=water,
                              alarms=alarms, center=None)
    supervisor = Supervisor([water, power, metrics])
    await hardware.start()
    task = asyncio.get_running_loop().create_task(supervisor.run())
    try:
        cut = ("gatewayd_breaker_cuts_total", (("reason", "balance"),))
        m = await until_scraped(port, cut, 1.0)
        assert m[("gatewayd_rooms_cut", (("reason", "balance"),))] == 1.0
        # Reasons that never happened are 0, not absent (an alert on one sees 0).
        assert m[("gatewayd_breaker_cuts_total", (("reason", "lockout"),))] == 0.0
        assert m[("gatewayd_rooms_cut", (("reason", "curfew"),))] == 0.0
        # The cut is real: the coil is off and the meter behind it reads 0 W.
        assert (await sim.endpoints[0].coils(RELAY, 0, 1)) == [False]
        assert sim.meter(0).drawn_w == 0.0
        assert m[("gatewayd_bus_requests_total", (("bus", "floor1"),))] > 0
        assert m[("gatewayd_bus_connected", (("bus", "floor1"),))] == 1.0
        assert ("gatewayd_bus_poll_cycle_seconds", (("bus", "floor1"),)) in m
        assert m[("gatewayd_devices_offline", (("bus", "floor1"),))] == 0.0
        # No center: the cut and its usage report wait in the outbox.
        assert m[("gatewayd_outbox_pending", (("class", "money"),))] >= 1.0
        assert m[("gatewayd_outbox_pending", (("class", "event"),))] >= 1.0
        assert m[("gatewayd_center_connected", ())] == 0.0
        assert m[("gatewayd_water_sessions_open", (("service", "shower"),))] == 0.0

        # Room 103's meter stops answering: offline device, active alarm, errors counted.
        sim.endpoints[0].set_fault(3, "silent")
        m = await until_scraped(port, ("gatewayd_devices_offline", (("bus", "floor1"),)), 1.0)
        assert m[("gatewayd_device_online", (("bus", "floor1"), ("device", "meter:103")))] == 0.0
        assert m[("gatewayd_device_errors_total",
                  (("bus", "floor1"), ("device", "meter:103")))] >= 3.0
        assert m[("gatewayd_alarms_active", (("code", "meter_offline"),))] == 1.0
        sim.endpoints[0].set_fault(3, None)
        await until_scraped(port, ("gatewayd_devices_offline", (("bus", "floor1"),)), 0.0)
    finally:
        supervisor.request_stop("test over")
        await asyncio.wait_for(task, 20)
        await hardware.close()
        store.close()


async def test_a_taken_port_does_not_stop_the_gateway(tmp_path: Path, building: SimBuilding) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = load_config(write_config(tmp_path, building, port))
        store = Store.open(config.gateway.state_dir, "b07")
        hardware = Hardware(config)
        clock = Clock(config.gateway.timezone, "yes")
        alarms = Alarms()
        ledger = Ledger()
        power = PowerService(config, store, ledger=ledger, alarms=alarms, clock=clock, devices={
            r.id: (hardware.meter(meter_device(r.id), r.meter),
                   hardware.switch(breaker_device(r.id), r.breaker)) for r in config.rooms})
        water = WaterService(config, store, ledger=ledger, cards=Cards(), alarms=alarms,
                             clock=clock, devices={}, readers={}, center_online=lambda: False)
        metrics = MetricsEndpoint(config, store, hardware.buses, power=power, water=water,
                                  alarms=alarms)
        supervisor = Supervisor([power, metrics])
        await hardware.start()
        task = asyncio.get_running_loop().create_task(supervisor.run())
        try:
            # The rooms are still polled and charged while the endpoint waits for its port.
            for _ in range(100):
                if all(rt.last is not None for rt in power.rooms.values()):
                    break
                await asyncio.sleep(0.1)
            assert all(rt.last is not None for rt in power.rooms.values())
            assert metrics.listener.server is None
            assert not task.done()
        finally:
            supervisor.request_stop("test over")
            await asyncio.wait_for(task, 20)
            await hardware.close()
            store.close()
