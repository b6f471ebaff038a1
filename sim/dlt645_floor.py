"""A floor of DL/T 645-2007 meters, each with its relay inside, for the simulated building.

`DltFloor` is one RS-485 line (`sim.dlt645.SimDltLine` on a pty, real byte timing at
2400 baud) with a meter per room at address `0000000RRR01` (RRR the room's number).
`SimDltRoom` offers what the demo's day needs of a room, as `sim.building.SimRoom`
does for a Modbus room: its meter's physics (`meter`), whether the supply flows
(`breaker_on`: the relay is closed) and a meter fault (`set_fault`: silent).
The relay password is `sim.dlt645.DEFAULT_CREDENTIALS`; `password_line` is what
the daemon's `password_file` holds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Literal

from sim.dlt645 import DEFAULT_CREDENTIALS, SimDltLine, SimDltMeter, pty_parity
from sim.modbus_units import SimMeter

BAUDRATE = 2400   # the standard's default: the demo shows a real bus's round time
PROFILE = "dlt645-2007"
RELAY_PROFILE = "dlt645-2007-relay"


def password_line() -> str:
    """The `LEVEL:PASSWORD:OPERATOR` line of the simulated meters' relay password."""
    c = DEFAULT_CREDENTIALS
    return f"{c.level:02X}:{c.password:06X}:{c.operator:08X}"


@dataclass
class SimDltRoom:
    """One room on the DL/T 645 floor: its meter, with the relay that feeds the room."""

    id: str
    account: str
    floor: int
    device: SimDltMeter

    @property
    def address(self) -> str:
        return self.device.address

    @property
    def meter(self) -> SimMeter:
        return self.device.physics

    @property
    def breaker_on(self) -> bool:
        return self.device.relay_closed

    async def breaker_becomes(self, on: bool) -> None:
        """Return once the gateway has closed (`True`) or opened the relay."""
        # Watched as a person would: the relay moves inside `SimDltMeter.answer`.
        while self.device.relay_closed is not on:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    def set_fault(self, fault: Literal["silent", "exception", "garbage"] | None) -> None:
        """A meter that stops answering (any fault: a DL/T meter here only falls silent)."""
        self.device.silent = fault is not None


@dataclass
class DltFloor:
    """The DL/T 645 floor: one line, its meters (see the module docstring)."""

    number: int
    tz: dt.tzinfo
    line: SimDltLine = field(init=False)
    rooms: list[SimDltRoom] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.line = SimDltLine(baudrate=BAUDRATE)

    @property
    def bus(self) -> str:
        return f"floor{self.number}-dlt"

    @property
    def parity(self) -> str:
        """The parity the daemon sets on the pty: E, where the kernel takes it."""
        return pty_parity("E")

    def add_room(self, building: str, index: int, energy_kwh: float) -> SimDltRoom:
        room_id = f"{self.number}{index + 1:02d}"
        meter = SimDltMeter(f"0000000{room_id}01", tz=self.tz)
        meter.physics.energy_kwh = energy_kwh
        room = SimDltRoom(room_id, f"room-{building}-{room_id}", self.number, self.line.add(meter))
        self.rooms.append(room)
        return room

    async def start(self) -> None:
        await self.line.start()

    async def stop(self) -> None:
        await self.line.stop()
