"""Exact pricing: integer quantities times decimal tariffs, fractions of a fen carried.

Over any sequence of charges, the fen charged equal the exact price of the
total quantity rounded down: `charge` returns whole fen and carries the rest
as an exact fraction (never a float, never rounded away).
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Literal

Unit = Literal["kWh", "L", "min"]

# Integer quantity units per tariff unit: Wh per kWh, mL per L, seconds per minute.
PER_UNIT: dict[str, int] = {"kWh": 1000, "L": 1000, "min": 60}


def fen_per_quantity(price_yuan: Decimal, unit: str) -> Fraction:
    """Exact fen per Wh, mL or second for a tariff in yuan per kWh, L or min."""
    return Fraction(price_yuan) * 100 / PER_UNIT[unit]


def charge(quantity: int, rate: Fraction, carry: Fraction) -> tuple[int, Fraction]:
    """Price `quantity` at `rate` fen each, plus the carried fraction.

    Returns (whole fen to charge now, new carry) with 0 <= carry < 1.
    """
    if quantity < 0:
        raise ValueError("quantity must not be negative")
    total = carry + quantity * rate
    fen = total.numerator // total.denominator
    return fen, total - fen


def carry_to_text(carry: Fraction) -> str:
    """How a carry is stored: "n/d" (exact)."""
    return f"{carry.numerator}/{carry.denominator}"


def carry_from_text(text: str) -> Fraction:
    value = Fraction(text)
    if not 0 <= value < 1:
        raise ValueError(f"carry out of range: {text}")
    return value
