"""A simulated RS-485 line of DL/T 645-2007 meters with relays, on a pseudo-terminal.

For tests, benchmarks and the demo. `SimDltLine` serves several meters (each its
own 12-digit address) on one pty, as on RS-485: the gateway opens `client_port`.
It keeps real byte timing at the configured baud rate (a Linux pty has none): a
request is taken as arriving once its bytes would have crossed the wire (11 bits a
byte at 8E1), the meter answers `turnaround_s` later, and the answer's bytes are
written one by one at the wire's pace, one direction at a time.

A meter (`SimDltMeter`) has the physics of `sim.modbus_units.SimMeter` (power drawn
while its relay is closed, energy integrated when read), answers reads of the
data identifiers of the shipped profiles (energy, power, voltage, current, PF,
status word 3) and its address (04000401), and relay control with its password and
deadline (on the meter's clock, `tz`). Faults per meter: `silent` (no answer), a password that differs
from the gateway's (DC, error 04), `stuck` (the relay answers 9C and does not
move), `late_s` (answers after that delay), `foreign` (answers with another
address), `noise` (bytes sent before each answer); and `SimDltLine.inject` for
noise on the line. The wildcard read of the address (13 to AA..AA) is answered by the
one meter of the line, garbled when several answer at once. `wire` logs (monotonic
time, "request"/"answer", bytes).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import os
import termios
import time
import tty
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from drivers.dlt645.credentials import Credentials
from drivers.dlt645.frames import (
    ERR_NO_DATA,
    ERR_OTHER,
    ERR_PASSWORD,
    READ,
    RELAY,
    RELAY_CLOSE,
    STATUS_WORD_3,
    AddressAnswer,
    Answer,
    ErrorAnswer,
    Frame,
    ReadAddress,
    ReadAnswer,
    ReadRequest,
    RelayAck,
    RelayCommand,
    address_bytes,
    bcd_bytes,
    decode_request,
    scan,
)
from drivers.errors import FrameError
from drivers.serial_line import character_time_s
from sim.modbus_units import SimMeter

DEFAULT_CREDENTIALS = Credentials(level=2, password=0x123456, operator=1)
# Data identifiers of the shipped profiles, with (bytes, decimals) of their BCD.
DI_ENERGY = 0x00010000   # kWh, XXXXXX.XX
DI_POWER = 0x02030000   # kW, signed XX.XXXX
DI_VOLTAGE = 0x02010100   # V, XXX.X
DI_CURRENT = 0x02020100   # A, signed XXX.XXX
DI_PF = 0x02060000   # signed X.XXX
DI_ADDRESS = 0x04000401   # the meter's communication address, low byte first
RELAY_OPEN_BIT = 0x10   # status word 3, bit 4: the relay is open
RELAY_CMD_BIT = 0x40   # status word 3, bit 6: the last command was a trip


def pty_parity(wanted: str = "E") -> str:
    """`wanted` if this kernel's ptys take a parity setting, else "N": some refuse
    PARENB with EINVAL, and a pty has no parity bits anyway (the simulator charges
    the wire time of the configured parity whatever the pty was set to)."""
    master, slave = os.openpty()
    try:
        attrs = termios.tcgetattr(slave)
        attrs[2] |= termios.PARENB
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        return wanted
    except termios.error:
        return "N"
    finally:
        os.close(master)
        os.close(slave)


@dataclass
class SimDltMeter:
    """One meter with its relay (closed: the room is supplied)."""

    address: str
    physics: SimMeter = field(default_factory=lambda: SimMeter(unit=0, voltage_v=220.0))
    credentials: Credentials = DEFAULT_CREDENTIALS
    tz: dt.tzinfo = dt.UTC   # the meter's clock, for the relay command's deadline
    silent: bool = False
    stuck: bool = False
    late_s: float = 0.0
    foreign: str | None = None
    noise: bytes = b""
    tripped_by_command: bool = False
    commands: list[RelayCommand] = field(default_factory=list)

    @property
    def relay_closed(self) -> bool:
        return self.physics.supplied

    def values(self, now: float) -> dict[int, bytes]:
        """Every data identifier it answers, at `now` (monotonic)."""
        m = self.physics
        m.advance(now)
        power = m.drawn_w
        current = power / (m.voltage_v * m.pf) if power and m.pf > 0 else 0.0
        status = (0 if m.supplied else RELAY_OPEN_BIT) | (
            RELAY_CMD_BIT if self.tripped_by_command else 0)
        return {
            # A register counts whole hundredths (the epsilon: 1234.56 * 100 in binary).
            DI_ENERGY: bcd_bytes(int(m.energy_kwh * 100 + 1e-6), 4),
            DI_POWER: bcd_bytes(round(power * 10), 3, signed=True),
            DI_VOLTAGE: bcd_bytes(round(m.voltage_v * 10), 2),
            DI_CURRENT: bcd_bytes(round(current * 1000), 3, signed=True),
            DI_PF: bcd_bytes(round(m.pf * 1000), 2, signed=True),
            STATUS_WORD_3: status.to_bytes(2, "little"),
            DI_ADDRESS: address_bytes(self.address),
        }

    def answer(self, request: ReadRequest | RelayCommand, now: float) -> Answer:
        """What the meter answers (before faults that change the frame)."""
        if isinstance(request, ReadRequest):
            value = self.values(now).get(request.di)
            if value is None:
                return ErrorAnswer(self.address, READ, ERR_NO_DATA)
            return ReadAnswer(self.address, request.di, value)
        self.commands.append(request)
        c = self.credentials
        if (request.level, request.password) != (c.level, c.password):
            return ErrorAnswer(self.address, RELAY, ERR_PASSWORD)
        if request.deadline < dt.datetime.now(self.tz).replace(tzinfo=None):
            return ErrorAnswer(self.address, RELAY, ERR_OTHER)   # the command has expired
        if not self.stuck:
            closed = request.action == RELAY_CLOSE
            self.physics.set_supplied(closed, now)
            self.tripped_by_command = not closed
        return RelayAck(self.address)


class SimDltLine:
    """Meters on one pty pair; the gateway opens `client_port` (see the module docstring)."""

    def __init__(self, meters: Sequence[SimDltMeter] = (), *, baudrate: int = 2400,
                 parity: str = "E", stopbits: int = 1, turnaround_s: float = 0.02,
                 record: int = 10_000, link: Path | None = None) -> None:
        self.meters = {m.address: m for m in meters}
        self.link = link   # a stable path to the pty (as udev's /dev/serial/by-id), or None
        self.baudrate = baudrate
        self.turnaround_s = turnaround_s
        self.char_s = character_time_s(baudrate, parity, stopbits)
        self.wire: collections.deque[tuple[float, str, bytes]] = collections.deque(maxlen=record)
        self.requests = 0   # requests for a meter of this line
        self.wire_bytes = 0   # every byte that crossed the wire, both ways
        self.client_port = ""
        self._master = self._slave = -1
        self._rx = bytearray()
        self._wire_free = 0.0   # loop time when the wire is free again
        self._held: set[asyncio.TimerHandle] = set()

    def add(self, meter: SimDltMeter) -> SimDltMeter:
        self.meters[meter.address] = meter
        return meter

    async def start(self) -> None:
        """Create the pty pair and start answering."""
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.client_port = os.ttyname(self._slave)
        if self.link is not None:
            self.link.unlink(missing_ok=True)
            self.link.symlink_to(self.client_port)
            self.client_port = str(self.link)
        asyncio.get_running_loop().add_reader(self._master, self._on_bytes)

    async def unplug(self) -> None:
        """The USB adapter pulled out: the pty goes (the gateway's reads fail), and `link` too."""
        await self.stop()
        if self.link is not None:
            self.link.unlink(missing_ok=True)

    async def replug(self) -> None:
        """Plugged in again: a new pty behind the same `link`."""
        await self.start()

    async def stop(self) -> None:
        """Stop answering, close the ptys."""
        for handle in self._held:   # never write into a closed (maybe reused) fd
            handle.cancel()
        self._held.clear()
        if self._master >= 0:
            asyncio.get_running_loop().remove_reader(self._master)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._master = self._slave = -1

    def line_settings(self) -> tuple[int, str, int]:
        """(baud, parity, stop bits) the gateway set on its end, from termios."""
        _, _, cflag, _, ispeed, _, _ = termios.tcgetattr(self._slave)
        speeds = {getattr(termios, f"B{b}"): b for b in (1200, 2400, 4800, 9600, 19200)}
        parity = "N" if not cflag & termios.PARENB else ("O" if cflag & termios.PARODD else "E")
        return speeds.get(ispeed, -1), parity, 2 if cflag & termios.CSTOPB else 1

    def inject(self, data: bytes) -> None:
        """Put `data` on the line towards the gateway now (noise, a stray device)."""
        self._send(data, asyncio.get_running_loop().time(), "noise")

    def _on_bytes(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, OSError):
            return
        loop = asyncio.get_running_loop()
        # The client wrote at once; on the wire its bytes take their time.
        start = max(loop.time(), self._wire_free)
        self._wire_free = start + len(data) * self.char_s
        self.wire_bytes += len(data)
        self.wire.append((time.monotonic(), "request", data))
        self._rx += data
        while True:
            found = scan(self._rx)
            del self._rx[:found.used]
            if found.frame is None:
                return
            with contextlib.suppress(FrameError):
                self._serve(decode_request(found.frame), self._wire_free)

    def _serve(self, request: ReadRequest | RelayCommand | ReadAddress, received_at: float) -> None:
        if isinstance(request, ReadAddress):
            self._serve_address(received_at)
            return
        meter = self.meters.get(request.address)
        if meter is None or meter.silent:
            return
        self.requests += 1
        answer = meter.answer(request, time.monotonic())
        frame = answer.frame()
        if meter.foreign is not None:
            frame = Frame(meter.foreign, frame.control, frame.data)
        self._send(meter.noise + frame.encode(),
                   received_at + self.turnaround_s + meter.late_s, "answer")

    def _serve_address(self, received_at: float) -> None:
        """The wildcard read of the address: every meter answers at once; one alone is
        heard, several garble each other on the wire (a frame with a bad checksum)."""
        heard = [m for m in self.meters.values() if not m.silent]
        if not heard:
            return
        self.requests += 1
        frame = bytearray(AddressAnswer(heard[0].address).frame().encode())
        if len(heard) > 1:
            frame[-2] ^= 0xFF
        self._send(bytes(frame), received_at + self.turnaround_s, "answer")

    def _send(self, data: bytes, at: float, what: str) -> None:
        """Write `data` a byte at a time at the wire's pace, from loop time `at`."""
        loop = asyncio.get_running_loop()
        start = max(at, self._wire_free, loop.time())
        self._wire_free = start + len(data) * self.char_s
        self.wire_bytes += len(data)
        for i in range(len(data)):
            last = i == len(data) - 1
            self._later(start + (i + 1) * self.char_s, data[i:i + 1],
                        (what, data) if last else None)

    def _later(self, when: float, byte: bytes, record: tuple[str, bytes] | None) -> None:
        def write() -> None:
            self._held.discard(handle)
            with contextlib.suppress(OSError):
                os.write(self._master, byte)
            if record is not None:   # logged as the gateway has it: whole
                self.wire.append((time.monotonic(), *record))

        handle = asyncio.get_running_loop().call_at(when, write)
        self._held.add(handle)
