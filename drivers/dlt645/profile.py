"""The DL/T 645-2007 part of a device profile (`protocol = "dlt645-2007"`, config.md):
its `[fields]` into `FieldSpec`s and its `[control]` codes.

Contract: `read_dlt645(kind, fields, control, fail)` returns the specs of the fields
that are right and the relay's control codes `(off, on)` (None for a meter). Every
problem goes to `fail(place, message)` with its dotted place in the file
(`fields.power_w.di`), in one pass. `drivers.profile` checks the rest of the file
(kind, model, which fields a kind has) and calls it; this module knows no Modbus.

A number field is BCD (`length` bytes, `decimals`, `signed`, `scale` into the field's
unit); a switch's `state` is a bit of a binary status word (`bit`, and `on`, the
bit's value meaning on, which is required: a wrong default would report a closed
relay as open).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeGuard

from drivers.dlt645.devices import FieldSpec
from drivers.dlt645.frames import RELAY_ACTIONS

FIELD_KEYS: Final = ("di", "length", "decimals", "signed", "scale", "bit", "on")
# A value's bytes: a DL/T 645-2007 data item is at most a few bytes; 8 holds any of them.
MAX_LENGTH: Final = 8

Fail = Callable[[str, str], None]


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return "a table" if isinstance(value, dict) else str(value)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _hex(text: object, digits: int) -> int | None:
    if (isinstance(text, str) and len(text) == digits
            and all(c in "0123456789abcdefABCDEF" for c in text)):
        return int(text, 16)
    return None


def read_dlt645(kind: str, fields: Mapping[str, Any], control: object,
                fail: Fail) -> tuple[dict[str, FieldSpec], tuple[int, int] | None]:
    """The field specs and the control codes (see the module's contract)."""
    specs: dict[str, FieldSpec] = {}
    for name, spec in fields.items():
        if not isinstance(spec, dict):
            fail(f"fields.{name}", f"expected an inline table, got {_show(spec)}")
            continue
        field = _field(f"fields.{name}", spec, kind, fail)
        if field is not None:
            specs[name] = field
    return specs, _control(kind, control, fail)


def _field(place: str, spec: dict[str, Any], kind: str, fail: Fail) -> FieldSpec | None:
    problems: list[str] = []

    def bad(key: str, message: str) -> None:
        problems.append(key)
        fail(f"{place}.{key}", message)

    for key in spec:
        if key not in FIELD_KEYS:
            bad(key, f"unknown key; expected one of {', '.join(FIELD_KEYS)}")
    di = _hex(spec.get("di"), 8)
    if di is None:
        bad("di", "missing; expected 8 hex digits (\"00010000\")" if "di" not in spec
            else f"expected 8 hex digits such as \"02030000\", got {_show(spec['di'])}")
    length = spec.get("length")
    if not _is_int(length) or not 1 <= length <= MAX_LENGTH:
        bad("length", f"expected an integer from 1 to {MAX_LENGTH} (bytes), got "
            + ("nothing" if length is None else _show(length)))
        length = 1
    if kind == "switch":
        bit, on = _bit(spec, length, bad)
        numeric: dict[str, Any] = {}
    else:
        bit, on = None, 0
        numeric = _numeric(spec, length, bad)
    if problems or di is None:
        return None
    return FieldSpec(di, length, bit=bit, on=on, **numeric)


def _bit(spec: dict[str, Any], length: int,
         bad: Callable[[str, str], None]) -> tuple[int | None, int]:
    """A switch's state: a bit of a binary status word, and its value when on."""
    for key in ("decimals", "signed", "scale"):
        if key in spec:
            bad(key, "a switch's state is a bit of a status word (binary, not BCD)")
    bit, on = spec.get("bit"), spec.get("on")
    if not _is_int(bit) or not 0 <= bit < 8 * length:
        bad("bit", f"expected the bit of the status word, 0 to {8 * length - 1}, got "
            + ("nothing" if bit is None else _show(bit)))
        bit = None
    if on not in (0, 1) or isinstance(on, bool):
        bad("on", "expected 0 or 1, the bit's value when the relay is on (closed), got "
            + ("nothing" if on is None else _show(on)))
        on = 0
    return bit, on


def _numeric(spec: dict[str, Any], length: int, bad: Callable[[str, str], None]) -> dict[str, Any]:
    """A meter value's decimals, sign and scale."""
    for key in ("bit", "on"):
        if key in spec:
            bad(key, "only a switch's state is a bit of a status word")
    decimals = spec.get("decimals", 0)
    if not _is_int(decimals) or not 0 <= decimals <= 2 * length:
        bad("decimals", f"expected an integer from 0 to {2 * length}, got {_show(decimals)}")
        decimals = 0
    signed = spec.get("signed", False)
    if not isinstance(signed, bool):
        bad("signed", f"expected true or false, got {_show(signed)}")
        signed = False
    scale = spec.get("scale", 1)
    if (not isinstance(scale, int | float) or isinstance(scale, bool)
            or not math.isfinite(scale) or scale == 0):
        bad("scale", f"expected a non-zero number, got {_show(scale)}")
        scale = 1
    return {"decimals": decimals, "signed": signed, "scale": float(scale)}


def _control(kind: str, control: object, fail: Fail) -> tuple[int, int] | None:
    """`[control] off/on`: the relay's N1 codes, required for a switch only."""
    if kind != "switch":
        if control is not None:
            fail("control", "only a switch (a relay) has control codes")
        return None
    if not isinstance(control, dict):
        fail("control", 'missing; expected a table: off = "1A", on = "1C"' if control is None
             else f"expected a table, got {_show(control)}")
        return None
    codes: list[int] = []
    for key in control:
        if key not in ("off", "on"):
            fail(f"control.{key}", "unknown key; expected off, on")
    for key in ("off", "on"):
        code = _hex(control.get(key), 2)
        if code not in RELAY_ACTIONS:
            fail(f"control.{key}", '"1A" (trip) or "1C" (close now), got '
                 + ("nothing" if key not in control else _show(control[key])))
        else:
            codes.append(code)
    if len(codes) != 2:
        return None
    if codes[0] == codes[1]:
        fail("control.on", "on and off must differ")
        return None
    return codes[0], codes[1]
