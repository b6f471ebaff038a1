"""The pure DL/T 645-2007 codec: frames worked out by hand from the standard, round
trips, BCD values, the stream scanner, fuzzing, and interop with the `dlt645` package."""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.dlt645 import frames
from drivers.dlt645.credentials import Credentials, parse_credentials, read_credentials
from drivers.dlt645.frames import (
    ErrorAnswer,
    Frame,
    ReadAnswer,
    ReadRequest,
    RelayAck,
    RelayCommand,
    Scan,
    bcd_bytes,
    bcd_value,
    decode_answer,
    decode_request,
    scan,
)
from drivers.errors import FrameError

ADDR = "000000001234"   # on the wire, least significant byte first: 34 12 00 00 00 00
DEADLINE = dt.datetime(2024, 6, 1, 12, 34, 56)   # the meter's clock: no zone on the wire

# ------------------------------------------------------- frames worked by hand
#
# Every frame: FE FE FE FE, 68, the address 34 12 00 00 00 00, 68, C, L, DATA (+0x33
# a byte), CS (the sum of 68 .. end of DATA, modulo 256), 16. The header's sum is
# 68 + 34 + 12 + 68 = 0x116, to which C, L and the sent DATA bytes are added.

HAND: list[tuple[str, frames.Request | frames.Answer, str]] = [
    (
        # Read total active energy, DI 00010000: DI0..DI3 = 00 00 01 00, sent 33 33 34 33.
        # CS = 0x116 + 11 + 04 + 33 + 33 + 34 + 33 = 0x1F8 -> F8.
        "read energy",
        ReadRequest(ADDR, 0x00010000),
        "FEFEFEFE 68 341200000000 68 11 04 33333433 F8 16",
    ),
    (
        # 1234.56 kWh (XXXXXX.XX): digits 00123456, least significant byte first
        # 56 34 12 00, sent 89 67 45 33, after the DI. L = 8.
        # CS = 0x116 + 91 + 08 + (33 + 33 + 34 + 33) + (89 + 67 + 45 + 33) = 0x3E4 -> E4.
        "energy answer 1234.56 kWh",
        ReadAnswer(ADDR, 0x00010000, bytes.fromhex("56341200")),
        "FEFEFEFE 68 341200000000 68 91 08 33333433 89674533 E4 16",
    ),
    (
        # -0.1234 kW (XX.XXXX, signed): digits 001234 -> 34 12 00, the sign in the top
        # bit of the most significant (last) byte -> 34 12 80, sent 67 45 B3.
        # DI 02030000 -> 00 00 03 02, sent 33 33 36 35. L = 7.
        # CS = 0x116 + 91 + 07 + (33 + 33 + 36 + 35) + (67 + 45 + B3) = 0x3DE -> DE.
        "power answer -0.1234 kW",
        ReadAnswer(ADDR, 0x02030000, bytes.fromhex("341280")),
        "FEFEFEFE 68 341200000000 68 91 07 33333635 6745B3 DE 16",
    ),
    (
        # Status word 3 (DI 04000503 -> 03 05 00 04, sent 36 38 33 37), binary 0x0010
        # (bit 4: relay open) -> 10 00, sent 43 33. CS = 0x116 + 91 + 06 + ... = 0x2FB -> FB.
        "status word 3, relay open",
        ReadAnswer(ADDR, frames.STATUS_WORD_3, bytes.fromhex("1000")),
        "FEFEFEFE 68 341200000000 68 91 06 36383337 4333 FB 16",
    ),
    (
        # No such data: D1, error byte 02 sent 35. CS = 0x116 + D1 + 01 + 35 = 0x21D -> 1D.
        "read refused",
        ErrorAnswer(ADDR, frames.READ, frames.ERR_NO_DATA),
        "FEFEFEFE 68 341200000000 68 D1 01 35 1D 16",
    ),
    (
        # Trip: PA 02, password 123456 -> 56 34 12, operator 00000001 -> 01 00 00 00,
        # N1 1A, N2 00, deadline 2024-06-01 12:34:56 -> 56 34 12 01 06 24.
        # Sent: 35 89 67 45 34 33 33 33 4D 33 89 67 45 34 39 57; L = 16 = 0x10.
        # CS = 0x116 + 1C + 10 + (sum of the sent data = 0x4B0) = 0x5F2 -> F2.
        "trip",
        RelayCommand(ADDR, 2, 0x123456, 1, frames.RELAY_TRIP, DEADLINE),
        "FEFEFEFE 68 341200000000 68 1C 10 35896745 34333333 4D33 896745343957 F2 16",
    ),
    (
        # Taken: 9C, no data. CS = 0x116 + 9C + 00 = 0x1B2 -> B2.
        "relay taken",
        RelayAck(ADDR),
        "FEFEFEFE 68 341200000000 68 9C 00 B2 16",
    ),
    (
        # Password refused: DC, error byte 04 sent 37. CS = 0x116 + DC + 01 + 37 = 0x22A -> 2A.
        "password refused",
        ErrorAnswer(ADDR, frames.RELAY, frames.ERR_PASSWORD),
        "FEFEFEFE 68 341200000000 68 DC 01 37 2A 16",
    ),
]


@pytest.mark.parametrize(("what", "message", "wire"), HAND, ids=[h[0] for h in HAND])
def test_frames_worked_by_hand(what: str, message: frames.Request | frames.Answer,
                               wire: str) -> None:
    raw = bytes.fromhex(wire)
    assert message.frame().encode() == raw
    found = scan(raw, ADDR)
    assert found.frame == message.frame() and found.used == len(raw)
    assert found.stray == found.bad == found.foreign == 0
    decode = decode_request if isinstance(message, ReadRequest | RelayCommand) else decode_answer
    assert decode(found.frame) == message


def test_the_wildcard_read_of_the_address_worked_by_hand() -> None:
    # The standard's own frame: 68 AA*6 68 13 00, CS = 0xD0 + 6 * 0xAA + 0x13 = 0x4DF -> DF.
    request = frames.ReadAddress()
    assert request.frame().encode() == bytes.fromhex("FEFEFEFE 68 AAAAAAAAAAAA 68 13 00 DF 16")
    found = scan(request.frame().encode())
    assert found.frame is not None and decode_request(found.frame) == request
    # The answer, 93 with the address as data: 34 12 00 00 00 00 sent 67 45 33 33 33 33;
    # CS = 0x116 + 93 + 06 + 0x178 = 0x327 -> 27.
    wire = bytes.fromhex("FEFEFEFE 68 341200000000 68 93 06 674533333333 27 16")
    assert frames.AddressAnswer(ADDR).frame().encode() == wire
    found = scan(wire)
    assert found.frame is not None and decode_answer(found.frame) == frames.AddressAnswer(ADDR)


def test_values_of_the_hand_frames() -> None:
    assert bcd_value(bytes.fromhex("56341200")) == 123456   # 1234.56 kWh at 2 decimals
    assert bcd_value(bytes.fromhex("341280"), signed=True) == -1234   # -0.1234 kW at 4
    assert bcd_value(bytes.fromhex("341280")) != -1234   # unsigned: the top bit is a digit
    with pytest.raises(FrameError, match="not BCD"):
        bcd_value(bytes.fromhex("5634AA00"))   # AA is no digit: never a number
    assert frames.binary_value(bytes.fromhex("1000")) == 0x10


def test_answer_may_follow_stray_bytes_and_preambles() -> None:
    answer = ReadAnswer(ADDR, 0x00010000, bytes.fromhex("56341200")).frame().encode()
    found = scan(b"\x00\x68\x13" + b"\xfe" * 9 + answer + b"\x16", ADDR)
    assert found.frame is not None
    assert decode_answer(found.frame) == ReadAnswer(ADDR, 0x00010000, bytes.fromhex("56341200"))
    assert found.stray == 3   # 00 68 13 (the FE run is preamble)
    assert found.used == 12 + len(answer)   # the trailing 16 is left for the next scan


def test_bad_checksum_and_other_address_are_dropped_and_counted() -> None:
    good = ReadAnswer(ADDR, 0x00010000, bytes.fromhex("56341200")).frame().encode()
    bad = bytearray(good)
    bad[-2] ^= 0x01
    other = ReadAnswer("000000004321", 0x00010000, b"\x99\x99").frame().encode()
    found = scan(bytes(bad) + other + good, ADDR)
    assert found.frame is not None and found.frame.address == ADDR
    assert (found.bad, found.foreign) == (1, 1)
    assert scan(other, ADDR) == Scan(None, len(other), 0, 0, 1)


def test_truncated_answer_asks_for_more() -> None:
    good = ReadAnswer(ADDR, 0x00010000, bytes.fromhex("56341200")).frame().encode()
    for cut in range(len(good)):
        found = scan(b"\x01" + good[:cut], ADDR)
        assert found.frame is None
        assert found.used <= 1 + cut   # what may be the answer's start is kept
    found = scan(b"\x01" + good, ADDR)
    assert found.frame is not None and found.used == 1 + len(good)


def test_credentials_line() -> None:
    creds = parse_credentials("02:123456:00000001\n")
    assert creds == Credentials(level=2, password=0x123456, operator=1)
    assert "123456" not in repr(creds)
    for bad in ("02:123456", "2:123456:00000001", "02:12345G:00000001", "02:123456:1"):
        with pytest.raises(ValueError, match=r"LEVEL|hex digits") as err:
            parse_credentials(bad)
        assert "12345" not in str(err.value)


def test_password_file(tmp_path: Path) -> None:
    good, bad, empty = tmp_path / "good", tmp_path / "bad", tmp_path / "empty"
    good.write_text("\n02:123456:00000001\n")
    bad.write_text("02:123456\n")
    empty.write_text("\n")
    assert read_credentials(good) == Credentials(2, 0x123456, 1)
    with pytest.raises(ValueError, match=f"{bad}: a password line"):
        read_credentials(bad)
    with pytest.raises(ValueError, match="no LEVEL:PASSWORD:OPERATOR line"):
        read_credentials(empty)


def test_encoders_refuse_what_the_wire_cannot_carry() -> None:
    with pytest.raises(ValueError, match="12 digits"):
        ReadRequest("1234", 0x00010000).frame().encode()
    with pytest.raises(ValueError, match="password"):
        RelayCommand(ADDR, 2, 0x1234567, 1, frames.RELAY_TRIP, DEADLINE).frame()
    with pytest.raises(ValueError, match="does not fit"):
        bcd_bytes(1_000_000, 3)
    with pytest.raises(ValueError, match="does not fit"):
        bcd_bytes(800_000, 3, signed=True)   # the top bit is the sign


# ----------------------------------------------------------------- round trips

ADDRESSES = st.text("0123456789", min_size=12, max_size=12)
DIS = st.integers(0, 0xFFFFFFFF)


@given(ADDRESSES, DIS, st.binary(min_size=1, max_size=frames.MAX_DATA - 4), st.booleans())
def test_read_answer_round_trip(address: str, di: int, value: bytes, more: bool) -> None:
    answer = ReadAnswer(address, di, value, more)
    found = scan(answer.frame().encode(), address)
    assert found.frame is not None and decode_answer(found.frame) == answer


@given(ADDRESSES, st.integers(0, 255), st.integers(0, 0xFFFFFF), st.integers(0, 0xFFFFFFFF),
       st.sampled_from(sorted(frames.RELAY_ACTIONS)),
       st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2099, 12, 31)))
def test_relay_command_round_trip(address: str, level: int, password: int, operator: int,
                                  action: int, deadline: dt.datetime) -> None:
    command = RelayCommand(address, level, password, operator, action,
                           deadline.replace(microsecond=0))
    found = scan(command.frame().encode(preamble=False), address)
    assert found.frame is not None and decode_request(found.frame) == command


@pytest.mark.parametrize("signed", [False, True])
@given(length=st.integers(1, 6), data=st.data())
def test_bcd_round_trip(signed: bool, length: int, data: st.DataObject) -> None:
    top = (8 if signed else 10) * 10 ** (2 * length - 1) - 1
    value = data.draw(st.integers(-top if signed else 0, top))
    assert bcd_value(bcd_bytes(value, length, signed), signed) == value


# ---------------------------------------------------------------------- fuzzing


@given(st.binary(max_size=300))
def test_noise_never_raises_anything_but_frame_error(data: bytes) -> None:
    found = scan(data, ADDR)
    assert 0 <= found.used <= len(data)
    for decode in (decode_answer, decode_request):
        with contextlib.suppress(FrameError):
            decode(Frame(ADDR, data[0] if data else 0, data[1:]))
    for field in (bcd_value, frames.binary_value):
        with contextlib.suppress(FrameError):
            field(data)


@given(st.binary(max_size=300))
def test_noise_is_never_a_reading(noise: bytes) -> None:
    # Only a whole frame (68, address, 68, length, checksum, 16) for this meter is
    # ever returned; from noise, that takes 48 address bits and a checksum by chance.
    found = scan(noise, ADDR)
    if found.frame is not None:
        assert found.frame.encode(preamble=False) in noise


@given(st.binary(max_size=60), st.binary(max_size=60), st.integers(0, 8))
def test_answer_among_noise_is_found(before: bytes, after: bytes, fe: int) -> None:
    answer = ReadAnswer(ADDR, 0x02030000, bytes.fromhex("341280"))
    stream = before.replace(b"\x68", b"\x00") + b"\xfe" * fe + answer.frame().encode() + after
    buffer = bytearray(stream)
    while True:   # as a link does: drop what was used, scan again
        found = scan(buffer, ADDR)
        del buffer[:found.used]
        if found.frame is not None or found.used == 0:
            break
    assert found.frame is not None and decode_answer(found.frame) == answer


@given(st.binary(min_size=1, max_size=40), st.integers(0, 23))
def test_truncated_or_corrupted_answer_is_no_reading(noise: bytes, cut: int) -> None:
    raw = bytearray(ReadAnswer(ADDR, 0x00010000, bytes.fromhex("56341200")).frame().encode())
    truncated = bytes(raw[:cut])
    assert scan(truncated, ADDR).frame is None
    raw[4 + 14 + cut % 4] ^= noise[0] or 1   # a value byte changed: the checksum fails
    found = scan(bytes(raw), ADDR)
    assert found.frame is None and found.bad == 1


# -------------------------------------------------- interop: the dlt645 package


def test_interop_with_the_dlt645_package() -> None:
    """Our frames against the framing of `dlt645` 3.2.0 (a test-only peer; see
    docs/decisions.md "DL/T 645-2007" for why only its framing is trusted)."""
    protocol = pytest.importorskip("dlt645.protocol.protocol").DLT645Protocol
    for _, message, wire in HAND:
        raw = bytes.fromhex(wire)
        rest, theirs = protocol.deserialize_with_remaining(raw)
        assert theirs is not None and rest == b""
        assert bytes(theirs.addr) == frames.address_bytes(ADDR)
        assert theirs.ctrl_code == message.frame().control
        assert bytes(theirs.data) == message.frame().data
        built = protocol.build_frame(bytes(theirs.addr), theirs.ctrl_code, bytes(theirs.data))
        assert bytes(built) == raw
    # Theirs after noise and a corrupted copy, ours on their output.
    good = bytes.fromhex(HAND[1][2])
    noisy = b"\x00\x68\x01" + good[:-2] + b"\x00\x16" + good
    _, theirs = protocol.deserialize_with_remaining(noisy)
    found = scan(noisy, ADDR)
    assert theirs is not None and found.frame is not None
    assert bytes(theirs.data) == found.frame.data
