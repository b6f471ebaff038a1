"""Curfew windows (config `[[power.curfew]]`), evaluated in the building's time zone.

A window belongs to the day it starts on: `days = ["mon"]`, 23:30 to 06:00
covers Monday 23:30 to Tuesday 06:00.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from gatewayd.config.model import DAYS, Curfew


def in_window(curfew: Curfew, local: datetime) -> bool:
    t = local.time().replace(tzinfo=None)
    today = DAYS[local.weekday()]
    yesterday = DAYS[(local - timedelta(days=1)).weekday()]
    if curfew.start < curfew.end:
        return today in curfew.days and curfew.start <= t < curfew.end
    # Crosses midnight: the evening part today, the morning part from yesterday's window.
    return (today in curfew.days and t >= curfew.start) or (
        yesterday in curfew.days and t < curfew.end
    )


def rooms_under_curfew(
    curfews: Sequence[Curfew], rooms: Iterable[str], local: datetime
) -> frozenset[str]:
    """The rooms a window covers at the local time `local` (excepted rooms left out)."""
    active = [c for c in curfews if in_window(c, local)]
    return frozenset(r for r in rooms if any(r not in c.except_rooms for c in active))
