"""What the daemon sees of hardware: small protocols, no pymodbus or pyserial types.

Every call may raise `DeviceError` (timeout, bad frame, exception response,
disconnected bus); callers treat it as "no reading" and never crash on it.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

# What an electricity meter can report (behaviour.md "Bad readings"): a value
# outside is a fault of the meter or its register map, never a measurement.
# 10^13 Wh is 10 GWh, a thousand years of a room at 1 MW: no room register
# gets there, while SQLite integers (and float64 Wh) hold it exactly.
MAX_ENERGY_WH = 10**13
# Power either way: a meter measuring export (or a current transformer fitted
# backwards) reports negative power, but no room meter measures 1 MW.
MAX_POWER_W = 1e6


def energy_fault(wh: float) -> str | None:
    """Why `wh` (a scaled energy register) is no reading, or None when it is one."""
    if not math.isfinite(wh):
        return f"energy register is {wh} (not a number)"
    if wh < -0.5:   # rounds to a negative Wh
        return f"energy register is negative ({wh:.6g} Wh)"
    if wh >= MAX_ENERGY_WH - 0.5:   # rounds to 10^13 Wh or more
        return f"energy register is {wh:.6g} Wh (no meter reaches {MAX_ENERGY_WH:.0e} Wh)"
    return None


def power_fault(w: float) -> str | None:
    """Why `w` (a scaled power register) is no reading, or None when it is one."""
    if not math.isfinite(w):
        return f"power register is {w} (not a number)"
    if abs(w) >= MAX_POWER_W:
        return f"power register is {w:.6g} W (no room meter measures {MAX_POWER_W:.0e} W)"
    return None


@dataclass(frozen=True, slots=True)
class MeterReading:
    """One poll of an electricity meter.

    `energy_wh` is the cumulative register scaled and rounded to whole Wh.
    `mono` is `time.monotonic()` when the answer arrived; `wall` is `time.time()`.
    Optional fields are None when the profile does not have them.
    `energy_step_wh` is the smallest step the energy register can make at its
    current value (one count times the scale; for a float32 register, one unit
    in the last place, which grows with the value: ~2 Wh above 16,384 kWh).

    A value no meter can report (`energy_fault`, `power_fault`, not a number)
    is None and `fault` says why: the meter answered, but that value is no
    reading. A meter raises `DeviceError` rather than give neither energy nor power.
    """

    energy_wh: int | None
    power_w: float | None
    mono: float
    wall: float
    voltage_v: float | None = None
    current_a: float | None = None
    pf: float | None = None
    energy_step_wh: float = 0.0
    fault: str = ""


def screened(reading: MeterReading) -> MeterReading:
    """`reading` with every value no meter can report set to None and named in `fault`.

    Meters apply these rules when they decode; callers apply them again, so that
    no value a store or a rule cannot hold gets past a meter that does not."""
    faults = [reading.fault] if reading.fault else []
    changes: dict[str, object] = {}
    energy, power = reading.energy_wh, reading.power_w
    if energy is not None and (why := energy_fault(energy)) is not None:
        faults.append(why)
        changes["energy_wh"] = None
    if power is not None and (why := power_fault(power)) is not None:
        faults.append(why)
        changes["power_w"] = None
    for name in ("voltage_v", "current_a", "pf", "energy_step_wh"):
        value = getattr(reading, name)
        if value is not None and not math.isfinite(value):
            faults.append(f"{name} is {value} (not a number)")
            changes[name] = 0.0 if name == "energy_step_wh" else None
    if not changes:
        return reading
    return replace(reading, fault="; ".join(faults), **changes)  # type: ignore[arg-type]


class Health(Protocol):
    """A device's failure bookkeeping as a service sees it (a Modbus or DL/T 645
    device's `drivers.health.DeviceHealth`): whether it is online, how soon to
    poll it again, and a failure the service found that the driver did not."""

    @property
    def online(self) -> bool: ...

    def failed(self, error: str) -> None: ...

    def poll_delay(self, base_s: float) -> float: ...


class Meter(Protocol):
    """A room's electricity meter. `health` is None for a meter whose driver
    keeps no failure bookkeeping (it is then always online, polled every poll)."""

    name: str

    @property
    def health(self) -> Health | None: ...

    async def read(self) -> MeterReading: ...


class Switch(Protocol):
    """A breaker, relay or valve. `on` means the supply flows / the water runs
    (after `invert` is applied by the driver)."""

    name: str

    async def set(self, on: bool) -> None: ...

    async def get(self) -> bool: ...


class SwitchBank(Protocol):
    """Switches of one device read together, in the fewest requests (a relay
    board's channels): their states by switch name (after `invert`). Raises
    `DeviceError` when the device does not answer."""

    name: str

    async def read(self) -> dict[str, bool]: ...


class Counter(Protocol):
    """A rising pulse counter channel (raw count; the caller handles the wrap)."""

    name: str
    bits: int

    async def read(self) -> int: ...


@dataclass(frozen=True, slots=True)
class CardTap:
    """A card seen by a reader. `uid` is the card's id in the building's
    `gateway.card_format` (`cardreader.cardid`): upper-case hex without
    separators, or a 10-digit decimal number."""

    reader: str
    uid: str
    mono: float


TapSink = Callable[[CardTap], Awaitable[None] | None]
# Called with (online, detail) when a reader or device goes away or comes back.
StatusSink = Callable[[bool, str], None]


class CardReader(Protocol):
    """A card reader: runs until cancelled, calling `sink` once per tap
    (debounced), reopening the device with back-off when it disappears and
    calling `status(False, why)` / `status(True, "")` on each change."""

    name: str

    async def run(self, sink: TapSink, status: StatusSink) -> None: ...


