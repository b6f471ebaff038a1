"""One simulated Modbus endpoint: a real pymodbus 3.16 server (TCP or serial RTU)
holding several units, with switch followers and faults.

Every unit (device id) has 16 coils, 32 holding registers and the SDM120 input
registers (`sim.modbus_units`); what it does depends on its kind: a meter
(`SimMeter`), a relay board (16 coils, channel n = coil n and, for
holding-register boards, holding register n: 1 on, 0 off) or a pulse counter
(`SimCounter`).

Coupling, as wired in a real building: `SimEndpoint.follow(relay, channel, fn)`
calls `fn(on, now)` whenever that relay channel switches (a Modbus write to
coil n or holding register n, or `set_coil`).

Faults per unit (`set_fault`): `silent` (replies dropped, the client times out),
`exception` (every access answers an exception code), `garbage` (replies replaced
by random bytes); and `drop_connections()` for TCP.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from sim.modbus_units import COILS, HOLDING_REGISTERS, INPUT_REGISTERS, SimCounter, SimMeter

Fault = Literal["silent", "exception", "garbage"]
# Called with (on, monotonic time of the switch) when a relay channel switches.
SwitchFollower = Callable[[bool, float], None]
# Function codes that write a relay channel: coils (5, 15), holding registers (6, 16).
SWITCH_WRITES = frozenset({5, 6, 15, 16})

class SimEndpoint:
    """One pymodbus server (TCP or serial RTU) holding several simulated units."""

    def __init__(self, meters: Sequence[int] = (), relays: Sequence[int] = (),
                 counters: Sequence[int] = (), *, record: int = 10_000) -> None:
        self.meters = {u: SimMeter(u) for u in meters}
        self.counters = {u: SimCounter(u) for u in counters}
        self.relays = set(relays)
        # Each relay channel's state: the last value written to coil n or holding register n.
        self.switch_state: dict[int, list[bool]] = {u: [False] * COILS for u in relays}
        self._followers: dict[tuple[int, int], list[SwitchFollower]] = {}
        self.faults: dict[int, Fault] = {}
        self.exception_code = ExcCodes.DEVICE_FAILURE
        # (unit, function) of every request received, newest last.
        self.requests: collections.deque[tuple[int, int]] = collections.deque(maxlen=record)
        self.request_count: collections.Counter[int] = collections.Counter()
        # (monotonic time, "request" or "answer") of every packet, as the server sees them.
        self.packets: collections.deque[tuple[float, str]] = collections.deque(maxlen=record)
        self.server: ModbusTcpServer | ModbusSerialServer | None = None
        self._rng = random.Random(1)
        self._rtu = False
        units = sorted({*meters, *relays, *counters})
        if not units:
            raise ValueError("an endpoint needs at least one unit")
        if len(units) != len(meters) + len(relays) + len(counters):
            raise ValueError("a unit can have only one kind")
        self.devices = [self._device(u) for u in units]

    def _device(self, unit: int) -> SimDevice:
        return SimDevice(
            id=unit,
            simdata=(
                [SimData(0, values=[False] * COILS, datatype=DataType.BITS)],
                [SimData(0, values=[False] * COILS, datatype=DataType.BITS)],
                [SimData(0, count=HOLDING_REGISTERS, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=INPUT_REGISTERS, values=0, datatype=DataType.REGISTERS)],
            ),
            action=functools.partial(self._action, unit),
        )

    async def _action(  # noqa: PLR0917 - pymodbus calls the action with 6 positional args
        self, unit: int, function_code: int, start_address: int, address: int,
                      count: int, registers: list[int],
                      set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        del count
        if self.faults.get(unit) == "exception":
            return self.exception_code
        now = time.monotonic()
        if set_values is not None and function_code in SWITCH_WRITES and unit in self.relays:
            # Called before pymodbus stores the values, which it then always does.
            for i, value in enumerate(set_values):
                self._switched(unit, address + i, bool(value), now)
        if function_code == 4 and (meter := self.meters.get(unit)) is not None:
            meter.advance(now)
            meter.fill(registers, start_address)
        elif function_code == 3 and (counter := self.counters.get(unit)) is not None:
            counter.advance(now)
            counter.fill(registers, start_address)
        return None

    def _switched(self, unit: int, channel: int, on: bool, now: float) -> None:
        states = self.switch_state[unit]
        if not 0 <= channel < len(states) or states[channel] is on:
            return
        states[channel] = on
        for follower in self._followers.get((unit, channel), ()):
            follower(on, now)

    def follow(self, unit: int, channel: int, follower: SwitchFollower) -> None:
        """Call `follower(on, now)` at every switch of relay `unit` channel `channel`,
        and once now with its present state."""
        if unit not in self.relays:
            raise ValueError(f"unit {unit} is not a relay board on this endpoint")
        if not 0 <= channel < COILS:
            raise ValueError(f"relay channel must be 0..{COILS - 1}, got {channel}")
        self._followers.setdefault((unit, channel), []).append(follower)
        follower(self.switch_state[unit][channel], time.monotonic())

    def unfollow(self, unit: int, channel: int, follower: SwitchFollower) -> None:
        """Stop calling `follower` (no error if it was not following)."""
        with contextlib.suppress(KeyError, ValueError):
            self._followers[(unit, channel)].remove(follower)

    async def switched(self, unit: int, channel: int, on: bool) -> None:
        """Return once relay `unit` channel `channel` is `on` (at once if it already is)."""
        reached = asyncio.Event()

        def follower(state: bool, now: float) -> None:
            if state is on:
                reached.set()

        self.follow(unit, channel, follower)
        try:
            await reached.wait()
        finally:
            self.unfollow(unit, channel, follower)

    def switch_on(self, unit: int, channel: int) -> bool:
        """Whether relay `unit` channel `channel` is on (no Modbus round trip)."""
        return self.switch_state[unit][channel]

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not data:
            return data
        if sending:
            data = self._faulty(data)
        if data:
            self.packets.append((time.monotonic(), "answer" if sending else "request"))
        return data

    def _faulty(self, data: bytes) -> bytes:
        unit = data[0] if self._rtu else (data[6] if len(data) > 6 else -1)
        fault = self.faults.get(unit)
        if fault == "silent":
            return b""
        if fault == "garbage":
            return self._rng.randbytes(max(len(data), 9))
        return data

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.requests.append((pdu.dev_id, pdu.function_code))
            self.request_count[pdu.dev_id] += 1
        return pdu

    def set_fault(self, unit: int, fault: Fault | None) -> None:
        """Make `unit` misbehave (`None` heals it)."""
        if fault is None:
            self.faults.pop(unit, None)
        else:
            self.faults[unit] = fault

    async def coils(self, unit: int, address: int = 0, count: int = 1) -> list[bool]:
        """The coils of `unit` as the server holds them."""
        assert self.server is not None
        return [bool(v) for v in await self.server.async_getValues(unit, 1, address, count)]

    async def holding(self, unit: int, address: int = 0, count: int = 1) -> list[int]:
        """The holding registers of `unit` as the server holds them (no action run)."""
        assert self.server is not None
        return [int(v) for v in await self.server.context.async_getValues(unit, 3, address, count)]  # type: ignore[union-attr]

    async def set_coil(self, unit: int, channel: int, on: bool) -> None:
        """Force a coil, as if the relay were switched by hand."""
        assert self.server is not None
        await self.server.async_setValues(unit, 5, channel, [on])

    async def set_holding(self, unit: int, address: int, values: list[int]) -> None:
        """Force holding registers."""
        assert self.server is not None
        await self.server.async_setValues(unit, 6 if len(values) == 1 else 16, address, values)

    def drop_connections(self) -> int:
        """Close every client connection (TCP); returns how many were closed."""
        assert self.server is not None
        conns = list(self.server.active_connections.values())
        for conn in conns:
            conn.close()
        return len(conns)

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on `host:port` (0: a free port); returns the port."""
        self._rtu = False
        self.server = ModbusTcpServer(
            self.devices, address=(host, port),
            trace_packet=self._trace_packet, trace_pdu=self._trace_pdu,
        )
        await self.server.serve_forever(background=True)
        transport: Any = self.server.transport
        bound: int = transport.sockets[0].getsockname()[1]
        return bound

    async def start_serial(self, port: str, baudrate: int = 9600) -> None:
        """Serve RTU on serial device `port`."""
        self._rtu = True
        self.server = ModbusSerialServer(
            self.devices, framer=FramerType.RTU, port=port, baudrate=baudrate,
            trace_packet=self._trace_packet, trace_pdu=self._trace_pdu,
        )
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        """Stop serving and close every connection."""
        if self.server is not None:
            await self.server.shutdown()  # type: ignore[no-untyped-call]
            self.server = None
