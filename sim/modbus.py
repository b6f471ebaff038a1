"""A simulated building on real pymodbus 3.16 servers: meters, relay boards, pulse counters.

For tests, benchmarks and demos. Every unit (device id) of an endpoint has the
same tables: 16 coils, 32 holding registers and the Eastron SDM120 input
registers 0x0000..0x0157; what a unit does depends on its kind:

- meter (`SimMeter`): input registers hold float32 voltage, current, power,
  apparent/reactive power, PF, frequency, import/export/total energy (kWh) at the
  SDM120 addresses. Energy integrates the set power over time, computed when read.
- relay board (`SimRelay`): 16 coils (channel n = coil n) and, for holding-register
  boards, holding registers 0..15 (1 on, 0 off).
- pulse counter (`SimCounter`): u32 counts, high word first, channel n at holding
  2n; a count rises with the channel's set flow (pulses/s), computed when read.

Coupling, as wired in a real building: `SimEndpoint.follow(relay, channel, fn)`
calls `fn(on, now)` whenever that relay channel switches (a Modbus write to
coil n or holding register n, or `set_coil`). `SimBuilding.couple(room, relay,
channel)` puts a room's meter behind a breaker: while the coil is off the
meter reads 0 W and its energy stands still, though the load stays plugged in
(it draws again when the supply returns). `SimBuilding.couple_flow(counter,
channel, relay, relay_channel)` puts a flow counter behind a valve: its count
rises only while the valve's coil is on. Uncoupled meters and counters behave
as before (always supplied, always flowing).

Faults per unit (`set_fault`): `silent` (replies dropped, the client times out),
`exception` (every access answers an exception code), `garbage` (replies replaced
by random bytes); and `drop_connections()` for TCP.

TCP: `SimBuilding.tcp(...)` starts one endpoint per `per_endpoint` meters on
127.0.0.1. RTU: `SimRtu` serves one line on a pseudo-terminal pair, optionally
charging real wire time at a baud rate (half duplex, 10 bits a byte); a unit's
answers can be held back (`delay_replies`), as from a device that answers
after the gateway's timeout, and the line's traffic is logged with times
(`SimRtu.wire`), as the devices see it.

Run as a subprocess: `python -m sim.modbus --meters 500 --port 0`;
it prints one JSON line (`{"ports": [...]}` or `{"rtu": PATH}`) when ready and
runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import itertools
import json
import os
import random
import signal
import struct
import sys
import time
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

Fault = Literal["silent", "exception", "garbage"]
Kind = Literal["meter", "relay", "counter"]
# Called with (on, monotonic time of the switch) when a relay channel switches.
SwitchFollower = Callable[[bool, float], None]
# Function codes that write a relay channel: coils (5, 15), holding registers (6, 16).
SWITCH_WRITES = frozenset({5, 6, 15, 16})

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


class SimBuilding:
    """Meters spread over TCP endpoints (units 1..per_endpoint each), plus relays and counters.

    Room `i` is meter unit `i % per_endpoint + 1` on endpoint `i // per_endpoint`.
    Relay boards and counters live on the first endpoint at units 201.. and 231..
    """

    RELAY_BASE = 201
    COUNTER_BASE = 231

    def __init__(self, meters: int, *, per_endpoint: int = 50, relays: int = 1,
                 counters: int = 1) -> None:
        if not 1 <= per_endpoint <= 200:
            raise ValueError("per_endpoint must be 1..200")
        self.per_endpoint = per_endpoint
        self.endpoints: list[SimEndpoint] = []
        n_endpoints = max(1, -(-meters // per_endpoint))
        for e in range(n_endpoints):
            units = range(1, min(per_endpoint, meters - e * per_endpoint) + 1)
            first = e == 0
            self.endpoints.append(SimEndpoint(
                meters=list(units),
                relays=[self.RELAY_BASE + i for i in range(relays)] if first else [],
                counters=[self.COUNTER_BASE + i for i in range(counters)] if first else [],
            ))
        self.ports: list[int] = []

    @classmethod
    async def tcp(cls, meters: int, *, per_endpoint: int = 50, relays: int = 1,
                  counters: int = 1, host: str = "127.0.0.1", port: int = 0) -> SimBuilding:
        """Start a building; endpoint k listens on `port + k` (free ports when `port` is 0)."""
        sim = cls(meters, per_endpoint=per_endpoint, relays=relays, counters=counters)
        try:
            for k, endpoint in enumerate(sim.endpoints):
                sim.ports.append(await endpoint.start_tcp(host, port + k if port else 0))
        except BaseException:
            await sim.stop()
            raise
        return sim

    async def stop(self) -> None:
        """Stop every endpoint."""
        for endpoint in self.endpoints:
            await endpoint.stop()

    def locate(self, room: int) -> tuple[SimEndpoint, int]:
        """(endpoint, unit) of room index `room`'s meter."""
        return self.endpoints[room // self.per_endpoint], room % self.per_endpoint + 1

    def meter(self, room: int) -> SimMeter:
        """The simulated meter of room index `room`."""
        endpoint, unit = self.locate(room)
        return endpoint.meters[unit]

    def set_load(self, room: int, watts: float, pf: float = 1.0) -> None:
        """Set the power drawn in room `room` from now on (energy so far is kept)."""
        m = self.meter(room)
        m.advance(time.monotonic())
        m.power_w, m.pf = watts, pf

    def set_flow(self, counter: int, channel: int, pulses_per_s: float) -> None:
        """Set the flow seen by channel `channel` of counter index `counter`."""
        c = self.endpoints[0].counters[self.COUNTER_BASE + counter]
        c.advance(time.monotonic())
        c.flow[channel] = pulses_per_s

    def couple(self, room: int, relay: int, channel: int) -> None:
        """Wire room index `room`'s supply through channel `channel` of relay board
        index `relay` (unit RELAY_BASE + relay): the meter draws only while that coil
        is on. Coils start off: switch them on (`set_coil`) before the gateway starts,
        as an electrician would."""
        self.endpoints[0].follow(self.RELAY_BASE + relay, channel, self.meter(room).set_supplied)

    def couple_flow(self, counter: int, channel: int, relay: int, relay_channel: int) -> None:
        """Put channel `channel` of counter index `counter` behind the valve on channel
        `relay_channel` of relay board index `relay`: water flows only while it is open."""
        c = self.endpoints[0].counters[self.COUNTER_BASE + counter]
        self.endpoints[0].follow(self.RELAY_BASE + relay, relay_channel,
                                 functools.partial(_set_open, c, channel))


def _set_open(counter: SimCounter, channel: int, on: bool, now: float) -> None:
    counter.set_open(channel, on, now)


# An answer's delay: fixed seconds, (low, high) drawn uniformly for each answer, or
# a function drawing it.
ReplyDelay = float | tuple[float, float] | Callable[[], float]


class SimRtu:
    """One RTU line on a pseudo-terminal pair; clients open `client_port`.

    With `baudrate` set, a relay between the client's pty and the server's pty
    delivers each chunk only after its wire time (10 bits a byte, half duplex:
    one direction at a time), so throughput matches a real line at that speed.
    `delay_replies(unit, s)` holds that unit's answers back by `s` seconds (the
    server has answered at once: a request sent meanwhile is answered too).
    `wire` logs (monotonic time, "request" or "answer", bytes) as the devices
    see the line: a request when it leaves the client, an answer when it
    reaches the client.
    """

    def __init__(self, endpoint: SimEndpoint, *, baudrate: int | None = None,
                 record: int = 10_000, seed: int = 1) -> None:
        self.endpoint = endpoint
        self.baudrate = baudrate
        self.reply_delays: dict[int, ReplyDelay] = {}
        self.delays: collections.deque[float] = collections.deque(maxlen=record)  # applied
        self.wire: collections.deque[tuple[float, str, bytes]] = collections.deque(maxlen=record)
        self._rng = random.Random(seed)
        self._held: dict[int, asyncio.TimerHandle] = {}   # chunks on their way
        self._chunks = itertools.count()
        self._fds: list[int] = []
        self.client_port = ""
        self._server_port = ""
        self._wire_free = 0.0
        self._masters: tuple[int, int] = (-1, -1)

    async def start(self) -> None:
        """Create the ptys, start the relay and the pymodbus serial server."""
        loop = asyncio.get_running_loop()
        m_client, s_client = os.openpty()
        m_server, s_server = os.openpty()
        for fd in (s_client, s_server):
            tty.setraw(fd)
        os.set_blocking(m_client, False)
        os.set_blocking(m_server, False)
        self._fds = [m_client, s_client, m_server, s_server]
        self._masters = (m_client, m_server)
        self.client_port = os.ttyname(s_client)
        self._server_port = os.ttyname(s_server)
        loop.add_reader(m_client, self._pump, m_client, m_server)
        loop.add_reader(m_server, self._pump, m_server, m_client)
        await self.endpoint.start_serial(self._server_port, self.baudrate or 115200)

    def delay_replies(self, unit: int, delay_s: ReplyDelay | None) -> None:
        """Hold `unit`'s answers back by `delay_s` seconds (`None`: at once again)."""
        if delay_s is None:
            self.reply_delays.pop(unit, None)
        else:
            self.reply_delays[unit] = delay_s

    def inject(self, data: bytes) -> None:
        """Put `data` on the line towards the client at once (noise, a stray device)."""
        self._write(self._masters[0], data, False)

    def _delay(self, data: bytes) -> float:
        delay = self.reply_delays.get(data[0], 0.0)
        if isinstance(delay, tuple):
            delay = self._rng.uniform(*delay)
        elif callable(delay):
            delay = delay()
        if delay:
            self.delays.append(delay)
        return delay

    def _pump(self, src: int, dst: int) -> None:
        try:
            data = os.read(src, 4096)
        except (BlockingIOError, OSError):
            return
        if not data:
            return
        answer = src == self._masters[1]
        if not answer:
            self.wire.append((time.monotonic(), "request", data))
        delay = self._delay(data) if answer else 0.0
        if not self.baudrate and not delay:
            self._write(dst, data, answer)
            return
        loop = asyncio.get_running_loop()
        now = loop.time() + delay
        done = now
        if self.baudrate:
            done = max(now, self._wire_free) + len(data) * 10 / self.baudrate
            self._wire_free = done
        key = next(self._chunks)
        self._held[key] = loop.call_at(done, self._deliver, key, dst, data, answer)

    def _deliver(self, key: int, fd: int, data: bytes, answer: bool) -> None:
        del self._held[key]
        self._write(fd, data, answer)

    def _write(self, fd: int, data: bytes, answer: bool) -> None:
        if answer:
            self.wire.append((time.monotonic(), "answer", data))
        with contextlib.suppress(OSError):
            os.write(fd, data)

    async def stop(self) -> None:
        """Stop the server and relay, close the ptys."""
        await self.endpoint.stop()
        for handle in self._held.values():   # never write into a closed (maybe reused) fd
            handle.cancel()
        self._held.clear()
        loop = asyncio.get_running_loop()
        for fd in self._masters:
            if fd >= 0:
                loop.remove_reader(fd)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        self._masters = (-1, -1)


def _random_loads(sim_meters: Sequence[SimMeter], seed: int) -> None:
    rng = random.Random(seed)
    for m in sim_meters:
        m.power_w = rng.uniform(20.0, 1500.0)
        m.pf = rng.uniform(0.85, 1.0)
        m.energy_kwh = rng.uniform(0.0, 5000.0)


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.rtu:
        endpoint = SimEndpoint(meters=range(1, args.meters + 1))
        _random_loads(list(endpoint.meters.values()), args.seed)
        rtu = SimRtu(endpoint, baudrate=args.baud or None)
        await rtu.start()
        print(json.dumps({"rtu": rtu.client_port, "baud": args.baud}), flush=True)
        await stop.wait()
        await rtu.stop()
        return
    sim = await SimBuilding.tcp(args.meters, per_endpoint=args.per_endpoint, port=args.port)
    for ep in sim.endpoints:
        _random_loads(list(ep.meters.values()), args.seed)
    print(json.dumps({"ports": sim.ports, "per_endpoint": args.per_endpoint}), flush=True)
    await stop.wait()
    await sim.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry: run a simulated building until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--meters", type=int, default=10)
    parser.add_argument("--per-endpoint", type=int, default=50)
    parser.add_argument("--port", type=int, default=0, help="first TCP port (0: free ports)")
    parser.add_argument("--rtu", action="store_true", help="serve one RTU line on a pty")
    parser.add_argument("--baud", type=int, default=0, help="charge wire time at this baud rate")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
