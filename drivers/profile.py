"""Device profiles: TOML files saying how to read and write one device model.

Contract: `load_profile` returns a fully validated, frozen `Profile`, or raises
`ProfileError` listing every problem found in one pass, each with its place in
the file (`fields.energy_wh.type`). The format is documented in
spec/config.md "Device profiles"; this module adds one optional top-level key,
`max_read_registers` (1..125, default 125), for devices that refuse long reads.
A profile with `protocol = "dlt645-2007"` ("Meters and relays on DL/T 645-2007")
has DL/T 645 fields instead, checked by `drivers.dlt645.profile` into `specs`.
"""

from __future__ import annotations

import difflib
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, cast

from drivers.dlt645.devices import FieldSpec
from drivers.dlt645.profile import read_dlt645
from drivers.errors import ProfileError

Kind = Literal["meter", "switch", "counter"]
Table = Literal["holding", "input", "coil"]
ValueType = Literal["u16", "i16", "u32", "i32", "f32", "bool"]
WordOrder = Literal["big", "little"]
Protocol = Literal["modbus", "dlt645-2007"]

SHIPPED_DIR: Final = Path(__file__).resolve().parent / "profiles"

KINDS: Final[tuple[Kind, ...]] = ("meter", "switch", "counter")
PROTOCOLS: Final[tuple[Protocol, ...]] = ("modbus", "dlt645-2007")
TABLES: Final[tuple[Table, ...]] = ("holding", "input", "coil")
TYPES: Final[tuple[ValueType, ...]] = ("u16", "i16", "u32", "i32", "f32", "bool")
WORD_ORDERS: Final[tuple[WordOrder, ...]] = ("big", "little")
WIDTH: Final[Mapping[ValueType, int]] = {
    "u16": 1, "i16": 1, "u32": 2, "i32": 2, "f32": 2, "bool": 1,
}
INTEGER_RANGE: Final[Mapping[ValueType, tuple[int, int]]] = {
    "u16": (0, 0xFFFF), "i16": (-0x8000, 0x7FFF),
    "u32": (0, 0xFFFF_FFFF), "i32": (-0x8000_0000, 0x7FFF_FFFF),
}

# Which fields each kind has: required first, then optional.
REQUIRED_FIELDS: Final[Mapping[Kind, tuple[str, ...]]] = {
    "meter": ("energy_wh", "power_w"),
    "switch": ("state",),
    "counter": ("count",),
}
OPTIONAL_FIELDS: Final[Mapping[Kind, tuple[str, ...]]] = {
    "meter": ("voltage_v", "current_a", "pf"),
    "switch": (),
    "counter": (),
}
# The top-level keys of each protocol's profiles (a Modbus profile may also say
# `protocol = "modbus"`, the default).
TOP_KEYS: Final = ("kind", "model", "fields", "max_read_registers")
DLT645_TOP_KEYS: Final = ("kind", "protocol", "model", "fields", "control")
FIELD_KEYS: Final = ("table", "address", "type", "word_order", "scale", "stride", "on", "off")
MAX_READ_REGISTERS: Final = 125


@dataclass(frozen=True, slots=True)
class Field:
    """One value of a device: where it lives and how to turn registers into it."""

    name: str
    table: Table
    address: int
    type: ValueType
    word_order: WordOrder = "big"
    scale: float = 1
    stride: int = 1
    on: int = 1
    off: int = 0

    @property
    def width(self) -> int:
        """Registers (or coils) the value occupies."""
        return WIDTH[self.type]

    def at_channel(self, channel: int) -> int:
        """Protocol address of this field for `channel` (0-based)."""
        return self.address + channel * self.stride


@dataclass(frozen=True, slots=True)
class Profile:
    """A validated device profile. `fields` maps field name to `Field` (Modbus);
    a DL/T 645 profile has `specs` instead, and a relay its `control` (off, on)."""

    name: str
    kind: Kind
    model: str
    fields: Mapping[str, Field]
    source: str
    max_read_registers: int = MAX_READ_REGISTERS
    protocol: Protocol = "modbus"
    specs: Mapping[str, FieldSpec] = field(default_factory=dict)
    control: tuple[int, int] | None = None

    def has(self, name: str) -> bool:
        """Whether the device gives the field `name`, whatever its protocol."""
        return name in self.fields or name in self.specs


@dataclass(frozen=True, slots=True)
class ProfileProblem:
    """One thing wrong with a profile file: `place` is a dotted key path."""

    file: str
    place: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.place}: {self.message}" if self.place else (
            f"{self.file}: {self.message}"
        )


def available_profiles(dirs: Sequence[Path]) -> dict[str, Path]:
    """Profile name -> file, searching `dirs` in order (earlier dirs win), sorted by name."""
    found: dict[str, Path] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for path in sorted(d.glob("*.toml")):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def load_profile(name: str, dirs: Sequence[Path]) -> Profile:
    """Load profile `name` from the first of `dirs` holding `NAME.toml`.

    Args:
        name: profile name, the file name without `.toml`.
        dirs: directories to search in order: the site's `profiles_dir` first,
            then `SHIPPED_DIR`. Missing directories are skipped.

    Raises:
        ProfileError: the profile is missing, unreadable, or invalid (every problem listed).
    """
    if not name or "/" in name or name.startswith("."):
        raise ProfileError([ProfileProblem(f"{name}.toml", "", f"invalid profile name {name!r}")])
    for d in dirs:
        path = d / f"{name}.toml"
        if path.is_file():
            return load_profile_file(path)
    searched = ", ".join(str(d) for d in dirs) or "(no directories)"
    close = difflib.get_close_matches(name, list(available_profiles(dirs)), n=1, cutoff=0.7)
    hint = f'; did you mean "{close[0]}"?' if close else ""
    raise ProfileError(
        [ProfileProblem(f"{name}.toml", "", f'no profile "{name}" in {searched}{hint}')]
    )


def load_profile_file(path: Path) -> Profile:
    """Load and validate one profile file; the profile's name is the file's stem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError([ProfileProblem(str(path), "", f"cannot read: {exc}")]) from None
    return parse_profile(path.stem, text, str(path))


def parse_profile(name: str, text: str, source: str) -> Profile:
    """Validate profile TOML `text` (from `source`, for messages) into a `Profile`."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError([ProfileProblem(source, "", f"not valid TOML: {exc}")]) from None
    checker = _Checker(source)
    profile = checker.profile(name, doc)
    if checker.problems or profile is None:
        raise ProfileError(checker.problems)
    return profile


def _show(value: object) -> str:
    """A value as it would appear in TOML, for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Checker:
    """Collects problems while building a profile."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[ProfileProblem] = []

    def fail(self, place: str, message: str) -> None:
        self.problems.append(ProfileProblem(self.source, place, message))

    def profile(self, name: str, doc: dict[str, Any]) -> Profile | None:
        protocol = doc.get("protocol", "modbus")
        if protocol not in PROTOCOLS:
            self.fail("protocol", f"expected one of {', '.join(PROTOCOLS)}, got {_show(protocol)}")
            protocol = "modbus"
        top = TOP_KEYS if protocol == "modbus" else DLT645_TOP_KEYS
        for key in doc:
            if key not in top and key != "protocol":
                self.fail(key, f"unknown key; expected one of {', '.join(top)}")

        kind = doc.get("kind")
        if kind is None:
            self.fail("kind", f"missing; expected one of {', '.join(KINDS)}")
        elif kind not in KINDS:
            self.fail("kind", f"expected one of {', '.join(KINDS)}, got {_show(kind)}")
            kind = None

        model = doc.get("model", name)
        if not isinstance(model, str) or not model.strip():
            self.fail("model", f"expected a non-empty string, got {_show(model)}")
            model = name

        max_read = doc.get("max_read_registers", MAX_READ_REGISTERS)
        if not _is_int(max_read) or not 1 <= max_read <= MAX_READ_REGISTERS:
            self.fail("max_read_registers",
                      f"expected an integer from 1 to {MAX_READ_REGISTERS}, got {_show(max_read)}")
            max_read = MAX_READ_REGISTERS

        fields, specs, control = self.fields(cast(Kind | None, kind), protocol, doc, max_read)
        if self.problems or kind is None:
            return None
        return Profile(name=name, kind=kind, model=model, fields=fields, source=self.source,
                       max_read_registers=max_read, protocol=protocol, specs=specs,
                       control=control)

    def fields(self, kind: Kind | None, protocol: Protocol, doc: dict[str, Any], max_read: int
               ) -> tuple[dict[str, Field], dict[str, FieldSpec], tuple[int, int] | None]:
        """`[fields]` (and a DL/T relay's `[control]`): Modbus fields, or DL/T 645 specs."""
        raw_fields = doc.get("fields")
        fields: dict[str, Field] = {}
        dlt: dict[str, Any] = {}
        if raw_fields is None:
            self.fail("fields", "missing; expected a table of fields")
            return fields, {}, None
        if not isinstance(raw_fields, dict):
            self.fail("fields", f"expected a table of fields, got {_show(raw_fields)}")
            return fields, {}, None
        for fname, spec in raw_fields.items():
            if kind is not None and fname not in REQUIRED_FIELDS[kind] + OPTIONAL_FIELDS[kind]:
                self.fail(f"fields.{fname}", f"unknown field for a {kind}; expected one of "
                          f"{', '.join(REQUIRED_FIELDS[kind] + OPTIONAL_FIELDS[kind])}")
            elif protocol != "modbus":
                dlt[fname] = spec
            elif (f := self.field(kind, fname, spec, max_read)) is not None:
                fields[fname] = f
        if kind is not None:
            for required in REQUIRED_FIELDS[kind]:
                if required not in raw_fields:
                    self.fail(f"fields.{required}", f"missing; a {kind} needs "
                              + " and ".join(REQUIRED_FIELDS[kind]))
        if protocol == "modbus" or kind is None:
            return fields, {}, None
        specs, control = read_dlt645(kind, dlt, doc.get("control"), self.fail)
        return fields, specs, control

    def field(self, kind: Kind | None, fname: str, spec: object, max_read: int) -> Field | None:
        place = f"fields.{fname}"
        if not isinstance(spec, dict):
            self.fail(place, f"expected an inline table, got {_show(spec)}")
            return None
        before = len(self.problems)
        for key in spec:
            if key not in FIELD_KEYS:
                self.fail(f"{place}.{key}", f"unknown key; expected one of {', '.join(FIELD_KEYS)}")
        table = self._table(place, spec)
        vtype = self._value_type(place, spec, table)
        self._fits_kind(place, kind, table, vtype)
        width = WIDTH[vtype] if vtype is not None else 1
        address = self._address(place, spec, width)
        word_order = spec.get("word_order", "big")
        if word_order not in WORD_ORDERS:
            self.fail(f"{place}.word_order",
                      f"expected one of {', '.join(WORD_ORDERS)}, got {_show(word_order)}")
        scale = self._scale(place, spec, kind, vtype)
        stride = self._stride(place, spec, kind, width)
        on, off = self._on_off(place, spec, kind, table, vtype)
        if vtype is not None and table is not None and table != "coil" and width > max_read:
            self.fail(f"{place}.type", f"needs {width} registers, more than max_read_registers")

        if len(self.problems) > before or table is None or vtype is None or address is None:
            return None
        return Field(
            name=fname, table=table, address=address, type=vtype,
            word_order=cast(WordOrder, word_order), scale=float(scale) if scale != 1 else 1,
            stride=stride, on=on, off=off,
        )

    def _table(self, place: str, spec: dict[str, Any]) -> Table | None:
        table = spec.get("table")
        if table is None:
            self.fail(f"{place}.table", f"missing; expected one of {', '.join(TABLES)}")
        elif table not in TABLES:
            self.fail(f"{place}.table", f"expected one of {', '.join(TABLES)}, got {_show(table)}")
            table = None
        return cast(Table | None, table)

    def _value_type(self, place: str, spec: dict[str, Any], table: Table | None) -> ValueType | None:
        vtype = spec.get("type", "bool" if table == "coil" else None)
        if vtype is None:
            self.fail(f"{place}.type", f"missing; expected one of {', '.join(TYPES)}")
        elif vtype not in TYPES:
            self.fail(f"{place}.type", f"expected one of {', '.join(TYPES)}, got {_show(vtype)}")
            vtype = None
        elif table is not None and (vtype == "bool") != (table == "coil"):
            if vtype == "bool":
                self.fail(f"{place}.type", f'"bool" is only for table "coil", not {_show(table)}')
            else:
                self.fail(f"{place}.type", f'table "coil" holds only "bool", got {_show(vtype)}')
            vtype = None
        return cast(ValueType | None, vtype)

    def _fits_kind(self, place: str, kind: Kind | None, table: Table | None,
                   vtype: ValueType | None) -> None:
        """What each kind's field may be."""
        if kind == "meter" and table == "coil":
            self.fail(f"{place}.table", 'a meter is read from "holding" or "input" registers')
        if kind == "switch" and table == "input":
            self.fail(f"{place}.table", 'a switch must be writable: "coil" or "holding"')
        if kind == "switch" and vtype == "f32":
            self.fail(f"{place}.type", 'a switch state is an integer or "bool", got "f32"')
        if kind == "counter" and vtype is not None and vtype not in ("u16", "u32"):
            self.fail(f"{place}.type", f'expected one of u16, u32 for a counter, got {_show(vtype)}')

    def _address(self, place: str, spec: dict[str, Any], width: int) -> int | None:
        address = spec.get("address")
        if address is None:
            self.fail(f"{place}.address", "missing; expected an integer from 0 to 65535")
        elif not _is_int(address) or not 0 <= address <= 0x10000 - width:
            self.fail(f"{place}.address",
                      f"expected an integer from 0 to {0x10000 - width}, got {_show(address)}")
            address = None
        return cast(int | None, address)

    def _scale(self, place: str, spec: dict[str, Any], kind: Kind | None,
               vtype: ValueType | None) -> Any:
        scale = spec.get("scale", 1)
        if "scale" in spec:
            if kind in ("switch", "counter") or vtype == "bool":
                self.fail(f"{place}.scale", "only meter values take a scale")
            elif (not isinstance(scale, int | float) or isinstance(scale, bool)
                  or not math.isfinite(scale) or scale == 0):
                self.fail(f"{place}.scale", f"expected a non-zero number, got {_show(scale)}")
        return scale

    def _stride(self, place: str, spec: dict[str, Any], kind: Kind | None, width: int) -> Any:
        stride = spec.get("stride", width)
        if "stride" in spec:
            if kind == "meter":
                self.fail(f"{place}.stride", "only switches and counters have channels")
            elif not _is_int(stride) or stride < width:
                self.fail(f"{place}.stride",
                          f"expected an integer of at least {width}, got {_show(stride)}")
        return stride

    def _on_off(self, place: str, spec: dict[str, Any], kind: Kind | None, table: Table | None,
                vtype: ValueType | None) -> tuple[Any, Any]:
        on, off = spec.get("on", 1), spec.get("off", 0)
        for key, value in (("on", on), ("off", off)):
            if key not in spec:
                continue
            if kind != "switch" or table != "holding":
                self.fail(f"{place}.{key}", "only a switch in a holding register has on/off values")
            elif vtype in INTEGER_RANGE:
                lo, hi = INTEGER_RANGE[cast(ValueType, vtype)]
                if not _is_int(value) or not lo <= value <= hi:
                    self.fail(f"{place}.{key}",
                              f"expected an integer from {lo} to {hi}, got {_show(value)}")
        if ("on" in spec or "off" in spec) and _is_int(on) and on == off:
            self.fail(f"{place}.on", f"on and off must differ, both are {on}")
        return on, off
