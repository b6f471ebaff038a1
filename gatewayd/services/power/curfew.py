"""Which rooms a curfew covers now, for the power rules; none while the clock
is not trusted (then `clock_unsynced` is raised and curfews are skipped)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gatewayd.config.model import Curfew
from gatewayd.contract.enums import AlarmCode
from gatewayd.rules.curfew import rooms_under_curfew
from gatewayd.services.alarms import Alarms
from gatewayd.services.clock import Clock


class CurfewWatch:
    """The rooms under curfew, recomputed by `update` (the power ticker's second)."""

    def __init__(self, curfews: Sequence[Curfew], rooms: Iterable[str], alarms: Alarms,
                 clock: Clock) -> None:
        self.curfews = curfews
        self.rooms = tuple(rooms)
        self.alarms = alarms
        self.clock = clock
        self.now: frozenset[str] | None = None   # None: not computed yet

    def covers(self, room: str) -> bool:
        return self.now is not None and room in self.now

    async def update(self) -> bool:
        """Recompute which rooms a curfew covers now; whether that changed."""
        before = self.now
        if not self.curfews:
            self.now = frozenset()
        elif not self.clock.synced():
            await self.alarms.report(AlarmCode.CLOCK_UNSYNCED, "clock",
                                     "curfews skipped: clock not synchronised", True)
            self.now = frozenset()
        else:
            await self.alarms.report(AlarmCode.CLOCK_UNSYNCED, "clock", "", False)
            self.now = rooms_under_curfew(self.curfews, self.rooms, self.clock.local())
        return before != self.now
