"""A drinking point with a PC/SC reader, end to end: pcscd with the vpcd virtual
reader, a virtual card, a pymodbus relay board and pulse counter, and the real
daemon as a subprocess (it reaches pcscd through the machine-wide socket
/run/pcscd/pcscd.comm). Asserted where a user would look: the valve's coil,
the events and the balance in the store."""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path

import pytest

from sim.modbus import SimBuilding
from sim.vcard import VirtualCard
from tests.cardreader_fixtures import Pcscd
from tests.test_power import Daemon, events, until
from tests.test_water import balance, notify, seed, start, valve, valve_becomes

__all__ = ["notify"]  # fixtures used by name

pytestmark = [pytest.mark.pcsc, pytest.mark.usefixtures("vpcd_idle")]

RELAY = SimBuilding.RELAY_BASE
COUNTER = SimBuilding.COUNTER_BASE
CARD = "04A1B2C3D4E5F6"  # a 7-byte MIFARE UID, as PC/SC readers report them
ML_PER_PULSE = Fraction(5, 2)
FEN_PER_ML = Fraction(1, 10)  # 1 yuan per litre
DEBOUNCE_S = 0.5
# pcscd polls vpcd's card presence about every 400 ms: a card lifted is seen
# gone that much later, and the debounce window runs from then.
PLACE_AGAIN_AFTER_S = DEBOUNCE_S + 1.5


@pytest.fixture
async def building() -> AsyncIterator[SimBuilding]:
    sim = await SimBuilding.tcp(1, per_endpoint=1)
    try:
        yield sim
    finally:
        await sim.stop()


def write_config(tmp: Path, sim: SimBuilding) -> Path:
    path = tmp / "gateway.toml"
    path.write_text(f"""
[gateway]
building = "b07"
state_dir = "{tmp / 'state'}"
poll_interval_s = 0.2
tap_debounce_s = {DEBOUNCE_S}

[tariffs]
drinking = {{ price = "1", unit = "L" }}   # 0.1 fen per mL; a 2.5 mL pulse is 1/4 fen

[[buses]]
name = "b"
type = "tcp"
host = "127.0.0.1"
port = {sim.ports[0]}
timeout_s = 0.3

[[readers]]
id = "r-drink-1"
type = "pcsc"
name = "Virtual PCD"

[[points]]
id = "drink-1"
service = "drinking"
reader = "r-drink-1"
valve = {{ bus = "b", unit = {RELAY}, profile = "relay-board", channel = 0 }}
flow = {{ bus = "b", unit = {COUNTER}, profile = "pulse-counter", channel = 0, ml_per_pulse = 2.5 }}
""")
    return path



def card_taps(tmp: Path) -> list[str]:
    return [e["reason"] for e in events(tmp, "tap") if e["card"] == CARD]


async def test_a_card_on_the_pcsc_reader_opens_and_closes_a_drinking_point(
    tmp_path: Path, building: SimBuilding, pcscd: Pcscd, notify: socket.socket
) -> None:
    sim = building
    seed(tmp_path, ((CARD, "active"),))
    daemon = Daemon(write_config(tmp_path, sim))
    await start(daemon, notify, tmp_path)
    try:
        assert await valve(sim) is False

        # Placed: one tap, the valve opens.
        async with VirtualCard(CARD, port=pcscd.port):
            await valve_becomes(sim, True)
            await asyncio.sleep(0.5)  # the session's counter baseline is taken
            sim.set_flow(0, 0, 40.0)  # 100 mL/s
            await asyncio.sleep(1.0)
            sim.set_flow(0, 0, 0.0)
            assert await valve(sim) is True  # a card held is one tap
        pulses = int(sim.endpoints[0].counters[COUNTER].counts[0])
        assert pulses > 0
        await asyncio.sleep(PLACE_AGAIN_AFTER_S)
        assert await valve(sim) is True  # lifting the card does not close it
        assert card_taps(tmp_path) == ["start"]

        # Placed again after the debounce: a second tap closes the point.
        async with VirtualCard(CARD, port=pcscd.port):
            await valve_becomes(sim, False)
        (session,) = await until(lambda: events(tmp_path, "water.session"))
    finally:
        code = await daemon.stop()
    assert code == 0, daemon.output.decode()[-3000:]

    assert session["point"] == "drink-1" and session["service"] == "drinking"
    assert session["card"] == CARD and session["account"] == "stu-1"
    assert session["end_reason"] == "tap"
    # Every pulse counted at 2.5 mL, priced exactly and rounded down once.
    volume = math.floor(pulses * ML_PER_PULSE)
    assert session["volume_ml"] == volume
    assert session["amount_fen"] == math.floor(volume * FEN_PER_ML) > 0
    assert balance(tmp_path, "stu-1") == 1000 - session["amount_fen"]
    assert card_taps(tmp_path) == ["start", "stop"]
    assert len(events(tmp_path, "water.session")) == 1
