"""`gatewayd probe ...` as staff run it, against real peers: a pymodbus server (TCP, and
RTU on a pty), DL/T 645 meters on a pty, a serial card reader on a pty. Each test reads
what the command prints and what the device holds afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import textwrap
import tty
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.modbus.bus import ModbusBus
from drivers.modbus.frames.pdu import READ_HOLDING_REGISTERS, ReadRequest
from gatewayd.store.files import StateFiles
from sim.modbus_endpoint import SimEndpoint
from sim.modbus_rtu import SimRtu
from sim.serial_card import PtyPort, frame

ROOT = Path(__file__).resolve().parent.parent
# Safety net against a hung command, not a performance threshold.
WAIT_S = 60


async def probe(*args: str | Path) -> tuple[int, str, str]:
    """Run `gatewayd probe ARGS` (the simulators keep serving on this loop meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd.app.cli", "probe", *map(str, args), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(WAIT_S):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def row(out: str, first: str) -> list[str]:
    """The words of the printed line that starts with `first`."""
    lines = [line.split() for line in out.splitlines() if line.startswith(first)]
    assert lines, f"no line {first!r} in:\n{out}"
    return lines[0]


@pytest.fixture
async def floor(tmp_path: Path) -> AsyncIterator[tuple[SimEndpoint, Path]]:
    """A Modbus TCP floor (meter unit 1, relay board unit 200) and a config naming it."""
    sim = SimEndpoint(meters=[1], relays=[200])
    port = await sim.start_tcp()
    sim.meters[1].power_w = 1000.0
    config = tmp_path / "gateway.toml"
    config.write_text(textwrap.dedent(f"""\
        [gateway]
        building = "b07"
        state_dir = "{tmp_path / 'state'}"

        [[buses]]
        name = "floor1"
        type = "tcp"
        host = "127.0.0.1"
        port = {port}

        [[rooms]]
        id = "101"
        meter = {{ bus = "floor1", unit = 1, profile = "eastron-sdm120" }}
        breaker = {{ bus = "floor1", unit = 200, profile = "relay-board", channel = 3 }}
        """))
    try:
        yield sim, config
    finally:
        await sim.stop()


async def test_meter_shows_raw_registers_and_scaled_values(
        floor: tuple[SimEndpoint, Path]) -> None:
    _, config = floor
    code, out, err = await probe("meter", "-c", config, "--room", "101")
    assert code == 0, err
    assert out.splitlines()[0].startswith("meter of room 101: unit 1 on 127.0.0.1:")
    # 1000.0 as a float32 is 447A 0000; 230.0 is 4366 0000.
    assert row(out, "power_w") == ["power_w", "input", "12", "(0x000C)", "f32", "447A", "0000",
                                   "1000", "1", "1000", "W"]
    assert row(out, "voltage_v")[5:] == ["4366", "0000", "230", "1", "230", "V"]
    assert row(out, "energy_wh")[:5] == ["energy_wh", "input", "342", "(0x0156)", "f32"]
    assert "looks wrong" not in out


async def test_a_wrong_scale_is_seen(floor: tuple[SimEndpoint, Path], tmp_path: Path) -> None:
    sim, _ = floor
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "acme.toml").write_text(textwrap.dedent("""\
        kind = "meter"
        [fields]
        energy_wh = { table = "input", address = 0x0156, type = "f32", scale = 1000 }
        power_w = { table = "input", address = 0x000C, type = "f32" }
        voltage_v = { table = "input", address = 0x0000, type = "f32", scale = 1000 }
        """))
    config = tmp_path / "site.toml"
    config.write_text(f'[gateway]\nbuilding = "b07"\nstate_dir = "{tmp_path / "s"}"\n'
                      f'profiles_dir = "profiles"\n')
    port = sim.server.transport.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    code, out, err = await probe("meter", "-c", config, "--host", f"127.0.0.1:{port}",
                                 "--unit", "1", "--profile", "acme")
    assert code == 0, err
    assert row(out, "voltage_v")[-3:] == ["1000", "230000", "V"]
    assert ("voltage_v: 230000 V looks wrong (a room's supply is about 220 V): check its "
            f"scale, type and word_order in {profiles / 'acme.toml'}") in out.splitlines()


async def test_switch_commands_the_breaker_and_reads_it_back(
        floor: tuple[SimEndpoint, Path]) -> None:
    sim, config = floor
    code, out, err = await probe("switch", "-c", config, "--room", "101", "--on")
    assert code == 0, err
    assert sim.switch_on(200, 3)
    assert out.splitlines()[1:] == ["coil 3: off", "commanded on", "read back: on"]
    code, out, _ = await probe("switch", "-c", config, "--room", "101", "--off")
    assert code == 0 and not sim.switch_on(200, 3)
    assert out.splitlines()[-1] == "read back: off"


async def test_switching_is_refused_while_the_daemon_runs(
        floor: tuple[SimEndpoint, Path], tmp_path: Path) -> None:
    sim, config = floor
    # The daemon's own lock on its state directory, as `gatewayd run` holds it.
    state = StateFiles(tmp_path / "state")
    state.make_dir()
    state.lock()
    try:
        code, out, err = await probe("switch", "-c", config, "--room", "101", "--on")
        assert code == 3 and out == ""
        assert err.startswith(f"refused: gatewayd (pid {os.getpid()}") and "--force" in err
        assert not sim.switch_on(200, 3)
        # Reading beside it is harmless: allowed, with a note.
        code, out, err = await probe("meter", "-c", config, "--room", "101")
        assert code == 0 and row(out, "power_w")[-2:] == ["1000", "W"]
        assert "reading beside it is harmless" in err
        code, out, err = await probe("switch", "-c", config, "--room", "101", "--on", "--force")
        assert code == 0 and sim.switch_on(200, 3) and err.startswith("warning: ")
    finally:
        state.unlock()


async def test_a_dead_meter_is_a_clear_error(floor: tuple[SimEndpoint, Path]) -> None:
    sim, config = floor
    sim.set_fault(1, "silent")
    code, _, err = await probe("meter", "-c", config, "--room", "101", "--timeout", "0.2")
    assert code == 1
    assert err.startswith("error: meter of room 101: timeout") and "(unit 1)" in err


async def test_scan_finds_the_units_of_an_rtu_line() -> None:
    sim = SimRtu(SimEndpoint(meters=[1, 2], relays=[31], counters=[40]))
    await sim.start()
    try:
        for unit in set(range(1, 46)) - {1, 2, 31, 40}:
            sim.endpoint.set_fault(unit, "silent")   # an absent unit never answers on RS-485
        code, out, err = await probe("scan", "--port", sim.client_port, "--units", "1-45",
                                     "--timeout", "0.05")
    finally:
        await sim.stop()
    assert code == 0, err
    assert [line.split(":")[0] for line in out.splitlines()[1:-1]] == [
        "unit   1", "unit   2", "unit  31", "unit  40"]
    assert out.splitlines()[-1] == "4 answered: units 1, 2, 31, 40"


@contextlib.asynccontextmanager
async def babbling_line() -> AsyncIterator[str]:
    """A pty whose far end sends random bytes every 10 ms (a broken device, or another
    master on the RS-485 line); its port's name."""
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    rng = random.Random(1)

    async def babble() -> None:
        while True:
            with contextlib.suppress(BlockingIOError):
                os.write(master, rng.randbytes(10))
            with contextlib.suppress(BlockingIOError):
                os.read(master, 4096)
            await asyncio.sleep(0.01)

    task = asyncio.create_task(babble())
    try:
        yield os.ttyname(slave)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        os.close(master)
        os.close(slave)


async def test_a_scan_of_a_babbling_line_says_so_and_finds_nobody() -> None:
    async with babbling_line() as port:
        code, out, err = await probe("scan", "--port", port, "--units", "1-20",
                                     "--timeout", "0.05")
        dlt_code, dlt_out, dlt_err = await probe("scan", "--port", port, "--dlt645",
                                                 "--parity", "N", "--timeout", "0.05")
    assert code == 1
    assert "answered:" not in out and ": answers" not in out   # noise is no unit
    assert "noisy line" in err
    assert dlt_code == 1 and "answered:" not in dlt_out, dlt_out + dlt_err


async def test_a_serial_port_in_use_is_never_opened() -> None:
    sim = SimRtu(SimEndpoint(meters=[1]))
    await sim.start()
    # The daemon's bus on the same line: it holds the port (an flock) once open.
    bus = ModbusBus.rtu("rs485-a", sim.client_port, timeout_s=0.3)
    await bus.start()
    try:
        await bus.read_registers("meter", 1, ReadRequest(READ_HOLDING_REGISTERS, 0, 1))
        requests = len(sim.endpoint.requests)
        code, out, err = await probe("meter", "--port", sim.client_port, "--unit", "1",
                                     "--profile", "eastron-sdm120")
        assert code == 3 and out == ""
        assert err.startswith(f"refused: {sim.client_port} is in use by pid {os.getpid()}")
        assert len(sim.endpoint.requests) == requests   # not a byte sent
    finally:
        await bus.close()
        await sim.stop()


async def test_reader_prints_card_ids_and_what_the_reader_sent(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nbuilding = "b07"\nstate_dir = "{tmp_path / "s"}"\n')
    with PtyPort(tmp_path / "ttyCARD") as port:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gatewayd.app.cli", "probe", "reader", "-c",
            str(config), "--port", str(port.path), "--card-format", "dec10",
            "--count", "2", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        async with asyncio.timeout(WAIT_S):
            opened = (await proc.stdout.readline()).decode()
            port.write(frame("000260A4B2", "rdm6300"))   # 0x0260A4B2 = 39888050
            port.write(frame("000260A4B2", "rdm6300"))   # the same card held: one tap
            first = (await proc.stdout.readline()).decode()
            port.write(frame("0C00123456", "rdm6300"))
            rest, err = await proc.communicate()
    assert opened.startswith(f"reader {port.path} open: tap a card"), err.decode()
    assert first == "card 0039888050  (UID 00 02 60 A4 B2, card_format dec10, uid_order as_read)\n"
    assert rest.decode().startswith("card 0001193046  (UID 0C 00 12 34 56")
    assert proc.returncode == 0
