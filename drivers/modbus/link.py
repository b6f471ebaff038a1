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
from collections.abc import Callable

import structlog

from drivers.errors import FrameError, LinkDown, LinkError, LinkGarbage, LinkNoisy, LinkTimeout
from drivers.modbus.frames.adu import (
    decode_rtu,
    encode_rtu,
    encode_tcp,
    frame_gap_s,
    rtu_response_length,
    split_tcp,
)
from drivers.serial_line import HalfDuplexLine, open_serial
from drivers.transport_link import TransportLink

log = structlog.get_logger(__name__)

# The longest RTU frame, in bytes: a late answer may take this long to arrive.
RTU_MAX_FRAME = 256


class TcpLink(TransportLink):
    """One Modbus TCP connection; several requests may be in flight (matched by transaction id)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._buffer = bytearray()
        self._waiters: dict[int, tuple[int, asyncio.Future[bytes]]] = {}
        self._next_tid = 0

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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket

            # Requests are small and latency-bound: do not let Nagle hold them back.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._buffer:
            try:
                frame, used = split_tcp(self._buffer)
            except FrameError as exc:
                # A TCP byte stream cannot be resynchronised: drop the connection.
                self._fail_waiting(LinkGarbage(str(exc)))
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

    def _fail_waiting(self, exc: LinkError) -> None:
        waiters, self._waiters = self._waiters, {}
        for _, fut in waiters.values():
            if not fut.done():
                fut.set_exception(exc)


class RtuLink(HalfDuplexLine[int, bytes]):
    """One RS-485 line in RTU mode: strictly one request at a time, on a quiet line.

    RTU answers carry no transaction id, so an answer is matched to its request by
    timing alone: the line discipline of `drivers.serial_line` is what makes that
    sound, with the quiet before a request at least the 3.5-character frame gap
    at the line's speed (the configured `gap_s` if larger). A late answer is
    dropped, never taken for the next request, even one to the same unit and
    function (two channels of one pulse counter look alike on the wire).
    """

    MAX_FRAME = RTU_MAX_FRAME
    DROP_EVENT = "modbus_rtu_bytes_dropped"

    def __init__(self, name: str, baudrate: int, parity: str, stopbits: int, *,
                 gap_s: float = 0.0, on_dropped: Callable[[int], None] | None = None) -> None:
        super().__init__(name, baudrate, parity, stopbits,
                         gap_s=max(frame_gap_s(baudrate, parity, stopbits), gap_s),
                         on_dropped=on_dropped)

    @classmethod
    async def open(cls, name: str, port: str, *, baudrate: int, parity: str, stopbits: int,
                   timeout_s: float, gap_s: float = 0.0,
                   on_dropped: Callable[[int], None] | None = None) -> RtuLink:
        """Open the serial port; `LinkDown` if it cannot be opened.

        `gap_s` is the least quiet time before a request (the frame gap if larger);
        `on_dropped(n)` is told of every `n` bytes dropped (no request outstanding).
        """
        return await open_serial(
            lambda: cls(name, baudrate, parity, stopbits, gap_s=gap_s, on_dropped=on_dropped),
            port, baudrate=baudrate, parity=parity, stopbits=stopbits, timeout_s=timeout_s)

    def _take(self, buffer: bytearray, expect: int) -> bytes | None:
        try:
            need = rtu_response_length(buffer)
            if need is None or len(buffer) < need:
                return None
            unit, pdu = decode_rtu(buffer[:need])
        except FrameError as exc:
            raise LinkGarbage(str(exc)) from None
        self._dropped(len(buffer) - need)
        if unit != expect:
            raise LinkGarbage(f"reply from unit {unit}, expected {expect}")
        return pdu

    async def request(self, unit: int, pdu: bytes, timeout_s: float) -> bytes:
        """Send `pdu` to `unit` and return the response PDU (see module contract)."""
        return await self._exchange(encode_rtu(unit, pdu), unit, timeout_s)


Link = TcpLink | RtuLink


__all__ = [
    "Link", "LinkDown", "LinkError", "LinkGarbage", "LinkNoisy", "LinkTimeout", "RtuLink",
    "TcpLink",
]
