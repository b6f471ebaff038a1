"""Card ids: from what a reader reads to the id the center's card records use.

Contract of the module: pure, no I/O; nothing here raises on a reader's
input. A reader reads either the UID's bytes (an RDM6300 frame, a hex line,
PC/SC's get-data answer) or a number (a decimal line, as "8H10D" USB readers
type it). `CardIds` turns either into the id in the building's
`gateway.card_format` (behaviour.md "Card readers"):

- `uid_order = "reversed"` first reverses the UID's bytes (readers that send
  them least significant first); `"as_read"` (the default) keeps them.
- `hex`: upper-case hex of all the UID's bytes, no separators
  (04 A1 B2 C3 -> "04A1B2C3").
- `dec10`: the UID's last 4 bytes (all of them when it has fewer), most
  significant first, as a 10-digit zero-padded decimal: the number printed on
  many campus cards (00 02 6F 6C 3A -> 0x026F6C3A = 40856634 -> "0040856634").
- A number (0 to 2^32 - 1) is in `dec10` the id itself, zero-padded, and in
  `hex` the 4 bytes of that number, most significant first
  (40856634 -> "026F6C3A"). `uid_order` does not apply: a number on a line
  has no byte order (docs/decisions.md "Card readers").

`parse_number` is the one reading of a decimal line: 1 to 10 ASCII digits
whose value fits 4 bytes, else None (the line is dropped, never guessed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "CARD_FORMATS",
    "LINE_FORMATS",
    "MAX_NUMBER",
    "UID_ORDERS",
    "CardFormat",
    "CardIds",
    "LineFormat",
    "UidOrder",
    "parse_number",
]

CardFormat = Literal["hex", "dec10"]
UidOrder = Literal["as_read", "reversed"]
LineFormat = Literal["hex", "dec"]
CARD_FORMATS: Final = ("hex", "dec10")
UID_ORDERS: Final = ("as_read", "reversed")
LINE_FORMATS: Final = ("hex", "dec")

#: The largest card number: 4 bytes.
MAX_NUMBER: Final = 2**32 - 1
#: Digits of a `dec10` id, and the most a decimal line may hold.
DEC_DIGITS: Final = 10
_DEC_BYTES: Final = 4
_DIGITS: Final = frozenset(b"0123456789")


@dataclass(frozen=True, slots=True)
class CardIds:
    """The card ids of one reader: the building's format and the reader's byte order.

    Raises:
        ValueError: an unknown `card_format` or `uid_order`.
    """

    card_format: CardFormat = "hex"
    uid_order: UidOrder = "as_read"

    def __post_init__(self) -> None:
        if self.card_format not in CARD_FORMATS:
            raise ValueError(f"card_format must be one of {list(CARD_FORMATS)}, not {self.card_format!r}")
        if self.uid_order not in UID_ORDERS:
            raise ValueError(f"uid_order must be one of {list(UID_ORDERS)}, not {self.uid_order!r}")

    def of_uid(self, uid: bytes) -> str:
        """The id of the card whose UID bytes were read as `uid`."""
        if self.uid_order == "reversed":
            uid = uid[::-1]
        if self.card_format == "dec10":
            return f"{int.from_bytes(uid[-_DEC_BYTES:], 'big'):0{DEC_DIGITS}d}"
        return uid.hex().upper()

    def of_number(self, number: int) -> str:
        """The id of the card whose number (0 to MAX_NUMBER) was read.

        Raises:
            ValueError: `number` does not fit 4 bytes (`parse_number` never
                returns such a number).
        """
        if not 0 <= number <= MAX_NUMBER:
            raise ValueError(f"a card number is 0 to {MAX_NUMBER}, not {number}")
        if self.card_format == "dec10":
            return f"{number:0{DEC_DIGITS}d}"
        return number.to_bytes(_DEC_BYTES, "big").hex().upper()


def parse_number(text: bytes) -> int | None:
    """The card number `text` spells (1 to 10 ASCII digits, at most MAX_NUMBER), or None."""
    if not 1 <= len(text) <= DEC_DIGITS or not _DIGITS.issuperset(text):
        return None
    number = int(text)
    return number if number <= MAX_NUMBER else None
