"""The owner of one configured Modbus bus (an RS-485 line or a Modbus TCP endpoint).

Contract: every request on the bus goes through `ModbusBus.transact`, which
- orders requests by priority: commands (switch writes and their read-back) before
  routine polls, first come first served within a priority;
- keeps an RTU line to one request at a time, each written only on a quiet line
  (`RtuLink`: a late answer is dropped, never taken for the next request), and a
  TCP endpoint to `max_in_flight` requests at once (one per connection: many
  Modbus TCP servers and gateways, pymodbus' own included, do not pipeline);
- leaves at least `gap_s` between the end of an answer (or a timeout) and the
  next request (on TCP this means one request at a time);
- a line that will not fall quiet (`LinkNoisy`) is a bus fault: its requests
  fail at once for a capped, jittered back-off;
- retries a failed request `retries` times with capped back-off, then raises
  `DeviceError` naming the device;
- reopens a lost connection or port on the next request, with capped back-off
  between failed attempts during which requests fail at once. A connection
  counts as made once it has answered: one that is lost before (a server that
  accepts and closes at once) is a failed attempt, so a dead endpoint costs a
  connection every RECONNECT_BACKOFF_MAX_S at most, never one per request.

Devices are made with `meter()`, `switch()` and `counter()`; each has a `health`.
What is retried, the back-offs and their log lines: `drivers.modbus.faults`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from drivers.errors import (
    DeviceError,
    FrameError,
    LinkDown,
    LinkError,
    LinkGarbage,
    LinkNoisy,
    LinkTimeout,
    ModbusExceptionError,
)
from drivers.health import DeviceHealth, HealthSink
from drivers.modbus.devices import ModbusCounter, ModbusMeter, ModbusSwitch, ModbusSwitchBank
from drivers.modbus.faults import BusOutages, describe_failure, request_backoff, worth_retrying
from drivers.modbus.frames.pdu import (
    ExceptionResponse,
    ReadRequest,
    WriteCoil,
    WriteRegister,
    WriteRegisters,
    decode_response,
)
from drivers.modbus.frames.reply import check_write_reply, read_coils_reply, read_registers_reply
from drivers.modbus.link import Link, RtuLink, TcpLink
from drivers.profile import Profile
from drivers.retry import Backoff
from drivers.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

PRIORITY_COMMAND = 0  # switch writes and their read-back
PRIORITY_POLL = 1  # routine reads

# Closing a serial port drains it in a thread; do not let a wedged adapter hang shutdown.
CLOSE_TIMEOUT_S = 2.0
# Default TCP concurrency: enough to hide one round trip, few enough for small gateways.
DEFAULT_MAX_IN_FLIGHT = 2

WriteRequest = WriteCoil | WriteRegister | WriteRegisters
Request = ReadRequest | WriteRequest


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    unit: int = field(compare=False)
    pdu: bytes = field(compare=False)
    future: asyncio.Future[bytes] = field(compare=False)


@dataclass
class BusStats:
    """Counters a daemon may export as metrics."""

    requests: int = 0
    failures: int = 0
    timeouts: int = 0
    reconnects: int = 0
    noise_faults: int = 0  # an RTU line did not fall quiet before a request
    dropped_bytes: int = 0  # RTU bytes with no request waiting (late answers, noise)


class ModbusBus:
    """One bus owner; construct with `ModbusBus.tcp(...)` or `ModbusBus.rtu(...)`."""

    def __init__(
        self,
        name: str,
        opener: Callable[[], Coroutine[Any, Any, Link]],
        *,
        workers: int,
        timeout_s: float,
        retries: int,
        on_health: HealthSink | None = None,
        gap_s: float = 0.0,
        stats: BusStats | None = None,
    ) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.retries = retries
        self.on_health = on_health
        self.stats = stats or BusStats()
        # TCP: the pause the bus keeps after each answer (an RtuLink keeps its own).
        self._gap_s = gap_s
        self._idle_since = 0.0
        self._opener = opener
        self._n_workers = workers
        self._queue: asyncio.PriorityQueue[_Job] = asyncio.PriorityQueue()
        self._seq = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self._links: list[Link | None] = [None] * workers
        self._answered = [False] * workers  # the connection has answered a request
        self._rng = random.Random()
        self._outages = BusOutages(name, self._rng)
        self.health: dict[str, DeviceHealth] = {}

    # ------------------------------------------------------------ construction

    @classmethod
    def tcp(cls, name: str, host: str, port: int = 502, *, timeout_s: float = 1.0,
            retries: int = 1, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
            gap_s: float = 0.0, on_health: HealthSink | None = None) -> ModbusBus:
        """A Modbus TCP endpoint with up to `max_in_flight` requests at once, or
        one at a time `gap_s` apart when `gap_s` > 0 (a device that needs a pause)."""
        async def opener() -> Link:
            return await TcpLink.connect(name, host, port, timeout_s)
        workers = 1 if gap_s > 0 else max(1, max_in_flight)
        return cls(name, opener, workers=workers, timeout_s=timeout_s,
                   retries=retries, on_health=on_health, gap_s=gap_s)

    @classmethod
    def rtu(cls, name: str, port: str, *, baudrate: int = 9600, parity: str = "N",
            stopbits: int = 1, timeout_s: float = 0.3, retries: int = 1,
            gap_s: float = 0.0, on_health: HealthSink | None = None) -> ModbusBus:
        """An RS-485 line in RTU mode (one request at a time, on a line quiet for
        the 3.5-character gap or `gap_s` if larger; see `RtuLink`)."""
        if parity not in ("N", "E", "O"):
            raise ValueError(f"parity must be N, E or O, got {parity!r}")
        stats = BusStats()

        def dropped(n: int) -> None:
            stats.dropped_bytes += n

        async def opener() -> Link:
            return await RtuLink.open(name, port, baudrate=baudrate, parity=parity,
                                      stopbits=stopbits, timeout_s=timeout_s, gap_s=gap_s,
                                      on_dropped=dropped)
        return cls(name, opener, workers=1, timeout_s=timeout_s, retries=retries,
                   on_health=on_health, stats=stats)

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the bus' workers. Connections open on first use, so this never fails on I/O."""
        if self._tasks:
            return
        for i in range(self._n_workers):
            self._tasks.append(asyncio.create_task(self._worker(i), name=f"modbus-{self.name}-{i}"))

    async def close(self) -> None:
        """Stop the workers and close connections; queued requests fail with `DeviceError`."""
        tasks, self._tasks = self._tasks, []
        for error in await cancel_and_wait(tasks):
            log.error("modbus_worker_failed", bus=self.name, error=repr(error))
        links = [link for link in self._links if link is not None]
        self._links = [None] * len(self._links)
        for link in links:
            link.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                for link in links:
                    await link.wait_closed()
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(LinkDown("bus closed"))

    async def __aenter__(self) -> ModbusBus:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True when at least one connection (or the serial port) is open."""
        return any(link is not None and link.is_open for link in self._links)

    # --------------------------------------------------------------- devices

    def _health(self, name: str, unit: int) -> DeviceHealth:
        if name in self.health:
            raise ValueError(f"device {name!r} already on bus {self.name}")
        h = DeviceHealth(device=name, bus=self.name, unit=unit, on_change=self.on_health)
        self.health[name] = h
        return h

    def forget(self, name: str) -> None:
        self.health.pop(name, None)   # gone from the config (a reload): no longer tracked

    def meter(self, name: str, unit: int, profile: Profile) -> ModbusMeter:
        """A `drivers.protocols.Meter` at `unit` read per `profile` (kind meter)."""
        return ModbusMeter(self, name, _check_unit(unit), profile, health=self._health(name, unit))

    def switch(self, name: str, unit: int, profile: Profile, channel: int = 0,
               invert: bool = False) -> ModbusSwitch:
        """A `drivers.protocols.Switch` on `channel` of `unit` (profile kind switch)."""
        return ModbusSwitch(self, name, _check_unit(unit), profile, channel=channel,
                            invert=invert, health=self._health(name, unit))

    def switch_bank(self, name: str, switches: Sequence[ModbusSwitch]) -> ModbusSwitchBank:
        """A `drivers.protocols.SwitchBank`: `switches` (one unit, one profile) read together."""
        return ModbusSwitchBank(self, name, _check_unit(switches[0].unit), switches)

    def counter(self, name: str, unit: int, profile: Profile, channel: int = 0) -> ModbusCounter:
        """A `drivers.protocols.Counter` on `channel` of `unit` (profile kind counter)."""
        return ModbusCounter(self, name, _check_unit(unit), profile, channel=channel,
                             health=self._health(name, unit))

    # ----------------------------------------------------------- transactions

    async def read_registers(self, device: str, unit: int, request: ReadRequest,
                             command: bool = False) -> tuple[int, ...]:
        """Registers answering a function 3/4 `request`, or `DeviceError`."""
        pdu = await self.transact(device, unit, request, _priority(command))
        words: tuple[int, ...] = self._decoded(device, request, read_registers_reply, pdu)
        return words

    async def read_coils(self, device: str, unit: int, request: ReadRequest,
                         command: bool = False) -> tuple[bool, ...]:
        """Coils answering a function 1 `request`, or `DeviceError`."""
        pdu = await self.transact(device, unit, request, _priority(command))
        bits: tuple[bool, ...] = self._decoded(device, request, read_coils_reply, pdu)
        return bits

    async def write(self, device: str, unit: int, request: WriteRequest,
                    command: bool = True) -> None:
        """Perform a write and check its acknowledgement, or `DeviceError`."""
        pdu = await self.transact(device, unit, request, _priority(command))
        self._decoded(device, request, check_write_reply, pdu)

    @staticmethod
    def _decoded(device: str, request: Any, decode: Callable[[Any, bytes], Any], pdu: bytes) -> Any:
        try:
            return decode(request, pdu)
        except FrameError as exc:
            raise DeviceError(device, f"bad answer: {exc}") from None

    async def transact(self, device: str, unit: int, request: Request, priority: int) -> bytes:
        """Send `request` to `unit` with retries; the raw answer PDU (exceptions raised).

        Raises `DeviceError(device, ...)` after the last retry, or at once for an
        exception response that retrying cannot fix (e.g. illegal address).
        """
        pdu = request.encode()
        attempts = self.retries + 1
        retry: Backoff | None = None  # made at the first failure: most requests need none
        for attempt in range(attempts):
            self.stats.requests += 1
            try:
                answer = await self._submit(unit, pdu, priority)
                if answer[:1] and answer[0] & 0x80:
                    # Raised here rather than by the caller so that busy devices are retried.
                    response = decode_response(answer)
                    if isinstance(response, ExceptionResponse):
                        raise ModbusExceptionError(response)
                return answer
            except (ModbusExceptionError, FrameError, LinkError) as exc:
                self.stats.failures += 1
                if isinstance(exc, LinkTimeout):
                    self.stats.timeouts += 1
                error = describe_failure(exc, unit)
                if not worth_retrying(exc, bus_down=self._outages.down):
                    raise DeviceError(device, error) from None
            if attempt + 1 < attempts:
                if retry is None:
                    retry = request_backoff(self._rng)
                await asyncio.sleep(retry.next_delay())
        raise DeviceError(device, error)

    async def _submit(self, unit: int, pdu: bytes, priority: int) -> bytes:
        if not self._tasks:
            raise LinkDown(f"bus {self.name} not started")
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(priority, next(self._seq), unit, pdu, fut))
        return await fut

    # ---------------------------------------------------------------- workers

    async def _worker(self, index: int) -> None:
        while True:
            job = await self._queue.get()
            if job.future.done():  # the caller gave up (cancelled) while queued
                continue
            if (noisy := self._outages.noisy()) is not None:
                job.future.set_exception(noisy)
                continue
            try:
                link = await self._link(index)
                if not self._may_send(link):
                    # Wait with the job queued again, so that a command arriving
                    # meanwhile (a cut) goes first once the bus may send.
                    self._queue.put_nowait(job)
                    await self._until_may_send(link)
                    job = self._queue.get_nowait()
                    if job.future.done():
                        continue
                answer = await link.request(job.unit, job.pdu, self.timeout_s)
                if not self._answered[index]:
                    self._link_works(index)
            except LinkError as exc:
                # Garbage desynchronises a TCP stream, which must be replaced; on a
                # serial line the next request starts clean on a quiet line, so
                # one noisy device does not close the port under all the others.
                if isinstance(exc, LinkDown) or (
                        isinstance(exc, LinkGarbage) and not isinstance(link, RtuLink)):
                    self._drop_link(index, exc)
                elif isinstance(exc, LinkNoisy):
                    self.stats.noise_faults += 1
                    self._outages.line_noisy(exc)
                if not job.future.done():
                    job.future.set_exception(exc)
                continue
            finally:
                self._idle_since = time.monotonic()
            self._outages.line_quiet()
            if not job.future.done():
                job.future.set_result(answer)

    def _may_send(self, link: Link) -> bool:
        if isinstance(link, RtuLink):
            return link.quiet()
        return time.monotonic() >= self._idle_since + self._gap_s

    async def _until_may_send(self, link: Link) -> None:
        """RTU: until the line is quiet (`LinkNoisy` if it will not be); TCP: `gap_s`
        after the last answer."""
        if isinstance(link, RtuLink):
            await link.settle()
        else:
            await asyncio.sleep(max(0.0, self._idle_since + self._gap_s - time.monotonic()))

    async def _link(self, index: int) -> Link:
        link = self._links[index]
        if link is not None and link.is_open:
            return link
        self._outages.refuse_connect()
        try:
            link = await self._opener()
        except LinkDown as exc:
            self._outages.connect_failed(str(exc))
            raise
        self._links[index] = link
        self._answered[index] = False
        log.debug("modbus_bus_connected", bus=self.name, connection=index)
        return link

    def _link_works(self, index: int) -> None:
        """The connection answered a request: the bus is up again."""
        self._answered[index] = True
        if self._outages.answered():
            self.stats.reconnects += 1

    def _drop_link(self, index: int, exc: LinkError) -> None:
        link = self._links[index]
        if link is None:
            return
        self._links[index] = None
        link.close()
        self._outages.disconnected(exc, had_answered=self._answered[index])


def _priority(command: bool) -> int:
    return PRIORITY_COMMAND if command else PRIORITY_POLL


def _check_unit(unit: int) -> int:
    if not 0 <= unit <= 247:
        raise ValueError(f"Modbus unit id must be 0..247, got {unit}")
    return unit

