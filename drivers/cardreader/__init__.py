"""Card readers: wire decoders, debouncing, and the serial and PC/SC drivers.

Layer contract:

- `cardid` turns what a reader reads (UID bytes, or a decimal card number)
  into the card's id in the building's `gateway.card_format`, with the
  reader's `uid_order`.
- Decoders (`rdm6300`, `asciiline`) are pure and incremental: `feed(bytes)`
  returns the card ids completed by those bytes, in order, and never raises
  on any input. They hold a bounded amount of state however long the
  garbage, and count what they drop in a `DecoderStats`: a frame or line
  that does not fit the declared format is dropped, never guessed.
- `debounce` turns sightings of a UID into taps: a card held on a reader is
  one tap.
- `serial_reader` and `pcsc_reader` (its thread in `pcsc_worker`) implement
  `drivers.protocols.CardReader`: `run(sink, status)` runs until cancelled,
  never raises anything else, reopens the device with back-off (`reconnect`)
  and reports each online/offline change once.
- `factory.open_reader(...)` builds a reader from a `[[readers]]` table.

Past the decoders (and PC/SC's UID read) a card is its id, as the center's
card records spell it: `CardTap.uid` is that id.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Protocol

import structlog

from drivers.protocols import CardTap, StatusSink, TapSink

log = structlog.get_logger(__name__)

READER_TYPES = ("serial", "pcsc")
#: The settings a `[[readers]]` table of each type takes besides `id` and
#: `type`: the config file's reader and `factory.open_reader` both check them.
READER_SETTINGS: dict[str, frozenset[str]] = {
    "serial": frozenset({"port", "baudrate", "protocol", "uid_order", "line_format"}),
    "pcsc": frozenset({"name", "uid_order"}),
}


@dataclass(slots=True)
class DecoderStats:
    """What a decoder has seen since it was created (never reset).

    `frames_ok`: UIDs decoded. `bad_checksum`: well-formed frames whose
    checksum did not match. `malformed`: frames or lines of the wrong shape
    (non-hex digits, wrong length, missing end byte). `overlong`: lines longer
    than the decoder keeps. `noise_bytes`: bytes outside any frame.
    `last_drop`: why the last frame or line was dropped ("" before any).
    """

    frames_ok: int = 0
    bad_checksum: int = 0
    malformed: int = 0
    overlong: int = 0
    noise_bytes: int = 0
    last_drop: str = ""

    @property
    def dropped(self) -> int:
        """Frames or lines thrown away, whatever the reason."""
        return self.bad_checksum + self.malformed + self.overlong


class UidDecoder(Protocol):
    """An incremental decoder of one reader's byte stream into card ids."""

    stats: DecoderStats

    def feed(self, data: bytes) -> list[str]:
        """Consume `data`; return the card ids it completes (`cardid.CardIds`), in order."""
        ...

    def reset(self) -> None:
        """Forget any partial frame (the port was reopened); keep the stats."""
        ...

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished frame; bounded by the decoder."""
        ...


async def deliver_tap(sink: TapSink, tap: CardTap) -> None:
    """Call `sink(tap)`, awaiting its result if any; log, never raise, if it fails."""
    try:
        result = sink(tap)
        if inspect.isawaitable(result):
            await result
    except Exception:
        # The daemon's handler failing on one tap must not stop the reader.
        log.exception("card_tap_sink_failed", reader=tap.reader, uid=tap.uid)


def report_status(status: StatusSink, reader: str, online: bool, detail: str) -> None:
    """Call `status(online, detail)`; log, never raise, if it fails."""
    try:
        status(online, detail)
    except Exception:
        log.exception("card_reader_status_sink_failed", reader=reader, online=online)
