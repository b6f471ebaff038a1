"""Modbus transports: one TCP connection or one serial line, request in, PDU out.

Contract of this layer: `request(unit, pdu, timeout_s)` sends one request PDU and
returns the response PDU of the same unit (and, on TCP, transaction), or raises a
`LinkError`: `LinkTimeout` (no answer in time), `LinkDown` (not connected, or the
connection was lost), `LinkGarbage` (bytes that are not a Modbus answer). A link
does not retry, reconnect or queue; `drivers.modbus.bus` does. A link that raised
`LinkDown` or `LinkGarbage` on TCP is closed and must be replaced.

Timeouts here use `loop.call_later` on the response future rather than
`asyncio.timeout()`: this is the per-request hot path (500 requests/s in a
building) and a timer handle is a third of the cost of a timeout context.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from drivers.modbus.frames import (
    FrameError,
    character_time_s,
    decode_rtu,
    encode_rtu,
    encode_tcp,
    frame_gap_s,
    rtu_response_length,
    split_tcp,
)

log = structlog.get_logger(__name__)


class LinkError(Exception):
    """A request got no usable answer from the transport."""


class LinkTimeout(LinkError):
    """No answer within the timeout."""


class LinkDown(LinkError):
    """Not connected, or the connection was lost while waiting."""


class LinkGarbage(LinkError):
    """Bytes arrived that are not a valid answer (bad framing, CRC, wrong unit)."""


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
    """One RS-485 line in RTU mode: strictly one request at a time, with frame gaps.

    The line is quiet for at least the 3.5-character gap before each request, and
    the timeout counts from when the request has left the wire (its byte time is
    added), so a slow baud rate does not eat the device's answer time.
    """

    def __init__(self, name: str, baudrate: int, parity: str, stopbits: int) -> None:
        self.name = name
        self._char_s = character_time_s(baudrate, parity, stopbits)
        self._gap_s = frame_gap_s(baudrate, parity, stopbits)
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._expect_unit = -1
        self._waiter: asyncio.Future[bytes] | None = None
        self._quiet_until = 0.0
        self._lock = asyncio.Lock()
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._lost: asyncio.Future[None] = self._loop.create_future()

    @classmethod
    async def open(cls, name: str, port: str, *, baudrate: int, parity: str, stopbits: int,
                   timeout_s: float) -> RtuLink:
        """Open the serial port; `LinkDown` if it cannot be opened."""
        import serial
        import serial_asyncio_fast

        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s + 1.0):
                _, link = await serial_asyncio_fast.create_serial_connection(
                    loop, lambda: cls(name, baudrate, parity, stopbits), port,
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
        self._quiet_until = time.monotonic() + self._gap_s
        if self._waiter is None or self._waiter.done():
            return  # noise or a late answer between requests: dropped
        self._buffer += data
        try:
            need = rtu_response_length(self._buffer)
            if need is None or len(self._buffer) < need:
                return
            unit, pdu = decode_rtu(self._buffer[:need])
        except FrameError as exc:
            self._fail(LinkGarbage(str(exc)))
            return
        if unit != self._expect_unit:
            self._fail(LinkGarbage(f"reply from unit {unit}, expected {self._expect_unit}"))
            return
        self._waiter.set_result(pdu)

    async def request(self, unit: int, pdu: bytes, timeout_s: float) -> bytes:
        """Send `pdu` to `unit` and return the response PDU (see module contract)."""
        async with self._lock:
            if not self.is_open:
                raise LinkDown("serial port not open")
            assert self._transport is not None
            delay = self._quiet_until - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            frame = encode_rtu(unit, pdu)
            self._buffer.clear()
            self._expect_unit = unit
            fut: asyncio.Future[bytes] = self._loop.create_future()
            self._waiter = fut
            wait = timeout_s + len(frame) * self._char_s
            timer = self._loop.call_later(wait, self._expire, fut, timeout_s)
            try:
                self._transport.write(frame)
                return await fut
            finally:
                timer.cancel()
                self._waiter = None
                self._quiet_until = max(self._quiet_until, time.monotonic() + self._gap_s)

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
    "Link", "LinkDown", "LinkError", "LinkGarbage", "LinkTimeout", "RtuLink", "TcpLink",
]
