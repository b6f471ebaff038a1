"""One room at run time: its devices, the rules' state, what is known of its
breaker, and the names its alarms use for the meter, the breaker and the room."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import structlog

from drivers.protocols import Meter, MeterReading, Switch
from drivers.retry import Backoff, FailureLog
from gatewayd.config.model import Room
from gatewayd.rules.power import Cut, RoomState

log = structlog.get_logger(__name__)

# A breaker that failed a command (or a read of its state) is tried again after
# a back-off from BREAKER_RETRY_MIN_S doubling to BREAKER_RETRY_S (+-25 %),
# reset once it answers; a command for the other state (a cut needed after a
# restore failed) goes at once.
BREAKER_RETRY_MIN_S = 2.0
BREAKER_RETRY_S = 10.0


@dataclass
class RoomRuntime:
    cfg: Room
    meter: Meter
    breaker: Switch
    state: RoomState = field(default_factory=RoomState)
    breaker_on: bool | None = None       # last known; None: unknown
    next_read: float = 0.0
    read_at: float = float("-inf")       # when the last meter read started
    next_breaker_try: float = 0.0
    breaker_at: float = 0.0              # when the breaker was last commanded or read alone
    retry_want: bool | None = None       # the state whose command failed (None: none)
    switch_pending: bool = False         # a committed cut/restore not yet on the coil
    unverified: bool = False             # unreadable at start: first read decides as at start
    draw_checked_at: float = float("-inf")   # when a load while cut last had the breaker read
    breaker_backoff: Backoff = field(
        default_factory=lambda: Backoff(BREAKER_RETRY_MIN_S, BREAKER_RETRY_S))
    breaker_log: FailureLog = field(init=False)
    # Cuts carried out while the store could not record them: (cut, ts, wall),
    # written with the room's next successful commit.
    unrecorded: list[tuple[Cut, str, float]] = field(default_factory=list)
    last: MeterReading | None = None
    failures: int = 0                    # evaluations failed in a row (see `RoomRunner.evaluate`)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    persisted: tuple[Any, ...] | None = None   # `store.rooms.change_key` of the stored row
    retired: bool = False                # removed by a reload: nothing more is done for it

    def __post_init__(self) -> None:
        self.breaker_log = FailureLog(log, "breaker_command_failed", recovered="breaker_answers",
                                      level=logging.ERROR, room=self.cfg.id)

    @property
    def id(self) -> str:
        return self.cfg.id

    def rewire(self, cfg: Room, meter: Meter, breaker: Switch) -> None:
        """New devices (a reload): the breaker is read before it is driven, and decided
        as at start (`unverified`): never switched on because the file changed."""
        self.cfg, self.meter, self.breaker = cfg, meter, breaker
        self.breaker_on, self.unverified, self.last = None, True, None
        self.retry_want, self.next_breaker_try, self.next_read = None, 0.0, 0.0
        self.breaker_backoff.reset()
