"""A contactless card reader through pcscd (PC/SC), via pyscard in one worker thread.

Contract (`drivers.protocols.CardReader`):

- The reader is the first PC/SC reader whose name starts with `prefix`
  (pcscd appends slot numbers, e.g. "ACS ACR122U PICC Interface 00 00").
- A card placed on it is one tap: its UID is read with the get-data APDU
  `FF CA 00 00 00` (status word 90 00 stripped; any other status word is no
  tap). A card held is one tap however long; after it leaves, the same card
  taps again only `debounce_s` after it was last seen. A card still on the
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
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from drivers.cardreader import deliver_tap, report_status
from drivers.cardreader.debounce import Debouncer
from drivers.cardreader.reconnect import Backoff, LinkStatus
from drivers.protocols import CardTap, StatusSink, TapSink

log = structlog.get_logger(__name__)

GET_UID_APDU = [0xFF, 0xCA, 0x00, 0x00, 0x00]
SW_OK = [0x90, 0x00]
PNP_NOTIFICATION = "\\\\?PnP?\\Notification"
# Longest blocking pyscard wait: bounds how late the thread sees a stop if
# SCardCancel did not reach it, at the cost of one idle IPC round trip per period.
POLL_S = 0.5
# A present card whose UID read failed (lifted mid-read; or, with vpcd, a
# card swapped within one of pcscd's 400 ms presence polls, which pcscd never
# reports) is read again this often, this many times, while it stays.
READ_RETRIES = 6
READ_RETRY_MS = 250
# Bound on waiting for the worker thread to leave once told to stop.
STOP_TIMEOUT_S = 5.0

_MASK = 0xFFFFFFFF


class _LinkLost(Exception):
    """pcscd went away or the context is no longer valid; re-establish."""


@dataclass(frozen=True, slots=True)
class _Status:
    online: bool
    detail: str


class PcscCardReader:
    """A PC/SC card reader; see the module docstring for the contract.

    Args:
        name: the reader's id (`[[readers]] id`), used in taps and logs.
        prefix: the start of the PC/SC reader name (`[[readers]] name`).
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
        debounce_s: float = 1.5,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
        poll_s: float = POLL_S,
    ) -> None:
        self.name = name
        self.prefix = prefix
        self.clock = clock
        self.debouncer = Debouncer(debounce_s, clock)
        self.backoff = backoff or Backoff()
        self.poll_s = poll_s
        # UID of the card on the reader as last read, or None; written by the
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
        queue: asyncio.Queue[CardTap | _Status] = asyncio.Queue()
        done: asyncio.Future[None] = loop.create_future()

        def emit(item: CardTap | _Status) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                worker.stopping.set()

        def finished() -> None:
            # RuntimeError: the loop is already closed, nobody waits.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, done)

        worker = _Worker(self, scard, emit, finished)
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


class _Worker:
    """The blocking side: owns the PC/SC context; talks to the loop through `emit`."""

    def __init__(
        self,
        owner: PcscCardReader,
        scard: Any,
        emit: Callable[[CardTap | _Status], None],
        finished: Callable[[], None],
    ) -> None:
        self.owner = owner
        self.s = scard
        self.emit = emit
        self.finished = finished
        self.stopping = threading.Event()
        self.log = log.bind(reader=owner.name, prefix=owner.prefix)
        self._ctx: int | None = None
        self._poll_ms = max(1, round(owner.poll_s * 1000))
        # The card on the reader when the link was lost: if it is still there
        # when the link comes back, it is the same tap.
        self._held_uid: str | None = None
        self._link_lost = self._codes(
            (
                "SCARD_E_NO_SERVICE",
                "SCARD_E_SERVICE_STOPPED",
                "SCARD_F_COMM_ERROR",
                "SCARD_E_INVALID_HANDLE",
                "SCARD_F_INTERNAL_ERROR",
                "SCARD_E_NO_MEMORY",
            )
        )
        self._reader_gone = self._codes(
            (
                "SCARD_E_UNKNOWN_READER",
                "SCARD_E_READER_UNAVAILABLE",
                "SCARD_E_NO_READERS_AVAILABLE",
            )
        )

    def _codes(self, names: tuple[str, ...]) -> frozenset[int]:
        # Constants this pyscard build lacks are left out (never read as 0, success).
        return frozenset(int(getattr(self.s, name)) & _MASK for name in names if hasattr(self.s, name))

    def stop(self) -> None:
        """Ask the thread to leave; wakes a blocked SCardGetStatusChange. Any thread."""
        self.stopping.set()
        ctx = self._ctx
        if ctx is not None:
            # Thread-safe by the PC/SC spec; one short IPC to pcscd.
            try:
                self.s.SCardCancel(ctx)
            except Exception:  # a stale context: the thread is leaving anyway
                self.log.debug("pcsc_cancel_failed", exc_info=True)

    def run(self) -> None:
        """Thread body: (re)establish the context and watch until stopped."""
        link = LinkStatus(self.owner.name, self._status, prefix=self.owner.prefix)
        try:
            while not self.stopping.is_set():
                try:
                    reason = self._session(link)
                except _LinkLost as exc:
                    reason = str(exc)
                except Exception as exc:  # a bug must not kill the reader
                    self.log.exception("card_reader_error")
                    reason = f"{type(exc).__name__}: {exc}"
                finally:
                    self._release()
                if self.stopping.is_set():
                    break
                if link.proven():
                    self.owner.backoff.reset()
                delay = self.owner.backoff.next_delay()
                link.down(reason, delay)
                self.stopping.wait(delay)
        finally:
            self.finished()

    def _status(self, online: bool, detail: str) -> None:
        self.emit(_Status(online, detail))

    def _error(self, hr: int) -> str:
        try:
            return f"{self.s.SCardGetErrorMessage(hr)} (0x{hr & _MASK:08X})"
        except Exception:
            return f"PC/SC error 0x{hr & _MASK:08X}"

    def _release(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            try:
                self.s.SCardReleaseContext(ctx)
            except Exception:
                self.log.debug("pcsc_release_failed", exc_info=True)

    def _session(self, link: LinkStatus) -> str:
        """One PC/SC context: find the reader, watch it; return why the link went down."""
        s = self.s
        hr, ctx = s.SCardEstablishContext(s.SCARD_SCOPE_USER)
        if hr & _MASK != s.SCARD_S_SUCCESS:
            raise _LinkLost(f"pcscd unreachable: {self._error(hr)}")
        self._ctx = ctx
        if self.stopping.is_set():  # stop() may have missed the new context
            return "stopping"
        pnp_state = s.SCARD_STATE_UNAWARE
        missing_reported = False
        while not self.stopping.is_set():
            reader = self._find_reader(ctx)
            if reader is None:
                if not missing_reported:
                    link.down(f"no PC/SC reader named {self.owner.prefix!r}*", self.owner.poll_s)
                    missing_reported = True
                pnp_state = self._wait_reader_list(ctx, pnp_state)
                continue
            missing_reported = False
            self.log.debug("pcsc_reader_selected", device=reader)
            link.up()
            gone = self._watch(ctx, reader)
            if gone is not None:
                # Wait before looking again: a reader listed but unavailable
                # goes at once, and looking again at once would be a busy loop.
                if link.proven():
                    self.owner.backoff.reset()
                delay = self.owner.backoff.next_delay()
                link.down(gone, delay)
                self.stopping.wait(delay)
        return "stopping"

    def _find_reader(self, ctx: int) -> str | None:
        s = self.s
        hr, readers = s.SCardListReaders(ctx, [])
        code = hr & _MASK
        if code in self._reader_gone:
            return None
        if code != s.SCARD_S_SUCCESS:
            raise _LinkLost(f"pcscd connection lost: {self._error(hr)}")
        for reader in readers:
            if isinstance(reader, str) and reader.startswith(self.owner.prefix):
                return reader
        return None

    def _wait_reader_list(self, ctx: int, pnp_state: int) -> int:
        """Block until the reader list may have changed (or `poll_s`); the new PnP state."""
        s = self.s
        hr, states = s.SCardGetStatusChange(ctx, self._poll_ms, [(PNP_NOTIFICATION, pnp_state)])
        code = hr & _MASK
        if code == s.SCARD_S_SUCCESS and states:
            return int(states[0][1]) & ~int(s.SCARD_STATE_CHANGED)
        if code in (s.SCARD_E_TIMEOUT & _MASK, s.SCARD_E_CANCELLED & _MASK):
            return pnp_state
        if code in self._link_lost:
            raise _LinkLost(f"pcscd connection lost: {self._error(hr)}")
        # PnP notification not supported here: fall back to polling the list.
        self.stopping.wait(self.owner.poll_s)
        return pnp_state

    def _watch(self, ctx: int, reader: str) -> str | None:
        """Report taps on `reader` until it goes (return why) or we stop (None)."""
        s = self.s
        timeout = s.SCARD_E_TIMEOUT & _MASK
        cancelled = s.SCARD_E_CANCELLED & _MASK
        current = s.SCARD_STATE_UNAWARE
        was_present = False
        last_count = -1
        on_reader: str | None = None  # UID of the card lying on the reader
        first = True
        # A card present whose UID could not be read yet (lifted mid-read, or
        # swapped faster than pcscd polls): retry a few times while it stays.
        retries = 0
        resumed = False
        try:
            while not self.stopping.is_set():
                wait_ms = min(self._poll_ms, READ_RETRY_MS) if retries else self._poll_ms
                hr, states = s.SCardGetStatusChange(ctx, wait_ms, [(reader, current)])
                code = hr & _MASK
                if code in (timeout, cancelled):
                    if retries and not self.stopping.is_set():
                        retries -= 1
                        on_reader = self._read_uid(ctx, reader)
                        if on_reader is not None:
                            retries = 0
                            self._placed(on_reader, self.owner.clock(), resumed=resumed)
                            self.owner.card_on_reader = on_reader
                    continue
                if code in self._reader_gone:
                    return f"PC/SC reader {reader!r} went away: {self._error(hr)}"
                if code != s.SCARD_S_SUCCESS:
                    raise _LinkLost(f"pcscd connection lost: {self._error(hr)}")
                event = int(states[0][1])
                if event & (s.SCARD_STATE_UNKNOWN | s.SCARD_STATE_UNAVAILABLE):
                    return f"PC/SC reader {reader!r} went away"
                present = bool(event & s.SCARD_STATE_PRESENT) and not event & s.SCARD_STATE_MUTE
                # pcscd counts insertions and removals in the high 16 bits: a
                # change while present means the card was swapped between two polls.
                count = (event >> 16) & 0xFFFF
                now = self.owner.clock()
                if present and (not was_present or count != last_count):
                    if on_reader is not None:
                        self.owner.debouncer.refresh(on_reader, now)
                    resumed = first
                    on_reader = self._read_uid(ctx, reader)
                    retries = 0 if on_reader is not None else READ_RETRIES
                    if on_reader is not None:
                        self._placed(on_reader, now, resumed=resumed)
                elif not present:
                    retries = 0
                    if on_reader is not None:
                        self.owner.debouncer.refresh(on_reader, now)
                        on_reader = None
                self.owner.card_on_reader = on_reader
                first = False
                was_present, last_count = present, count
                current = event & ~s.SCARD_STATE_CHANGED
            return None
        finally:
            # Leaving with a card on the reader: it is held, not gone.
            self._held_uid = on_reader
            if on_reader is not None:
                self.owner.debouncer.refresh(on_reader)
            self.owner.card_on_reader = None

    def _placed(self, uid: str, now: float, *, resumed: bool) -> None:
        held, self._held_uid = self._held_uid, None
        if resumed and uid == held:
            self.owner.debouncer.refresh(uid, now)
            self.log.debug("card_still_present", uid=uid)
            return
        if self.owner.debouncer.accept(uid, now):
            self.emit(CardTap(reader=self.owner.name, uid=uid, mono=now))

    def _read_uid(self, ctx: int, reader: str) -> str | None:
        """The UID of the card on `reader`, or None if it would not say."""
        s = self.s
        hr, handle, protocol = s.SCardConnect(
            ctx, reader, s.SCARD_SHARE_SHARED, s.SCARD_PROTOCOL_T0 | s.SCARD_PROTOCOL_T1
        )
        if hr & _MASK in self._link_lost:
            raise _LinkLost(f"pcscd connection lost: {self._error(hr)}")
        if hr & _MASK != s.SCARD_S_SUCCESS:
            # Lifted too soon, mute, or held exclusively by another program.
            self.log.debug("card_connect_failed", error=self._error(hr))
            return None
        try:
            hr, response = s.SCardTransmit(handle, protocol, GET_UID_APDU)
            if hr & _MASK in self._link_lost:
                raise _LinkLost(f"pcscd connection lost: {self._error(hr)}")
            if hr & _MASK != s.SCARD_S_SUCCESS:
                self.log.debug("card_uid_read_failed", error=self._error(hr))
                return None
            if len(response) < 3 or list(response[-2:]) != SW_OK:
                sw = bytes(response[-2:]).hex().upper()
                self.log.debug("card_uid_refused", sw=sw)
                return None
            return bytes(response[:-2]).hex().upper()
        finally:
            s.SCardDisconnect(handle, s.SCARD_LEAVE_CARD)
