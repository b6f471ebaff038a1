"""A water point at run time: its devices, its open session, its faults.

`PointRuntime` is the state that the point's loop, the taps at its reader
and the start and stop share; they change it holding `lock`. The device
names here are those of the point's alarms and log lines.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import structlog

from drivers.protocols import Counter, Switch
from drivers.retry import Backoff, FailureLog
from gatewayd.config.model import Point
from gatewayd.rules.water import Billing, Session

log = structlog.get_logger(__name__)

# A valve that failed (to close, to open, or to answer a check) is commanded
# closed again after a back-off from VALVE_RETRY_MIN_S, doubling up to
# VALVE_RETRY_MAX_S (+-25 %), reset once it obeys: a dead relay board (or bus)
# costs a request every few seconds, never a busy loop, and one that comes
# back is closed (and its point serves again) within VALVE_RETRY_MAX_S.
VALVE_RETRY_MIN_S = 1.0
VALVE_RETRY_MAX_S = 10.0


@dataclass
class PointRuntime:
    cfg: Point
    valve: Switch
    flow: Counter | None
    billing: Billing
    session: Session | None = None
    fault: str | None = None          # valve fault detail; None: the valve obeys
    flow_failures: int = 0
    flow_offline: str | None = None   # why the flow meter is offline; None: it answers
    probe_at: float = 0.0             # monotonic time of the next probe while offline
    idle_check_at: float = 0.0        # monotonic time of the next idle check
    valve_check_at: float = 0.0       # monotonic time of the next check during a session
    recovered: bool = False           # the session was found open after a crash
    retry_at: float = 0.0             # monotonic time of the next close while `fault`
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    backoff: Backoff = field(
        default_factory=lambda: Backoff(VALVE_RETRY_MIN_S, VALVE_RETRY_MAX_S))
    fault_log: FailureLog = field(init=False)
    retired: bool = False             # removed or rewired by a reload: taps go elsewhere

    def __post_init__(self) -> None:
        self.fault_log = FailureLog(log, "valve_fault", recovered="valve_recovered",
                                    level=logging.ERROR, point=self.cfg.id)

    @property
    def id(self) -> str:
        return self.cfg.id

    @property
    def faulty(self) -> bool:
        """The valve or the flow meter is failing: the point refuses taps."""
        return self.fault is not None or self.flow_offline is not None

    @property
    def state(self) -> str:
        if self.faulty:
            return "fault"
        return "open" if self.session is not None else "closed"
