"""How the benches print a set of latency samples (seconds in, milliseconds out)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def percentiles(samples: Sequence[float], digits: int = 2) -> str:
    """n, p50, p99 and max of `samples` in ms, with `digits` decimals."""
    v = sorted(x * 1000 for x in samples)
    if not v:
        return "no samples"
    p99 = v[min(len(v) - 1, round(0.99 * (len(v) - 1)))]
    return (f"n={len(v)} p50={statistics.median(v):.{digits}f} ms p99={p99:.{digits}f} ms "
            f"max={v[-1]:.{digits}f} ms")


def summary(name: str, samples: Sequence[float]) -> str:
    """`name: ` and the percentiles of `samples`."""
    return f"{name}: {percentiles(samples)}"


def spread(values: Sequence[float]) -> str:
    """n, p50, max and min of `values` in whole ms."""
    if not values:
        return "no samples"
    v = [x * 1000 for x in values]
    return (f"n={len(v)} p50={statistics.median(v):.0f} ms max={max(v):.0f} ms "
            f"(min {min(v):.0f} ms)")
