"""One simulated RTU line: a `SimEndpoint` served on a pseudo-terminal pair.

Optionally charges real wire time at a baud rate (half duplex, 10 bits a
byte); a unit's answers can be held back (`delay_replies`), as from a device
that answers after the gateway's timeout, and the line's traffic is logged with
times (`SimRtu.wire`), as the devices see it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import random
import time
import tty
from collections.abc import Callable

from sim.modbus_endpoint import SimEndpoint

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
