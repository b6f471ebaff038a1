"""What a simulated Modbus unit holds: a meter's or a pulse counter's physical state.

For `sim.modbus_endpoint`, which serves these on real pymodbus servers. Every
unit of an endpoint has the same tables: 16 coils, 32 holding registers and the
Eastron SDM120 input registers 0x0000..0x0157; this module fills them:

- meter (`SimMeter`): input registers hold float32 voltage, current, power,
  apparent/reactive power, PF, frequency, import/export/total energy (kWh) at the
  SDM120 addresses. Energy integrates the set power over time, computed when read.
- pulse counter (`SimCounter`): u32 counts, high word first, channel n at holding
  2n; a count rises with the channel's set flow (pulses/s), computed when read.

Relay boards hold no state beyond their coils (see `SimEndpoint.switch_state`).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["meter", "relay", "counter"]

# SDM120 input register addresses (float32, high word first).
REG_VOLTAGE = 0x0000
REG_CURRENT = 0x0006
REG_POWER = 0x000C
REG_APPARENT = 0x0012
REG_REACTIVE = 0x0018
REG_PF = 0x001E
REG_FREQUENCY = 0x0046
REG_IMPORT_KWH = 0x0048
REG_EXPORT_KWH = 0x004A
REG_TOTAL_KWH = 0x0156
INPUT_REGISTERS = 0x0158
HOLDING_REGISTERS = 32
COILS = 16


def _f32(value: float) -> tuple[int, int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return hi, lo


@dataclass
class SimMeter:
    """A meter's physical state; energy is integrated up to `now` when read.

    `power_w` is the load plugged in; it is drawn only while `supplied` (the
    room's breaker is on, see `SimBuilding.couple`).
    """

    unit: int
    power_w: float = 0.0
    pf: float = 1.0
    voltage_v: float = 230.0
    energy_kwh: float = 0.0
    last_mono: float = field(default_factory=time.monotonic)
    supplied: bool = True

    @property
    def drawn_w(self) -> float:
        """The power the meter measures now: the load, or 0 while the supply is cut."""
        return self.power_w if self.supplied else 0.0

    def advance(self, now: float) -> None:
        """Integrate power into energy up to `now`."""
        dt = max(0.0, now - self.last_mono)
        self.energy_kwh += self.drawn_w * dt / 3_600_000.0
        self.last_mono = now

    def set_supplied(self, on: bool, now: float) -> None:
        """The breaker switched at `now`: energy so far is integrated at the old state."""
        self.advance(now)
        self.supplied = on

    def fill(self, registers: list[int], base: int) -> None:
        """Write the meter's values into the input register block starting at `base`."""
        power = self.drawn_w
        current = power / (self.voltage_v * self.pf) if self.pf > 0 else 0.0
        apparent = self.voltage_v * current
        reactive = (max(apparent**2 - power**2, 0.0)) ** 0.5
        for address, value in (
            (REG_VOLTAGE, self.voltage_v), (REG_CURRENT, current), (REG_POWER, power),
            (REG_APPARENT, apparent), (REG_REACTIVE, reactive), (REG_PF, self.pf),
            (REG_FREQUENCY, 50.0), (REG_IMPORT_KWH, self.energy_kwh), (REG_EXPORT_KWH, 0.0),
            (REG_TOTAL_KWH, self.energy_kwh),
        ):
            i = address - base
            registers[i], registers[i + 1] = _f32(value)


@dataclass
class SimCounter:
    """A pulse counter's state: `flow[ch]` pulses per second raise `counts[ch]`
    while `open[ch]` (the valve upstream is open, see `SimBuilding.couple_flow`)."""

    unit: int
    channels: int = 8
    flow: list[float] = field(default_factory=list)
    counts: list[float] = field(default_factory=list)
    last_mono: float = field(default_factory=time.monotonic)
    open: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.flow = self.flow or [0.0] * self.channels
        self.counts = self.counts or [0.0] * self.channels
        self.open = self.open or [True] * self.channels

    def advance(self, now: float) -> None:
        """Add the pulses counted up to `now`."""
        dt = max(0.0, now - self.last_mono)
        for ch in range(self.channels):
            if self.open[ch]:
                self.counts[ch] += self.flow[ch] * dt
        self.last_mono = now

    def set_open(self, channel: int, on: bool, now: float) -> None:
        """The valve of `channel` switched at `now`: pulses so far count at the old state."""
        self.advance(now)
        self.open[channel] = on

    def fill(self, registers: list[int], base: int) -> None:
        """Write the u32 counts (wrapping at 2**32) into the holding block at `base`."""
        for ch in range(self.channels):
            raw = int(self.counts[ch]) & 0xFFFF_FFFF
            i = 2 * ch - base
            registers[i], registers[i + 1] = raw >> 16, raw & 0xFFFF

