"""The water points at the edges of a run: valves closed, sessions ended.

- Start (`at_start`): every valve is commanded closed, and every session a
  crash left open is ended and charged (`restart`). The device I/O (every
  close, and the last flow reading of a crash's session) runs for all points
  at once and gets `START_IO_S` in all: a valve not confirmed closed by then
  is a `valve_fault` (its point refuses taps until the valve answers and is
  closed), and a session whose reading did not come is charged from its last
  committed one. A row for a point no longer configured is reported and dropped.
- Shutdown (`at_shutdown`): every session is ended (`shutdown`; `restart` for
  a crash's the start had not ended yet), its valve closed, within
  `SHUTDOWN_IO_S`; sessions still open then are ended from their store rows
  without device I/O, so that the stop keeps time to tell the center. Idle
  valves are commanded closed too, within `SHUTDOWN_IDLE_CLOSE_S` more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping

import structlog

from gatewayd.contract.enums import EndReason
from gatewayd.services.clock import Clock
from gatewayd.services.component import START_IO_S
from gatewayd.services.water.charging import Charging
from gatewayd.services.water.point import PointRuntime
from gatewayd.services.water.point_devices import PointDevices
from gatewayd.services.water.point_loop import PointLoop
from gatewayd.store import water_sessions
from gatewayd.store.db import Store

log = structlog.get_logger(__name__)

# At shutdown, once every session has ended, idle valves are commanded closed
# too, within this much more of the stop budget (they were closed at start and are
# checked every IDLE_CHECK_S: this only catches one opened since).
SHUTDOWN_IDLE_CLOSE_S = 1.0
# At shutdown, closing the valves of open sessions and reading their flow
# may take this long in all; sessions still open then are ended without
# device I/O, so that the stop keeps time to tell the center (10 s in all).
SHUTDOWN_IO_S = 3.0


class Recovery:
    """Closes the valves and ends the sessions of `points` at start and at shutdown."""

    def __init__(self, points: Mapping[str, PointRuntime], store: Store, clock: Clock, *,
                 devices: PointDevices, charging: Charging, point_loop: PointLoop) -> None:
        self.points = points
        self.store = store
        self.clock = clock
        self.devices = devices
        self.charging = charging
        self.point_loop = point_loop

    async def at_start(self) -> int:
        """Close every valve; end and charge the sessions a crash left open (how many)."""
        now_mono, now_wall = self.clock.mono(), self.clock.wall()
        max_session_s = self.charging.limits.max_session_s
        sessions = await self.store.read(lambda t: water_sessions.open_sessions(
            t, now_mono=now_mono, now_wall=now_wall, max_session_s=max_session_s))
        for session in sessions:
            pt = self.points.get(session.point)
            if pt is None:
                log.warning("session_for_unknown_point", point=session.point,
                            session=session.session)
                await self.charging.finish_orphan(session)
                continue
            pt.session = session
            pt.recovered = True
        closed, counts = await self._settle(self.points.values())
        for pt in self.points.values():
            if pt.id not in closed and pt.fault is None:
                await self.devices.valve_failed(
                    pt, f"not confirmed closed within {START_IO_S:g} s of start")
            if pt.session is not None:
                await self.charging.finish(pt, EndReason.RESTART, counts.get(pt.id))
        return len(sessions)

    async def close_new(self, points: Collection[PointRuntime]) -> None:
        """Points a reload added or rewired: their valves commanded closed as at start,
        within START_IO_S; one not confirmed by then is a `valve_fault`."""
        closed, _ = await self._settle(points)
        for pt in points:
            if pt.id not in closed and pt.fault is None:
                await self.devices.valve_failed(
                    pt, f"not confirmed closed within {START_IO_S:g} s of the reload")

    async def _settle(self, points: Collection[PointRuntime]
                      ) -> tuple[set[str], dict[str, int | None]]:
        """Every valve of `points` commanded closed and each recovered session's counter
        read, at once, within START_IO_S: the points whose valve obeyed, and the counts."""
        closed: set[str] = set()
        counts: dict[str, int | None] = {}

        async def settle(pt: PointRuntime) -> None:
            if await self.devices.close_valve(pt):
                closed.add(pt.id)
            if pt.session is not None and not pt.faulty:
                counts[pt.id] = await self.devices.read_flow(pt)

        try:
            async with asyncio.timeout(START_IO_S), asyncio.TaskGroup() as tg:
                for pt in points:
                    tg.create_task(settle(pt), name=f"start-{pt.id}")
        except TimeoutError:
            log.warning("valves_unconfirmed_at_start", budget_s=START_IO_S,
                        points=sorted(p.id for p in points if p.id not in closed))
        return closed, counts

    async def at_shutdown(self) -> None:
        """Close every valve and end its session (`shutdown`)."""
        try:
            async with asyncio.timeout(SHUTDOWN_IO_S):
                await asyncio.gather(*(self._shutdown_point(pt) for pt in self.points.values()))
        except TimeoutError:
            # Dead boards on a bus: their timeouts queue up. Every session still
            # ends now, charged from its last reading, so that the stop keeps
            # its budget for the center link (the next start closes the valves).
            log.warning("shutdown_valves_timed_out",
                        open_sessions=[pt.id for pt in self.points.values() if pt.session])
            await self._end_from_store()
        idle = [pt for pt in self.points.values() if pt.session is None and pt.fault is None]
        try:
            async with asyncio.timeout(SHUTDOWN_IDLE_CLOSE_S):
                await asyncio.gather(*(self._shutdown_idle(pt) for pt in idle))
        except TimeoutError:
            log.warning("shutdown_idle_valves_timed_out", points=len(idle))

    async def _end_from_store(self) -> None:
        """End every session the store still holds open, without device I/O.

        Each is charged from its row, in one transaction that reads the row,
        so nothing a point's loop committed is missed and nothing it commits
        afterwards is charged (its session row is gone). A point's own end
        still in flight finds the row gone too: one end only."""
        billing = {pid: pt.billing for pid, pt in self.points.items()}
        # Sessions this process started (ended `shutdown`); any other is a
        # crash's, which the start had not ended yet (`restart`).
        own = {pt.session.session for pt in self.points.values()
               if pt.session is not None and not pt.recovered}
        for s, reason in await self.charging.end_in_store(billing, own):
            pt = self.points[s.point]
            pt.session, pt.recovered = None, False
            log.warning("session_ended_without_valve", point=s.point, card=s.card, reason=reason,
                        volume_ml=s.volume_ml, seconds=s.seconds, amount_fen=s.charged_fen)

    @staticmethod
    def _end_reason(pt: PointRuntime) -> EndReason:
        """`shutdown`, or `restart` for a crash's session the start had not ended yet."""
        return EndReason.RESTART if pt.recovered else EndReason.SHUTDOWN

    async def _shutdown_point(self, pt: PointRuntime) -> None:
        async with pt.lock:
            if pt.session is not None:
                await self.point_loop.end(pt, self._end_reason(pt))

    async def _shutdown_idle(self, pt: PointRuntime) -> None:
        async with pt.lock:
            if pt.session is None:
                await self.devices.close_valve(pt)
