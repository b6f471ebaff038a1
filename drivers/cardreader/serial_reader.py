"""A card reader on a serial port (RDM6300 or ascii-line), via pyserial-asyncio-fast.

Contract (`drivers.protocols.CardReader`):

- `run(sink, status)` opens the port, decodes and debounces what arrives and
  calls `sink(CardTap)` once per tap, in order, awaiting it when it returns an
  awaitable. It runs until cancelled and raises nothing but CancelledError.
- The first open, or the first failure to open, is reported through
  `status`; after that each change is reported once: `status(False, why)`
  when the port fails or disappears (USB adapter unplugged, pty closed),
  `status(True, "")` when it works again. Reopening uses capped exponential
  back-off with jitter, reset on success.
- A sink or status callback that raises is logged and the reader carries on.
- `CardTap.uid` is the card's id (`cardid.CardIds`). A frame or line the
  decoder drops is counted in `stats` and logged at DEBUG
  (`card_frame_dropped`, with its reason).

Tap path: bytes are decoded in the transport's read callback, where
`CardTap.mono` is stamped; the tap then reaches the sink on the next turn of the
event loop (well under a millisecond on an idle loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import serial
import serial_asyncio_fast
import structlog

from drivers.cardreader import DecoderStats, UidDecoder, deliver_tap
from drivers.cardreader.asciiline import AsciiLineDecoder
from drivers.cardreader.cardid import CardIds, LineFormat
from drivers.cardreader.debounce import Debouncer
from drivers.cardreader.rdm6300 import Rdm6300Decoder
from drivers.cardreader.reconnect import Backoff, LinkStatus
from drivers.protocols import CardTap, StatusSink, TapSink

log = structlog.get_logger(__name__)

SerialProtocolName = Literal["rdm6300", "ascii-line"]
# What each protocol decodes with, given the reader's card ids and line format
# (only ascii-line lines have a format).
PROTOCOLS: dict[str, Callable[[CardIds, LineFormat], UidDecoder]] = {
    "rdm6300": lambda ids, _line_format: Rdm6300Decoder(ids),
    "ascii-line": lambda ids, line_format: AsciiLineDecoder(line_format, ids),
}

# Open errors that retrying soon will not fix (permissions, not a tty): wait
# the longest back-off delay instead of hammering.
_CONFIG_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.ENOTTY})


@dataclass(frozen=True, slots=True)
class _Lost:
    reason: str


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "port closed"
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class _TapProtocol(asyncio.Protocol):
    """Decodes in the read callback and queues taps and the loss of the port."""

    def __init__(
        self,
        reader: SerialCardReader,
        queue: asyncio.Queue[CardTap | _Lost],
        closed: asyncio.Future[None],
    ) -> None:
        self._reader = reader
        self._queue = queue
        self._closed = closed

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        now = reader.clock()
        stats = reader.decoder.stats
        dropped = stats.dropped
        try:
            uids = reader.decoder.feed(data)
        except Exception:
            # Decoders never raise by contract; if one does, lose the bytes, not the port.
            log.exception("card_decoder_failed", reader=reader.name)
            reader.decoder.reset()
            return
        if stats.dropped != dropped:
            log.debug("card_frame_dropped", reader=reader.name, reason=stats.last_drop,
                      dropped=stats.dropped - dropped)
        for uid in uids:
            if reader.debouncer.accept(uid, now):
                self._queue.put_nowait(CardTap(reader=reader.name, uid=uid, mono=now))

    def connection_lost(self, exc: Exception | None) -> None:
        self._queue.put_nowait(_Lost(_describe(exc)))
        if not self._closed.done():
            self._closed.set_result(None)


class SerialCardReader:
    """A serial card reader; see the module docstring for the contract.

    Args:
        name: the reader's id (`[[readers]] id`), used in taps and logs.
        port: device path, e.g. "/dev/ttyAMA1" or a udev by-id symlink.
        baudrate: line speed (RDM6300: 9600).
        protocol: "rdm6300" or "ascii-line".
        line_format: what an ascii-line reader's lines hold: "hex" or "dec".
        ids: how a UID or number becomes the card's id (`cardid.CardIds`:
            the building's card_format, the reader's uid_order).
        debounce_s: `gateway.tap_debounce_s`.
        clock: monotonic seconds, stamped on taps and used for debouncing.
        backoff: reopen policy; the default retries from 0.5 s up to 30 s.
    """

    def __init__(
        self,
        name: str,
        port: str,
        *,
        baudrate: int = 9600,
        protocol: SerialProtocolName = "rdm6300",
        line_format: LineFormat = "hex",
        ids: CardIds | None = None,
        debounce_s: float = 1.5,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown serial card protocol {protocol!r}: use {sorted(PROTOCOLS)}")
        self.name = name
        self.port = port
        self.baudrate = baudrate
        self.protocol = protocol
        self.clock = clock
        self.decoder: UidDecoder = PROTOCOLS[protocol](ids or CardIds(), line_format)
        self.debouncer = Debouncer(debounce_s, clock)
        self.backoff = backoff or Backoff()

    @property
    def stats(self) -> DecoderStats:
        """Frames decoded and dropped since start (for metrics)."""
        return self.decoder.stats

    async def run(self, sink: TapSink, status: StatusSink) -> None:
        """Read taps until cancelled; see the module docstring."""
        link = LinkStatus(self.name, status, port=self.port)
        while True:
            config_error = False
            try:
                reason = await self._session(sink, link)
            except (OSError, serial.SerialException) as exc:
                reason = _describe(exc)
                config_error = getattr(exc, "errno", None) in _CONFIG_ERRNOS
            except Exception as exc:  # a bug must not stop the reader
                log.exception("card_reader_error", reader=self.name)
                reason = _describe(exc)
            if link.proven():
                self.backoff.reset()  # a port that fails as soon as it opens keeps backing off
            delay = self.backoff.longest() if config_error else self.backoff.next_delay()
            link.down(reason, delay)
            await asyncio.sleep(delay)

    async def _session(self, sink: TapSink, link: LinkStatus) -> str:
        """One open of the port: deliver taps until it is lost; return why."""
        loop = asyncio.get_running_loop()
        port = await self._open(loop)
        queue: asyncio.Queue[CardTap | _Lost] = asyncio.Queue()
        closed: asyncio.Future[None] = loop.create_future()
        self.decoder.reset()
        transport, _ = await serial_asyncio_fast.connection_for_serial(
            loop, lambda: _TapProtocol(self, queue, closed), port
        )
        try:
            link.up()
            while True:
                item = await queue.get()
                if isinstance(item, _Lost):
                    return item.reason
                await deliver_tap(sink, item)
        finally:
            transport.close()
            # The library closes the port in an executor; wait so the fd is
            # released before reopening (or before the loop goes away).
            with contextlib.suppress(Exception):
                await asyncio.shield(closed)

    async def _open(self, loop: asyncio.AbstractEventLoop) -> serial.Serial:
        # Opening a USB adapter can take milliseconds: keep it off the loop.
        opening = loop.run_in_executor(
            # exclusive (an flock): no second program reads this reader's bytes.
            None, lambda: serial.Serial(self.port, baudrate=self.baudrate, timeout=0,
                                        exclusive=True)
        )
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_opened)
            raise


def _close_opened(opening: asyncio.Future[serial.Serial]) -> None:
    # run() was cancelled while the port was opening: do not leak the fd.
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()
