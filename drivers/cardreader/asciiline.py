"""ASCII-line card readers: one hex UID per line. Pure encoder and incremental decoder.

Rules (chosen to accept what such readers really print, and nothing else):

- A line ends at CR or LF; CRLF and blank lines are fine (blank lines are
  ignored, not counted).
- Separators `:`, `-`, space and tab are removed anywhere in the line, so
  `04:A1:B2:C3`, `04 A1 B2 C3` and ` 04A1B2C3 ` all give `04A1B2C3`.
- What remains must be hex digits (either case), an even number of them,
  from MIN_DIGITS to MAX_DIGITS (2 to 10 bytes: EM4100's 5, ISO 14443's 4, 7
  or 10). Anything else is counted as `malformed` and dropped; there is no
  decimal or prefixed format.
- A line longer than MAX_LINE bytes is counted once as `overlong` and
  skipped up to its end, so garbage without line ends holds at most MAX_LINE
  bytes.
- The decoder starts in sync: the first line after a (re)open is accepted.
  A reader that sends a UID once per card must not lose the first tap; a
  line joined halfway gives a short or odd-length UID that is dropped or, at
  worst, an unknown card that the gateway refuses.
"""

from __future__ import annotations

import re

from drivers.cardreader import DecoderStats

MIN_DIGITS = 4
MAX_DIGITS = 20
# Longest line kept: 20 digits with a separator between each pair and some
# padding fit comfortably.
MAX_LINE = 64

_SEPARATORS = b": -\t"
_LINE_END = re.compile(rb"[\r\n]")
_UID = re.compile(rb"[0-9A-Fa-f]+")


def encode(uid: str, *, end: bytes = b"\r\n") -> bytes:
    """The line a reader prints for `uid`.

    Raises:
        ValueError: `uid` would not decode (not an even number of 4 to 20 hex digits).
    """
    line = uid.encode("ascii", errors="replace")
    if parse_line(line) is None:
        raise ValueError(f"not an ascii-line UID: {uid!r}")
    return line + end


def parse_line(line: bytes) -> str | None:
    """The UID on one line (without its line end), or None if it is not one."""
    digits = line.translate(None, _SEPARATORS)
    if (
        MIN_DIGITS <= len(digits) <= MAX_DIGITS
        and len(digits) % 2 == 0
        and _UID.fullmatch(digits) is not None
    ):
        return digits.decode("ascii").upper()
    return None


class AsciiLineDecoder:
    """Incremental ascii-line decoder; see the module docstring for the rules."""

    def __init__(self) -> None:
        self.stats = DecoderStats()
        self._line = bytearray()
        self._skipping = False

    @property
    def buffered(self) -> int:
        """Bytes of the line in progress (at most MAX_LINE)."""
        return len(self._line)

    def reset(self) -> None:
        """Forget the line in progress."""
        self._line.clear()
        self._skipping = False

    def feed(self, data: bytes) -> list[str]:
        """Consume `data`; return the UIDs of the lines it completes."""
        uids: list[str] = []
        start = 0
        for match in _LINE_END.finditer(data):
            self._take(data[start : match.start()])
            self._end_line(uids)
            start = match.end()
        self._take(data[start:])
        return uids

    def _take(self, chunk: bytes) -> None:
        if self._skipping or not chunk:
            return
        if len(self._line) + len(chunk) > MAX_LINE:
            self.stats.overlong += 1
            self._line.clear()
            self._skipping = True
            return
        self._line += chunk

    def _end_line(self, uids: list[str]) -> None:
        if self._skipping:
            self._skipping = False
            return
        line = bytes(self._line)
        self._line.clear()
        if not line.translate(None, _SEPARATORS):
            return
        uid = parse_line(line)
        if uid is None:
            self.stats.malformed += 1
        else:
            self.stats.frames_ok += 1
            uids.append(uid)
