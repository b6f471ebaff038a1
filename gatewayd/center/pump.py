"""The delivery pump: the outbox published to the center, in class order, within a window.

Contract (center-link.md "Delivery"):
- Results, then money events, then other events, then queued telemetry,
  oldest first within a class, read from the store in pages
  (`gatewayd.store.outbox`) ahead of the sender, so the window never waits on
  a store round trip.
- Up to the session's window (`session.delivery_window`) QoS 1 messages in
  flight. Lower-class messages in flight are capped to what the broker
  acknowledges in `PRIORITY_BUDGET_S`, so a later result or money event
  never waits more than about that behind a backlog.
- A message is marked published, in batches (one store job each), only
  after its PUBACK; marking outlives the session that sent it. After a
  reconnect delivery resumes from the oldest unpublished message: delivery
  is at least once.
- A failing store (disk full, I/O error) is retried every `STORE_RETRY_S`
  and logged once, then summarised, then its recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from functools import partial
from typing import Final

import structlog

from drivers.retry import FailureLog
from gatewayd.center.session import PUBACK_TIMEOUT_S, LinkClient
from gatewayd.center.topics import Topics
from gatewayd.contract.enums import Priority
from gatewayd.errors import StoreError
from gatewayd.services.clock import Clock
from gatewayd.store import outbox
from gatewayd.store.db import Store
from gatewayd.store.outbox import OutMessage

__all__ = ["DeliveryPump"]

log = structlog.get_logger(__name__)

#: Lower-class (events, telemetry) messages in flight are capped to what the
#: broker acknowledges in this time, so a new result or money event waits at
#: most about this long behind them (the contract allows one second).
PRIORITY_BUDGET_S: Final = 0.5
#: ...but never below this, or a fresh connection (no rate measured) would crawl.
MIN_LOWER_WINDOW: Final = 16
#: Messages read ahead from the store, so the window never waits on a store
#: round trip (which may queue behind a commit's fsync); bounds the memory too.
PAGE: Final = 1024
#: Acknowledged messages are marked published in one store job per batch of at
#: most this many, or after this delay: one fsync per batch, not per message.
MARK_BATCH: Final = 512
MARK_DELAY_S: Final = 0.05
#: Without a wake-up, look at the outbox this often anyway (rows written by
#: code that does not wake the link, e.g. a result inserted by a tool).
IDLE_POLL_S: Final = 5.0
#: After a failed store job (disk full, I/O error) the link tries again after
#: this long; the store's own probe reports the fault.
STORE_RETRY_S: Final = 1.0

_Ident = tuple[int, str | int]


class _AckRate:
    """Acknowledgments per second, smoothed, for the lower-class window."""

    def __init__(self) -> None:
        self.rate = 0.0
        self._count = 0
        self._since = time.monotonic()

    def add(self, n: int = 1) -> None:
        self._count += n
        now = time.monotonic()
        span = now - self._since
        if span >= 0.1:
            sample = self._count / span
            self.rate = sample if self.rate == 0 else 0.5 * self.rate + 0.5 * sample
            self._count = 0
            self._since = now

    def lower_window(self, window: int) -> int:
        return max(MIN_LOWER_WINDOW, min(window, int(self.rate * PRIORITY_BUDGET_S)))


class DeliveryPump:
    """Publishes the outbox on each session (`run`) and marks what was acknowledged
    (`mark_loop`, for the link's whole life)."""

    def __init__(self, store: Store, clock: Clock, topics: Topics, *,
                 on_empty: Callable[[], None]) -> None:
        self._store = store
        self._clock = clock
        self._topics = topics
        self._on_empty = on_empty  # the outbox holds no result or event any more
        self.published = 0
        self._wake = asyncio.Event()
        self._ack_event = asyncio.Event()
        self._drained = asyncio.Event()
        self._acked: list[OutMessage] = []
        self._marking: set[_Ident] = set()
        # While the disk fails these retry every few seconds: one line, then a
        # summary a minute, then the recovery.
        self._read_log = FailureLog(log, "outbox_read_failed", recovered="outbox_read_recovered")
        self._mark_log = FailureLog(log, "outbox_mark_failed", recovered="outbox_mark_recovered")

    @property
    def not_marked(self) -> int:
        """Messages acknowledged but not marked published yet."""
        return len(self._acked)

    def wake(self) -> None:
        """Something new is in the outbox: look now rather than at the next poll."""
        self._wake.set()

    async def drain(self) -> None:
        """Return once nothing is left to send: no message, no telemetry."""
        while True:
            self._drained.clear()
            self.wake()
            await self._drained.wait()
            left = await self._store.read(outbox.pending)
            if left.messages == 0 and left.counts[Priority.TELEMETRY] == 0:
                return

    # --- one session --------------------------------------------------------------

    async def run(self, client: LinkClient, window: int, tg: asyncio.TaskGroup) -> None:
        """Publish the outbox on `client` until cancelled: a fetcher reads ahead into
        the buffer (class order), the sender keeps up to `window` messages in flight
        from its front, each publish a task in `tg`."""
        w = _Window(client)
        tg.create_task(self._fetch(w), name="center-fetch")
        while True:
            w.changed.clear()
            if not w.buffer or len(w.inflight) >= window or (
                    w.buffer[0].klass >= Priority.EVENT and w.lower >= w.rate.lower_window(window)):
                await w.changed.wait()
                continue
            msg = w.buffer.pop(0)
            w.inflight[msg.ident] = msg
            if msg.klass >= Priority.EVENT:
                w.lower += 1
            tg.create_task(self._publish(w, msg), name="center-publish")
            if len(w.buffer) < PAGE // 2:
                w.low.set()

    async def _publish(self, w: _Window, msg: OutMessage) -> None:
        if msg.klass is Priority.TELEMETRY:
            await w.client.publish(self._topics.telemetry, msg.payload, qos=0, timeout=PUBACK_TIMEOUT_S)
        else:
            topic = self._topics.result if msg.klass is Priority.RESULT else self._topics.events
            await w.client.publish(topic, msg.payload, qos=1, timeout=PUBACK_TIMEOUT_S)
        del w.inflight[msg.ident]
        if msg.klass >= Priority.EVENT:
            w.lower -= 1
        self._marking.add(msg.ident)
        self._acked.append(msg)
        self.published += 1
        w.rate.add()
        self._ack_event.set()
        w.changed.set()

    async def _fetch(self, w: _Window) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_POLL_S):
                    await _first(self._wake, w.low)
            self._wake.clear()
            w.low.clear()
            want = max(PAGE - len(w.buffer), PAGE // 4)  # woken with a full buffer: look for higher classes
            page = await self._read_page(w, want)
            if page is None:
                continue
            if not page:
                if not w.buffer and not w.inflight and not self._acked:
                    self._drained.set()
                continue
            merged = w.buffer + page
            merged.sort(key=lambda m: m.klass)  # stable: each class stays oldest first
            del merged[PAGE:]  # the newest of the lowest class; read again later
            w.buffer[:] = merged
            w.changed.set()
            if len(page) == want and len(w.buffer) < PAGE // 2:
                w.low.set()

    async def _read_page(self, w: _Window, want: int) -> list[OutMessage] | None:
        """Up to `want` messages after those held already; None after a store failure."""
        exclude = [*w.inflight, *self._marking, *(m.ident for m in w.buffer)]
        try:
            page = await self._store.read(partial(outbox.next_page, limit=want, exclude=exclude))
        except StoreError as e:
            self._read_log.failed(error=str(e))
            await asyncio.sleep(STORE_RETRY_S)
            self.wake()
            return None
        self._read_log.ok()
        return page

    # --- marking, for the link's whole life --------------------------------------

    async def mark_loop(self) -> None:
        """Mark acknowledged messages published, in batches, whatever the sessions do."""
        while True:
            await self._ack_event.wait()
            if len(self._acked) < MARK_BATCH:
                await asyncio.sleep(MARK_DELAY_S)
            self._ack_event.clear()
            try:
                await self.flush_marks()
            except StoreError as e:
                self._mark_log.failed(error=str(e), waiting=len(self._acked))
                await asyncio.sleep(STORE_RETRY_S)
                self._ack_event.set()
            else:
                self._mark_log.ok()

    async def flush_marks(self) -> None:
        """Mark every acknowledged message published now; StoreError leaves them for later."""
        while self._acked:
            batch, self._acked = self._acked[:MARK_BATCH], self._acked[MARK_BATCH:]
            try:
                left = await self._store.run(partial(outbox.mark_published, messages=batch,
                                                     now=self._clock.wall()))
            except StoreError:
                self._acked[:0] = batch  # still acknowledged: mark them on the next try
                raise
            for msg in batch:
                self._marking.discard(msg.ident)
            if left.messages == 0:
                self._on_empty()
            if not self._acked:
                if left.total_bytes == 0:
                    self._drained.set()
                else:
                    self.wake()


class _Window:
    """One session's delivery state: what is in flight, what is read ahead."""

    def __init__(self, client: LinkClient) -> None:
        self.client = client
        self.inflight: dict[_Ident, OutMessage] = {}
        self.buffer: list[OutMessage] = []
        self.changed = asyncio.Event()  # the buffer grew or a message was acknowledged
        self.low = asyncio.Event()  # the buffer is under half full
        self.low.set()
        self.rate = _AckRate()
        self.lower = 0  # class 2 and 3 messages in flight


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of `events` is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
