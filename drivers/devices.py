"""What the daemon sees of hardware: small protocols, no pymodbus or pyserial types.

Every call may raise `DeviceError` (timeout, bad frame, exception response,
disconnected bus); callers treat it as "no reading" and never crash on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol


class DeviceError(Exception):
    """A device did not answer usefully. `device` names it for logs and alarms."""

    def __init__(self, device: str, message: str) -> None:
        super().__init__(f"{device}: {message}")
        self.device = device
        self.message = message


@dataclass(frozen=True, slots=True)
class MeterReading:
    """One poll of an electricity meter.

    `energy_wh` is the cumulative register scaled and rounded to whole Wh.
    `mono` is `time.monotonic()` when the answer arrived; `wall` is `time.time()`.
    Optional fields are None when the profile does not have them.
    `energy_step_wh` is the smallest step the energy register can make at its
    current value (one count times the scale; for a float32 register, one unit
    in the last place, which grows with the value: ~2 Wh above 16,384 kWh).
    """

    energy_wh: int
    power_w: float
    mono: float
    wall: float
    voltage_v: float | None = None
    current_a: float | None = None
    pf: float | None = None
    energy_step_wh: float = 0.0


class Meter(Protocol):
    """A room's electricity meter."""

    name: str

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
class Tap:
    """A card seen by a reader. `uid` is upper-case hex without separators."""

    reader: str
    uid: str
    mono: float


TapSink = Callable[[Tap], Awaitable[None] | None]
# Called with (online, detail) when a reader or device goes away or comes back.
StatusSink = Callable[[bool, str], None]


class CardReader(Protocol):
    """A card reader: runs until cancelled, calling `sink` once per tap
    (debounced), reopening the device with back-off when it disappears and
    calling `status(False, why)` / `status(True, "")` on each change."""

    name: str

    async def run(self, sink: TapSink, status: StatusSink) -> None: ...


class SwitchMismatch(DeviceError):
    """A switch answered but did not follow a command: read back `actual`, not `wanted`.

    Raised by `Switch.set`; a subclass of `DeviceError`, so callers that only know
    that class still treat it as a failed command.
    """

    def __init__(self, device: str, wanted: bool, actual: bool) -> None:
        super().__init__(
            device,
            f"commanded {'on' if wanted else 'off'}, reads back {'on' if actual else 'off'}",
        )
        self.wanted = wanted
        self.actual = actual
