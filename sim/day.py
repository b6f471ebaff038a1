"""A compressed day played against the running daemon: the clock and the script.

The story's scenes all happen within the first 25 minutes of the day: at the
default speed (60) that is 25 s, so `gatewayd demo --duration 30` (the
Makefile's and README's example) shows all of it and its summary counts it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

from sim.building import BROKE_ROOM_W, DRINKING_ML_S, SHOWER_ML_S, Person, Service, SimulatedBuilding
from sim.center import CenterStub


class DayClock:
    """The demo's day: starts at `start` (seconds after midnight), runs `speed` times
    faster than the wall clock."""

    def __init__(self, speed: float, start: float = 6.5 * 3600) -> None:
        if speed <= 0:
            raise ValueError("speed must be above 0")
        self.speed = speed
        self.start = start
        self.t0 = time.monotonic()

    def now(self) -> float:
        """Seconds of day time since midnight of day 1."""
        return self.start + (time.monotonic() - self.t0) * self.speed

    def label(self, at: float | None = None) -> str:
        t = self.now() if at is None else at
        day, rest = divmod(int(t), 86400)
        return f"day {day + 1} {rest // 3600:02d}:{rest % 3600 // 60:02d}"

    async def until(self, day_s: float) -> None:
        """Sleep until day time `day_s`."""
        left = (day_s - self.now()) / self.speed
        if left > 0:
            await asyncio.sleep(left)

    async def wait(self, day_s: float, *, at_least_s: float = 0.0) -> None:
        """Sleep `day_s` seconds of day time, and at least `at_least_s` real seconds."""
        await asyncio.sleep(max(day_s / self.speed, at_least_s))


def hhmm(text: str) -> float:
    h, m = text.split(":")
    return int(h) * 3600 + int(m) * 60


# Real seconds: a session shorter than this would be over before anyone saw it,
# and the gateway charges and checks an open session once per poll.
MIN_SESSION_S = 3.0
# Between two taps of the same card (the gateway's tap_debounce_s is 1 s).
MIN_RETAP_S = 1.5


class DayScript:
    """A compressed day in the building; `narrate(day_label, text)` tells the story."""

    def __init__(self, sim: SimulatedBuilding, clock: DayClock,
                 narrate: Callable[[str, str], None], center: CenterStub | None = None) -> None:
        self.sim = sim
        self.clock = clock
        self.narrate_fn = narrate
        self.center = center
        self.rng = random.Random(7)
        self.busy: set[str] = set()          # points in use (by the script's people)
        self.in_use: set[str] = set()        # people in a session
        self.broke_room, self.kettle_room = sim.broke_room, sim.kettle_room
        self.offline_room, self.cooker_room = sim.offline_room, sim.cooker_room
        self.lost, self.poor = sim.lost, sim.poor
        self.tasks: set[asyncio.Task[None]] = set()

    def say(self, text: str) -> None:
        self.narrate_fn(self.clock.label(), text)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def start_loads(self) -> None:
        """Before the gateway starts: what is plugged in at dawn (none of it resistive)."""
        for room_id in self.sim.rooms:
            rng = self.sim.rng_for(room_id + "-load")
            self.sim.set_load(room_id, rng.uniform(20.0, 120.0), pf=rng.uniform(0.80, 0.93))
        self.sim.set_load(self.broke_room, BROKE_ROOM_W, pf=0.88)  # an air conditioner

    async def run(self) -> None:
        """Play the day, then keep the building busy until cancelled."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._story(), name="story")
                tg.create_task(self._background_loads(), name="loads")
                tg.create_task(self._shower_traffic(), name="traffic")
                tg.create_task(self._watch_breakers(), name="breakers")
        finally:
            tasks = list(self.tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # --- people -------------------------------------------------------------------

    async def session(self, person: Person, point: str, day_s: float, *,
                      tap_out: bool = True, flow_ml_s: float | None = None) -> None:
        """`person` taps in at `point`, uses it for `day_s` of day time, taps out."""
        pt = self.sim.points[point]
        self.busy.add(point)
        self.in_use.add(person.name)
        try:
            pt.set_flow(flow_ml_s if flow_ml_s is not None else
                        SHOWER_ML_S if pt.service == "shower" else DRINKING_ML_S)
            await self.sim.tap(point, person.card)
            await self.clock.wait(day_s, at_least_s=MIN_SESSION_S)
            if tap_out:
                await self.sim.tap(point, person.card)
                await asyncio.sleep(MIN_RETAP_S)
        finally:
            self.busy.discard(point)
            self.in_use.discard(person.name)

    def free_point(self, service: Service) -> str | None:
        free = [p.id for p in self.sim.points.values()
                if p.service == service and p.id not in self.busy]
        return self.rng.choice(free) if free else None

    def free_person(self) -> Person | None:
        cast = {self.lost.name, self.poor.name}
        free = [p for p in self.sim.people if p.name not in self.in_use and p.name not in cast]
        return self.rng.choice(free) if free else None

    # --- the story ----------------------------------------------------------------

    async def _story(self) -> None:
        sim, clock = self.sim, self.clock
        showers = [p.id for p in sim.points.values() if p.service == "shower"]
        drinks = [p.id for p in sim.points.values() if p.service == "drinking"]
        day0 = clock.start
        self.say(f"Morning in building {sim.building}: {len(sim.rooms)} rooms, "
                 f"{len(showers)} showers, {len(drinks)} drinking-water points. "
                 f"Room {self.broke_room}'s air conditioner has run all night; "
                 "its account is nearly empty.")
        await self._morning_water(day0, showers, drinks)
        await self._refused_cards(day0)
        await self._power_troubles(day0)
        if showers:
            await self._forgotten_tap_out(day0)

    async def _morning_water(self, day0: float, showers: list[str], drinks: list[str]) -> None:
        """Three people shower and fill a bottle."""
        clock = self.clock
        a, b, c = self.sim.people[:3]
        if showers:
            await clock.until(day0 + 60)
            self.say(f"{a.name} (room {a.room}) taps a card at {showers[0]}: the valve opens.")
            self._spawn(self.session(a, showers[0], 5 * 60), "shower-a")
        if drinks:
            await clock.until(day0 + 90)
            self.say(f"{c.name} fills a bottle at {drinks[0]}.")
            self._spawn(self.session(c, drinks[0], 20), "drink-c")
        if len(showers) > 1:
            await clock.until(day0 + 120)
            self.say(f"{b.name} takes {showers[1]}.")
            self._spawn(self.session(b, showers[1], 4 * 60), "shower-b")

    async def _refused_cards(self, day0: float) -> None:
        """A lost card and a card short of money are refused at a free point."""
        sim, clock = self.sim, self.clock
        await clock.until(day0 + 210)
        target = None
        for _ in range(300):  # a small building may have every point in use for a while
            target = self.free_point("shower") or self.free_point("drinking")
            if target is not None:
                break
            await asyncio.sleep(0.2)
        if target is None:
            return
        self.busy.add(target)  # kept free for the two refusals
        try:
            self.say(f"{self.lost.name} taps a card reported lost last week at {target}: "
                     "refused, the valve stays shut.")
            await sim.tap(target, self.lost.card)
            await clock.until(day0 + 270)
            self.say(f"{self.poor.name} has 0.20 yuan on the card, less than the 0.50 a "
                     f"session needs: refused at {target}.")
            await sim.tap(target, self.poor.card)
            await asyncio.sleep(MIN_RETAP_S)
        finally:
            self.busy.discard(target)

    async def _power_troubles(self, day0: float) -> None:
        """A kettle, a loose meter wire, an overload, and the wire fixed."""
        sim, clock = self.sim, self.clock
        await clock.until(day0 + 6 * 60)
        self.say(f"Room {self.kettle_room} switches on a 1.8 kW kettle (a resistive load, "
                 "banned in dorms): the gateway cuts the room at the next reading.")
        sim.set_load(self.kettle_room, 1800.0 + sim.rooms[self.kettle_room].meter.power_w, pf=1.0)
        self._spawn(self._unplug_after_cut(self.kettle_room, "the kettle"), "kettle")
        await clock.until(day0 + 8 * 60)
        self.say(f"The RS-485 wire to room {self.offline_room}'s meter works loose: "
                 "the meter stops answering.")
        sim.meter_fault(self.offline_room, "silent")
        await clock.until(day0 + 10 * 60)
        self.say(f"Room {self.cooker_room} runs a 2.6 kW induction cooker, over its 2 kW limit: "
                 "overload, cut after 2 s above the limit, reclosed later.")
        sim.set_load(self.cooker_room, 2600.0, pf=0.93)
        self._spawn(self._unplug_after_cut(self.cooker_room, "the cooker"), "cooker")
        await clock.until(day0 + 15 * 60)
        self.say(f"An electrician fixes the wire: room {self.offline_room}'s meter answers again; "
                 "the usage it missed is charged from its energy register.")
        sim.meter_fault(self.offline_room, None)

    async def _forgotten_tap_out(self, day0: float) -> None:
        """Someone leaves a shower without tapping out."""
        await self.clock.until(day0 + 17 * 60)
        d = self.free_person()
        point = self.free_point("shower")
        if d is not None and point is not None:
            self.say(f"{d.name} leaves {point} without tapping out, water off: the gateway "
                     "closes the valve when no water has flowed for a while.")
            self._spawn(self._forgetful(d, point), "forgetful")

    async def _forgetful(self, person: Person, point: str) -> None:
        pt = self.sim.points[point]
        await self.session(person, point, 3 * 60, tap_out=False)
        pt.set_flow(0.0)
        self.busy.add(point)
        try:
            await pt.valve_becomes(False)
        finally:
            pt.set_flow(SHOWER_ML_S)
            self.busy.discard(point)

    async def _unplug_after_cut(self, room_id: str, what: str) -> None:
        room = self.sim.rooms[room_id]
        await room.breaker_becomes(False)
        await asyncio.sleep(1.0)
        rng = self.sim.rng_for(room_id + "-load")
        self.sim.set_load(room_id, rng.uniform(20.0, 120.0), pf=0.9)
        self.say(f"Room {room_id}: the breaker is open and the meter reads 0 W; "
                 f"the student unplugs {what}.")

    async def _watch_breakers(self) -> None:
        """React to what the gateway does, as people in the building would."""
        room = self.sim.rooms[self.broke_room]
        await room.breaker_becomes(False)
        self.say(f"Room {room.id} ran out of money: the gateway cut it (balance); the meter "
                 "reads 0 W though the air conditioner is still plugged in.")
        await self.clock.wait(3 * 60, at_least_s=3.0)
        if self.center is None:
            self.say(f"A student pays at the campus center; with no center link in this run "
                     f"the top-up cannot reach the gateway, so room {room.id} stays dark.")
            return
        self.say(f"A student tops up 20.00 yuan at the center: account.credit for "
                 f"{room.account} goes out over MQTT.")
        command_id = self.center.credit(room.account, 2000)
        for _ in range(300):
            if command_id in self.center.results:
                break
            await asyncio.sleep(0.1)
        result = self.center.results.get(command_id)
        if result is None:
            self.say("The center got no answer to its top-up (is the gateway's center link on?).")
            return
        if not result.get("ok"):
            self.say(f"The gateway refused the top-up: {result.get('error')}.")
            return
        await room.breaker_becomes(True)
        self.say(f"Credit applied: room {room.id}'s breaker closes again (restored: balance).")

    async def _background_loads(self) -> None:
        """Lights, laptops, phone chargers: small, never resistive steps."""
        rooms = [r for r in self.sim.rooms if r not in
                 (self.broke_room, self.kettle_room, self.cooker_room)]
        while rooms:
            await self.clock.wait(5 * 60, at_least_s=1.0)
            room = self.rng.choice(rooms)
            meter = self.sim.rooms[room].meter
            watts = min(max(meter.power_w + self.rng.uniform(-120.0, 150.0), 15.0), 600.0)
            self.sim.set_load(room, watts, pf=self.rng.uniform(0.80, 0.93))

    async def _shower_traffic(self) -> None:
        """After the first scenes: people come and go all day."""
        await self.clock.until(self.clock.start + 8 * 60)
        while True:
            await self.clock.wait(self.rng.uniform(3, 7) * 60, at_least_s=1.0)
            service: Service = "shower" if self.rng.random() < 0.65 else "drinking"
            point = self.free_point(service)
            person = self.free_person()
            if point is None or person is None:
                continue
            minutes = self.rng.uniform(5, 12) if service == "shower" else self.rng.uniform(0.2, 0.5)
            self._spawn(self.session(person, point, minutes * 60), f"use-{point}")


# --- command line -----------------------------------------------------------------
