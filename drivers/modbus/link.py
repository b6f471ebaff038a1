"""Modbus transports: one TCP connection or one serial line, request in, PDU out.

Contract of this layer: `request(unit, pdu, timeout_s)` sends one request PDU and
returns the response PDU of the same unit (and, on TCP, transaction), or raises a
`LinkError`: `LinkTimeout` (no answer in time), `LinkDown` (not connected, or the
connection was lost), `LinkGarbage` (bytes that are not a Modbus answer),
`LinkNoisy` (an RTU line that does not fall quiet). On RTU an answer is only ever
taken for the request it answers (see `RtuLink`). A link does not retry, reconnect
or queue; `drivers.modbus.bus` does. A link that raised `LinkDown` or `LinkGarbage`
on TCP is closed and must be replaced.

Timeouts here use `loop.call_later` on the response future rather than
`asyncio.timeout()`: this is the per-request hot path (500 requests/s in a
building) and a timer handle is a third of the cost of a timeout context.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import structlog

from drivers.errors import FrameError, LinkDown, LinkError, LinkGarbage, LinkNoisy, LinkTimeout
from drivers.modbus.frames.adu import (
    character_time_s,
    decode_rtu,
    encode_rtu,
    encode_tcp,
    frame_gap_s,
    rtu_response_length,
    split_tcp,
)

log = structlog.get_logger(__name__)

# The longest RTU frame, in bytes: a late answer may take this long to arrive.
RTU_MAX_FRAME = 256
# A line not quiet within this (and twice the longest frame) past twice the quiet
# it needed is babbling, not finishing an answer: a bus fault, not a wait.
NOISY_LINE_MIN_S = 0.5


class TcpLink(asyncio.Protocol):
    """One Modbus TCP connection; several requests may be in flight (matched by transaction id)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiters: dict[int, tuple[int, asyncio.Future[bytes]]] = {}
        self._next_tid = 0
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._lost: asyncio.Future[None] = self._loop.create_future()

    @classmethod
    async def connect(cls, name: str, host: str, port: int, timeout_s: float) -> TcpLink:
        """Open a connection; `LinkDown` when it cannot be made within `timeout_s`."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                _, link = await loop.create_connection(lambda: cls(name), host, port)
        except (OSError, TimeoutError) as exc:
            raise LinkDown(f"cannot connect to {host}:{port}: {exc or 'timeout'}") from None
        return link

    @property
    def is_open(self) -> bool:
        """True until the connection is closed or lost."""
        return self._transport is not None and not self._closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket

            # Requests are small and latency-bound: do not let Nagle hold them back.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if not self._lost.done():
            self._lost.set_result(None)
        self._fail_all(LinkDown(f"connection lost: {exc}" if exc else "connection closed by peer"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._buffer:
            try:
                frame, used = split_tcp(self._buffer)
            except FrameError as exc:
                # A TCP byte stream cannot be resynchronised: drop the connection.
                self._fail_all(LinkGarbage(str(exc)))
                self.close()
                return
            if frame is None:
                return
            del self._buffer[:used]
            waiter = self._waiters.pop(frame.transaction, None)
            if waiter is None:
                log.debug("modbus_late_reply", link=self.name, transaction=frame.transaction)
                continue
            unit, fut = waiter
            if fut.done():
                continue
            if frame.unit != unit:
                fut.set_exception(LinkGarbage(f"reply from unit {frame.unit}, expected {unit}"))
            else:
                fut.set_result(frame.pdu)

    async def request(self, unit: int, pdu: bytes, timeout_s: float) -> bytes:
        """Send `pdu` to `unit` and return the response PDU (see module contract)."""
        if not self.is_open:
            raise LinkDown("not connected")
        assert self._transport is not None
        self._next_tid = (self._next_tid + 1) & 0xFFFF
        tid = self._next_tid
        fut: asyncio.Future[bytes] = self._loop.create_future()
        self._waiters[tid] = (unit, fut)
        timer = self._loop.call_later(timeout_s, self._expire, tid, fut, timeout_s)
        try:
            self._transport.write(encode_tcp(tid, unit, pdu))
            return await fut
        finally:
            timer.cancel()
            self._waiters.pop(tid, None)

    def _expire(self, tid: int, fut: asyncio.Future[bytes], timeout_s: float) -> None:
        self._waiters.pop(tid, None)
        if not fut.done():
            fut.set_exception(LinkTimeout(f"no answer in {timeout_s:g} s"))

    def _fail_all(self, exc: LinkError) -> None:
        waiters, self._waiters = self._waiters, {}
        for _, fut in waiters.values():
            if not fut.done():
                fut.set_exception(exc)

    def close(self) -> None:
        """Close the connection; waiting requests fail with `LinkDown`."""
        self._closed = True
        if self._transport is not None:
            self._transport.close()
        self._fail_all(LinkDown("connection closed"))

    async def wait_closed(self) -> None:
        """Return once the connection is closed (after `close()` or loss)."""
        if self._transport is not None:
            await asyncio.shield(self._lost)


class RtuLink(asyncio.Protocol):
    """One RS-485 line in RTU mode: strictly one request at a time, on a quiet line.

    RTU answers carry no transaction id, so an answer is matched to its request by
    timing alone, and the line discipline is what makes that sound:

    - A request is written only once the line has been quiet (no byte received)
      for `gap_s`: the 3.5-character frame gap at the line's speed, or the
      configured `gap_s` if larger, counted from the last byte received and from
      the end of the previous answer (or its timeout).
    - After a request that got no answer (a timeout, garbage, a cancelled wait)
      its answer may still be on its way. The next request waits until the line
      has been quiet for as long as that request's timeout; bytes that arrive
      meanwhile restart the wait. A late answer is thus dropped, never taken for
      the next request, even one to the same unit and function (two channels of
      one pulse counter look alike on the wire).
    - Bytes that arrive while no request is outstanding are dropped and counted.
      The receive buffer is cleared in the same step that writes a request, with
      no await between the quiet check and the write, and bytes still in the
      port's input queue (not yet read by the loop) count as "not quiet".
    - A line that will not fall quiet (noise, a device stuck transmitting, a
      wrong baud rate) raises `LinkNoisy` after a bounded wait.

    The timeout counts from when the request has left the wire (its byte time is
    added), so a slow baud rate does not eat the device's answer time.
    """

    def __init__(self, name: str, baudrate: int, parity: str, stopbits: int, *,
                 gap_s: float = 0.0, on_dropped: Callable[[int], None] | None = None) -> None:
        self.name = name
        self._char_s = character_time_s(baudrate, parity, stopbits)
        self._gap_s = max(frame_gap_s(baudrate, parity, stopbits), gap_s)
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._expect_unit = -1
        self._waiter: asyncio.Future[bytes] | None = None
        self._last_rx = -math.inf   # monotonic time of the last byte received
        self._idle_since = -math.inf   # end of the last answer, or of its wait
        self._owed_s = 0.0   # quiet owed after a request that got no answer
        self._on_dropped = on_dropped
        self.dropped_bytes = 0
        self._lock = asyncio.Lock()
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._lost: asyncio.Future[None] = self._loop.create_future()

    @classmethod
    async def open(cls, name: str, port: str, *, baudrate: int, parity: str, stopbits: int,
                   timeout_s: float, gap_s: float = 0.0,
                   on_dropped: Callable[[int], None] | None = None) -> RtuLink:
        """Open the serial port; `LinkDown` if it cannot be opened.

        `gap_s` is the least quiet time before a request (the frame gap if larger);
        `on_dropped(n)` is told of every `n` bytes dropped (no request outstanding).
        """
        import serial
        import serial_asyncio_fast

        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s + 1.0):
                _, link = await serial_asyncio_fast.create_serial_connection(
                    loop, lambda: cls(name, baudrate, parity, stopbits, gap_s=gap_s,
                                      on_dropped=on_dropped), port,
                    baudrate=baudrate, parity=parity, stopbits=stopbits, bytesize=8,
                )
                assert isinstance(link, RtuLink)
                # The transport calls connection_made on a later loop iteration.
                await link._ready
        except (OSError, TimeoutError, serial.SerialException) as exc:
            raise LinkDown(f"cannot open {port}: {exc or 'timeout'}") from None
        return link

    @property
    def is_open(self) -> bool:
        """True until the port is closed or lost."""
        return self._transport is not None and not self._closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self._ready.done():
            self._ready.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if not self._lost.done():
            self._lost.set_result(None)
        self._fail(LinkDown(f"serial port lost: {exc}" if exc else "serial port closed"))

    def data_received(self, data: bytes) -> None:
        self._last_rx = time.monotonic()
        if self._waiter is None or self._waiter.done():
            # A late answer, the rest of a bad one, or noise: no request is waiting.
            self._dropped(len(data))
            return
        self._buffer += data
        try:
            need = rtu_response_length(self._buffer)
            if need is None or len(self._buffer) < need:
                return
            unit, pdu = decode_rtu(self._buffer[:need])
        except FrameError as exc:
            self._fail(LinkGarbage(str(exc)))
            return
        if len(self._buffer) > need:
            self._dropped(len(self._buffer) - need)
        if unit != self._expect_unit:
            self._fail(LinkGarbage(f"reply from unit {unit}, expected {self._expect_unit}"))
            return
        self._waiter.set_result(pdu)

    def _dropped(self, n: int) -> None:
        self.dropped_bytes += n
        if self._on_dropped is not None:
            self._on_dropped(n)
        # The first drop on this port is worth a line (a device answering after its
        # timeout, or a noisy line); the rest are counted (metrics), at DEBUG here.
        level = log.warning if self.dropped_bytes == n else log.debug
        level("modbus_rtu_bytes_dropped", link=self.name, bytes=n, total=self.dropped_bytes,
              detail="no request waiting: a late answer or noise")

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
        """True when a request could be written now (see the class' line discipline)."""
        return time.monotonic() >= self._quiet_at() and not self._input_pending()

    async def settle(self) -> None:
        """Return once the line is quiet enough for the next request.

        Raises `LinkNoisy` when it does not fall quiet within a bound (twice the
        quiet needed, plus twice the longest frame's wire time, at least
        `NOISY_LINE_MIN_S`), and `LinkDown` if the port closes meanwhile.
        """
        need = max(self._gap_s, self._owed_s)
        start = time.monotonic()
        deadline = start + 2 * need + max(NOISY_LINE_MIN_S, 2 * RTU_MAX_FRAME * self._char_s)
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

    async def request(self, unit: int, pdu: bytes, timeout_s: float) -> bytes:
        """Send `pdu` to `unit` and return the response PDU (see module contract)."""
        async with self._lock:
            await self.settle()
            assert self._transport is not None
            frame = encode_rtu(unit, pdu)
            # No await between the quiet check above and the write below: whatever
            # arrived before this instant belongs to no request of ours.
            self._buffer.clear()
            self._expect_unit = unit
            self._owed_s = 0.0
            fut: asyncio.Future[bytes] = self._loop.create_future()
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
                self._idle_since = time.monotonic()
                if not answered:
                    # Its answer may still come: the line must stay quiet as long as
                    # the device was given to answer before the next request.
                    self._owed_s = timeout_s

    def _expire(self, fut: asyncio.Future[bytes], timeout_s: float) -> None:
        if not fut.done():
            fut.set_exception(LinkTimeout(f"no answer in {timeout_s:g} s"))

    def _fail(self, exc: LinkError) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    def close(self) -> None:
        """Close the port; a waiting request fails with `LinkDown`."""
        self._closed = True
        if self._transport is not None:
            self._transport.close()
        self._fail(LinkDown("serial port closed"))

    async def wait_closed(self) -> None:
        """Return once the port is really closed (pyserial closes it in a thread)."""
        if self._transport is not None:
            await asyncio.shield(self._lost)


Link = TcpLink | RtuLink


__all__ = [
    "Link", "LinkDown", "LinkError", "LinkGarbage", "LinkNoisy", "LinkTimeout", "RtuLink",
    "TcpLink",
]
