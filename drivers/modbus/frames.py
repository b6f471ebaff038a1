"""Modbus wire codec: PDUs, MBAP (TCP) and RTU framing. Pure, no I/O.

Contract: every `decode_*`/`split_*` function either returns a well-formed value or
raises `FrameError`; no other exception escapes, whatever the input bytes
(fuzzed in tests/test_modbus_frames.py). Encoders raise `ValueError` on values that
Modbus cannot carry (address above 0xFFFF, too many registers), which is a caller bug.

Functions covered: 1 read coils, 3 read holding registers, 4 read input registers,
5 write single coil, 6 write single register, 15 write multiple coils,
16 write multiple registers, and exception responses (function | 0x80).
References: "MODBUS Application Protocol Specification V1.1b3" (PDUs, exception
codes) and "MODBUS over Serial Line V1.02" (RTU framing, CRC, 3.5-character gap).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from drivers.errors import FrameError, ModbusExceptionError
from drivers.serial_line import character_time_s

READ_COILS = 1
READ_HOLDING_REGISTERS = 3
READ_INPUT_REGISTERS = 4
WRITE_SINGLE_COIL = 5
WRITE_SINGLE_REGISTER = 6
WRITE_MULTIPLE_COILS = 15
WRITE_MULTIPLE_REGISTERS = 16

MAX_READ_REGISTERS = 125  # spec 6.3/6.4: 1 to 125 registers per read
MAX_READ_COILS = 2000  # spec 6.1
MAX_WRITE_REGISTERS = 123  # spec 6.12
MAX_WRITE_COILS = 1968  # spec 6.11
MAX_PDU = 253  # serial line ADU limit 256 minus address and CRC

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


# ---------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """Function 1, 3 or 4: read `count` coils or registers from `address`."""

    function: int
    address: int
    count: int

    def encode(self) -> bytes:
        """The request PDU."""
        limit = MAX_READ_COILS if self.function == READ_COILS else MAX_READ_REGISTERS
        if self.function not in (READ_COILS, READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS):
            raise ValueError(f"not a read function: {self.function}")
        _check_range(self.address, self.count, limit)
        return struct.pack(">BHH", self.function, self.address, self.count)


@dataclass(frozen=True, slots=True)
class WriteCoil:
    """Function 5: set one coil."""

    address: int
    value: bool
    function: int = WRITE_SINGLE_COIL

    def encode(self) -> bytes:
        """The request PDU (also the normal response, which echoes it)."""
        _check_range(self.address, 1, 1)
        return struct.pack(">BHH", WRITE_SINGLE_COIL, self.address, 0xFF00 if self.value else 0)


@dataclass(frozen=True, slots=True)
class WriteRegister:
    """Function 6: set one holding register."""

    address: int
    value: int
    function: int = WRITE_SINGLE_REGISTER

    def encode(self) -> bytes:
        """The request PDU (also the normal response, which echoes it)."""
        _check_range(self.address, 1, 1)
        _check_u16(self.value)
        return struct.pack(">BHH", WRITE_SINGLE_REGISTER, self.address, self.value)


@dataclass(frozen=True, slots=True)
class WriteCoils:
    """Function 15: set consecutive coils."""

    address: int
    values: tuple[bool, ...]
    function: int = WRITE_MULTIPLE_COILS

    def encode(self) -> bytes:
        """The request PDU."""
        _check_range(self.address, len(self.values), MAX_WRITE_COILS)
        packed = pack_bits(self.values)
        return (
            struct.pack(">BHHB", WRITE_MULTIPLE_COILS, self.address, len(self.values), len(packed))
            + packed
        )


@dataclass(frozen=True, slots=True)
class WriteRegisters:
    """Function 16: set consecutive holding registers."""

    address: int
    values: tuple[int, ...]
    function: int = WRITE_MULTIPLE_REGISTERS

    def encode(self) -> bytes:
        """The request PDU."""
        n = len(self.values)
        _check_range(self.address, n, MAX_WRITE_REGISTERS)
        for v in self.values:
            _check_u16(v)
        return struct.pack(f">BHHB{n}H", WRITE_MULTIPLE_REGISTERS, self.address, n, 2 * n, *self.values)


Request = ReadRequest | WriteCoil | WriteRegister | WriteCoils | WriteRegisters


def decode_request(pdu: bytes) -> Request:
    """Parse a request PDU (what a server receives)."""
    if len(pdu) < 5:
        raise FrameError(f"request PDU too short ({len(pdu)} bytes)")
    function, address, word = struct.unpack_from(">BHH", pdu)
    if function in (READ_COILS, READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS):
        _expect_len(pdu, 5)
        req: Request = ReadRequest(function, address, word)
    elif function == WRITE_SINGLE_COIL:
        _expect_len(pdu, 5)
        if word not in (0, 0xFF00):
            raise FrameError(f"coil value must be 0x0000 or 0xFF00, got 0x{word:04X}")
        req = WriteCoil(address, word == 0xFF00)
    elif function == WRITE_SINGLE_REGISTER:
        _expect_len(pdu, 5)
        req = WriteRegister(address, word)
    elif function == WRITE_MULTIPLE_COILS:
        nbytes = _byte_count(pdu, 5, (word + 7) // 8)
        req = WriteCoils(address, unpack_bits(pdu[6 : 6 + nbytes], word))
    elif function == WRITE_MULTIPLE_REGISTERS:
        _byte_count(pdu, 5, 2 * word)
        req = WriteRegisters(address, struct.unpack_from(f">{word}H", pdu, 6))
    else:
        raise FrameError(f"unsupported function {function}")
    try:
        req.encode()
    except ValueError as exc:
        raise FrameError(str(exc)) from None
    return req


# --------------------------------------------------------------- responses


@dataclass(frozen=True, slots=True)
class RegistersResponse:
    """Answer to function 3 or 4."""

    function: int
    values: tuple[int, ...]

    def encode(self) -> bytes:
        """The response PDU."""
        n = len(self.values)
        return struct.pack(f">BB{n}H", self.function, 2 * n, *self.values)


@dataclass(frozen=True, slots=True)
class CoilsResponse:
    """Answer to function 1. `values` holds every bit of the data bytes (padded to 8)."""

    values: tuple[bool, ...]
    function: int = READ_COILS

    def encode(self) -> bytes:
        """The response PDU."""
        packed = pack_bits(self.values)
        return struct.pack(">BB", READ_COILS, len(packed)) + packed


@dataclass(frozen=True, slots=True)
class WriteResponse:
    """Answer to functions 5, 6, 15, 16: address and value (5, 6) or count (15, 16)."""

    function: int
    address: int
    value: int

    def encode(self) -> bytes:
        """The response PDU."""
        return struct.pack(">BHH", self.function, self.address, self.value)


@dataclass(frozen=True, slots=True)
class ExceptionResponse:
    """A server's refusal: `function` is the request's function (without 0x80)."""

    function: int
    code: int

    def encode(self) -> bytes:
        """The response PDU."""
        return struct.pack(">BB", self.function | 0x80, self.code)

    def describe(self) -> str:
        """Human text, e.g. `exception 2 (illegal data address) to function 3`."""
        name = EXCEPTION_NAMES.get(self.code, "unknown")
        return f"exception {self.code} ({name}) to function {self.function}"


Response = RegistersResponse | CoilsResponse | WriteResponse | ExceptionResponse


def decode_response(pdu: bytes) -> Response:
    """Parse a response PDU on its own (without knowing the request)."""
    if not pdu:
        raise FrameError("empty response PDU")
    function = pdu[0]
    if function & 0x80:
        _expect_len(pdu, 2)
        return ExceptionResponse(function & 0x7F, pdu[1])
    if function in (READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS):
        nbytes = _byte_count(pdu, 1, None)
        if nbytes % 2:
            raise FrameError(f"odd register byte count {nbytes}")
        return RegistersResponse(function, struct.unpack_from(f">{nbytes // 2}H", pdu, 2))
    if function == READ_COILS:
        nbytes = _byte_count(pdu, 1, None)
        return CoilsResponse(unpack_bits(pdu[2 : 2 + nbytes], 8 * nbytes))
    if function in (WRITE_SINGLE_COIL, WRITE_SINGLE_REGISTER, WRITE_MULTIPLE_COILS,
                    WRITE_MULTIPLE_REGISTERS):
        _expect_len(pdu, 5)
        _, address, value = struct.unpack(">BHH", pdu)
        return WriteResponse(function, address, value)
    raise FrameError(f"unsupported function {function} in response")


def read_registers_reply(request: ReadRequest, pdu: bytes) -> tuple[int, ...]:
    """The register values answering `request` (function 3 or 4).

    The hot path of polling, so it avoids building intermediate objects.
    Raises `FrameError` if `pdu` is malformed or does not answer the request, and
    `ModbusExceptionError` if it is an exception response.
    """
    n = request.count
    if len(pdu) == 2 + 2 * n and pdu[0] == request.function and pdu[1] == 2 * n:
        return struct.unpack_from(f">{n}H", pdu, 2)
    response = decode_response(pdu)
    _raise_if_exception(request, response)
    if not isinstance(response, RegistersResponse) or response.function != request.function:
        raise FrameError(f"function {response.function} answers function {request.function}")
    raise FrameError(f"{len(response.values)} registers answer a read of {n}")


def read_coils_reply(request: ReadRequest, pdu: bytes) -> tuple[bool, ...]:
    """The `request.count` coil values answering `request` (function 1)."""
    response = decode_response(pdu)
    _raise_if_exception(request, response)
    if not isinstance(response, CoilsResponse):
        raise FrameError(f"function {response.function} answers function {request.function}")
    if len(response.values) != 8 * ((request.count + 7) // 8):
        raise FrameError(f"{len(response.values)} bits answer a read of {request.count} coils")
    return response.values[: request.count]


def check_write_reply(request: WriteCoil | WriteRegister | WriteCoils | WriteRegisters,
                      pdu: bytes) -> None:
    """Check that `pdu` acknowledges `request` (echo of address and value/count)."""
    response = decode_response(pdu)
    _raise_if_exception(request, response)
    if not isinstance(response, WriteResponse) or response.function != request.function:
        raise FrameError(f"function {response.function} answers function {request.function}")
    if isinstance(request, WriteCoil):
        expected = 0xFF00 if request.value else 0
    elif isinstance(request, WriteRegister):
        expected = request.value
    else:
        expected = len(request.values)
    if (response.address, response.value) != (request.address, expected):
        raise FrameError(
            f"write echo ({response.address}, {response.value}) "
            f"does not match ({request.address}, {expected})"
        )


def _raise_if_exception(request: Request, response: Response) -> None:
    if isinstance(response, ExceptionResponse):
        if response.function != request.function:
            raise FrameError(
                f"exception for function {response.function} answers function {request.function}"
            )
        raise ModbusExceptionError(response)


# ------------------------------------------------------------- MBAP (TCP)

MBAP_HEADER = 7  # transaction id, protocol id, length, unit id
_MBAP = struct.Struct(">HHHB")


@dataclass(frozen=True, slots=True)
class TcpFrame:
    """One Modbus TCP ADU."""

    transaction: int
    unit: int
    pdu: bytes


def encode_tcp(transaction: int, unit: int, pdu: bytes) -> bytes:
    """MBAP header + PDU."""
    return _MBAP.pack(transaction, 0, len(pdu) + 1, unit) + pdu


def split_tcp(buffer: bytes | bytearray) -> tuple[TcpFrame | None, int]:
    """Take the first complete frame from a TCP byte stream.

    Returns (frame, bytes consumed), or (None, 0) when more bytes are needed.
    Raises `FrameError` when the stream cannot be Modbus TCP (bad protocol id or
    length): the stream cannot be resynchronised and the connection should close.
    """
    if len(buffer) < MBAP_HEADER:
        return None, 0
    transaction, protocol, length, unit = _MBAP.unpack_from(buffer)
    if protocol != 0:
        raise FrameError(f"MBAP protocol id {protocol}, expected 0")
    if not 2 <= length <= MAX_PDU + 1:
        raise FrameError(f"MBAP length {length} out of range 2..{MAX_PDU + 1}")
    end = 6 + length
    if len(buffer) < end:
        return None, 0
    return TcpFrame(transaction, unit, bytes(buffer[MBAP_HEADER:end])), end


# ------------------------------------------------------------- RTU (serial)


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray) -> int:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def encode_rtu(unit: int, pdu: bytes) -> bytes:
    """Address + PDU + CRC."""
    body = bytes((unit,)) + pdu
    return body + crc16(body).to_bytes(2, "little")


def decode_rtu(frame: bytes | bytearray) -> tuple[int, bytes]:
    """(unit, PDU) of a complete RTU frame; `FrameError` on a short frame or bad CRC."""
    if len(frame) < 4:
        raise FrameError(f"RTU frame too short ({len(frame)} bytes)")
    body, crc = frame[:-2], int.from_bytes(frame[-2:], "little")
    if crc16(body) != crc:
        raise FrameError(f"CRC mismatch (got 0x{crc:04X}, computed 0x{crc16(body):04X})")
    return body[0], bytes(body[1:])


def rtu_response_length(buffer: bytes | bytearray) -> int | None:
    """Total length of the RTU response starting `buffer`, or None if not yet known.

    RTU has no length field; a master knows the size from the function code.
    Raises `FrameError` for a function this codec does not speak.
    """
    if len(buffer) < 2:
        return None
    function = buffer[1]
    if function & 0x80:
        return 5
    if function in (READ_COILS, READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS):
        return None if len(buffer) < 3 else 5 + buffer[2]
    if function in (WRITE_SINGLE_COIL, WRITE_SINGLE_REGISTER, WRITE_MULTIPLE_COILS,
                    WRITE_MULTIPLE_REGISTERS):
        return 8
    raise FrameError(f"unsupported function {function} in RTU response")


def rtu_request_length(buffer: bytes | bytearray) -> int | None:
    """Total length of the RTU request starting `buffer` (what a server or wire sees)."""
    if len(buffer) < 2:
        return None
    function = buffer[1]
    if function in (READ_COILS, READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS,
                    WRITE_SINGLE_COIL, WRITE_SINGLE_REGISTER):
        return 8
    if function in (WRITE_MULTIPLE_COILS, WRITE_MULTIPLE_REGISTERS):
        return None if len(buffer) < 7 else 9 + buffer[6]
    raise FrameError(f"unsupported function {function} in RTU request")


def frame_gap_s(baudrate: int, parity: str = "N", stopbits: int = 1) -> float:
    """The 3.5-character silence that separates RTU frames.

    Above 19200 baud the serial-line spec fixes it at 1.75 ms.
    """
    if baudrate > 19200:
        return 0.00175
    return 3.5 * character_time_s(baudrate, parity, stopbits)


# ------------------------------------------------------------------ helpers


def pack_bits(values: tuple[bool, ...] | list[bool]) -> bytes:
    """Coils to bytes, first coil in the least significant bit of the first byte."""
    out = bytearray((len(values) + 7) // 8)
    for i, v in enumerate(values):
        if v:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def unpack_bits(data: bytes, count: int) -> tuple[bool, ...]:
    """The first `count` coils of `data` (inverse of `pack_bits`)."""
    return tuple(bool(data[i >> 3] >> (i & 7) & 1) for i in range(count))


def _check_range(address: int, count: int, limit: int) -> None:
    if not 1 <= count <= limit:
        raise ValueError(f"count {count} out of range 1..{limit}")
    if address < 0 or address + count > 0x10000:
        raise ValueError(f"address {address}+{count} beyond 0..65535")


def _check_u16(value: int) -> None:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"register value {value} out of range 0..65535")


def _expect_len(pdu: bytes, n: int) -> None:
    if len(pdu) != n:
        raise FrameError(f"PDU of function {pdu[0]} is {len(pdu)} bytes, expected {n}")


def _byte_count(pdu: bytes, at: int, expected: int | None) -> int:
    """Validate the byte-count field at `at` against the PDU length (and `expected`)."""
    if len(pdu) <= at:
        raise FrameError(f"PDU of function {pdu[0]} too short for its byte count")
    nbytes = pdu[at]
    if len(pdu) != at + 1 + nbytes:
        raise FrameError(
            f"PDU of function {pdu[0]} says {nbytes} data bytes, has {len(pdu) - at - 1}"
        )
    if expected is not None and nbytes != expected:
        raise FrameError(f"byte count {nbytes} does not match quantity (expected {expected})")
    return nbytes
