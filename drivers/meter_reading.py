"""From a meter's scaled values to a `MeterReading`, judged: the one place where a
value no meter can report becomes None, and a failure in the meter's health.

Contract: `judged_reading` takes the values a meter read by field name (energy_wh
in Wh, power_w in W, voltage_v, current_a, pf; energy may be missing when this
read did not ask for it) and returns the reading with energy rounded to the
nearest Wh (halves up) and every value no meter can report (`energy_fault`,
`power_fault`, not a number: `screened`) None and named in `fault`, recorded in
`health` (a reading with a fault counts as a failure). When neither energy nor
power is a reading it raises `DeviceError` instead. Modbus and DL/T 645 meters
both end their `read()` with it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from drivers.errors import DeviceError
from drivers.protocols import MeterReading, energy_fault, power_fault, screened

if TYPE_CHECKING:
    from drivers.health import DeviceHealth


def judged_reading(device: str, values: Mapping[str, float], health: DeviceHealth,
                   energy_step_wh: float = 0.0) -> MeterReading:
    """The reading of `values` (see the module's contract)."""
    mono = time.monotonic()
    energy, power = values.get("energy_wh"), values["power_w"]
    bad_energy = None if energy is None else energy_fault(energy)
    bad_power = power_fault(power)
    faults = "; ".join(why for why in (bad_energy, bad_power) if why is not None)
    if bad_power is not None and (energy is None or bad_energy is not None):
        health.failed(faults)
        raise DeviceError(device, faults)
    reading = screened(MeterReading(   # screened: voltage, current, pf not numbers
        energy_wh=None if energy is None or bad_energy else math.floor(energy + 0.5),
        power_w=None if bad_power else power,
        mono=mono,
        wall=time.time(),
        voltage_v=values.get("voltage_v"),
        current_a=values.get("current_a"),
        pf=values.get("pf"),
        energy_step_wh=energy_step_wh if math.isfinite(energy_step_wh) else 0.0,
        fault=faults,
    ))
    if reading.fault:
        health.failed(reading.fault)
    else:
        health.succeeded(mono)
    return reading
