"""RDM6300 (125 kHz EM4100) serial frames: pure encoder and incremental decoder.

A frame is 14 bytes: STX (0x02), 10 ASCII hex digits, 2 ASCII hex digits of
checksum, ETX (0x03). The checksum is the XOR of the 5 bytes the 10 digits
spell. The UID is the 5 bytes the 10 digits spell; the decoder returns the
card's id made of them by its `cardid.CardIds` (by default upper-case hex,
the 10 digits as sent but upper-cased). The module repeats the frame
about every 100 ms while a card stays in the field; debouncing is not done
here.

Resynchronisation: the body of a frame is hex digits only, so any STX seen
inside a candidate frame abandons it and starts a new one there. Hence a
valid frame is decoded whatever garbage precedes it, and at most 13 bytes are
ever held.
"""

from __future__ import annotations

from drivers.cardreader import DecoderStats
from drivers.cardreader.cardid import CardIds

STX = 0x02
ETX = 0x03
UID_DIGITS = 10
FRAME_LEN = 1 + UID_DIGITS + 2 + 1

_HEX = frozenset(b"0123456789ABCDEFabcdef")


def checksum(uid: bytes) -> int:
    """XOR of the bytes spelled by the ASCII hex digits `uid`."""
    value = 0
    for byte in bytes.fromhex(uid.decode("ascii")):
        value ^= byte
    return value


def encode(uid: str) -> bytes:
    """The frame a module sends for `uid` (10 hex digits, any case).

    Raises:
        ValueError: `uid` is not 10 hex digits.
    """
    digits = uid.upper().encode("ascii", errors="replace")
    if len(digits) != UID_DIGITS or not _HEX.issuperset(digits):
        raise ValueError(f"an RDM6300 UID is {UID_DIGITS} hex digits, not {uid!r}")
    return bytes([STX]) + digits + b"%02X" % checksum(digits) + bytes([ETX])


class Rdm6300Decoder:
    """Incremental RDM6300 decoder; see the module docstring for the rules."""

    def __init__(self, ids: CardIds | None = None) -> None:
        self.stats = DecoderStats()
        self.ids = ids or CardIds()
        self._frame = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes of the frame in progress (at most FRAME_LEN - 1)."""
        return len(self._frame)

    def reset(self) -> None:
        """Forget the frame in progress."""
        self._frame.clear()

    def feed(self, data: bytes) -> list[str]:
        """Consume `data`; return the card ids of the frames it completes."""
        uids: list[str] = []
        frame = self._frame
        stats = self.stats
        for byte in data:
            if not frame:
                if byte == STX:
                    frame.append(byte)
                else:
                    stats.noise_bytes += 1
            elif len(frame) < FRAME_LEN - 1:
                if byte in _HEX:
                    frame.append(byte)
                else:
                    self._abandon(byte)
            elif byte == ETX:
                uid = self._finish()
                if uid is not None:
                    uids.append(uid)
            else:
                self._abandon(byte)
        return uids

    def _abandon(self, byte: int) -> None:
        # The candidate frame is malformed; `byte` may start the next one.
        self.stats.malformed += 1
        self.stats.last_drop = f"malformed frame: byte 0x{byte:02X} at offset {len(self._frame)}"
        self._frame.clear()
        if byte == STX:
            self._frame.append(byte)
        else:
            self.stats.noise_bytes += 1

    def _finish(self) -> str | None:
        digits = bytes(self._frame[1 : 1 + UID_DIGITS])
        sent = int(self._frame[1 + UID_DIGITS :].decode("ascii"), 16)
        self._frame.clear()
        expected = checksum(digits)
        if expected != sent:
            self.stats.bad_checksum += 1
            self.stats.last_drop = f"bad checksum {sent:02X} (expected {expected:02X})"
            return None
        self.stats.frames_ok += 1
        return self.ids.of_uid(bytes.fromhex(digits.decode("ascii")))
