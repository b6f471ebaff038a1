"""A meter value rounded to what the device resolves, for people and the center.

Rules and charging use the raw reading; telemetry, `state.get`, the status
file and `gatewayd status` show `resolved` values, so that a register read as
2301 x 0.1 shows as 230.1, not 230.10000000000002.
"""

from __future__ import annotations

import math
from typing import Final

from drivers.profile import INTEGER_RANGE, Profile

#: An f32 register carries a 24-bit mantissa: about 7 significant decimal digits.
F32_SIGNIFICANT_DIGITS: Final = 7


def _decimals(step: float) -> int:
    """The decimals a multiple of `step` needs: 0.1 -> 1, 0.25 -> 2, 10 -> 0."""
    for d in range(10):
        scaled = abs(step) * 10**d
        if abs(scaled - round(scaled)) <= 1e-9 * max(1.0, scaled):
            return d
    return 9


def resolved(profile: Profile, name: str, value: float) -> float:
    """`value` of the meter field `name` rounded to what the device resolves.

    An integer register times its `scale` has the scale's decimals (0.1: 1,
    0.001: 3, 1 or 1000: 0); a DL/T 645 field its `decimals` times its scale
    (4 decimals of kW are W with 1); an f32 register, or a field the profile
    does not have, keeps 7 significant digits (what a float32 holds).
    """
    if not math.isfinite(value):
        return value
    spec = profile.specs.get(name)
    f = profile.fields.get(name)
    if spec is not None:
        return round(value, _decimals(spec.step))
    if f is not None and f.type in INTEGER_RANGE:
        return round(value, _decimals(f.scale))
    return float(f"{value:.{F32_SIGNIFICANT_DIGITS}g}")
