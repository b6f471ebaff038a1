"""`gatewayd probe` on a Modbus bus: a meter's raw registers and scaled values, one
switch commanded and read back, a scan for unit ids.

Contract: each function takes a started `ModbusBus` and the device, prints what staff
need to see on stdout and returns the exit code (0 done, 1 the device did not answer
or did not follow); a `DeviceError` it does not handle reaches the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

from drivers.errors import DeviceError
from drivers.modbus.bus import ModbusBus
from drivers.modbus.frames.pdu import READ_COILS, ReadRequest
from drivers.modbus.plan import READ_FUNCTION, Slot, decode_value, plan_reads
from drivers.profile import Field, Profile
from gatewayd.config.model import DeviceRef
from gatewayd.tools.probe_show import command, doubt, print_table, scan_summary, with_unit

__all__ = ["read_meter", "scan", "switch"]

EXIT_OK, EXIT_FAILURE = 0, 1
# Exception codes a Modbus TCP gateway answers for a unit behind it that is silent.
GATEWAY_NO_DEVICE = frozenset({10, 11})
#: How a scan shows bytes that are no Modbus answer (not counted as a unit found).
GARBLED = "bytes that are no Modbus answer"


def _register(f: Field) -> str:
    return f"{f.table} {f.address} (0x{f.address:04X})"


async def read_meter(bus: ModbusBus, name: str, ref: DeviceRef) -> int:
    """Every field of the meter's profile: its registers, raw value, scale and value."""
    profile = ref.profile
    slots = [Slot(f.name, f.table, f.address, f.width) for f in profile.fields.values()]
    rows: list[list[str]] = []
    doubts: list[str] = []
    for block in plan_reads(slots, max_registers=profile.max_read_registers):
        request = ReadRequest(block.function, block.address, block.count)
        words = await bus.read_registers(name, ref.unit, request, command=True)
        for fname, offset in block.offsets:
            f = profile.fields[fname]
            raw = decode_value(words, offset, f.type, f.word_order)
            value = raw * f.scale
            rows.append([fname, _register(f), f.type,
                         " ".join(f"{w:04X}" for w in words[offset:offset + f.width]),
                         f"{raw:.7g}", f"{f.scale:g}", with_unit(fname, value)])
            if why := doubt(fname, value):
                doubts.append(f"{fname}: {with_unit(fname, value)} looks wrong ({why}): "
                              f"check its scale, type and word_order in {profile.source}")
    print_table(("FIELD", "REGISTER", "TYPE", "WORDS (hex)", "RAW", "SCALE", "VALUE"), rows)
    for line in doubts:
        print(line)
    return EXIT_OK


async def switch(bus: ModbusBus, name: str, ref: DeviceRef, on: bool | None) -> int:
    """Read the switch; with `on`, command it and read it back."""
    sw = bus.switch(name, ref.unit, ref.profile, ref.channel, ref.invert)
    f = ref.profile.fields["state"]
    where = f"{f.table} {sw.address}" + (" (inverted: on is the relay released)" if ref.invert
                                         else "")
    return await command(sw, where, on,
                         not_followed="it did not follow (wiring, channel or invert?)")


async def scan(bus: ModbusBus, units: Sequence[int], profile: Profile | None) -> int:
    """Ask each unit for one cheap read; print who answers, even with an exception.
    Bytes that are no Modbus answer are printed but not counted: on a noisy line, or at
    the wrong baud rate or parity, they do not show that a unit is there."""
    request = _cheap_read(profile)
    found: list[int] = []
    for unit in units:
        answer = await _ask(bus, unit, request)
        if answer is None:
            continue
        if not answer.startswith(GARBLED):
            found.append(unit)
        print(f"unit {unit:3}: {answer}", flush=True)
    return scan_summary([str(u) for u in found], "unit", "units ")


def _cheap_read(profile: Profile | None) -> ReadRequest:
    """The profile's first field, or holding register 0 (any device answers it, if only
    with an exception)."""
    if profile is None or not profile.fields:
        return ReadRequest(READ_FUNCTION["holding"], 0, 1)
    f = next(iter(profile.fields.values()))
    return ReadRequest(READ_FUNCTION[f.table], f.address, f.width)


async def _ask(bus: ModbusBus, unit: int, request: ReadRequest) -> str | None:
    """What `unit` answered `request`, or None when nothing (or its gateway) said it is absent."""
    what = "coil" if request.function == READ_COILS else "register"
    try:
        if request.function == READ_COILS:
            values: Sequence[object] = await bus.read_coils(f"unit {unit}", unit, request)
        else:
            values = await bus.read_registers(f"unit {unit}", unit, request)
    except DeviceError as e:
        # `drivers.modbus.faults.describe_failure` names the kind of failure first.
        if e.message.startswith(("disconnected", "noisy line")):
            raise   # the bus, not this unit: the scan cannot go on
        absent = ("timeout", *(f"exception {c} " for c in GATEWAY_NO_DEVICE))
        if e.message.startswith(absent):
            return None
        if e.message.startswith("garbage"):
            return f"{GARBLED} ({e.message}): noise, or the wrong baud rate or parity"
        return f"answers: {e.message}"
    shown = " ".join(f"{v:04X}" if isinstance(v, int) and not isinstance(v, bool) else str(v)
                     for v in values)
    return f"answers ({what} {request.address} = {shown})"
