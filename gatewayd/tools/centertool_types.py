"""The command types `gatewayd send` knows, read from the contract's argument Structs.

Contract: `command_usage()` is one line per command type of
`contract.command_types.CommandArgs`, its arguments as `key=VALUE` (optional
ones in brackets), for `send --help`; `text_args()` names every argument the
contract types as text (strings, enumerations, prices, dates), which `send`
takes as written. Both follow the contract: a new command type or argument
shows up without touching this file.
"""

from __future__ import annotations

import enum
import textwrap
import types
import typing
from datetime import date
from decimal import Decimal
from functools import cache
from typing import Any

import msgspec

from gatewayd.contract.command_types import CommandArgs

__all__ = ["command_usage", "text_args"]

#: `send --help` stays readable in an 80-column terminal.
USAGE_WIDTH = 79


def _structs() -> list[Any]:
    return list(typing.get_args(CommandArgs))


def _bare(tp: Any) -> Any:
    """`Annotated[int, Meta(...)]` -> `int`: the type without its schema annotations."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _without_none(tp: Any) -> Any:
    """`int | None` -> `int`: an optional argument's value type (annotations dropped)."""
    tp = _bare(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        rest = [_bare(t) for t in typing.get_args(tp) if t is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def _value(tp: Any) -> str:
    """How a value of the contract's type `tp` is written on the command line."""
    tp = _without_none(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "|".join(str(m.value) for m in tp)
    if tp is bool:
        return "true|false"
    if tp is int:
        return "N"
    if tp is Decimal:
        return "DECIMAL"
    if tp is date:
        return "YYYY-MM-DD"
    if tp is str:
        return "TEXT"
    item = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else None
    if item is not None and hasattr(item, "TYPE"):  # a list of objects: say which
        return f"JSON (a list of {item.TYPE.value}'s arguments as objects)"
    return "JSON"


def _is_text(tp: Any) -> bool:
    tp = _without_none(tp)
    return tp in (str, Decimal, date) or (isinstance(tp, type) and issubclass(tp, enum.Enum))


def command_usage() -> str:
    """One line per command type: `account.credit  account=TEXT amount_fen=N`."""
    rows = []
    for struct in _structs():
        parts = []
        for f in msgspec.structs.fields(struct):
            item = f"{f.name}={_value(f.type)}"
            parts.append(item if f.required else f"[{item}]")
        rows.append((str(struct.TYPE.value), " ".join(parts) or "(no arguments)"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(textwrap.fill(args, USAGE_WIDTH, initial_indent=f"  {name:<{width}}  ",
                                   subsequent_indent=" " * (width + 6), break_on_hyphens=False)
                     for name, args in rows)


@cache
def text_args() -> frozenset[str]:
    """Arguments the contract types as text: `room=0102` stays "0102", `price=0.60` "0.60"."""
    return frozenset(f.name for struct in _structs() for f in msgspec.structs.fields(struct)
                     if _is_text(f.type))
