"""DL/T 645 implementations of the `drivers.protocols` protocols: a meter and its relay.

Contract: each object reads or commands its meter through its `Dlt645Bus`, raises
`DeviceError` (never anything else from I/O) and records every operation's
outcome in its `health`, exactly as the Modbus devices do.

- `Dlt645Meter.read()` reads `power_w` every time, energy every `energy_every`
  reads and, as often, the next of the other fields in turn (all of them at the
  first read), one request per field: a field not read this time is None in the
  reading. A
  value no meter can report (`energy_fault`, `power_fault`, not a number) is None
  and a failure in `health`; neither energy nor power raises `DeviceError`.
- `Dlt645Relay.set(on)` sends the relay command (1C: trip or close now) with the
  password and a deadline `DEADLINE_AHEAD` ahead on the meter's clock (`tz`), then
  reads status word 3 back until it follows (`FOLLOW_READS`). A refused password
  raises `RelayRefused`, a relay that did not follow `SwitchMismatch`: a room is
  never reported cut while its relay reads closed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drivers.dlt645.credentials import Credentials
from drivers.dlt645.frames import (
    RELAY_CLOSE,
    RELAY_TRIP,
    ErrorAnswer,
    ReadAnswer,
    ReadRequest,
    RelayCommand,
    bcd_value,
    binary_value,
)
from drivers.errors import DeviceError, FrameError, RelayRefused, SwitchMismatch
from drivers.health import DeviceHealth
from drivers.meter_reading import judged_reading
from drivers.protocols import MeterReading

if TYPE_CHECKING:
    from drivers.dlt645.bus import Dlt645Bus

# The relay command's deadline: far enough ahead for a meter whose clock is a few
# minutes behind, within the 10 minutes config.md allows.
DEADLINE_AHEAD = dt.timedelta(minutes=5)
# A relay takes a moment to move after the meter answers 9C: read it back this many
# times, FOLLOW_WAIT_S apart, before calling it a mismatch.
FOLLOW_READS = 3
FOLLOW_WAIT_S = 0.2
# Fields a meter reading carries (drivers.protocols.MeterReading).
METER_FIELDS = ("energy_wh", "power_w", "voltage_v", "current_a", "pf")


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field read by data identifier: `length` bytes of BCD with `decimals`
    (signed: the top bit is the sign) times `scale` into the field's unit; or,
    with `bit`, that bit of a binary status word, `on` its value when on."""

    di: int
    length: int
    decimals: int = 0
    signed: bool = False
    scale: float = 1.0
    bit: int | None = None
    on: int = 0

    def value(self, raw: bytes) -> float:
        """The field's value in its unit; `FrameError` for a wrong length or digit."""
        if len(raw) != self.length:
            raise FrameError(f"{len(raw)} bytes answer a field of {self.length}")
        if self.bit is not None:
            return float(binary_value(raw) >> self.bit & 1)
        return bcd_value(raw, self.signed) * self.scale / int(10**self.decimals)

    @property
    def step(self) -> float:
        """The smallest step of the field, in its unit."""
        return abs(self.scale) / int(10**self.decimals)


class Dlt645Meter:
    """An electricity meter read one data identifier at a time (see the module's contract)."""

    def __init__(self, bus: Dlt645Bus, name: str, address: str, fields: Mapping[str, FieldSpec],
                 *, health: DeviceHealth, energy_every: int, stagger: int = 0) -> None:
        unknown = set(fields) - set(METER_FIELDS)
        if unknown or not {"energy_wh", "power_w"} <= set(fields):
            raise ValueError(f"meter fields are energy_wh, power_w and any of {METER_FIELDS[2:]}")
        self.name = name
        self.address = address
        self.fields = dict(fields)
        self.health = health
        self._bus = bus
        self._energy_every = energy_every
        self._others = [f for f in METER_FIELDS[2:] if f in fields]
        self._reads = stagger   # meters of one bus read their energy in different rounds
        self._first = True
        self._next_other = 0

    def due(self) -> list[str]:
        """The fields the next `read()` asks for, power first: in every `energy_every`
        reads, one with energy, one (half-way) with the next of the other fields."""
        if self._first:
            return ["power_w", "energy_wh", *self._others]
        slot = self._reads % self._energy_every
        if slot == 0:
            return ["power_w", "energy_wh"]
        if self._others and slot == (self._energy_every + 1) // 2:
            return ["power_w", self._others[self._next_other % len(self._others)]]
        return ["power_w"]

    async def read(self) -> MeterReading:
        """One reading: power, and the fields due this time (see the module's contract)."""
        names = self.due()
        values: dict[str, float] = {}
        try:
            for i, name in enumerate(names):
                values[name] = await self._read_field(self.fields[name], follow_up=i > 0)
        except DeviceError as exc:
            self.health.failed(exc.message)
            raise
        finally:
            self._bus.meter_polled(self.name)
        self._advance(names)
        step = self.fields["energy_wh"].step if "energy_wh" in values else 0.0
        return judged_reading(self.name, values, self.health, step)

    def _advance(self, names: list[str]) -> None:
        self._first = False
        self._reads += 1
        if len(names) == 2 and names[1] != "energy_wh":
            self._next_other += 1

    async def _read_field(self, spec: FieldSpec, follow_up: bool) -> float:
        answer = await self._bus.transact(self.name, ReadRequest(self.address, spec.di),
                                          follow_up=follow_up)
        if isinstance(answer, ErrorAnswer):
            raise DeviceError(self.name, f"refused to read {spec.di:08X} (error {answer.error:02X})")
        assert isinstance(answer, ReadAnswer)   # `Dlt645Link` answers a read with one of these
        try:
            return spec.value(answer.value)
        except FrameError as exc:
            raise DeviceError(self.name, f"bad value of {spec.di:08X}: {exc}") from None

class Dlt645Relay:
    """The relay inside a DL/T 645 meter; `on` means closed (the room is supplied)."""

    def __init__(self, bus: Dlt645Bus, name: str, address: str, credentials: Credentials,
                 state: FieldSpec, *, tz: dt.tzinfo, health: DeviceHealth,
                 control: tuple[int, int] = (RELAY_TRIP, RELAY_CLOSE)) -> None:
        if state.bit is None:
            raise ValueError("a relay's state is a bit of a status word (status word 3, bit 4)")
        self.name = name
        self.address = address
        self.health = health
        self._bus = bus
        self._credentials = credentials
        self._state = state
        self._tz = tz
        self._off, self._on = control   # N1 of the profile's [control]: off (trip), on (close)

    def command(self, on: bool, now: dt.datetime | None = None) -> RelayCommand:
        """The relay command for `on`, its deadline `DEADLINE_AHEAD` after `now` (meter clock)."""
        when = (now or dt.datetime.now(self._tz)).astimezone(self._tz) + DEADLINE_AHEAD
        c = self._credentials
        return RelayCommand(self.address, c.level, c.password, c.operator,
                            self._on if on else self._off,
                            when.replace(tzinfo=None, microsecond=0))

    async def _read_state(self, command: bool) -> bool:
        answer = await self._bus.transact(self.name, ReadRequest(self.address, self._state.di),
                                          command=command)
        if isinstance(answer, ErrorAnswer):
            raise DeviceError(self.name, f"refused to read its status word (error {answer.error:02X})")
        assert isinstance(answer, ReadAnswer)
        try:
            bit = self._state.value(answer.value)
        except FrameError as exc:
            raise DeviceError(self.name, f"bad status word: {exc}") from None
        return bit == self._state.on

    async def _follow(self, on: bool) -> bool:
        """The relay read back until it reads `on` (at most FOLLOW_READS times)."""
        for attempt in range(FOLLOW_READS):
            if attempt:
                await asyncio.sleep(FOLLOW_WAIT_S)
            actual = await self._read_state(command=True)
            if actual == on:
                break
        return actual

    async def _switch(self, on: bool) -> tuple[bool, bool]:
        """Command the relay; (refused, the state read back)."""
        answer = await self._bus.transact(self.name, self.command(on), command=True)
        if isinstance(answer, ErrorAnswer) and answer.password_refused:
            return True, await self._read_state(command=True)
        return False, await self._follow(on)

    async def set(self, on: bool) -> None:
        """Close (`on`) or trip the relay, then read it back.

        Raises `RelayRefused` when the meter refuses the password, `SwitchMismatch`
        when the relay does not follow, `DeviceError` when the meter does not
        answer. Goes ahead of routine reads.
        """
        refused, actual = await self.health.watched(self._switch(on))
        if refused:
            raise RelayRefused(self.name, on, actual)
        if actual != on:
            raise SwitchMismatch(self.name, on, actual)

    async def get(self) -> bool:
        """The relay's present state (True: closed, the room is supplied)."""
        return await self.health.watched(self._read_state(command=False))
