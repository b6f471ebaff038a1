"""Modbus implementations of the `drivers.protocols` protocols (Meter, Switch, Counter).

Contract: each object reads or writes its device through its `ModbusBus` per its
profile, raises `DeviceError` (never anything else from I/O) and records every
operation's outcome in its `health`. Made by `ModbusBus.meter/switch/counter`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from drivers.errors import DeviceError, SwitchMismatch
from drivers.health import DeviceHealth
from drivers.meter_reading import judged_reading
from drivers.modbus.frames.pdu import (
    READ_COILS,
    READ_HOLDING_REGISTERS,
    READ_INPUT_REGISTERS,
    ReadRequest,
    WriteCoil,
    WriteRegister,
    WriteRegisters,
)
from drivers.modbus.plan import Slot, decode_value, encode_value, plan_reads, value_step
from drivers.profile import Field, Kind, Profile
from drivers.protocols import MeterReading

if TYPE_CHECKING:
    from drivers.modbus.bus import ModbusBus


def _expect_kind(profile: Profile, kind: Kind) -> None:
    if profile.kind != kind:
        raise ValueError(f"profile {profile.name} is a {profile.kind}, not a {kind}")


def _channel_field(profile: Profile, kind: Kind, key: str, channel: int) -> tuple[Field, int]:
    """The profile's field `key` of a `kind` device at `channel`, and its address there."""
    _expect_kind(profile, kind)
    if channel < 0:
        raise ValueError(f"channel must be >= 0, got {channel}")
    f = profile.fields[key]
    address = f.at_channel(channel)
    if address + f.width > 0x10000:
        raise ValueError(f"channel {channel} is beyond the address space")
    return f, address


class ModbusMeter:
    """An electricity meter read in the fewest requests its profile allows."""

    def __init__(self, bus: ModbusBus, name: str, unit: int, profile: Profile, *,
                 health: DeviceHealth) -> None:
        _expect_kind(profile, "meter")
        self.name = name
        self.unit = unit
        self.profile = profile
        self.health = health
        self._bus = bus
        slots = [Slot(f.name, f.table, f.address, f.width) for f in profile.fields.values()]
        self._plan: list[tuple[ReadRequest, list[tuple[Field, int]]]] = [
            (
                ReadRequest(block.function, block.address, block.count),
                [(profile.fields[fname], offset) for fname, offset in block.offsets],
            )
            for block in plan_reads(slots, max_registers=profile.max_read_registers)
        ]

    @property
    def requests_per_read(self) -> int:
        """How many Modbus requests one `read()` takes."""
        return len(self._plan)

    async def read(self) -> MeterReading:
        """One reading: energy rounded to the nearest Wh, the rest as floats.

        A value no meter can report (`drivers.protocols.energy_fault`, `power_fault`,
        not a number) is None in the reading and a failure in `health`, as a read
        that failed (it counts toward offline); neither energy nor power raises.
        """
        values: dict[str, float] = {}
        energy_step = 0.0
        try:
            for request, fields in self._plan:
                words = await self._bus.read_registers(self.name, self.unit, request)
                for f, offset in fields:
                    raw = decode_value(words, offset, f.type, f.word_order)
                    values[f.name] = raw * f.scale
                    if f.name == "energy_wh":
                        energy_step = value_step(raw, f.type) * abs(f.scale)
        except DeviceError as exc:
            self.health.failed(exc.message)
            raise
        return judged_reading(self.name, values, self.health, energy_step)


class ModbusSwitch:
    """A relay channel (coil or holding register); `on` is after `invert`."""

    def __init__(self, bus: ModbusBus, name: str, unit: int, profile: Profile, *,
                 channel: int, invert: bool, health: DeviceHealth) -> None:
        f, self.address = _channel_field(profile, "switch", "state", channel)
        self.name = name
        self.unit = unit
        self.profile = profile
        self.channel = channel
        self.invert = invert
        self.health = health
        self._bus = bus
        self._field = f
        function = READ_COILS if f.table == "coil" else READ_HOLDING_REGISTERS
        self._read = ReadRequest(function, self.address, f.width)

    def _write_request(self, on_wire: bool) -> WriteCoil | WriteRegister | WriteRegisters:
        f = self._field
        if f.table == "coil":
            return WriteCoil(self.address, on_wire)
        words = encode_value(f.on if on_wire else f.off, f.type, f.word_order)
        if len(words) == 1:
            return WriteRegister(self.address, words[0])
        return WriteRegisters(self.address, words)

    async def _read_state(self, command: bool) -> bool:
        if self._field.table == "coil":
            bits = await self._bus.read_coils(self.name, self.unit, self._read, command=command)
            return self.state_in(bits, 0)
        words = await self._bus.read_registers(self.name, self.unit, self._read, command=command)
        return self.state_in(words, 0)

    def state_in(self, values: Sequence[bool] | Sequence[int], offset: int) -> bool:
        """This switch's state from coils or registers read at its address - `offset`."""
        f = self._field
        if f.table == "coil":
            on_wire = bool(values[offset])
        else:
            value = decode_value(values, offset, f.type, f.word_order)
            if value == f.on:
                on_wire = True
            elif value == f.off:
                on_wire = False
            else:
                raise DeviceError(self.name, f"state register holds {value}, "
                                  f"neither on ({f.on}) nor off ({f.off})")
        return on_wire != self.invert

    async def set(self, on: bool) -> None:
        """Command the switch, then read it back.

        Raises `SwitchMismatch` when it answers but reads back the other state,
        `DeviceError` when it does not answer. Goes ahead of routine polls.
        """
        try:
            await self._bus.write(self.name, self.unit, self._write_request(on != self.invert))
            actual = await self._read_state(command=True)
        except DeviceError as exc:
            self.health.failed(exc.message)
            raise
        self.health.succeeded(time.monotonic())
        if actual != on:
            raise SwitchMismatch(self.name, on, actual)

    async def get(self) -> bool:
        """The switch's present state (True: supply flows / water runs)."""
        try:
            state = await self._read_state(command=False)
        except DeviceError as exc:
            self.health.failed(exc.message)
            raise
        self.health.succeeded(time.monotonic())
        return state


class ModbusSwitchBank:
    """Switches of one unit with one profile, read together: one request per
    poll for a whole relay board (up to 2,000 coils or the profile's register
    limit per request), instead of one per channel."""

    def __init__(self, bus: ModbusBus, name: str, unit: int,
                 switches: Sequence[ModbusSwitch]) -> None:
        # Equal, not the same object: a reload's new switches sit beside the old ones.
        if not switches or any(sw.unit != unit or sw.profile != switches[0].profile
                               for sw in switches):
            raise ValueError("a bank is switches of one unit with one profile")
        self.name = name
        self.unit = unit
        self._bus = bus
        self._switches = {sw.name: sw for sw in switches}
        f = switches[0].profile.fields["state"]
        slots = [Slot(sw.name, f.table, sw.address, f.width) for sw in switches]
        function = READ_COILS if f.table == "coil" else READ_HOLDING_REGISTERS
        self._plan = [
            (ReadRequest(function, block.address, block.count), block.offsets)
            for block in plan_reads(slots, max_registers=switches[0].profile.max_read_registers)
        ]

    async def read(self) -> dict[str, bool]:
        states: dict[str, bool] = {}
        for request, offsets in self._plan:
            try:
                if request.function == READ_COILS:
                    values: Sequence[bool] | Sequence[int] = await self._bus.read_coils(
                        self.name, self.unit, request)
                else:
                    values = await self._bus.read_registers(self.name, self.unit, request)
            except DeviceError as exc:
                for name, _ in offsets:
                    self._switches[name].health.failed(exc.message)
                raise
            now = time.monotonic()
            for name, offset in offsets:
                sw = self._switches[name]
                try:
                    states[name] = sw.state_in(values, offset)
                except DeviceError as exc:
                    sw.health.failed(exc.message)
                    continue
                sw.health.succeeded(now)
        return states


class ModbusCounter:
    """A pulse counter channel: the raw count (`bits` wide; the caller handles the wrap)."""

    def __init__(self, bus: ModbusBus, name: str, unit: int, profile: Profile, *,
                 channel: int, health: DeviceHealth) -> None:
        f, address = _channel_field(profile, "counter", "count", channel)
        self.name = name
        self.unit = unit
        self.profile = profile
        self.channel = channel
        self.health = health
        self._bus = bus
        self._field = f
        self.bits = 16 * f.width
        function = READ_HOLDING_REGISTERS if f.table == "holding" else READ_INPUT_REGISTERS
        self._read = ReadRequest(function, address, f.width)

    async def read(self) -> int:
        """The raw count."""
        try:
            words = await self._bus.read_registers(self.name, self.unit, self._read)
        except DeviceError as exc:
            self.health.failed(exc.message)
            raise
        self.health.succeeded(time.monotonic())
        return int(decode_value(words, 0, self._field.type, self._field.word_order))
