"""What `gatewayd probe` prints: tables of raw and scaled values, and what looks wrong.

Contract: text on stdout; no I/O but `print` and, in `command`, the switch it is
given. A value is shown in the unit its field's name ends with; `doubt(field, value)`
says why a scaled value is not what a dorm room's single-phase meter reads (a wrong
`scale` or `decimals` shows here), or "".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from drivers.errors import RelayRefused, SwitchMismatch
from drivers.protocols import Switch, energy_fault, power_fault

__all__ = ["command", "doubt", "on_off", "print_table", "scan_summary", "with_unit"]

UNITS = {"energy_wh": "Wh", "power_w": "W", "voltage_v": "V", "current_a": "A", "pf": ""}
# A dorm room's supply: single-phase 220 V (+-20 % and more on a bad day), a room's
# breaker well under 100 A.
VOLTAGE_RANGE_V = (150.0, 280.0)
MAX_CURRENT_A = 100.0


async def command(switch: Switch, label: str, on: bool | None, *, action: str = "",
                  not_followed: str) -> int:
    """Print the switch's state; with `on`, command it and print it read back. 0, or 1
    when it did not follow (`not_followed` says what to check)."""
    print(f"{label}: {on_off(await switch.get())}")
    if on is None:
        return 0
    print(f"commanded {on_off(on)}{action}")
    try:
        await switch.set(on)
    except SwitchMismatch as e:
        why = ("refused: the meter did not take the password (password_file)"
               if isinstance(e, RelayRefused) else not_followed)
        print(f"read back: {on_off(e.actual)}: {why}")
        return 1
    print(f"read back: {on_off(await switch.get())}")
    return 0


def scan_summary(found: Sequence[str], what: str, named: str = "") -> int:
    """A scan's last line: who answered (0), or that no `what` did (1)."""
    if not found:
        print(f"no {what} answered")
        return 1
    print(f"{len(found)} answered: {named}{', '.join(found)}")
    return 0


def on_off(on: bool) -> str:
    return "on" if on else "off"


def with_unit(field: str, value: float) -> str:
    """`1234500 Wh (1234.5 kWh)`, `230.1 V`, `0.97`."""
    unit = UNITS.get(field, "")
    # Fixed point, never 1.2345e+06: staff compare it with the meter's display.
    text = f"{value:.3f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)
    if field == "energy_wh" and math.isfinite(value):
        return f"{text} Wh ({value / 1000:.6g} kWh)"
    return f"{text} {unit}".rstrip()


def doubt(field: str, value: float) -> str:
    """Why `value` is not a plausible reading of `field` for a room, or ""."""
    if field == "energy_wh":
        return energy_fault(value) or ""
    if field == "power_w":
        return power_fault(value) or ""
    if not math.isfinite(value):
        return f"{field} is not a number"
    if field == "voltage_v" and not VOLTAGE_RANGE_V[0] <= value <= VOLTAGE_RANGE_V[1]:
        return "a room's supply is about 220 V"
    if field == "current_a" and abs(value) > MAX_CURRENT_A:
        return f"no room draws {MAX_CURRENT_A:.0f} A"
    if field == "pf" and abs(value) > 1:
        return "a power factor is between -1 and 1"
    return ""


def print_table(headings: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell; the last one left as it is."""
    table = [list(headings), *[list(r) for r in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(headings) - 1)]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
