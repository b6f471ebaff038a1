"""Read plans and register values: which requests read a device, and what the words mean.

Pure functions, no I/O. `plan_reads` merges the values of one table into as few
requests as the limits allow; `decode_value`/`encode_value` turn registers into
numbers and back according to a profile field's type and word order.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from drivers.modbus.frames.pdu import (
    MAX_READ_COILS,
    MAX_READ_REGISTERS,
    READ_COILS,
    READ_HOLDING_REGISTERS,
    READ_INPUT_REGISTERS,
)
from drivers.profile import Table, ValueType, WordOrder

READ_FUNCTION: dict[Table, int] = {
    "coil": READ_COILS,
    "holding": READ_HOLDING_REGISTERS,
    "input": READ_INPUT_REGISTERS,
}


@dataclass(frozen=True, slots=True)
class Slot:
    """A value to read: `width` registers (or coils) at `address` in `table`."""

    name: str
    table: Table
    address: int
    width: int


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request and where each slot's value sits in its answer.

    `offsets` pairs each slot name with its index into the returned words/bits.
    """

    table: Table
    address: int
    count: int
    offsets: tuple[tuple[str, int], ...]

    @property
    def function(self) -> int:
        """The Modbus read function for this block's table."""
        return READ_FUNCTION[self.table]


def plan_reads(
    slots: Sequence[Slot],
    max_registers: int = MAX_READ_REGISTERS,
    max_coils: int = MAX_READ_COILS,
) -> tuple[ReadBlock, ...]:
    """The fewest read requests that cover every slot.

    Slots of one table, sorted by address, are merged greedily while the span
    stays within the limit (`max_registers` for register tables, `max_coils` for
    coils); greedy is optimal for covering sorted intervals with bounded spans.
    Gaps between slots are read and ignored. Blocks come out ordered by table
    (coil, holding, input) then address, so the plan is deterministic.
    """
    blocks: list[ReadBlock] = []
    for table in ("coil", "holding", "input"):
        limit = max_coils if table == "coil" else max_registers
        mine = sorted((s for s in slots if s.table == table), key=lambda s: (s.address, s.width))
        start = end = -1
        members: list[Slot] = []
        for slot in mine:
            if slot.width > limit:
                raise ValueError(f"{slot.name} needs {slot.width} registers, limit is {limit}")
            new_end = max(end, slot.address + slot.width)
            if members and new_end - start <= limit:
                end = new_end
                members.append(slot)
                continue
            if members:
                blocks.append(_block(table, start, end, members))
            start, end, members = slot.address, slot.address + slot.width, [slot]
        if members:
            blocks.append(_block(table, start, end, members))
    return tuple(blocks)


def _block(table: Table, start: int, end: int, members: list[Slot]) -> ReadBlock:
    return ReadBlock(table, start, end - start, tuple((s.name, s.address - start) for s in members))


_U32 = struct.Struct(">I")
_F32 = struct.Struct(">f")


def decode_value(words: Sequence[int], offset: int, vtype: ValueType,
                 word_order: WordOrder = "big") -> int | float:
    """The number stored at `words[offset:]` (1 or 2 registers per `vtype`).

    Float values may be NaN or infinite; the caller decides whether that is plausible.
    """
    if vtype == "u16":
        return words[offset]
    if vtype == "i16":
        v = words[offset]
        return v - 0x10000 if v & 0x8000 else v
    if vtype == "bool":
        return 1 if words[offset] else 0
    hi, lo = words[offset], words[offset + 1]
    if word_order == "little":
        hi, lo = lo, hi
    raw = (hi << 16) | lo
    if vtype == "u32":
        return raw
    if vtype == "i32":
        return raw - 0x1_0000_0000 if raw & 0x8000_0000 else raw
    value: float = _F32.unpack(_U32.pack(raw))[0]
    return value


def value_step(value: int | float, vtype: ValueType) -> float:
    """The smallest change a register of `vtype` holding `value` can show (unscaled)."""
    if vtype != "f32":
        return 1.0
    if value == 0 or not math.isfinite(value):
        return 2.0 ** -149  # the smallest float32 step; only its order of magnitude matters
    _, exponent = math.frexp(abs(value))  # value = m * 2**exponent, 0.5 <= m < 1
    return 2.0 ** max(exponent - 24, -149)


def encode_value(value: int | float, vtype: ValueType, word_order: WordOrder = "big") -> tuple[int, ...]:
    """Registers holding `value` as `vtype` (inverse of `decode_value`).

    Raises `ValueError` when the value does not fit the type.
    """
    if vtype in ("u16", "i16", "bool"):
        v = int(value)
        lo, hi = (-0x8000, 0x7FFF) if vtype == "i16" else (0, 0xFFFF)
        if v != value or not lo <= v <= hi:
            raise ValueError(f"{value} does not fit {vtype}")
        return (v & 0xFFFF,)
    if vtype == "f32":
        raw: int = _U32.unpack(_F32.pack(float(value)))[0]
    else:
        v = int(value)
        lo32, hi32 = (-0x8000_0000, 0x7FFF_FFFF) if vtype == "i32" else (0, 0xFFFF_FFFF)
        if v != value or not lo32 <= v <= hi32:
            raise ValueError(f"{value} does not fit {vtype}")
        raw = v & 0xFFFF_FFFF
    words = (raw >> 16, raw & 0xFFFF)
    return words if word_order == "big" else (words[1], words[0])


def round_half_up(value: float) -> int:
    """Nearest integer, halves away from zero for positives (not banker's rounding)."""
    if not math.isfinite(value):
        raise ValueError(f"cannot round {value}")
    return math.floor(value + 0.5)
