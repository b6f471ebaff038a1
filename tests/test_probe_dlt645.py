"""`gatewayd probe` on a DL/T 645-2007 line: simulated meters on a pty (sim/dlt645.py)."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from sim.dlt645 import SimDltLine, SimDltMeter, pty_parity
from tests.test_probe import probe, row

A, B = "000000001234", "000000001237"
TZ = "Asia/Shanghai"
PARITY = pty_parity("E")   # "N" where the kernel refuses parity on a pty
LINE = ("--dlt645", "--baudrate", "9600", "--parity", PARITY)


@pytest.fixture
async def line() -> AsyncIterator[SimDltLine]:
    sim = SimDltLine([SimDltMeter(A, tz=ZoneInfo(TZ))], baudrate=9600, parity=PARITY)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "meter.password").write_text("02:123456:00000001\n")
    path = tmp_path / "gateway.toml"
    path.write_text(textwrap.dedent(f"""\
        [gateway]
        building = "b07"
        timezone = "{TZ}"
        state_dir = "{tmp_path / 'state'}"
        """))
    return path


async def test_meter_shows_the_data_bytes_and_scaled_values(
        line: SimDltLine, config: Path) -> None:
    meter = line.meters[A].physics
    meter.energy_kwh, meter.power_w = 1234.56, 0.0
    code, out, err = await probe("meter", "-c", config, "--port", line.client_port, *LINE,
                                 "--address", A)
    assert code == 0, err
    assert out.splitlines()[0] == (f"meter: address {A} on {line.client_port} 9600 {PARITY}1, "
                                   "profile dlt645-2007 (DL/T 645-2007 single-phase meter)")
    # 123456 hundredths of a kWh in BCD, low byte first: 56 34 12 00.
    assert row(out, "energy_wh") == ["energy_wh", "00010000", "56", "34", "12", "00", "1234.56",
                                     "1000", "1234560", "Wh", "(1234.56", "kWh)"]
    assert row(out, "voltage_v")[-4:] == ["220.0", "1", "220", "V"]


async def test_relay_trips_and_closes_and_a_wrong_password_is_said(
        line: SimDltLine, config: Path, tmp_path: Path) -> None:
    args = ("switch", "-c", config, "--port", line.client_port, *LINE, "--address", A,
            "--password-file", tmp_path / "meter.password")
    code, out, err = await probe(*args, "--off")
    assert code == 0, err
    assert out.splitlines()[1:] == [f"relay of meter {A} (on: closed, the room supplied): on",
                                    "commanded off (trip)", "read back: off"]
    assert not line.meters[A].relay_closed
    (tmp_path / "meter.password").write_text("02:654321:00000001\n")
    code, out, _ = await probe(*args, "--on")
    assert code == 1 and not line.meters[A].relay_closed
    assert out.splitlines()[-1] == ("read back: off: refused: the meter did not take the "
                                    "password (password_file)")


async def test_scan_finds_the_one_meter_by_the_wildcard_and_more_by_address(
        line: SimDltLine, config: Path) -> None:
    scan = ("scan", "-c", config, "--port", line.client_port, *LINE, "--timeout", "0.2")
    code, out, err = await probe(*scan)
    assert code == 0, err
    assert out.splitlines()[-1].startswith(f"meter {A}: answers (the one meter on this line")
    line.add(SimDltMeter(B, tz=ZoneInfo(TZ)))
    code, out, _ = await probe(*scan)
    assert code == 1 and "several meters answered at once" in out
    code, out, _ = await probe(*scan, "--addresses", "000000001230-000000001239")
    assert code == 0
    assert out.splitlines()[1:] == [f"meter {A}: answers", f"meter {B}: answers",
                                    f"2 answered: {A}, {B}"]
