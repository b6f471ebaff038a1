"""Showers and drinking water at run time: taps, valves, flow, sessions.

Contract:
- Valves fail closed: `start()` commands every valve closed before READY
  and ends (charges) any session a crash left open (`end_reason` restart).
- A tap is answered from memory (cards, balances); the session row and the
  `tap` event commit before the valve opens, so a crash at any moment leaves
  a session the next start can charge.
- An open session is charged as it runs (every poll), in the same transaction
  as its row; it ends with one `water.session` event carrying the whole charge.
- On shutdown no tap is taken, every valve is closed and every session ended
  (`shutdown`), charged and committed.
- Valves that do not answer do not hold the start: what has not answered
  within `START_IO_S` is a `valve_fault` (the point refuses taps) until it
  answers and is closed.
- A reader, valve or flow meter failing affects only its point. A valve that
  fails is commanded closed again with capped back-off (`VALVE_RETRY_MIN_S`
  to `VALVE_RETRY_MAX_S`), and its log lines are bounded. A flow meter
  that stops answering raises `meter_offline` (device `flow:POINT`), ends the
  point's session (`fault`) and makes the point refuse taps (`fault`) until a
  probe every `FLOW_PROBE_S` finds it answering again (cleared).
- Charges made while the center is unreachable count toward the card's
  offline day limit, whenever the session started.
- A reader flooded with refused taps cannot fill the store: past
  `gateway.refused_taps_per_min` in a minute, its refusals are folded into
  one counted `tap` event per reason a minute and `reader_flood` is raised
  (gatewayd/rules/reader_flood.py). Granted taps are never folded; a folded
  refusal costs no store write.

- A reload (`reconfigure`) keeps every running session, except on a point it
  removes or rewires (ended `shutdown`, as at a stop); new valves are closed
  before their points take taps, and readers are replaced between two taps.

`WaterService` is the component: it builds the points and their helpers,
runs one task per reader and per point, and dispatches each tap (a stop
here, a start or a refusal in `taps.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from decimal import Decimal
from typing import Any

import structlog

from drivers.protocols import CardReader, CardTap, Counter, Switch
from drivers.tasks import cancel_and_wait
from gatewayd.config.changes import Changes
from gatewayd.config.model import Config, Point
from gatewayd.contract.enums import AlarmCode, EndReason, TapReason
from gatewayd.contract.events import flow_device, reader_device, valve_device
from gatewayd.rules.reader_flood import RefusalFolder
from gatewayd.rules.water import Limits, billing_for
from gatewayd.services.alarms import Alarms
from gatewayd.services.clock import Clock
from gatewayd.services.component import Heartbeat
from gatewayd.services.water.charging import Charging
from gatewayd.services.water.point import PointRuntime
from gatewayd.services.water.point_devices import PointDevices
from gatewayd.services.water.point_loop import PointLoop
from gatewayd.services.water.recovery import Recovery
from gatewayd.services.water.taps import TapAnswers
from gatewayd.store.cards import Cards
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger
from gatewayd.store.offline_spend import OfflineSpend

log = structlog.get_logger(__name__)


class WaterService:
    """The `water` component: readers, water points and their sessions."""

    name = "water"

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        ledger: Ledger,
        cards: Cards,
        alarms: Alarms,
        clock: Clock,
        devices: Mapping[str, tuple[Switch, Counter | None]],
        readers: Mapping[str, CardReader],
        center_online: Callable[[], bool],
    ) -> None:
        self.config = config
        self.store = store
        self.ledger = ledger
        self.cards = cards
        self.alarms = alarms
        self.clock = clock
        self.readers = dict(readers)
        self.center_online = center_online
        self.poll_s = max(config.gateway.poll_interval_s, 0.2)
        self.heartbeat_s: float | None = max(30.0, 10 * self.poll_s)
        w = config.water
        self.limits = Limits(w.step_fen, w.max_session_s, w.idle_close_s, w.offline_limit_fen)
        self.points = {p.id: _point(config, p, *devices[p.id]) for p in config.points}
        self.by_reader = {p.reader: self.points[p.id] for p in config.points}
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}   # "reader:ID", "point:ID"
        # Held while a reader's tap is handled: a reload stops a reader between taps.
        self._gates: dict[str, asyncio.Lock] = {}
        self.accepting = False
        self.offline_spend = OfflineSpend()
        self.taps = 0
        self.refusals = RefusalFolder(config.gateway.refused_taps_per_min)
        self.devices = PointDevices(alarms, clock)
        self.charging = Charging(store, ledger=ledger, offline_spend=self.offline_spend,
                                 clock=clock, limits=self.limits, center_online=center_online)
        self.point_loop = PointLoop(self.devices, self.charging, clock, self.poll_s)
        self.answers = TapAnswers(
            w, store, cards=cards, ledger=ledger, offline_spend=self.offline_spend,
            alarms=alarms, clock=clock, center_online=center_online, devices=self.devices,
            point_loop=self.point_loop, refusals=self.refusals)
        self.recovery = Recovery(self.points, store, clock, devices=self.devices,
                                 charging=self.charging, point_loop=self.point_loop)

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Close every valve, then end and charge sessions a crash left open
        (gatewayd/services/water/recovery.py); then take taps."""
        today = self.clock.local().date().isoformat()
        await self.store.read(lambda t: self.offline_spend.load(t, today))
        recovered = await self.recovery.at_start()
        self.accepting = True
        log.info("water_started", points=len(self.points), readers=len(self.readers),
                 recovered=recovered)

    async def run(self, heartbeat: Heartbeat) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for reader in self.readers.values():
                    self._spawn_reader(reader)
                for pt in self.points.values():
                    self._spawn(f"point:{pt.id}", self.point_loop.run(pt))
                while True:
                    heartbeat.beat()
                    try:
                        await self.answers.folded(self.refusals.roll(self.clock.mono()))
                    except Exception:   # a bug here must not stop the readers and points
                        log.exception("reader_flood_roll_failed")
                    await asyncio.sleep(1.0)
        finally:
            self._tg = None
            self._tasks.clear()

    def _spawn(self, key: str, coro: Coroutine[Any, Any, None]) -> None:
        """A reader's or point's task, in the running TaskGroup (or at the next `run`)."""
        if self._tg is None:
            coro.close()
            return
        self._tasks[key] = self._tg.create_task(coro, name=key.replace(":", "-"))

    def _spawn_reader(self, reader: CardReader) -> None:
        self._spawn(f"reader:{reader.name}", self._reader(reader))

    async def _stop(self, key: str) -> None:
        task = self._tasks.pop(key, None)
        if task is not None:
            await cancel_and_wait([task])

    async def shutdown(self) -> None:
        """Stop taking taps; close every valve and end its session (`shutdown`)."""
        self.accepting = False
        await self.answers.folded(self.refusals.flush())  # the minute's folds, not lost
        await self.recovery.at_shutdown()

    # --- readers ------------------------------------------------------------------

    async def _reader(self, reader: CardReader) -> None:
        device = reader_device(reader.name)
        gate = self._gates.setdefault(reader.name, asyncio.Lock())

        def status(online: bool, detail: str) -> None:
            self.alarms.report_soon(AlarmCode.READER_OFFLINE, device, detail, not online)

        async def tap(t: CardTap) -> None:
            async with gate:
                await self.on_tap(t)

        await reader.run(tap, status)

    async def on_tap(self, tap: CardTap) -> None:
        """A card at a reader: start, stop or refuse, with one `tap` event."""
        self.taps += 1
        if not self.accepting:
            return  # starting or stopping: the valves are being closed
        pt = self.by_reader.get(tap.reader)
        if pt is None:
            await self.answers.record(tap, None, granted=False, reason=TapReason.NO_POINT)
            return
        async with pt.lock:
            if not self.accepting:
                return  # shutdown began while this tap waited for the point
            if pt.retired:
                log.info("tap_ignored_during_reload", reader=tap.reader, card=tap.uid, point=pt.id)
                return
            if pt.session is not None and pt.session.card == tap.uid:
                await self.answers.record(tap, pt.id, granted=True, reason=TapReason.STOP)
                await self.point_loop.end(pt, EndReason.TAP)
                return
            # Another card at a busy or faulty point is refused by check_tap,
            # after the card's own identity (a lost card is reported as lost).
            await self.answers.start(pt, tap)

    # --- reload -------------------------------------------------------------------

    async def reconfigure(self, config: Config, changes: Changes, *,
                          devices: Mapping[str, tuple[Switch, Counter | None]],
                          readers: Mapping[str, CardReader]) -> None:
        """Take a reloaded config (`devices`: the added and rewired points'; `readers`:
        the added and changed readers, made anew).

        A session runs on across a reload unless its point is removed or rewired (a
        new valve, flow meter, bus or service): then it ends as at a stop (`shutdown`:
        valve closed, charged in full) and the point goes. Added and rewired points
        have their valves closed before they take taps, as at start."""
        new = {p.id: p for p in config.points}
        for rid in sorted(changes.readers.removed | changes.readers.changed):
            async with self._gates.setdefault(rid, asyncio.Lock()):   # between two taps
                await self._stop(f"reader:{rid}")
            self.readers.pop(rid, None)
        gone = sorted(changes.points.removed | changes.rewired_points)
        for pid in gone:
            await self._retire(self.points.pop(pid))
        await self.alarms.forget_devices(
            {d for pid in gone for d in (valve_device(pid), flow_device(pid))}
            | {reader_device(rid) for rid in changes.readers.removed})
        for pid in sorted(changes.points.changed - changes.rewired_points):
            pt = self.points[pid]
            async with pt.lock:
                pt.cfg = new[pid]
        fresh = {pid: _point(config, new[pid], *devices[pid])
                 for pid in sorted(changes.points.added | changes.rewired_points)}
        self.points.update(fresh)
        await self.recovery.close_new(list(fresh.values()))
        self._take_rules(config, changes)
        self.by_reader = {p.reader: self.points[p.id] for p in config.points}
        self.readers.update(readers)
        for reader in readers.values():
            self._spawn_reader(reader)
        for pt in fresh.values():
            self._spawn(f"point:{pt.id}", self.point_loop.run(pt))
        self.config = config

    async def _retire(self, pt: PointRuntime) -> None:
        """End the point's session (`shutdown`) and its loop: it takes no more taps."""
        async with pt.lock:
            if pt.session is not None:
                log.warning("session_ended_by_reload", point=pt.id, card=pt.session.card,
                            detail="its point was removed or rewired")
                await self.point_loop.end(pt, EndReason.SHUTDOWN)
            await self._stop(f"point:{pt.id}")
            pt.retired = True

    def _take_rules(self, config: Config, changes: Changes) -> None:
        """[water], the flood limit and the file's tariffs, from now on."""
        w = config.water
        self.limits = Limits(w.step_fen, w.max_session_s, w.idle_close_s, w.offline_limit_fen)
        self.charging.limits = self.limits
        self.answers.policy = w
        self.refusals.limit = config.gateway.refused_taps_per_min
        if changes.tariffs:
            for service in ("shower", "drinking"):
                tariff = config.tariffs.of(service)
                self.set_tariff(service, tariff.price, tariff.unit)

    # --- for commands and status --------------------------------------------------

    async def balance_changed(self, account: str) -> None:
        """Nothing to do at once: open sessions read the balance every tick."""
        return

    def tariff_problem(self, service: str, unit: str) -> str | None:
        """Why a tariff cannot apply here (a per-litre price needs flow meters)."""
        if unit != "L":
            return None
        blind = [p.id for p in self.points.values() if p.cfg.service == service and p.flow is None]
        if blind:
            return f"points without a flow meter cannot be billed per litre: {', '.join(blind)}"
        return None

    def set_tariff(self, service: str, price: Decimal, unit: str) -> None:
        """A new price from now on, open sessions included (their carry is kept)."""
        for pt in self.points.values():
            if pt.cfg.service == service:
                pt.billing = billing_for(price, unit, pt.billing.ml_per_pulse,
                                         pt.billing.counter_bits)

    def describe(self, pt: PointRuntime) -> dict[str, Any]:
        """The point as `gatewayd status`, `state.get` and telemetry show it."""
        s = pt.session
        return {
            "point": pt.id, "service": pt.cfg.service, "state": pt.state,
            "card": None if s is None else s.card,
            "volume_ml": None if s is None else s.volume_ml,
            "seconds": None if s is None else s.seconds,
            "amount_fen": None if s is None else s.charged_fen,
            "offline": None if s is None else s.offline,
            "fault": pt.fault if pt.fault is not None else (
                None if pt.flow_offline is None else f"flow meter: {pt.flow_offline}"),
        }


def _point(config: Config, p: Point, valve: Switch, flow: Counter | None) -> PointRuntime:
    """The point `p` at run time, billed at its service's tariff in `config`."""
    tariff = config.tariffs.of(p.service)
    bits = flow.bits if flow is not None else 32
    ml = p.flow.ml_per_pulse if p.flow is not None else Decimal(0)
    return PointRuntime(p, valve, flow, billing_for(tariff.price, tariff.unit, ml, bits))
