"""Pure card reader codecs and the debouncer: RDM6300 frames, ascii lines, taps."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from drivers.cardreader import UidDecoder, asciiline, rdm6300
from drivers.cardreader.asciiline import AsciiLineDecoder
from drivers.cardreader.debounce import Debouncer
from drivers.cardreader.rdm6300 import Rdm6300Decoder


def feed_all(decoder: UidDecoder, chunks: list[bytes]) -> list[str]:
    uids: list[str] = []
    for chunk in chunks:
        uids += decoder.feed(chunk)
    return uids


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# ---------------------------------------------------------------- RDM6300


@pytest.mark.parametrize(
    ("uid", "frame"),
    [
        # Checksums worked by hand: 01^23^45^67^89 = 0x89, 0C^00^12^34^56 = 0x7C.
        ("0123456789", b"\x020123456789" + b"89" + b"\x03"),
        ("0C00123456", b"\x020C00123456" + b"7C" + b"\x03"),
        ("0000000000", b"\x020000000000" + b"00" + b"\x03"),
        ("ffffffffff", b"\x02FFFFFFFFFF" + b"FF" + b"\x03"),
    ],
)
def test_rdm6300_encode_known_frames(uid: str, frame: bytes) -> None:
    assert rdm6300.encode(uid) == frame
    assert Rdm6300Decoder().feed(frame) == [uid.upper()]


@pytest.mark.parametrize("uid", ["", "012345678", "01234567890", "01234567GZ", "0123 45678"])
def test_rdm6300_encode_refuses_what_is_not_a_uid(uid: str) -> None:
    with pytest.raises(ValueError, match="10 hex digits"):
        rdm6300.encode(uid)


def test_rdm6300_lower_case_digits_give_upper_case_uid() -> None:
    frame = b"\x02" + b"0c00123456" + b"7c" + b"\x03"
    assert Rdm6300Decoder().feed(frame) == ["0C00123456"]


GOOD = rdm6300.encode("0C00123456")
OTHER = rdm6300.encode("1A2B3C4D5E")


@pytest.mark.parametrize(
    ("chunks", "uids", "stats"),
    [
        pytest.param([GOOD], ["0C00123456"], (1, 0, 0, 0), id="one-frame"),
        pytest.param(bytewise(GOOD), ["0C00123456"], (1, 0, 0, 0), id="byte-by-byte"),
        pytest.param([GOOD[:5], GOOD[5:13], GOOD[13:]], ["0C00123456"], (1, 0, 0, 0), id="split"),
        pytest.param([GOOD + OTHER], ["0C00123456", "1A2B3C4D5E"], (2, 0, 0, 0), id="two-in-one"),
        pytest.param([b"noise" + GOOD], ["0C00123456"], (1, 0, 0, 5), id="leading-noise"),
        pytest.param([GOOD[:-3] + b"00\x03"], [], (0, 1, 0, 0), id="bad-checksum"),
        pytest.param([GOOD[:7] + GOOD], ["0C00123456"], (1, 0, 1, 0), id="truncated-then-good"),
        pytest.param([GOOD[:-1] + b"X" + GOOD], ["0C00123456"], (1, 0, 1, 1), id="no-etx"),
        pytest.param([GOOD[:4] + b"\x03" + OTHER], ["1A2B3C4D5E"], (1, 0, 1, 1), id="early-etx"),
        pytest.param([GOOD[:4] + b"g" + GOOD], ["0C00123456"], (1, 0, 1, 1), id="non-hex"),
        pytest.param([b"\x02\x02\x02" + GOOD], ["0C00123456"], (1, 0, 3, 0), id="stx-run"),
        pytest.param([b"\x03\x03" + GOOD + b"\x03"], ["0C00123456"], (1, 0, 0, 3), id="stray-etx"),
    ],
)
def test_rdm6300_decoder(chunks: list[bytes], uids: list[str], stats: tuple[int, int, int, int]) -> None:
    decoder = Rdm6300Decoder()
    assert feed_all(decoder, chunks) == uids
    s = decoder.stats
    assert (s.frames_ok, s.bad_checksum, s.malformed, s.noise_bytes) == stats
    assert s.dropped == s.bad_checksum + s.malformed + s.overlong


def test_rdm6300_reset_forgets_a_partial_frame() -> None:
    decoder = Rdm6300Decoder()
    assert decoder.feed(GOOD[:8]) == []
    assert decoder.buffered == 8
    decoder.reset()
    assert decoder.buffered == 0
    # The tail alone is not a frame; the next whole frame is.
    assert decoder.feed(GOOD[8:] + OTHER) == ["1A2B3C4D5E"]


# A valid frame anywhere in a byte string, found independently of the decoder.
_FRAME_RE = re.compile(rb"\x02([0-9A-Fa-f]{10})([0-9A-Fa-f]{2})\x03")


def valid_frames_in(data: bytes) -> list[str]:
    return [
        m.group(1).decode().upper()
        for m in _FRAME_RE.finditer(data)
        if rdm6300.checksum(m.group(1)) == int(m.group(2), 16)
    ]


uids10 = st.binary(min_size=5, max_size=5).map(lambda b: b.hex().upper())
# Garbage biased towards what can confuse a decoder: STX, ETX and hex digits.
garbage = st.lists(
    st.one_of(st.sampled_from(list(b"\x02\x030123456789ABCDEFabcdef")), st.integers(0, 255)),
    max_size=40,
).map(bytes)


@st.composite
def rdm6300_stream(draw: st.DrawFn) -> tuple[list[bytes], list[str]]:
    """Valid frames interleaved with garbage, cut into random chunks."""
    uids = draw(st.lists(uids10, max_size=8))
    parts = [draw(garbage)]
    for uid in uids:
        parts += [rdm6300.encode(uid), draw(garbage)]
    data = b"".join(parts)
    # Garbage that happens to spell a whole valid frame would be a real frame.
    assume(valid_frames_in(data) == uids)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return chunks, uids


@given(rdm6300_stream())
def test_rdm6300_every_valid_frame_is_decoded_once(case: tuple[list[bytes], list[str]]) -> None:
    chunks, uids = case
    decoder = Rdm6300Decoder()
    out: list[str] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
        assert decoder.buffered < rdm6300.FRAME_LEN
    assert out == uids
    assert decoder.stats.frames_ok == len(uids)


@given(st.lists(st.binary(max_size=64), max_size=20))
def test_rdm6300_any_bytes_never_raise_and_stay_bounded(chunks: list[bytes]) -> None:
    decoder = Rdm6300Decoder()
    for chunk in chunks:
        for uid in decoder.feed(chunk):
            assert re.fullmatch(r"[0-9A-F]{10}", uid)
        assert decoder.buffered < rdm6300.FRAME_LEN


# ---------------------------------------------------------------- ascii-line


@pytest.mark.parametrize(
    ("data", "uids"),
    [
        pytest.param(b"04A1B2C3\n", ["04A1B2C3"], id="lf"),
        pytest.param(b"04A1B2C3\r", ["04A1B2C3"], id="cr"),
        pytest.param(b"04A1B2C3\r\n", ["04A1B2C3"], id="crlf"),
        pytest.param(b"04a1b2c3\n", ["04A1B2C3"], id="lower-case"),
        pytest.param(b"04:A1:B2:C3\n", ["04A1B2C3"], id="colons"),
        pytest.param(b"04 A1 B2 C3\n", ["04A1B2C3"], id="spaces"),
        pytest.param(b"04-a1-b2-c3\n", ["04A1B2C3"], id="dashes"),
        pytest.param(b"  04A1B2C3\t\r\n", ["04A1B2C3"], id="padding"),
        pytest.param(b"\n\r\n\r\r04A1B2C3\n\n", ["04A1B2C3"], id="blank-lines"),
        pytest.param(b"04A1B2C3D4E5F6\n", ["04A1B2C3D4E5F6"], id="7-byte"),
        pytest.param(b"0C00123456\n", ["0C00123456"], id="em4100"),
        pytest.param(b"04A1\n", ["04A1"], id="shortest"),
        pytest.param(b"00112233445566778899\n", ["00112233445566778899"], id="longest"),
        pytest.param(b"04A1B2C3\n1A2B3C4D\n", ["04A1B2C3", "1A2B3C4D"], id="two"),
    ],
)
def test_ascii_line_accepts(data: bytes, uids: list[str]) -> None:
    assert AsciiLineDecoder().feed(data) == uids
    decoder = AsciiLineDecoder()
    assert feed_all(decoder, bytewise(data)) == uids
    assert decoder.stats.frames_ok == len(uids)
    assert decoder.stats.dropped == 0


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"04A1B2C", id="odd-digits"),
        pytest.param(b"04A", id="too-short"),
        pytest.param(b"001122334455667788990A", id="too-long-uid"),
        pytest.param(b"UID:04A1B2C3", id="prefix"),
        pytest.param(b"04A1B2CG", id="non-hex"),
        pytest.param(b"04A1\x00B2C3", id="nul"),
        pytest.param(b"0xA1B2C3", id="0x"),
        pytest.param("04Ä1B2C3".encode(), id="non-ascii"),
    ],
)
def test_ascii_line_rejects_and_counts_malformed(line: bytes) -> None:
    decoder = AsciiLineDecoder()
    assert decoder.feed(line + b"\n" + b"1A2B3C4D\n") == ["1A2B3C4D"]
    assert decoder.stats.malformed == 1


def test_ascii_line_overlong_line_is_skipped_to_its_end() -> None:
    decoder = AsciiLineDecoder()
    noise = b"0" * (asciiline.MAX_LINE * 3)
    out: list[str] = []
    for i in range(0, len(noise), 7):
        out += decoder.feed(noise[i : i + 7])
        assert decoder.buffered <= asciiline.MAX_LINE
    # A valid-looking tail of the overlong line is not a UID; the next line is.
    out += decoder.feed(b"04A1B2C3\n1A2B3C4D\n")
    assert out == ["1A2B3C4D"]
    assert decoder.stats.overlong == 1
    assert decoder.stats.malformed == 0


def test_ascii_line_line_of_exactly_max_length_is_kept() -> None:
    line = b"04A1B2C3".center(asciiline.MAX_LINE)
    assert AsciiLineDecoder().feed(line + b"\n") == ["04A1B2C3"]
    assert AsciiLineDecoder().feed(b" " + line + b"\n") == []


@pytest.mark.parametrize("uid", ["04A1B2C3", "04a1b2c3", "04:A1:B2:C3", "0C00123456"])
def test_ascii_line_encode_round_trips(uid: str) -> None:
    assert AsciiLineDecoder().feed(asciiline.encode(uid)) == [uid.replace(":", "").upper()]


@pytest.mark.parametrize("uid", ["", "04A", "UID", "04A1B2C3\n"])
def test_ascii_line_encode_refuses_what_would_not_decode(uid: str) -> None:
    with pytest.raises(ValueError, match="not an ascii-line UID"):
        asciiline.encode(uid)


line_uids = st.binary(min_size=2, max_size=10).map(lambda b: b.hex().upper())
line_ends = st.sampled_from([b"\n", b"\r", b"\r\n"])


@st.composite
def garbage_line(draw: st.DrawFn) -> bytes:
    """A line that is never a UID: random bytes with a non-hex byte, then a line end.

    Newlines inside the garbage are replaced, so it is one line whatever its
    length (longer than MAX_LINE included).
    """
    body = bytearray(draw(st.binary(max_size=150)).replace(b"\n", b"#").replace(b"\r", b"#"))
    body.insert(draw(st.integers(0, len(body))), ord("G"))
    return bytes(body) + draw(line_ends)


@st.composite
def ascii_stream(draw: st.DrawFn) -> tuple[list[bytes], list[str]]:
    uids = draw(st.lists(line_uids, max_size=8))
    parts = [draw(st.lists(garbage_line(), max_size=3))]
    for uid in uids:
        parts += [[uid.encode() + draw(line_ends)], draw(st.lists(garbage_line(), max_size=3))]
    data = b"".join(b"".join(p) for p in parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return chunks, uids


@given(ascii_stream())
def test_ascii_line_every_valid_line_is_decoded_once(case: tuple[list[bytes], list[str]]) -> None:
    chunks, uids = case
    decoder = AsciiLineDecoder()
    out: list[str] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
        assert decoder.buffered <= asciiline.MAX_LINE
    assert out == uids


@given(st.lists(st.binary(max_size=200), max_size=20))
def test_ascii_line_any_bytes_never_raise_and_stay_bounded(chunks: list[bytes]) -> None:
    decoder = AsciiLineDecoder()
    for chunk in chunks:
        for uid in decoder.feed(chunk):
            assert re.fullmatch(r"(?:[0-9A-F]{2}){2,10}", uid)
        assert decoder.buffered <= asciiline.MAX_LINE


# ---------------------------------------------------------------- debounce


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_first_sighting_is_a_tap() -> None:
    assert Debouncer(1.5, FakeClock()).accept("04A1B2C3")


def test_held_card_is_one_tap_however_long() -> None:
    clock = FakeClock()
    debouncer = Debouncer(1.5, clock)
    taps = []
    for _ in range(100):  # 10 s of RDM6300 repeats every 100 ms
        taps.append(debouncer.accept("0C00123456"))
        clock.now += 0.1
    assert taps == [True] + [False] * 99


def test_window_counts_from_the_last_sighting() -> None:
    clock = FakeClock()
    debouncer = Debouncer(1.5, clock)
    assert debouncer.accept("A1")
    clock.now += 1.0
    assert not debouncer.accept("A1")
    clock.now += 1.0  # 2 s after the first sighting, 1 s after the last
    assert not debouncer.accept("A1")
    clock.now += 1.5
    assert debouncer.accept("A1")


def test_other_cards_are_independent() -> None:
    clock = FakeClock()
    debouncer = Debouncer(1.5, clock)
    assert debouncer.accept("A1")
    assert debouncer.accept("B2")
    clock.now += 0.5
    assert not debouncer.accept("A1")
    assert not debouncer.accept("B2")


def test_refresh_extends_the_window_without_a_tap() -> None:
    clock = FakeClock()
    debouncer = Debouncer(1.5, clock)
    assert debouncer.accept("A1")
    clock.now += 10.0  # held 10 s on a PC/SC reader, then lifted
    debouncer.refresh("A1")
    clock.now += 1.0
    assert not debouncer.accept("A1")  # put back 1 s after lifting


def test_explicit_time_overrides_the_clock() -> None:
    debouncer = Debouncer(1.5, FakeClock())
    assert debouncer.accept("A1", now=5.0)
    assert not debouncer.accept("A1", now=6.0)
    assert debouncer.accept("A1", now=7.6)


def test_zero_window_makes_every_sighting_a_tap() -> None:
    debouncer = Debouncer(0.0, FakeClock())
    assert all(debouncer.accept("A1") for _ in range(3))


def test_negative_window_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        Debouncer(-1.0)


def test_memory_holds_only_cards_within_the_window() -> None:
    clock = FakeClock()
    debouncer = Debouncer(1.5, clock)
    for i in range(10_000):
        debouncer.accept(f"{i:08X}")
        clock.now += 0.01
    assert len(debouncer._last_seen) < 200  # 151 within 1.5 s, give or take rounding
