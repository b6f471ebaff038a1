"""The blocking side of `PcscCardReader`: one thread that owns the PC/SC context.

Contract: `PcscWorker.run()` is a thread body. It (re)establishes the pcscd
context with the reader's back-off, finds the reader by name prefix (pcscd's PnP
notification, or polling the list), watches it and hands what it sees to the
event loop through `emit`: a `CardTap` per tap (debounced; a card still on the
reader when the link came back is the same tap) and a `ReaderStatus` per change.
`stop()` may be called from any thread and wakes a blocked
`SCardGetStatusChange` with `SCardCancel`; `finished()` is the thread's last
act. Every pyscard call is made here, never on the event loop; nothing but a
stop ends the thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from drivers.cardreader.reconnect import LinkStatus
from drivers.protocols import CardTap

if TYPE_CHECKING:
    from drivers.cardreader.pcsc_reader import PcscCardReader

log = structlog.get_logger(__name__)

GET_UID_APDU = [0xFF, 0xCA, 0x00, 0x00, 0x00]
SW_OK = [0x90, 0x00]
PNP_NOTIFICATION = "\\\\?PnP?\\Notification"
# A present card whose UID read failed (lifted mid-read; or, with vpcd, a
# card swapped within one of pcscd's 400 ms presence polls, which pcscd never
# reports) is read again this often, this many times, while it stays.
READ_RETRIES = 6
READ_RETRY_MS = 250

_MASK = 0xFFFFFFFF


class _LinkLost(Exception):
    """pcscd went away or the context is no longer valid; re-establish."""



@dataclass(frozen=True, slots=True)
class ReaderStatus:
    """The reader went online, or offline for `detail`."""

    online: bool
    detail: str


@dataclass(slots=True)
class _Watch:
    """What `PcscWorker._watch` knows of its reader between two of pcscd's reports."""

    state: int  # the reader's state as last reported, for the next wait
    was_present: bool = False
    last_count: int = -1  # pcscd's count of insertions and removals
    on_reader: str | None = None  # UID of the card lying on the reader
    first: bool = True  # no report yet: a card present is the one held before
    # A card present whose UID could not be read yet (lifted mid-read, or
    # swapped faster than pcscd polls): retry a few times while it stays.
    retries: int = 0
    resumed: bool = False


class PcscWorker:
    """The blocking side: owns the PC/SC context; talks to the loop through `emit`."""

    def __init__(
        self,
        owner: PcscCardReader,
        scard: Any,
        emit: Callable[[CardTap | ReaderStatus], None],
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
        self.emit(ReaderStatus(online, detail))

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
        w = _Watch(s.SCARD_STATE_UNAWARE)
        try:
            while not self.stopping.is_set():
                wait_ms = min(self._poll_ms, READ_RETRY_MS) if w.retries else self._poll_ms
                hr, states = s.SCardGetStatusChange(ctx, wait_ms, [(reader, w.state)])
                code = hr & _MASK
                if code in (timeout, cancelled):
                    self._read_again(ctx, reader, w)
                    continue
                if code in self._reader_gone:
                    return f"PC/SC reader {reader!r} went away: {self._error(hr)}"
                if code != s.SCARD_S_SUCCESS:
                    raise _LinkLost(f"pcscd connection lost: {self._error(hr)}")
                event = int(states[0][1])
                if event & (s.SCARD_STATE_UNKNOWN | s.SCARD_STATE_UNAVAILABLE):
                    return f"PC/SC reader {reader!r} went away"
                self._changed(ctx, reader, w, event)
            return None
        finally:
            # Leaving with a card on the reader: it is held, not gone.
            self._held_uid = w.on_reader
            if w.on_reader is not None:
                self.owner.debouncer.refresh(w.on_reader)
            self.owner.card_on_reader = None

    def _read_again(self, ctx: int, reader: str, w: _Watch) -> None:
        """No change within the wait: read again the UID of a present card that would not say."""
        if w.retries and not self.stopping.is_set():
            w.retries -= 1
            w.on_reader = self._read_uid(ctx, reader)
            if w.on_reader is not None:
                w.retries = 0
                self._placed(w.on_reader, self.owner.clock(), resumed=w.resumed)
                self.owner.card_on_reader = w.on_reader

    def _changed(self, ctx: int, reader: str, w: _Watch, event: int) -> None:
        """pcscd reports the reader's state `event`: a card placed, swapped or lifted."""
        s = self.s
        present = bool(event & s.SCARD_STATE_PRESENT) and not event & s.SCARD_STATE_MUTE
        # pcscd counts insertions and removals in the high 16 bits: a
        # change while present means the card was swapped between two polls.
        count = (event >> 16) & 0xFFFF
        now = self.owner.clock()
        if present and (not w.was_present or count != w.last_count):
            if w.on_reader is not None:
                self.owner.debouncer.refresh(w.on_reader, now)
            w.resumed = w.first
            w.on_reader = self._read_uid(ctx, reader)
            w.retries = 0 if w.on_reader is not None else READ_RETRIES
            if w.on_reader is not None:
                self._placed(w.on_reader, now, resumed=w.resumed)
        elif not present:
            w.retries = 0
            if w.on_reader is not None:
                self.owner.debouncer.refresh(w.on_reader, now)
                w.on_reader = None
        self.owner.card_on_reader = w.on_reader
        w.first = False
        w.was_present, w.last_count = present, count
        w.state = event & ~s.SCARD_STATE_CHANGED

    def _placed(self, uid: str, now: float, *, resumed: bool) -> None:
        held, self._held_uid = self._held_uid, None
        if resumed and uid == held:
            self.owner.debouncer.refresh(uid, now)
            self.log.debug("card_still_present", uid=uid)
            return
        if self.owner.debouncer.accept(uid, now):
            self.emit(CardTap(reader=self.owner.name, uid=uid, mono=now))

    def _read_uid(self, ctx: int, reader: str) -> str | None:
        """The id of the card on `reader` (from its UID), or None if it would not say."""
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
            return self.owner.ids.of_uid(bytes(response[:-2]))
        finally:
            s.SCardDisconnect(handle, s.SCARD_LEAVE_CARD)
