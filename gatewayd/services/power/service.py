"""The `power` component: every room's meter, rules and breaker, and the
commands the center sends about them.

Contract: at start every room's state is loaded and every breaker read,
within START_IO_S in all; the gateway acts only where the rules say the
state is wrong (see `PowerService.start`). A breaker not read by then is
decided at its first answer (`unverified`). Then each room runs its own loop
(`poll.RoomRunner`), each relay board is read back every poll
(`breaker.Breakers`), and once a second the curfews are recomputed and the
component's heartbeat beats. A reload hands it the new file and the devices
of the rooms it adds or rewires (`reconfigure`); it switches no breaker itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

import structlog

from drivers.protocols import Meter, MeterReading, Switch, SwitchBank
from drivers.tasks import cancel_and_wait
from gatewayd.config.changes import Changes
from gatewayd.config.model import Config
from gatewayd.contract.enums import AlarmCode
from gatewayd.contract.events import breaker_device, meter_device, room_device
from gatewayd.rules import pricing
from gatewayd.rules.breaker import Verdict, reconcile
from gatewayd.rules.power import Outcome, remote_cut, remote_restore
from gatewayd.services.alarms import Alarms
from gatewayd.services.clock import Clock
from gatewayd.services.component import Heartbeat
from gatewayd.services.power import view
from gatewayd.services.power.breaker import Breakers
from gatewayd.services.power.curfew import CurfewWatch
from gatewayd.services.power.poll import RoomRunner
from gatewayd.services.power.record import Also, Recorder
from gatewayd.services.power.room import RoomRuntime
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger

log = structlog.get_logger(__name__)


def wire_paced_rooms(config: Config) -> frozenset[str]:
    """The rooms whose meter is on a DL/T 645 bus: read back to back, their bus
    sets the pace (docs/decisions.md "DL/T 645-2007")."""
    return frozenset(r.id for r in config.rooms
                     if (bus := config.buses.get(r.meter.bus)) is not None
                     and bus.protocol == "dlt645")


class PowerService:
    """The `power` component: every room's meter, rules and breaker."""

    name = "power"

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        ledger: Ledger,
        alarms: Alarms,
        clock: Clock,
        devices: Mapping[str, tuple[Meter, Switch]],
        breaker_banks: Sequence[SwitchBank] = (),
    ) -> None:
        self.config = config
        # The breakers read back every poll, a relay board per request: one
        # switched by hand (or reset by a relay board's power loss) is seen.
        self.breaker_banks = list(breaker_banks)
        self.store = store
        self.ledger = ledger
        self.alarms = alarms
        self.clock = clock
        self.poll_s = config.gateway.poll_interval_s
        self.heartbeat_s: float | None = max(30.0, 10 * self.poll_s)
        self.rooms = {
            r.id: RoomRuntime(r, *devices[r.id]) for r in config.rooms
        }
        self.by_account = {r.account: self.rooms[r.id] for r in config.rooms}
        self.curfew = CurfewWatch(config.curfews, self.rooms, alarms, clock)
        self.recorder = Recorder(store, ledger, clock)
        self.breakers = Breakers(self.rooms, self.recorder, alarms, clock, self.poll_s)
        self.breakers.banks = self.breaker_banks
        self._tg: asyncio.TaskGroup | None = None
        self._room_tasks: dict[str, asyncio.Task[None]] = {}
        self.runner = RoomRunner(
            ledger=ledger, alarms=alarms, clock=clock, curfew=self.curfew,
            recorder=self.recorder, breakers=self.breakers, poll_s=self.poll_s,
            wire_paced=wire_paced_rooms(config),
            rate=pricing.fen_per_quantity(config.tariffs.power.price, config.tariffs.power.unit))

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Load room state, read every breaker, act only where the rules say it is wrong.

        A breaker found on while the rules want it cut is cut (and reported). A
        breaker found off that the rules want on is switched on only when the
        store says the gateway cut it and the reason has lapsed; one found off
        for no recorded reason is left off, held, with `breaker_mismatch`
        (restore it with room.restore once it is safe).

        The reads get START_IO_S in all: a breaker that has not answered by
        then (a dead relay board or bus) is `unverified`, its room's rules
        start anyway, and its first answer is decided as here
        (`Breakers.drive`); no more I/O is spent on it before READY.
        """
        await self.recorder.load(self.rooms)
        await self.curfew.update()
        await self.breakers.read_at_start()
        for rt in self.rooms.values():
            if (rt.breaker_on is False
                    and reconcile(False, rt.state, rt.switch_pending) is Verdict.HOLD_OFF):
                try:
                    await self.breakers.found_off(rt)
                except Exception as e:  # left off and held in memory: one room, not the start
                    await self.runner.room_failed(rt, e)
        for rt in self.rooms.values():
            await self.runner.evaluate(rt, None, startup=True)
        log.info("power_started", rooms=len(self.rooms),
                 cut=sum(1 for r in self.rooms.values() if r.state.cut_reason))

    async def run(self, heartbeat: Heartbeat) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for rt in self.rooms.values():
                    self._spawn_room(rt)
                for bank in self.breaker_banks:
                    self._spawn_bank(bank)
                tg.create_task(self._ticker(heartbeat), name="power-ticker")
        finally:
            self._tg = None
            self._room_tasks.clear()

    def _spawn_room(self, rt: RoomRuntime) -> None:
        """The room's loop, in the running TaskGroup (or at the next `run`)."""
        if self._tg is not None:
            self._room_tasks[rt.id] = self._tg.create_task(self.runner.loop(rt),
                                                           name=f"room-{rt.id}")

    def _spawn_bank(self, bank: SwitchBank) -> None:
        if self._tg is not None:
            self._tg.create_task(self.breakers.bank_loop(bank), name=f"breakers-{bank.name}")

    async def _stop_room_loop(self, rt: RoomRuntime) -> None:
        """End the room's loop (its lock held by the caller: no decision is half done)."""
        task = self._room_tasks.pop(rt.id, None)
        if task is not None:
            await cancel_and_wait([task])

    async def shutdown(self) -> None:
        return None

    async def _ticker(self, heartbeat: Heartbeat) -> None:
        """Curfew and clock once a second for all rooms; the component's heartbeat."""
        while True:
            if await self.curfew.update():
                for rt in self.rooms.values():
                    rt.wake.set()
            heartbeat.beat()
            await asyncio.sleep(1.0)

    def meter_health_changed(self, device: str, online: bool, detail: str) -> None:
        """Bus health callback (sync, on the loop): meter_offline raised or cleared."""
        if device.startswith("meter:") and device.removeprefix("meter:") in self.rooms:
            self.alarms.report_soon(AlarmCode.METER_OFFLINE, device, detail, not online)

    async def evaluate(self, rt: RoomRuntime, reading: MeterReading | None) -> None:
        """Apply the rules to one reading (or none) now (see `RoomRunner.evaluate`)."""
        await self.runner.evaluate(rt, reading)

    # --- reload -------------------------------------------------------------------

    async def reconfigure(self, config: Config, changes: Changes, *,
                          devices: Mapping[str, tuple[Meter, Switch]],
                          breaker_banks: Sequence[SwitchBank]) -> None:
        """Take a reloaded config (`devices`: those of the added and rewired rooms).

        A removed room's loop ends; its breaker stays as it is and its row in the
        store is kept, as after a restart without it. A changed room takes its new
        settings at once (a lower limit it now exceeds trips it as any overload);
        a rewired one its new devices, its breaker read and decided as at start.
        An added room starts as at start. No breaker is switched here."""
        new = {r.id: r for r in config.rooms}
        for room_id in sorted(changes.rooms.removed):
            rt = self.rooms.pop(room_id)
            async with rt.lock:
                await self._stop_room_loop(rt)
                rt.retired = True
            await self.alarms.forget_devices(
                {meter_device(room_id), breaker_device(room_id), room_device(room_id)})
        for room_id in sorted(changes.rooms.changed):
            rt = self.rooms[room_id]
            async with rt.lock:
                rt.cfg = new[room_id]
                if room_id in changes.rewired_rooms:
                    await self._stop_room_loop(rt)
                    rt.rewire(new[room_id], *devices[room_id])
                    self._spawn_room(rt)
        added = {i: RoomRuntime(new[i], *devices[i], unverified=True)
                 for i in sorted(changes.rooms.added)}
        await self.recorder.load(added)
        self.rooms.update(added)
        self.by_account = {rt.cfg.account: rt for rt in self.rooms.values()}
        self.breakers.by_breaker = {rt.breaker.name: rt for rt in self.rooms.values()}
        self.breaker_banks[:] = breaker_banks   # old boards' loops end at their next read
        self.curfew.curfews, self.curfew.rooms = config.curfews, tuple(self.rooms)
        self.runner.wire_paced = wire_paced_rooms(config)
        if changes.tariffs:
            self.set_tariff(config.tariffs.power.price, config.tariffs.power.unit)
        self.config = config
        await self.curfew.update()
        for rt in added.values():
            self._spawn_room(rt)
        for bank in self.breaker_banks:
            self._spawn_bank(bank)
        for rt in self.rooms.values():
            rt.wake.set()

    # --- commands (center link) ----------------------------------------------------

    def room(self, room_id: str) -> RoomRuntime | None:
        return self.rooms.get(room_id)

    async def balance_changed(self, account: str) -> None:
        """A credit or sync changed `account`: re-evaluate its room now."""
        rt = self.by_account.get(account)
        if rt is not None:
            await self.runner.evaluate(rt, None)

    async def cut(self, room_id: str, *, hold: bool, also: Also | None = None) -> RoomRuntime:
        rt = self.rooms[room_id]
        async with rt.lock:
            _still_configured(rt)
            out = remote_cut(rt.state, self.runner.context(rt, self.clock.mono()), hold=hold)
            await self.runner.carry_out(rt, out, also=also)
        return rt

    async def restore(self, room_id: str, also: Also | None = None) -> RoomRuntime:
        rt = self.rooms[room_id]
        async with rt.lock:
            _still_configured(rt)
            out = remote_restore(rt.state, self.runner.context(rt, self.clock.mono()))
            await self.runner.carry_out(rt, out, also=also)
        return rt

    async def limit(self, room_id: str, max_power_w: int, also: Also | None = None) -> RoomRuntime:
        rt = self.rooms[room_id]
        async with rt.lock:
            _still_configured(rt)
            out = Outcome(replace(rt.state, max_power_w=max_power_w))
            await self.runner.carry_out(rt, out, also=also)
        return rt

    def set_tariff(self, price: Decimal, unit: str) -> None:
        """A new electricity price from now on (carried fractions stay as they are)."""
        self.runner.rate = pricing.fen_per_quantity(price, unit)

    def describe(self, rt: RoomRuntime) -> dict[str, Any]:
        """A room as `state.get` and the status view show it."""
        return view.describe(rt, self.ledger, self.alarms)


def _still_configured(rt: RoomRuntime) -> None:
    """A command that waited for a room a reload removed meanwhile: unknown now."""
    if rt.retired:
        raise KeyError(rt.id)
