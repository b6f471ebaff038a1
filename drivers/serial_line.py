"""A half-duplex serial line (RS-485): one request at a time, written only on a quiet line.

Contract: `HalfDuplexLine` is what every master on an RS-485 line shares, whatever
its protocol (Modbus RTU, DL/T 645): a subclass says how a request is framed and
how an answer is found in the bytes received (`_take`); this class owns the line
discipline that makes matching an answer to its request sound:

- A request is written only once the line has been quiet (no byte received)
  for `gap_s`, counted from the last byte received and from the end of the
  previous answer (or its timeout).
- After a request that got no answer (a timeout, garbage, a cancelled wait)
  its answer may still be on its way. The next request waits until the line
  has been quiet for as long as that request's timeout; bytes that arrive
  meanwhile restart the wait. A late answer is thus dropped, never taken for
  the next request.
- Bytes that arrive while no request is outstanding are dropped and counted.
  The receive buffer is cleared in the same step that writes a request, with
  no await between the quiet check and the write, and bytes still in the
  port's input queue (not yet read by the loop) count as "not quiet".
- A line that will not fall quiet (noise, a device stuck transmitting, a
  wrong baud rate) raises `LinkNoisy` after a bounded wait.
- The timeout counts from when the request has left the wire (its byte time is
  added), so a slow baud rate does not eat the device's answer time.

A line raises only `LinkError`s (`drivers.errors`); it does not retry, reopen or
queue: its bus does. Timeouts use `loop.call_later` on the answer's future (a
third of the cost of an `asyncio.timeout()` context on this hot path).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import structlog

from drivers.errors import LinkDown, LinkError, LinkNoisy, LinkTimeout
from drivers.transport_link import TransportLink

log = structlog.get_logger(__name__)

# A line not quiet within this (and twice the longest frame) past twice the quiet
# it needed is babbling, not finishing an answer: a bus fault, not a wait.
NOISY_LINE_MIN_S = 0.5

Expect = TypeVar("Expect")   # what a request says its answer must match
Answer = TypeVar("Answer")   # what `_take` finds in the bytes received
LineT = TypeVar("LineT", bound="HalfDuplexLine[Any, Any]")


def character_time_s(baudrate: int, parity: str = "N", stopbits: int = 1) -> float:
    """Seconds one byte takes on the wire: start + 8 data + parity + stop bits."""
    bits = 1 + 8 + (0 if parity == "N" else 1) + stopbits
    return bits / baudrate


async def open_serial(factory: Callable[[], LineT], port: str, *, baudrate: int, parity: str,
                      stopbits: int, timeout_s: float) -> LineT:
    """Open `port` (8 data bits, exclusively: an flock) with the protocol `factory()` makes;
    `LinkDown` if it cannot (no such port, no permission, settings the driver refuses, or
    another program holds it)."""
    import termios

    import serial
    import serial_asyncio_fast

    loop = asyncio.get_running_loop()
    made: list[LineT] = []

    def make() -> LineT:
        made.append(factory())
        return made[-1]

    try:
        async with asyncio.timeout(timeout_s + 1.0):
            # exclusive: an flock on the port, so that a second program (another
            # gatewayd, `gatewayd probe`) cannot interleave its bytes with ours.
            await serial_asyncio_fast.create_serial_connection(
                loop, make, port, baudrate=baudrate, parity=parity, stopbits=stopbits,
                bytesize=8, exclusive=True)
            # The transport calls connection_made on a later loop iteration.
            await made[0]._ready
    except (OSError, TimeoutError, ValueError, serial.SerialException, termios.error) as exc:
        raise LinkDown(f"cannot open {port}: {exc or 'timeout'}") from None
    return made[0]


class HalfDuplexLine(TransportLink, Generic[Expect, Answer]):
    """One serial line, one request at a time (see the module's contract).

    Subclasses set `MAX_FRAME` (bytes; a late answer may take that long) and
    `DROP_EVENT` (the log event for dropped bytes), and implement `_take`.
    """

    MAX_FRAME = 256
    DROP_EVENT = "serial_bytes_dropped"
    LOST = "serial port lost"
    LOST_QUIETLY = CLOSED = "serial port closed"

    def __init__(self, name: str, baudrate: int, parity: str, stopbits: int, *,
                 gap_s: float, on_dropped: Callable[[int], None] | None = None) -> None:
        super().__init__(name)
        self._char_s = character_time_s(baudrate, parity, stopbits)
        self._gap_s = gap_s
        self._buffer = bytearray()
        self._expect: Expect | None = None
        self._waiter: asyncio.Future[Answer] | None = None
        self._last_rx = -math.inf   # monotonic time of the last byte received
        self._idle_since = -math.inf   # end of the last answer, or of its wait
        self._owed_s = 0.0   # quiet owed after a request that got no answer
        self._on_dropped = on_dropped
        self.dropped_bytes = 0
        self._lock = asyncio.Lock()
        self._ready: asyncio.Future[None] = self._loop.create_future()

    def _take(self, buffer: bytearray, expect: Expect) -> Answer | None:
        """The answer `expect`ed, found in `buffer` (the bytes since the request),
        or None while more are needed; raises `LinkError` for bytes that cannot
        be it. May drop bytes from `buffer` (after counting them, `_dropped`)."""
        raise NotImplementedError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self._ready.done():
            self._ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._last_rx = time.monotonic()
        waiter = self._waiter
        if waiter is None or waiter.done() or self._expect is None:
            # A late answer, the rest of a bad one, or noise: no request is waiting.
            self._dropped(len(data))
            return
        self._buffer += data
        try:
            answer = self._take(self._buffer, self._expect)
        except LinkError as exc:
            self._fail_waiting(exc)
            return
        if answer is not None:
            waiter.set_result(answer)

    def _dropped(self, n: int) -> None:
        if n <= 0:
            return
        self.dropped_bytes += n
        if self._on_dropped is not None:
            self._on_dropped(n)
        # The first drop on this port is worth a line (a device answering after its
        # timeout, or a noisy line); the rest are counted (metrics), at DEBUG here.
        level = log.warning if self.dropped_bytes == n else log.debug
        level(self.DROP_EVENT, link=self.name, bytes=n, total=self.dropped_bytes,
              detail="not part of an answer: a late answer or noise")

    def _quiet_at(self) -> float:
        """When the line will have been quiet long enough for the next request."""
        need = max(self._gap_s, self._owed_s)
        return max(self._last_rx, self._idle_since) + need

    def _input_pending(self) -> bool:
        """Bytes in the port's input queue that the loop has not read yet."""
        port = getattr(self._transport, "serial", None)
        if port is None:
            return False
        try:
            return bool(port.in_waiting)
        except (OSError, ValueError, TypeError):   # closing, or not a real port
            return False

    def quiet(self) -> bool:
        """True when a request could be written now (see the module's contract)."""
        return time.monotonic() >= self._quiet_at() and not self._input_pending()

    async def settle(self) -> None:
        """Return once the line is quiet enough for the next request.

        Raises `LinkNoisy` when it does not fall quiet within a bound (twice the
        quiet needed, plus twice the longest frame's wire time, at least
        `NOISY_LINE_MIN_S`), and `LinkDown` if the port closes meanwhile.
        """
        need = max(self._gap_s, self._owed_s)
        start = time.monotonic()
        deadline = start + 2 * need + max(NOISY_LINE_MIN_S, 2 * self.MAX_FRAME * self._char_s)
        while True:
            if not self.is_open:
                raise LinkDown("serial port not open")
            now = time.monotonic()
            if self._input_pending():
                self._last_rx = now   # the loop reads them soon (and drops them)
            quiet_at = self._quiet_at()
            if now >= quiet_at:
                return
            if quiet_at > deadline:
                raise LinkNoisy(f"the line was not quiet for {need * 1000:.1f} ms within "
                                f"{deadline - start:.1f} s")
            await asyncio.sleep(quiet_at - now)

    async def _exchange(self, frame: bytes, expect: Expect, timeout_s: float) -> Answer:
        """Write `frame` on a quiet line and return the answer `_take` finds for `expect`."""
        async with self._lock:
            await self.settle()
            assert self._transport is not None
            # No await between the quiet check above and the write below: whatever
            # arrived before this instant belongs to no request of ours.
            self._buffer.clear()
            self._expect = expect
            self._owed_s = 0.0
            fut: asyncio.Future[Answer] = self._loop.create_future()
            self._waiter = fut
            wait = timeout_s + len(frame) * self._char_s
            timer = self._loop.call_later(wait, self._expire, fut, timeout_s)
            answered = False
            try:
                self._transport.write(frame)
                answer = await fut
                answered = True
                return answer
            finally:
                timer.cancel()
                self._waiter = None
                self._expect = None
                self._idle_since = time.monotonic()
                if not answered:
                    # Its answer may still come: the line must stay quiet as long as
                    # the device was given to answer before the next request.
                    self._owed_s = timeout_s

    def _expire(self, fut: asyncio.Future[Answer], timeout_s: float) -> None:
        if not fut.done():
            fut.set_exception(LinkTimeout(f"no answer in {timeout_s:g} s"))

    def _fail_waiting(self, exc: LinkError) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
