"""Card ids (drivers.cardreader.cardid) and the decoders that make them: the
building's card_format (hex, dec10), a reader's uid_order, ascii-line's
line_format (hex, dec). Every expected id is worked by hand in a comment."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.cardreader import asciiline, rdm6300
from drivers.cardreader.asciiline import AsciiLineDecoder
from drivers.cardreader.cardid import MAX_NUMBER, CardFormat, CardIds, UidOrder, parse_number
from drivers.cardreader.factory import open_reader
from drivers.cardreader.rdm6300 import Rdm6300Decoder


@pytest.mark.parametrize(
    ("uid", "card_format", "uid_order", "card_id"),
    [
        # hex: every byte, upper case, as read.
        ("04a1b2c3", "hex", "as_read", "04A1B2C3"),
        ("04A1B2C3D4E5F6", "hex", "as_read", "04A1B2C3D4E5F6"),
        # reversed: C3 B2 A1 04.
        ("04A1B2C3", "hex", "reversed", "C3B2A104"),
        # 0x04A1B2C3 = 0x04*2^24 + 0xA1*2^16 + 0xB2*2^8 + 0xC3
        #            = 67108864 + 10551296 + 45568 + 195 = 77705923
        ("04A1B2C3", "dec10", "as_read", "0077705923"),
        # 0xA1B2C3D4 = 161*16777216 + 178*65536 + 195*256 + 212
        #            = 2701131776 + 11665408 + 49920 + 212 = 2712847316
        ("A1B2C3D4", "dec10", "as_read", "2712847316"),
        # reversed: 0xD4C3B2A1 = 212*16777216 + 195*65536 + 178*256 + 161
        #                      = 3556769792 + 12779520 + 45568 + 161 = 3569595041
        ("A1B2C3D4", "dec10", "reversed", "3569595041"),
        # An EM4100 card (5 bytes, RDM6300): the last 4, 0x026F6C3A
        # = 2*16777216 + 111*65536 + 108*256 + 58 = 33554432 + 7274496 + 27648 + 58
        # = 40856634, the 8H10D number printed on the card.
        ("01026F6C3A", "dec10", "as_read", "0040856634"),
        # 0x00123456 = 18*65536 + 52*256 + 86 = 1193046
        ("0C00123456", "dec10", "as_read", "0001193046"),
        # 7 bytes: the last 4, 0xC3D4E5F6 = 195*16777216 + 212*65536 + 229*256 + 246
        # = 3271557120 + 13893632 + 58624 + 246 = 3285509622
        ("04A1B2C3D4E5F6", "dec10", "as_read", "3285509622"),
        # 7 bytes reversed: F6 E5 D4 C3 B2 A1 04, the last 4 are C3 B2 A1 04
        # = 195*16777216 + 178*65536 + 161*256 + 4 = 3283263748
        ("04A1B2C3D4E5F6", "dec10", "reversed", "3283263748"),
        ("FFFFFFFF", "dec10", "as_read", "4294967295"),
        # Fewer than 4 bytes: the number they make, 0x04A1 = 1185.
        ("04A1", "dec10", "as_read", "0000001185"),
    ],
)
def test_the_id_of_a_uid(uid: str, card_format: CardFormat, uid_order: UidOrder, card_id: str) -> None:
    assert CardIds(card_format, uid_order).of_uid(bytes.fromhex(uid)) == card_id


@pytest.mark.parametrize(
    ("number", "card_format", "card_id"),
    [
        (40856634, "dec10", "0040856634"),
        (40856634, "hex", "026F6C3A"),   # 40856634 = 0x026F6C3A (above)
        (0, "dec10", "0000000000"),
        (0, "hex", "00000000"),
        (MAX_NUMBER, "dec10", "4294967295"),
        (MAX_NUMBER, "hex", "FFFFFFFF"),
        (2712847316, "hex", "A1B2C3D4"),  # 2712847316 = 0xA1B2C3D4 (above)
    ],
)
@pytest.mark.parametrize("uid_order", ["as_read", "reversed"])
def test_the_id_of_a_number_has_no_byte_order(
    number: int, card_format: CardFormat, card_id: str, uid_order: UidOrder
) -> None:
    assert CardIds(card_format, uid_order).of_number(number) == card_id


def test_a_number_beyond_4_bytes_has_no_id() -> None:
    with pytest.raises(ValueError, match="0 to 4294967295"):
        CardIds("dec10").of_number(MAX_NUMBER + 1)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"card_format": "dec"}, "card_format must be one of"),
    ({"uid_order": "little"}, "uid_order must be one of"),
])
def test_unknown_formats_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CardIds(**kwargs)


@pytest.mark.parametrize(("text", "number"), [
    (b"0040856634", 40856634),
    (b"4294967295", MAX_NUMBER),
    (b"0", 0),
    (b"12345", 12345),
    (b"4294967296", None),     # 2^32
    (b"9999999999", None),
    (b"00040856634", None),    # 11 digits
    (b"", None),
    (b"04A1B2C3", None),
    (b"+12345", None),
    (b"-1", None),
    (b"12 34", None),
    ("٠٤".encode(), None),     # Arabic-Indic digits are not ASCII digits
])
def test_parse_number(text: bytes, number: int | None) -> None:
    assert parse_number(text) == number


@given(st.integers(min_value=0, max_value=MAX_NUMBER))
def test_dec10_of_a_number_is_its_10_digits_and_hex_its_4_bytes(number: int) -> None:
    assert CardIds("dec10").of_number(number) == f"{number:010d}"
    assert bytes.fromhex(CardIds("hex").of_number(number)) == number.to_bytes(4, "big")
    # A number read from a line and the same 4 bytes read as a UID are one card.
    for fmt in ("hex", "dec10"):
        ids = CardIds(fmt)
        assert ids.of_number(number) == ids.of_uid(number.to_bytes(4, "big"))


# ---------------------------------------------------------------- decoders


def test_rdm6300_frames_give_the_id_in_the_buildings_format() -> None:
    frame = rdm6300.encode("01026F6C3A")
    assert Rdm6300Decoder(CardIds("dec10")).feed(frame) == ["0040856634"]
    assert Rdm6300Decoder(CardIds("hex", "reversed")).feed(frame) == ["3A6C6F0201"]
    assert Rdm6300Decoder().feed(frame) == ["01026F6C3A"]


def test_rdm6300_bad_frames_say_why() -> None:
    decoder = Rdm6300Decoder(CardIds("dec10"))
    good = rdm6300.encode("01026F6C3A")
    assert decoder.feed(good[:-3] + b"00\x03") == []
    # 01^02 = 03, 03^6F = 6C, 6C^6C = 00, 00^3A = 3A
    assert (decoder.stats.bad_checksum, decoder.stats.last_drop) == (1, "bad checksum 00 (expected 3A)")
    assert decoder.feed(good[:4] + b"g") == []
    assert decoder.stats.malformed == 1 and decoder.stats.last_drop.startswith("malformed frame: byte 0x67")


@pytest.mark.parametrize(
    ("card_format", "lines", "ids"),
    [
        # The 8H10D output of a USB reader, CRLF or LF, spaces around allowed.
        ("dec10", b"0040856634\r\n", ["0040856634"]),
        ("dec10", b" 0040856634\t\n40856634\n", ["0040856634", "0040856634"]),
        ("dec10", b"4294967295\r\n0\r\n", ["4294967295", "0000000000"]),
        # In a hex building a number is its 4 bytes: 40856634 = 0x026F6C3A.
        ("hex", b"0040856634\r\n", ["026F6C3A"]),
        ("hex", b"2712847316\r\n", ["A1B2C3D4"]),
        ("dec10", b"\r\n\r\n  \r\n", []),          # blank lines: nothing, nothing counted
    ],
)
def test_ascii_line_dec_lines_are_numbers(card_format: CardFormat, lines: bytes, ids: list[str]) -> None:
    decoder = AsciiLineDecoder("dec", CardIds(card_format))
    assert decoder.feed(lines) == ids
    assert (decoder.stats.frames_ok, decoder.stats.dropped) == (len(ids), 0)


@pytest.mark.parametrize(
    "line",
    [
        b"04A1B2C3",        # hex in a dec reader: never guessed
        b"0040856634A",
        b"00040856634",     # 11 digits
        b"4294967296",      # 2^32
        b"9999999999",
        b"0040 856634",     # a separator inside
        b"0040-856634",
        b"-12",
        b"+12",
        b"12.5",
        b"\xff\xfe",
    ],
)
@pytest.mark.parametrize("card_format", ["hex", "dec10"])
def test_ascii_line_dec_refuses_what_is_not_a_number(line: bytes, card_format: CardFormat) -> None:
    decoder = AsciiLineDecoder("dec", CardIds(card_format))
    assert decoder.feed(line + b"\r\n" + b"0040856634\r\n") == [CardIds(card_format).of_number(40856634)]
    assert (decoder.stats.frames_ok, decoder.stats.malformed) == (1, 1)
    assert decoder.stats.last_drop == f"not a decimal card number: {line!r}"


@pytest.mark.parametrize(
    ("uid_order", "card_format", "card_id"),
    [
        ("as_read", "hex", "04A1B2C3"),
        ("reversed", "hex", "C3B2A104"),
        ("as_read", "dec10", "0077705923"),   # 0x04A1B2C3, worked above
        ("reversed", "dec10", "3283263748"),  # 0xC3B2A104, worked above
    ],
)
def test_ascii_line_hex_lines_are_uids(uid_order: UidOrder, card_format: CardFormat, card_id: str) -> None:
    decoder = AsciiLineDecoder("hex", CardIds(card_format, uid_order))
    assert decoder.feed(b"04:a1:b2:c3\r\n") == [card_id]


def test_ascii_line_hex_bad_lines_say_why() -> None:
    decoder = AsciiLineDecoder("hex", CardIds("dec10"))
    assert decoder.feed(b"04A1B2C\r\n" + b"Z" * 70 + b"\r\n") == []
    assert (decoder.stats.malformed, decoder.stats.overlong) == (1, 1)
    assert decoder.stats.last_drop == "line longer than 64 bytes"
    decoder.feed(b"04A1B2C\r\n")
    assert decoder.stats.last_drop == "not a hex UID: b'04A1B2C'"


def test_ascii_line_encode_dec_round_trips() -> None:
    assert asciiline.encode("0040856634", line_format="dec") == b"0040856634\r\n"
    with pytest.raises(ValueError, match="not an ascii-line card number"):
        asciiline.encode("4294967296", line_format="dec")


def test_an_unknown_line_format_is_refused() -> None:
    with pytest.raises(ValueError, match="line_format must be one of"):
        AsciiLineDecoder("bcd")  # type: ignore[arg-type]


# ---------------------------------------------------------------- factory


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"type": "serial", "port": "/dev/x", "line_format": "dec"},
         "line_format applies only to ascii-line readers"),
        ({"type": "serial", "port": "/dev/x", "protocol": "ascii-line", "line_format": "bcd"},
         "unknown line_format 'bcd'"),
        ({"type": "pcsc", "name": "ACS", "line_format": "dec"}, r"unknown setting\(s\) \['line_format'\]"),
        ({"type": "pcsc", "name": "ACS", "uid_order": "lsb"}, "uid_order must be one of"),
        ({"type": "serial", "port": "/dev/x", "card_format": "dec"}, "card_format must be one of"),
    ],
)
def test_open_reader_refuses_bad_card_settings(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_reader("r-1", debounce_s=1.5, **settings)
