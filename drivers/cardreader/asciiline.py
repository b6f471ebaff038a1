"""ASCII-line card readers, one card per line (a hex UID or a decimal number): pure codec.

Rules (chosen to accept what such readers really print, and nothing else):

- A line ends at CR or LF; CRLF and blank lines are fine (blank lines are
  ignored, not counted).
- The reader's `line_format` says what its lines hold; a line is never
  guessed to be one or the other (`0040856634` is valid hex too).
- `"hex"` (the default): separators `:`, `-`, space and tab are removed
  anywhere in the line, so `04:A1:B2:C3`, `04 A1 B2 C3` and ` 04A1B2C3 `
  all give the UID 04 A1 B2 C3. What remains must be hex digits (either
  case), an even number of them, from MIN_DIGITS to MAX_DIGITS (2 to 10
  bytes: EM4100's 5, ISO 14443's 4, 7 or 10).
- `"dec"`: a card number, as "8H10D" USB readers type it: 1 to 10 ASCII
  digits, at most 2^32 - 1, with spaces or tabs allowed only around it
  (`cardid.parse_number`).
- The decoder returns the card's id made by its `cardid.CardIds` from the
  UID or the number. A line that does not fit the format is counted as
  `malformed` and dropped, its reason in `DecoderStats.last_drop`.
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
from drivers.cardreader.cardid import LINE_FORMATS, CardIds, LineFormat, parse_number

MIN_DIGITS = 4
MAX_DIGITS = 20
# Longest line kept: 20 digits with a separator between each pair and some
# padding fit comfortably.
MAX_LINE = 64

_SEPARATORS = b": -\t"
_SPACES = b" \t"
_LINE_END = re.compile(rb"[\r\n]")
_UID = re.compile(rb"[0-9A-Fa-f]+")


def encode(uid: str, *, end: bytes = b"\r\n", line_format: LineFormat = "hex") -> bytes:
    """The line a reader of `line_format` prints for `uid` (hex digits, or a card number).

    Raises:
        ValueError: `uid` would not decode (hex: not an even number of 4 to 20
            hex digits; dec: not 1 to 10 digits of at most 2^32 - 1).
    """
    line = uid.encode("ascii", errors="replace")
    if parse_line(line, line_format) is None:
        what = "UID" if line_format == "hex" else "card number"
        raise ValueError(f"not an ascii-line {what}: {uid!r}")
    return line + end


def parse_line(line: bytes, line_format: LineFormat = "hex", ids: CardIds | None = None) -> str | None:
    """The card id on one line (without its line end), or None if the line is not one."""
    ids = ids or CardIds()
    if line_format == "dec":
        number = parse_number(line.strip(_SPACES))
        return None if number is None else ids.of_number(number)
    digits = line.translate(None, _SEPARATORS)
    if (
        MIN_DIGITS <= len(digits) <= MAX_DIGITS
        and len(digits) % 2 == 0
        and _UID.fullmatch(digits) is not None
    ):
        return ids.of_uid(bytes.fromhex(digits.decode("ascii")))
    return None


class AsciiLineDecoder:
    """Incremental ascii-line decoder; see the module docstring for the rules.

    Raises:
        ValueError: an unknown `line_format`.
    """

    def __init__(self, line_format: LineFormat = "hex", ids: CardIds | None = None) -> None:
        if line_format not in LINE_FORMATS:
            raise ValueError(f"line_format must be one of {list(LINE_FORMATS)}, not {line_format!r}")
        self.stats = DecoderStats()
        self.line_format = line_format
        self.ids = ids or CardIds()
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
        """Consume `data`; return the card ids of the lines it completes."""
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
            self.stats.last_drop = f"line longer than {MAX_LINE} bytes"
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
        dec = self.line_format == "dec"
        if not (line.strip(_SPACES) if dec else line.translate(None, _SEPARATORS)):
            return
        uid = parse_line(line, self.line_format, self.ids)
        if uid is None:
            self.stats.malformed += 1
            what = "a decimal card number" if dec else "a hex UID"
            self.stats.last_drop = f"not {what}: {line!r}"
        else:
            self.stats.frames_ok += 1
            uids.append(uid)
