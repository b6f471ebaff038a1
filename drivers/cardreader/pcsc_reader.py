"""A contactless card reader through pcscd (PC/SC), via pyscard in one worker thread.

Contract (`drivers.protocols.CardReader`):

- The reader is the first PC/SC reader whose name starts with `prefix`
  (pcscd appends slot numbers, e.g. "ACS ACR122U PICC Interface 00 00").
- A card placed on it is one tap: its UID is read with the get-data APDU
  `FF CA 00 00 00` (status word 90 00 stripped; any other status word is no
  tap), and `CardTap.uid` is the card's id made of those bytes by `ids`
  (`cardid.CardIds`: the building's card_format, the reader's uid_order).
  A card held is one tap however long; after it leaves, the same card taps
  again only `debounce_s` after it was last seen. A card still on the
  reader when pcscd or the reader came back is the same tap, not a new one.
- `status(False, why)` once when pcscd is unreachable, no reader matches, or
  the reader goes away; `status(True, "")` when a reader is watched again.
  Readers plugged in later are picked up through pcscd's PnP notification.
  A lost pcscd connection (pcscd restarted), and a reader that goes away, are
  tried again with capped back-off and jitter (reset once the link has stayed
  up `LINK_STABLE_S`), never at once.
- Every pyscard call runs in the worker thread, never on the event loop.
  `SCardGetStatusChange` waits at most `poll_s`, and cancellation also wakes
  it with `SCardCancel`, so `run()` returns promptly when cancelled, with the
  thread joined. Nothing but CancelledError leaves `run()`.
- pyscard is imported when `run()` starts, so the rest of the gateway works
  without the optional `pcsc` extra; without it the reader stays offline.

The blocking side, which owns the PC/SC context, is `pcsc_worker.PcscWorker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from drivers.cardreader import deliver_tap, report_status
from drivers.cardreader.cardid import CardIds
from drivers.cardreader.debounce import Debouncer
from drivers.cardreader.pcsc_worker import PcscWorker, ReaderStatus
from drivers.cardreader.reconnect import Backoff
from drivers.protocols import CardTap, StatusSink, TapSink

log = structlog.get_logger(__name__)

# Longest blocking pyscard wait: bounds how late the thread sees a stop if
# SCardCancel did not reach it, at the cost of one idle IPC round trip per period.
POLL_S = 0.5
# Bound on waiting for the worker thread to leave once told to stop.
STOP_TIMEOUT_S = 5.0


class PcscCardReader:
    """A PC/SC card reader; see the module docstring for the contract.

    Args:
        name: the reader's id (`[[readers]] id`), used in taps and logs.
        prefix: the start of the PC/SC reader name (`[[readers]] name`).
        ids: how the UID read becomes the card's id (default: upper-case hex as read).
        debounce_s: `gateway.tap_debounce_s`.
        clock: monotonic seconds, stamped on taps and used for debouncing.
        backoff: policy for re-establishing a lost pcscd connection.
        poll_s: longest single wait in pcscd (see POLL_S).
    """

    def __init__(
        self,
        name: str,
        prefix: str,
        *,
        ids: CardIds | None = None,
        debounce_s: float = 1.5,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
        poll_s: float = POLL_S,
    ) -> None:
        self.name = name
        self.prefix = prefix
        self.ids = ids or CardIds()
        self.clock = clock
        self.debouncer = Debouncer(debounce_s, clock)
        self.backoff = backoff or Backoff()
        self.poll_s = poll_s
        # Id of the card on the reader as last read, or None; written by the
        # worker thread after the debouncer is updated (diagnostics and tests).
        self.card_on_reader: str | None = None

    async def run(self, sink: TapSink, status: StatusSink) -> None:
        """Watch the reader until cancelled; see the module docstring."""
        try:
            scard: Any = importlib.import_module("smartcard.scard")
        except ImportError as exc:
            why = f"pyscard is not installed (the 'pcsc' extra): {exc}"
            log.error("card_reader_unavailable", reader=self.name, reason=why)
            report_status(status, self.name, False, why)
            await asyncio.Event().wait()  # offline until cancelled
            return

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[CardTap | ReaderStatus] = asyncio.Queue()
        done: asyncio.Future[None] = loop.create_future()

        def emit(item: CardTap | ReaderStatus) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                worker.stopping.set()

        def finished() -> None:
            # RuntimeError: the loop is already closed, nobody waits.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, done)

        worker = PcscWorker(self, scard, emit, finished)
        thread = threading.Thread(target=worker.run, name=f"pcsc-{self.name}", daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, CardTap):
                    await deliver_tap(sink, item)
                else:
                    report_status(status, self.name, item.online, item.detail)
        finally:
            worker.stop()
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await asyncio.shield(done)
            except TimeoutError:
                log.error("pcsc_worker_stuck", reader=self.name)
            else:
                # The thread resolved `done` as its last act: this returns at once.
                thread.join(timeout=STOP_TIMEOUT_S)


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)

