"""DL/T 645-2007 wire codec: frames, reads, relay control, BCD values. Pure, no I/O.

Contract: every `decode_*` function and `scan` either returns a well-formed value
or raises `FrameError`; no other exception escapes, whatever the input bytes
(fuzzed in tests/test_dlt645_frames.py). Encoders raise `ValueError` on values the
wire cannot carry (an address that is not 12 digits, a password over 3 bytes),
which is a caller bug. Frames are data: `Frame` holds the DATA field as the
device means it (the +0x33 taken off); `Frame.encode` adds it back.

The wire (config.md "Meters and relays on DL/T 645-2007"):
`FE FE FE FE 68 A0..A5 68 C L DATA CS 16`: the address's 6 BCD bytes least
significant first, every DATA byte sent plus 0x33, CS the sum modulo 256 of every
byte from the first 68 to the end of DATA. Read: C = 11 with the 4-byte data
identifier (DI0 first); normal answer 91 (B1 when more follows) with the DI and
the value, error answer D1 with one error byte. Relay control: C = 1C with
PA P0..P2 (level, password least significant byte first), C0..C3 (operator code,
least significant byte first), N1 (1A trip, 1C close now), N2 = 00, N3..N8 the
deadline `ss mm hh DD MM YY` in BCD; normal answer 9C, error DC (bit 2: the
password was refused). Values are BCD, least significant byte first, the top bit
of the most significant byte the sign where a field is signed; status words
(DI 040005xx) are binary.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from drivers.errors import FrameError

PREAMBLE = b"\xfe\xfe\xfe\xfe"
START = 0x68
END = 0x16
FILLER = 0xFE
OFFSET = 0x33   # added to every DATA byte on the wire
MAX_DATA = 200   # the standard's longest DATA field (a read answer)
HEADER = 10   # 68 A0..A5 68 C L
MAX_FRAME = len(PREAMBLE) + HEADER + MAX_DATA + 2

READ = 0x11
READ_ADDRESS = 0x13   # read the communication address, sent to BROADCAST
RELAY = 0x1C
ANSWER = 0x80   # control bit 7: sent by the meter
ERROR = 0x40   # control bit 6: an error answer (one error byte)
MORE = 0x20   # control bit 5: more data follows (B1)

RELAY_TRIP = 0x1A   # N1: open the relay (cut the room)
RELAY_CLOSE = 0x1C   # N1: close the relay now
RELAY_ACTIONS = frozenset({RELAY_TRIP, RELAY_CLOSE})

# Error byte bits (D1, DC).
ERR_OTHER = 0x01
ERR_NO_DATA = 0x02   # no such data identifier
ERR_PASSWORD = 0x04   # password refused, or not authorised

STATUS_WORD_3 = 0x04000503   # bit 4: the relay (0 closed, 1 open)
# The wildcard address: every meter on the line takes the frame (and answers a read of
# its address with its own: only meaningful with one meter wired).
BROADCAST = "AAAAAAAAAAAA"


# ------------------------------------------------------------------ addresses


def address_bytes(address: str) -> bytes:
    """The wire form of a 12-digit address (as printed, most significant digit first)."""
    if address != BROADCAST and (
            len(address) != 12 or not address.isdigit() or not address.isascii()):
        raise ValueError(f"a DL/T 645 address is 12 digits, got {address!r}")
    return bytes.fromhex(address)[::-1]


def address_text(wire: bytes) -> str:
    """The address as printed (hex digits beyond 9 shown as such: wildcards, noise)."""
    return wire[::-1].hex().upper()


def checksum(data: bytes | bytearray | memoryview) -> int:
    """Sum modulo 256 of every byte from the first 68 to the end of DATA."""
    return sum(data) & 0xFF


# --------------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame; `data` is the DATA field without the +0x33."""

    address: str
    control: int
    data: bytes = b""

    def encode(self, preamble: bool = True) -> bytes:
        """The bytes on the wire, `FE FE FE FE` first unless `preamble` is False."""
        if not 0 <= self.control <= 0xFF or len(self.data) > MAX_DATA:
            raise ValueError(f"control {self.control} or {len(self.data)} data bytes out of range")
        body = bytearray((START, *address_bytes(self.address), START, self.control,
                          len(self.data)))
        body += bytes((b + OFFSET) & 0xFF for b in self.data)
        body += bytes((checksum(body), END))
        return (PREAMBLE if preamble else b"") + bytes(body)


@dataclass(frozen=True, slots=True)
class Scan:
    """What `scan` found: the first frame (or None: more bytes needed, or none),
    how many bytes of the buffer it used up (drop them), and what it dropped."""

    frame: Frame | None
    used: int
    stray: int = 0   # bytes that began no frame (FE preambles not counted)
    bad: int = 0   # frames with a bad checksum or end byte
    foreign: int = 0   # well-formed frames for another address


def scan(buffer: bytes | bytearray, address: str | None = None) -> Scan:
    """Find the first well-formed frame in a byte stream (for `address` if given).

    FE bytes are skipped; other bytes before a frame are stray; a frame with a bad
    checksum or end byte, or one for another address, is dropped. A frame cut short
    returns `frame=None` with `used` up to its first byte: call again with more.
    """
    want = None if address is None else address_bytes(address)
    stray = bad = foreign = 0
    i, n = 0, len(buffer)
    while True:
        j = buffer.find(START, i)
        stop = n if j < 0 else j
        stray += sum(1 for b in buffer[i:stop] if b != FILLER)
        if j < 0 or n - j < HEADER:
            return Scan(None, stop, stray, bad, foreign)
        length = buffer[j + 9]
        if buffer[j + 7] != START or length > MAX_DATA:
            stray, i = stray + 1, j + 1   # a 68 in noise, not a frame's start
            continue
        end = j + HEADER + length + 2
        if n < end:
            return Scan(None, j, stray, bad, foreign)
        if buffer[end - 1] != END or checksum(buffer[j:end - 2]) != buffer[end - 2]:
            bad, i = bad + 1, j + 1   # resynchronise inside it: it may hide a real frame
            continue
        wire = bytes(buffer[j + 1:j + 7])
        if want is not None and wire != want:
            foreign, i = foreign + 1, end
            continue
        data = bytes((b - OFFSET) & 0xFF for b in buffer[j + HEADER:end - 2])
        return Scan(Frame(address_text(wire), buffer[j + 8], data), end, stray, bad, foreign)


# ------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """C = 11: read the data identifier `di` (e.g. 0x00010000, total active energy)."""

    address: str
    di: int

    def frame(self) -> Frame:
        return Frame(self.address, READ, _di_bytes(self.di))


@dataclass(frozen=True, slots=True)
class ReadAnswer:
    """C = 91 (B1 when `more`): the value bytes of `di`, as sent (least significant first)."""

    address: str
    di: int
    value: bytes
    more: bool = False

    def frame(self) -> Frame:
        control = ANSWER | READ | (MORE if self.more else 0)
        return Frame(self.address, control, _di_bytes(self.di) + self.value)


@dataclass(frozen=True, slots=True)
class RelayCommand:
    """C = 1C: trip or close the relay, with the password and a deadline (meter clock)."""

    address: str
    level: int
    password: int
    operator: int
    action: int
    deadline: dt.datetime

    def __repr__(self) -> str:   # the password is a secret: never in a log line
        return (f"RelayCommand(address={self.address!r}, level={self.level}, password=***, "
                f"operator={self.operator:08X}, action={self.action:02X}, "
                f"deadline={self.deadline.isoformat()})")

    def frame(self) -> Frame:
        if not 0 <= self.level <= 0xFF or not 0 <= self.password <= 0xFFFFFF:
            raise ValueError("password level is 1 byte and the password 3")
        if not 0 <= self.operator <= 0xFFFFFFFF or self.action not in RELAY_ACTIONS:
            raise ValueError("operator code is 4 bytes; action is 1A (trip) or 1C (close)")
        d = self.deadline
        if not 2000 <= d.year <= 2099:
            raise ValueError(f"deadline year {d.year} is not 20YY")
        stamp = bytes(_bcd_byte(v) for v in (d.second, d.minute, d.hour, d.day, d.month,
                                             d.year - 2000))
        data = (bytes((self.level,)) + self.password.to_bytes(3, "little")
                + self.operator.to_bytes(4, "little") + bytes((self.action, 0)) + stamp)
        return Frame(self.address, RELAY, data)


@dataclass(frozen=True, slots=True)
class RelayAck:
    """C = 9C: the meter took the relay command."""

    address: str

    def frame(self) -> Frame:
        return Frame(self.address, ANSWER | RELAY)


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """C = D1 or DC: the meter refused `function` (READ or RELAY); `error` is its error byte."""

    address: str
    function: int
    error: int

    @property
    def password_refused(self) -> bool:
        return bool(self.error & ERR_PASSWORD)

    def frame(self) -> Frame:
        return Frame(self.address, ANSWER | ERROR | self.function, bytes((self.error,)))


@dataclass(frozen=True, slots=True)
class ReadAddress:
    """C = 13 to BROADCAST: the meter on the line answers 93 with its address."""

    address: str = BROADCAST

    def frame(self) -> Frame:
        return Frame(self.address, READ_ADDRESS)


@dataclass(frozen=True, slots=True)
class AddressAnswer:
    """C = 93: the meter's address, in its address field and as its 6 data bytes."""

    address: str

    def frame(self) -> Frame:
        return Frame(self.address, ANSWER | READ_ADDRESS, address_bytes(self.address))


Request = ReadRequest | RelayCommand | ReadAddress
Answer = ReadAnswer | RelayAck | ErrorAnswer | AddressAnswer


def decode_request(frame: Frame) -> Request:
    """The request a frame carries (what a meter receives)."""
    data = frame.data
    if frame.control == READ:
        if len(data) != 4:
            raise FrameError(f"a read carries a 4-byte data identifier, not {len(data)} bytes")
        return ReadRequest(frame.address, int.from_bytes(data, "little"))
    if frame.control == RELAY:
        if len(data) != 16 or data[8] not in RELAY_ACTIONS or data[9] != 0:
            raise FrameError(f"not a relay command: {data.hex()}")
        return RelayCommand(frame.address, data[0], int.from_bytes(data[1:4], "little"),
                            int.from_bytes(data[4:8], "little"), data[8], _deadline(data[10:16]))
    if frame.control == READ_ADDRESS and not data:
        return ReadAddress(frame.address)
    raise FrameError(f"control {frame.control:02X} is not a request this codec speaks")


def decode_answer(frame: Frame) -> Answer:
    """The answer a frame carries (what the gateway receives)."""
    control, data = frame.control, frame.data
    function = control & 0x1F
    if not control & ANSWER or function not in (READ, RELAY, READ_ADDRESS):
        raise FrameError(f"control {control:02X} is not an answer this codec speaks")
    if control & ERROR:
        if len(data) != 1:
            raise FrameError(f"an error answer carries one error byte, not {len(data)}")
        return ErrorAnswer(frame.address, function, data[0])
    if function == READ_ADDRESS:
        if len(data) != 6:
            raise FrameError(f"an address answer carries 6 bytes, not {len(data)}")
        return AddressAnswer(address_text(data))
    if function == RELAY:
        if data or control & MORE:
            raise FrameError(f"a relay answer ({control:02X}) carries no data")
        return RelayAck(frame.address)
    if len(data) < 5:
        raise FrameError(f"a read answer carries the identifier and a value, not {len(data)} bytes")
    return ReadAnswer(frame.address, int.from_bytes(data[:4], "little"), data[4:],
                      bool(control & MORE))


# --------------------------------------------------------------------- values


def bcd_value(raw: bytes, signed: bool = False) -> int:
    """The integer a BCD field holds (least significant byte first): its digits,
    negative when `signed` and the top bit of the last byte is set."""
    if not raw:
        raise FrameError("an empty BCD field")
    negative = signed and bool(raw[-1] & 0x80)
    digits = raw[:-1] + bytes((raw[-1] & 0x7F,)) if signed else raw
    n = 0
    for b in reversed(digits):
        hi, lo = b >> 4, b & 0x0F
        if hi > 9 or lo > 9:
            raise FrameError(f"not BCD: {raw.hex()}")
        n = n * 100 + hi * 10 + lo
    return -n if negative else n


def bcd_bytes(value: int, length: int, signed: bool = False) -> bytes:
    """The BCD field of `length` bytes holding `value` (inverse of `bcd_value`)."""
    if value < 0 and not signed:
        raise ValueError(f"{value} in an unsigned BCD field")
    digits = str(abs(value)).rjust(2 * length, "0")
    if len(digits) > 2 * length or (signed and digits[0] > "7"):
        raise ValueError(f"{value} does not fit {length} BCD bytes")
    raw = bytearray(bytes.fromhex(digits)[::-1])
    if value < 0:
        raw[-1] |= 0x80
    return bytes(raw)


def binary_value(raw: bytes) -> int:
    """A status word: binary, least significant byte first."""
    if not raw:
        raise FrameError("an empty status word")
    return int.from_bytes(raw, "little")


def _di_bytes(di: int) -> bytes:
    if not 0 <= di <= 0xFFFFFFFF:
        raise ValueError(f"data identifier {di:#x} is not 4 bytes")
    return di.to_bytes(4, "little")


def _bcd_byte(v: int) -> int:
    return (v // 10) << 4 | v % 10


def _deadline(raw: bytes) -> dt.datetime:
    try:
        second, minute, hour, day, month, year = (bcd_value(bytes((b,))) for b in raw)
        return dt.datetime(2000 + year, month, day, hour, minute, second)
    except ValueError as exc:   # FrameError is a ValueError too
        raise FrameError(f"not a deadline: {raw.hex()} ({exc})") from None
