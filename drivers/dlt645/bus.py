"""The owner of one RS-485 line of DL/T 645-2007 meters (and the relays inside them).

Contract: every request on the line goes through `Dlt645Bus.transact`, which
- serves one request at a time (`Dlt645Link`: written on a quiet line, `gap_s` at
  least after the previous answer, a late answer dropped), commands (relay
  control and its read-back) first, then the rest of a meter read already begun
  (`follow_up`: a read's fields go out back to back, so a round is one read of
  every meter), then routine reads, first come first served within a priority;
- retries a request that got no answer `retries` times (0 allowed), then raises
  `DeviceError` naming the device; a meter's error answer is returned, not retried;
- reopens a lost port on the next request; a port that cannot be opened is
  tried again after a capped, jittered back-off (`drivers.retry.Backoff`), during
  which requests fail at once; a line that will not fall quiet is a bus fault
  with its own back-off;
- counts in `stats` what it dropped (stray bytes, bad and foreign frames) and the
  time of the last round: every meter polled (`meter_polled`) once.

The schedule of a slow bus (one read about a quarter of a second at 2400 baud) is
the meters': each `Dlt645Meter.read()` reads `power_w`, and energy and the other
fields in turn, energy at least every `energy_every` reads. Each room's poll loop
awaits its meter's `read()`; those reads queue here in turn, so a round is one
read of every meter and each reading reaches the rules as it arrives.
Devices are made with `meter()` and `relay()`; each has a `health`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from drivers.dlt645.credentials import Credentials
from drivers.dlt645.devices import Dlt645Meter, Dlt645Relay, FieldSpec
from drivers.dlt645.frames import RELAY_CLOSE, RELAY_TRIP, Answer, Request, address_bytes
from drivers.dlt645.link import Dlt645Link
from drivers.errors import DeviceError, LinkDown, LinkError, LinkNoisy, LinkTimeout
from drivers.health import DeviceHealth, HealthSink
from drivers.retry import HALF_TO_FULL, Backoff
from drivers.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

PRIORITY_COMMAND = 0   # relay control and its read-back
PRIORITY_FOLLOW_UP = 1   # the rest of a meter's read, once its first request is answered
PRIORITY_POLL = 2   # routine reads

# DL/T 645 defaults (config.md): 2400 baud, 8 data bits, even parity, 1 stop bit.
DEFAULT_BAUDRATE = 2400
DEFAULT_TIMEOUT_S = 0.5
# Between retries of one request: short, the line is shared and slow.
RETRY_BACKOFF_S = 0.05
RETRY_BACKOFF_MAX_S = 0.5
# Between attempts to open a port that is gone (a USB adapter unplugged).
REOPEN_BACKOFF_S = 0.5
REOPEN_BACKOFF_MAX_S = 10.0
# After a line did not fall quiet: noise rarely stops at once.
NOISE_BACKOFF_S = 0.5
NOISE_BACKOFF_MAX_S = 10.0
# Closing a serial port drains it in a thread; do not let a wedged adapter hang shutdown.
CLOSE_TIMEOUT_S = 2.0


@dataclass
class Dlt645Stats:
    """Counters and the round time, for metrics and `gatewayd status`."""

    requests: int = 0
    failures: int = 0
    timeouts: int = 0
    reopens: int = 0   # the port was reopened after it was lost or could not be opened
    noise_faults: int = 0   # the line did not fall quiet before a request
    dropped_bytes: int = 0   # bytes that were part of no answer (noise, late answers)
    bad_frames: int = 0   # bad checksum or end byte
    foreign_frames: int = 0   # another address, or not the answer to the request
    rounds: int = 0
    round_s: float | None = None   # the last round: every polled meter read once


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    request: Request = field(compare=False)
    future: asyncio.Future[Answer] = field(compare=False)


class Dlt645Bus:
    """One line of DL/T 645 meters; `opener` makes its `Dlt645Link` (tests may pass one)."""

    def __init__(self, name: str, port: str, *, baudrate: int = DEFAULT_BAUDRATE,
                 parity: str = "E", stopbits: int = 1, timeout_s: float = DEFAULT_TIMEOUT_S,
                 retries: int = 1, gap_s: float = 0.0, energy_every: int = 5,
                 on_health: HealthSink | None = None,
                 opener: Callable[[], Coroutine[Any, Any, Dlt645Link]] | None = None) -> None:
        if parity not in ("N", "E", "O") or retries < 0 or energy_every < 1:
            raise ValueError("parity is N, E or O; retries >= 0; energy_every >= 1")
        self.name = name
        self.timeout_s = timeout_s
        self.retries = retries
        self.energy_every = energy_every
        self.on_health = on_health
        self.stats = Dlt645Stats()
        self.health: dict[str, DeviceHealth] = {}
        self._opener = opener or (lambda: Dlt645Link.open(
            name, port, baudrate=baudrate, parity=parity, stopbits=stopbits, timeout_s=timeout_s,
            gap_s=gap_s, on_dropped=self._bytes_dropped, on_frames=self._frames_dropped))
        self._link: Dlt645Link | None = None
        self._queue: asyncio.PriorityQueue[_Job] = asyncio.PriorityQueue()
        self._seq = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self._reopen = Backoff(REOPEN_BACKOFF_S, REOPEN_BACKOFF_MAX_S, jitter=0.2, rng=self._rng)
        self._noise = Backoff(NOISE_BACKOFF_S, NOISE_BACKOFF_MAX_S, jitter=0.2, rng=self._rng)
        self._closed_until = 0.0   # no request before this (reopen or noise back-off)
        self._closed_why = ""
        self._opened = False   # a port was opened before (the next open is a reopen)
        self._answered = False   # the port open now has answered a request
        self._round_start: float | None = None
        self._round_seen: set[str] = set()
        self._meters = 0

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start serving requests; the port opens on first use, so this never fails on I/O."""
        if self._task is None:
            self._task = asyncio.create_task(self._serve(), name=f"dlt645-{self.name}")

    @property
    def connected(self) -> bool:
        """True while the serial port is open."""
        return self._link is not None and self._link.is_open

    async def close(self) -> None:
        """Stop, close the port; queued requests fail with `LinkDown`."""
        task, self._task = self._task, None
        if task is not None:
            for error in await cancel_and_wait([task]):
                log.error("dlt645_worker_failed", bus=self.name, error=repr(error))
        await self._shut_line()
        closed = LinkDown("bus closed")
        while not self._queue.empty():
            self._answer(self._queue.get_nowait(), closed)

    async def _shut_line(self) -> None:
        link, self._link = self._link, None
        if link is None:
            return
        link.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await link.wait_closed()

    async def __aenter__(self) -> Dlt645Bus:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --------------------------------------------------------------- devices

    def _health(self, name: str, address: str) -> DeviceHealth:
        address_bytes(address)   # ValueError unless 12 digits
        if name in self.health:
            raise ValueError(f"device {name!r} already on bus {self.name}")
        h = DeviceHealth(device=name, bus=self.name, unit=address, on_change=self.on_health,
                         protocol="dlt645")
        self.health[name] = h
        return h

    def forget(self, name: str) -> None:
        """Stop tracking device `name` (gone from the config); unknown names are ignored."""
        self.health.pop(name, None)

    def meter(self, name: str, address: str, fields: Mapping[str, FieldSpec]) -> Dlt645Meter:
        """A `drivers.protocols.Meter` at `address` reading `fields` (energy_wh, power_w, ...)."""
        self._meters += 1
        return Dlt645Meter(self, name, address, fields, health=self._health(name, address),
                           energy_every=self.energy_every, stagger=self._meters - 1)

    def relay(self, name: str, address: str, credentials: Credentials, state: FieldSpec, *,
              tz: dt.tzinfo, control: tuple[int, int] = (RELAY_TRIP, RELAY_CLOSE)) -> Dlt645Relay:
        """A `drivers.protocols.Switch`: the relay of the meter at `address` (`on`: closed);
        `control` the N1 codes (off, on) of its profile."""
        return Dlt645Relay(self, name, address, credentials, state, tz=tz,
                           health=self._health(name, address), control=control)

    # ----------------------------------------------------------- transactions

    async def transact(self, device: str, request: Request, command: bool = False,
                       follow_up: bool = False) -> Answer:
        """The answer to `request` (an error answer included), or `DeviceError` after retries.

        `command` puts it before everything else, `follow_up` (a read's later fields)
        before routine reads."""
        priority = (PRIORITY_COMMAND if command else
                    PRIORITY_FOLLOW_UP if follow_up else PRIORITY_POLL)
        retry: Backoff | None = None   # made at the first failure: most requests need none
        for attempt in range(self.retries + 1):
            self.stats.requests += 1
            try:
                return await self._submit(request, priority)
            except LinkError as exc:
                self.stats.failures += 1
                self.stats.timeouts += isinstance(exc, LinkTimeout)
                error = f"{type(exc).__name__}: {exc} (address {request.address})"
                if time.monotonic() < self._closed_until:
                    break   # the port or the line is in back-off: retrying now cannot help
            if attempt < self.retries:
                retry = retry or Backoff(RETRY_BACKOFF_S, RETRY_BACKOFF_MAX_S,
                                         jitter=HALF_TO_FULL, rng=self._rng)
                await asyncio.sleep(retry.next_delay())
        raise DeviceError(device, error)

    async def _submit(self, request: Request, priority: int) -> Answer:
        if self._task is None:
            raise LinkDown(f"bus {self.name} not started")
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(priority, next(self._seq), request, fut))
        return await fut

    def meter_polled(self, device: str) -> None:
        """A meter's poll is over (answered or not): a round ends when one comes again."""
        now = time.monotonic()
        if self._round_start is None:
            self._round_start = now
        elif device in self._round_seen:
            self.stats.round_s = now - self._round_start
            self.stats.rounds += 1
            self._round_start, self._round_seen = now, set()
        self._round_seen.add(device)

    # ---------------------------------------------------------------- serving

    async def _serve(self) -> None:
        while True:
            first = await self._queue.get()
            # Back in the queue while the line settles: a command that comes meanwhile goes first.
            self._queue.put_nowait(first)
            try:
                link = await self._line()
                await link.settle()
            except LinkError as exc:
                self._line_failed(exc)
                self._answer(self._queue.get_nowait(), exc)
                continue
            job = self._queue.get_nowait()
            if job.future.done():   # its caller gave up while it was queued
                continue
            try:
                answer = await link.request(job.request, self.timeout_s)
            except LinkError as exc:
                self._line_failed(exc)
                self._answer(job, exc)
                continue
            self._line_works()
            self._answer(job, answer)

    @staticmethod
    def _answer(job: _Job, outcome: Answer | LinkError) -> None:
        if job.future.done():
            return
        if isinstance(outcome, LinkError):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)

    async def _line(self) -> Dlt645Link:
        if self._link is not None and self._link.is_open:
            return self._link
        now = time.monotonic()
        if now < self._closed_until:
            # No countdown: it would freeze into the meter_offline alarm's detail.
            raise LinkDown(f"{self._closed_why} (reopening)")
        self._link, self._answered = None, False
        try:
            self._link = await self._opener()
        except LinkDown:
            raise
        except Exception as exc:   # the one task serving the bus must not die of it
            raise LinkDown(f"cannot open the port: {type(exc).__name__}: {exc}") from exc
        self.stats.reopens += self._opened
        self._opened = True
        return self._link

    def _line_failed(self, exc: LinkError) -> None:
        """Back off after a port that would not open (or was lost before it answered)
        and after a line that would not fall quiet; a port lost after it answered
        is reopened at the next request (a pty's spurious EOF costs one request)."""
        if time.monotonic() < self._closed_until:
            return   # already backing off: this is the fail-fast answer
        if isinstance(exc, LinkNoisy):
            self.stats.noise_faults += 1
            self._back_off(self._noise, "dlt645_bus_noisy", exc)
        elif isinstance(exc, LinkDown):
            link, self._link = self._link, None
            if link is not None:
                link.close()
            if link is not None and self._answered:
                log.warning("dlt645_bus_port_lost", bus=self.name, error=str(exc))
            else:
                self._back_off(self._reopen, "dlt645_bus_open_failed", exc)

    def _back_off(self, backoff: Backoff, event: str, exc: LinkError) -> None:
        delay = backoff.next_delay()
        self._closed_until = time.monotonic() + delay
        self._closed_why = str(exc)
        level = log.warning if backoff.attempt == 1 else log.debug
        level(event, bus=self.name, error=str(exc), attempt=backoff.attempt,
              retry_in_s=round(delay, 2))

    def _line_works(self) -> None:
        self._answered = True
        for backoff, event in ((self._reopen, "dlt645_bus_reopened"),
                               (self._noise, "dlt645_bus_quiet")):
            if backoff.attempt:
                log.info(event, bus=self.name, after_failures=backoff.attempt)
                backoff.reset()

    def _bytes_dropped(self, n: int) -> None:
        self.stats.dropped_bytes += n

    def _frames_dropped(self, bad: int, foreign: int) -> None:
        self.stats.bad_frames += bad
        self.stats.foreign_frames += foreign
