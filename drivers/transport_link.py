"""What every link shares, a TCP connection or a serial line: its transport's lifetime.

Contract: a `TransportLink` is open from `connection_made` until `close()` or the
loss of its transport; either fails every request still waiting with `LinkDown`
(`_fail_waiting`, which each link implements for its own waiters), and
`wait_closed()` returns once the transport is really gone. Subclasses name the
failures in `LOST` (lost with an error), `LOST_QUIETLY` and `CLOSED`.
"""

from __future__ import annotations

import asyncio

from drivers.errors import LinkDown, LinkError


class TransportLink(asyncio.Protocol):
    """The lifetime of one asyncio transport, and the requests waiting on it."""

    LOST = "connection lost"
    LOST_QUIETLY = "connection closed by peer"
    CLOSED = "connection closed"

    def __init__(self, name: str) -> None:
        self.name = name
        self._transport: asyncio.Transport | None = None
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._lost: asyncio.Future[None] = self._loop.create_future()

    def _fail_waiting(self, exc: LinkError) -> None:
        """Fail every request waiting for an answer with `exc`."""
        raise NotImplementedError

    @property
    def is_open(self) -> bool:
        """True until the transport is closed or lost."""
        return self._transport is not None and not self._closed

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if not self._lost.done():
            self._lost.set_result(None)
        self._fail_waiting(LinkDown(f"{self.LOST}: {exc}" if exc else self.LOST_QUIETLY))

    def close(self) -> None:
        """Close the transport; waiting requests fail with `LinkDown`."""
        self._closed = True
        if self._transport is not None:
            self._transport.close()
        self._fail_waiting(LinkDown(self.CLOSED))

    async def wait_closed(self) -> None:
        """Return once the transport is really closed (pyserial closes a port in a thread)."""
        if self._transport is not None:
            await asyncio.shield(self._lost)
