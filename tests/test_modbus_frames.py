"""The pure Modbus codec and read planning: round trips, known vectors, fuzzed decoders."""

from __future__ import annotations

import contextlib
import itertools
import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.errors import FrameError, ModbusExceptionError
from drivers.modbus.frames import adu, pdu, reply
from drivers.modbus.frames.pdu import (
    CoilsResponse,
    ExceptionResponse,
    ReadRequest,
    RegistersResponse,
    WriteCoil,
    WriteCoils,
    WriteRegister,
    WriteRegisters,
    WriteResponse,
)
from drivers.modbus.plan import Slot, decode_value, encode_value, plan_reads, round_half_up, value_step

REQUESTS: list[pdu.Request] = [
    ReadRequest(1, 0, 1),
    ReadRequest(1, 10, 2000),
    ReadRequest(3, 0x4000, 2),
    ReadRequest(4, 0, 125),
    WriteCoil(7, True),
    WriteCoil(0xFFFF, False),
    WriteRegister(3, 0xBEEF),
    WriteCoils(0, (True, False, True, True, False, False, False, False, True)),
    WriteRegisters(100, (1, 2, 0xFFFF)),
]


@pytest.mark.parametrize("request_", REQUESTS, ids=repr)
def test_request_round_trip(request_: pdu.Request) -> None:
    assert pdu.decode_request(request_.encode()) == request_


RESPONSES: list[pdu.Response] = [
    RegistersResponse(3, (0x4366, 0x3334)),
    RegistersResponse(4, ()),
    CoilsResponse((True,) + (False,) * 7),
    CoilsResponse((False, True) * 8),
    WriteResponse(5, 7, 0xFF00),
    WriteResponse(16, 100, 3),
    ExceptionResponse(3, 2),
]


@pytest.mark.parametrize("response", RESPONSES, ids=repr)
def test_response_round_trip(response: pdu.Response) -> None:
    assert pdu.decode_response(response.encode()) == response


def test_known_vectors() -> None:
    # MODBUS Application Protocol V1.1b3, examples of 6.3 and 6.5.
    assert ReadRequest(3, 0x006B, 3).encode() == bytes.fromhex("03006B0003")
    assert WriteCoil(0x00AC, True).encode() == bytes.fromhex("0500ACFF00")
    # A well-known RTU frame: unit 1, read 1 holding register at 0: CRC 0x0A84 (84 0A).
    assert adu.encode_rtu(1, ReadRequest(3, 0, 1).encode()) == bytes.fromhex("01030000000184 0A")
    assert adu.crc16(b"123456789") == 0x4B37  # CRC-16/MODBUS check value
    assert adu.encode_tcp(0x1234, 17, b"\x03\x00\x00\x00\x01") == bytes.fromhex(
        "1234 0000 0006 11 0300000001")


def test_read_replies_are_checked_against_the_request() -> None:
    req = ReadRequest(4, 0, 2)
    assert reply.read_registers_reply(req, bytes.fromhex("0404 4366 3334")) == (0x4366, 0x3334)
    with pytest.raises(FrameError, match="1 registers answer a read of 2"):
        reply.read_registers_reply(req, bytes.fromhex("0402 4366"))
    with pytest.raises(FrameError, match="function 3 answers function 4"):
        reply.read_registers_reply(req, bytes.fromhex("0304 4366 3334"))
    with pytest.raises(ModbusExceptionError, match="illegal data address") as info:
        reply.read_registers_reply(req, bytes.fromhex("8402"))
    assert info.value.response == ExceptionResponse(4, 2)
    coils = ReadRequest(1, 0, 3)
    assert reply.read_coils_reply(coils, bytes.fromhex("0101 05")) == (True, False, True)
    with pytest.raises(FrameError):
        reply.read_coils_reply(coils, bytes.fromhex("0102 0500"))


def test_write_replies_must_echo() -> None:
    reply.check_write_reply(WriteCoil(3, True), WriteCoil(3, True).encode())
    with pytest.raises(FrameError, match="does not match"):
        reply.check_write_reply(WriteCoil(3, True), WriteCoil(3, False).encode())
    reply.check_write_reply(WriteRegisters(1, (5, 6)), bytes.fromhex("10 0001 0002"))
    with pytest.raises(ModbusExceptionError):
        reply.check_write_reply(WriteRegister(1, 5), bytes.fromhex("8604"))


@pytest.mark.parametrize(
    "bad",
    [ReadRequest(2, 0, 1), ReadRequest(3, 0, 0), ReadRequest(3, 0, 126), ReadRequest(1, 0, 2001),
     ReadRequest(3, 0xFFFF, 2), WriteRegister(0, 0x10000), WriteRegisters(0, ())],
    ids=repr,
)
def test_encoders_refuse_what_modbus_cannot_carry(bad: pdu.Request) -> None:
    with pytest.raises(ValueError):
        bad.encode()


def test_tcp_stream_splitting() -> None:
    a = adu.encode_tcp(1, 1, b"\x03\x02\x00\x07")
    b = adu.encode_tcp(2, 9, b"\x83\x02")
    stream = a + b
    frame, used = adu.split_tcp(stream)
    assert frame == adu.TcpFrame(1, 1, b"\x03\x02\x00\x07") and used == len(a)
    frame, used2 = adu.split_tcp(stream[used:])
    assert frame == adu.TcpFrame(2, 9, b"\x83\x02") and used2 == len(b)
    assert adu.split_tcp(stream[:5]) == (None, 0)
    assert adu.split_tcp(a[:-1]) == (None, 0)
    with pytest.raises(FrameError, match="protocol id"):
        adu.split_tcp(b"\x00\x01\x00\x01\x00\x02\x01\x03")
    with pytest.raises(FrameError, match="length"):
        adu.split_tcp(b"\x00\x01\x00\x00\x01\x00\x01\x03")


def test_rtu_lengths_and_crc() -> None:
    answer = adu.encode_rtu(7, RegistersResponse(4, (1, 2)).encode())
    assert adu.rtu_response_length(answer[:2]) is None
    assert adu.rtu_response_length(answer[:3]) == len(answer) == 9
    assert adu.rtu_response_length(adu.encode_rtu(7, b"\x84\x02")) == 5
    assert adu.rtu_response_length(adu.encode_rtu(7, WriteCoil(1, True).encode())) == 8
    assert adu.decode_rtu(answer) == (7, RegistersResponse(4, (1, 2)).encode())
    corrupted = answer[:4] + bytes([answer[4] ^ 1]) + answer[5:]
    with pytest.raises(FrameError, match="CRC"):
        adu.decode_rtu(corrupted)
    assert adu.rtu_request_length(adu.encode_rtu(1, REQUESTS[7].encode())) == len(
        adu.encode_rtu(1, REQUESTS[7].encode()))


def test_frame_gap() -> None:
    assert adu.frame_gap_s(9600) == pytest.approx(3.5 * 10 / 9600)
    assert adu.frame_gap_s(9600, "E") == pytest.approx(3.5 * 11 / 9600)
    assert adu.frame_gap_s(115200) == 0.00175


@given(st.binary(max_size=300))
def test_garbage_never_raises_anything_but_frame_error(data: bytes) -> None:
    for decode in (pdu.decode_request, pdu.decode_response, adu.decode_rtu,
                   adu.split_tcp, adu.rtu_response_length, adu.rtu_request_length):
        with contextlib.suppress(FrameError):
            decode(data)
    for req in REQUESTS[:4]:
        assert isinstance(req, ReadRequest)
        try:
            if req.function == 1:
                reply.read_coils_reply(req, data)
            else:
                reply.read_registers_reply(req, data)
        except (FrameError, ModbusExceptionError):
            pass


@given(st.sampled_from(REQUESTS), st.binary(max_size=20))
def test_write_reply_checker_on_garbage(request_: pdu.Request, data: bytes) -> None:
    if isinstance(request_, ReadRequest):
        return
    with contextlib.suppress(FrameError, ModbusExceptionError):
        reply.check_write_reply(request_, data)


@given(st.integers(0, 255), st.binary(min_size=1, max_size=252))
def test_rtu_round_trip(unit: int, pdu: bytes) -> None:
    assert adu.decode_rtu(adu.encode_rtu(unit, pdu)) == (unit, pdu)


# ------------------------------------------------------------------ read plans


def test_sdm120_plan_is_one_request() -> None:
    slots = [Slot("energy_wh", "input", 0x48, 2), Slot("power_w", "input", 0x0C, 2),
             Slot("voltage_v", "input", 0, 2), Slot("current_a", "input", 6, 2),
             Slot("pf", "input", 0x1E, 2)]
    [block] = plan_reads(slots)
    assert (block.function, block.address, block.count) == (4, 0, 0x4A)
    assert dict(block.offsets) == {"voltage_v": 0, "current_a": 6, "power_w": 12, "pf": 30,
                                   "energy_wh": 72}


def test_plan_splits_by_table_and_limit() -> None:
    slots = [Slot("a", "holding", 0x2000, 2), Slot("b", "holding", 0x200A, 2),
             Slot("c", "holding", 0x4000, 2), Slot("d", "coil", 3, 1), Slot("e", "coil", 1999, 1),
             Slot("f", "coil", 2003, 1)]
    blocks = plan_reads(slots)
    assert [(b.table, b.address, b.count) for b in blocks] == [
        ("coil", 3, 1997), ("coil", 2003, 1), ("holding", 0x2000, 12), ("holding", 0x4000, 2)]
    assert [(b.table, b.count) for b in plan_reads(slots[:2], max_registers=10)] == [
        ("holding", 2), ("holding", 2)]


def test_plan_handles_overlaps_and_exact_limit() -> None:
    slots = [Slot("a", "input", 0, 2), Slot("b", "input", 1, 1), Slot("c", "input", 123, 2)]
    [block] = plan_reads(slots)
    assert (block.address, block.count) == (0, 125)
    assert len(plan_reads([*slots, Slot("d", "input", 124, 2)])) == 2


@given(st.lists(st.tuples(st.sampled_from(["holding", "input", "coil"]),
                          st.integers(0, 3000), st.integers(1, 2)), max_size=30),
       st.integers(2, 125))
def test_plan_covers_every_slot_within_limits(raw: list[tuple[str, int, int]], limit: int) -> None:
    slots = [Slot(f"s{i}", t, a, 1 if t == "coil" else w)  # type: ignore[arg-type]
             for i, (t, a, w) in enumerate(raw)]
    blocks = plan_reads(slots, max_registers=limit, max_coils=limit)
    where = {name: (b, off) for b in blocks for name, off in b.offsets}
    for s in slots:
        b, off = where[s.name]
        assert b.table == s.table and b.address + off == s.address
        assert off + s.width <= b.count <= limit
    # Greedy is optimal: no two consecutive blocks of a table could be merged.
    for x, y in itertools.pairwise(blocks):
        if x.table == y.table:
            assert y.address + y.count - x.address > limit


# ------------------------------------------------------------------ values


@pytest.mark.parametrize(
    ("words", "vtype", "order", "value"),
    [((0xFFFF,), "u16", "big", 65535), ((0xFFFF,), "i16", "big", -1),
     ((0x0001, 0x0000), "u32", "big", 65536), ((0x0000, 0x0001), "u32", "little", 65536),
     ((0xFFFF, 0xFFFE), "i32", "big", -2), ((0x4366, 0x3334), "f32", "big", 230.2),
     ((0x3334, 0x4366), "f32", "little", 230.2)],
)
def test_decode_values(words: tuple[int, ...], vtype: str, order: str, value: float) -> None:
    assert decode_value(words, 0, vtype, order) == pytest.approx(value, rel=1e-6)  # type: ignore[arg-type]
    if vtype != "f32":
        assert encode_value(value, vtype, order) == words  # type: ignore[arg-type]


@given(st.integers(-0x8000_0000, 0x7FFF_FFFF), st.sampled_from(["big", "little"]))
def test_i32_round_trip(value: int, order: str) -> None:
    assert decode_value(encode_value(value, "i32", order), 0, "i32", order) == value  # type: ignore[arg-type]


@given(st.floats(width=32, allow_nan=False), st.sampled_from(["big", "little"]))
def test_f32_round_trip(value: float, order: str) -> None:
    assert decode_value(encode_value(value, "f32", order), 0, "f32", order) == value  # type: ignore[arg-type]


def test_encode_value_refuses_out_of_range() -> None:
    with pytest.raises(ValueError):
        encode_value(70000, "u16")
    with pytest.raises(ValueError):
        encode_value(-1, "u32")


def test_round_half_up() -> None:
    assert [round_half_up(x) for x in (0.5, 1.5, 2.5, 2.4999, 1234567.8)] == [1, 2, 3, 2, 1234568]
    with pytest.raises(ValueError):
        round_half_up(math.nan)


def test_value_step_is_one_count_or_one_float32_ulp() -> None:
    assert value_step(12345, "u32") == 1.0
    assert value_step(20000.0, "f32") == 2.0 ** -9  # kWh: 1.95 Wh, as an SDM120 shows it
    assert value_step(100.0, "f32") == 2.0 ** -17
    # One step up from any float32 value is exactly value_step away.
    for v in (0.5, 1.0, 123.456, 16384.0, 20000.0):
        f32 = decode_value(encode_value(v, "f32"), 0, "f32")
        bits = int.from_bytes(struct.pack(">f", f32), "big") + 1
        (up,) = struct.unpack(">f", bits.to_bytes(4, "big"))
        assert up - f32 == value_step(f32, "f32")
