"""Modbus ADUs: a PDU on its transport, MBAP (TCP) or RTU (serial line).

Contract: see `drivers.modbus.frames`: `split_tcp`, `decode_rtu` and the
`rtu_*_length` functions return a well-formed value or raise `FrameError`.
RTU timings (`frame_gap_s`; `character_time_s` is drivers.serial_line's) follow "MODBUS over Serial Line
V1.02".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from drivers.errors import FrameError
from drivers.modbus.frames.pdu import (
    MAX_PDU,
    READ_COILS,
    READ_HOLDING_REGISTERS,
    READ_INPUT_REGISTERS,
    WRITE_MULTIPLE_COILS,
    WRITE_MULTIPLE_REGISTERS,
    WRITE_SINGLE_COIL,
    WRITE_SINGLE_REGISTER,
)
from drivers.serial_line import character_time_s

# MBAP (TCP)

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


# RTU (serial line)

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

