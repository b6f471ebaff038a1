"""What a master makes of a response PDU: the values answering its request, or the error.

Contract: each function returns what answers the request, raises
`ModbusExceptionError` for a device's exception response to it, and `FrameError`
for anything else (malformed, or an answer to another request).
"""

from __future__ import annotations

import struct

from drivers.errors import FrameError, ModbusExceptionError
from drivers.modbus.frames.pdu import (
    CoilsResponse,
    ExceptionResponse,
    ReadRequest,
    RegistersResponse,
    Request,
    Response,
    WriteCoil,
    WriteCoils,
    WriteRegister,
    WriteRegisters,
    WriteResponse,
    decode_response,
)


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

