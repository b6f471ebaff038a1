"""A whole simulated dorm building on loopback, for the demo, tests and benchmarks.

`SimulatedBuilding(workdir, rooms=N)` lays out floors the way `conf/generate.py`
does: each floor is one Modbus TCP endpoint on 127.0.0.1 (an RS-485-to-Ethernet
gateway) with

- meters at units 1..R, each behind its breaker: relay boards at units
  200, 201, ... (16 channels each); a cut breaker makes the meter read 0 W;
- water points (showers, then drinking water): valves on the relay board at
  unit 220, flow counters at units 230, 231, ... (8 channels each, 10 mL a
  pulse) whose count rises only while the valve is open, at the rate the
  script sets;
- one RDM6300 serial card reader per point on a pseudo-terminal (`PtyPort`);

and, with `dlt_rooms`, one more floor of DL/T 645-2007 meters with their relays
inside, on an RS-485 line simulated on a pty (`sim.dlt645_floor`).

`start()` serves it and switches every breaker on, as an electrician leaves
a building; `write_config()` writes the daemon's config for it;
`seed_store()` gives the accounts their balances and issues the cards (only
while no daemon runs: the store has one writer). `DayScript` then plays a
compressed day against the running daemon (`sim.day`): showers, drinking water, a lost
card, a kettle, a room running out of money and topped up by the center, a
meter going offline and coming back. It only touches what a building has:
cards on readers, loads, water, wires; and, for the top-up, the center's
MQTT command topic (`sim.center.CenterStub`).

The simulator never imports the daemon's runtime (power, water, daemon).

`python -m sim --dir DIR [--rooms N] [--script]` serves a
building, writes DIR/gateway.toml, seeds the store, prints one JSON line
(`{"config": ..., "state_dir": ...}`) and runs until SIGTERM; start the daemon
with `gatewayd run -c DIR/gateway.toml`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from gatewayd.config.gateway import system_timezone
from gatewayd.rules.water import Card
from gatewayd.store.cards import Cards
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger
from sim.dlt645_floor import DltFloor, SimDltRoom
from sim.modbus_endpoint import SimEndpoint
from sim.modbus_units import COILS, SimCounter, SimMeter
from sim.serial_card import PtyPort, frame

Service = Literal["shower", "drinking"]

BREAKER_BASE = 200          # breaker relay boards: 200, 201, ... (16 rooms each)
VALVE_UNIT = 220            # one valve board per floor
COUNTER_BASE = 230          # flow counters: 230, 231, ... (8 points each)
COUNTER_CHANNELS = 8
ML_PER_PULSE = 10
MAX_POINTS_PER_FLOOR = COILS

# Campus prices (yuan). The demo multiplies them by its speed, so that a day
# compressed X times costs what a real one would (see `write_config`).
PRICE_POWER = Decimal("0.56")    # per kWh
PRICE_SHOWER = Decimal("0.03")   # per L
PRICE_DRINKING = Decimal("0.01") # per L

# The broke room's air conditioner, on all night.
BROKE_ROOM_W = 1100.0
# Water flows, mL per second (real time: prices carry the day's speed).
SHOWER_ML_S = 8000 / 60          # 8 L/min
DRINKING_ML_S = 2000 / 60        # 2 L/min

# A card held on an RDM6300: the frame repeats about every 100 ms.
HOLD_FRAMES = 3
HOLD_INTERVAL_S = 0.1

NAMES = (
    "Li Wei", "Wang Fang", "Zhang Min", "Liu Yang", "Chen Jie", "Yang Lin", "Zhao Lei",
    "Huang Ying", "Zhou Tao", "Wu Xia", "Xu Ming", "Sun Li", "Ma Chao", "Zhu Hong", "Hu Bin",
    "Guo Jing", "He Ping", "Gao Yan", "Lin Feng", "Luo Qian", "Zheng Kai", "Liang Yu",
    "Song Jia", "Tang Hui", "Han Xue", "Feng Rui", "Deng Hao", "Cao Yue", "Peng Bo", "Xie Na",
)


@dataclass
class SimRoom:
    """One room: its meter, and the breaker channel that feeds it."""

    id: str
    account: str
    floor: int
    endpoint: SimEndpoint
    unit: int
    breaker_unit: int
    breaker_channel: int

    @property
    def meter(self) -> SimMeter:
        return self.endpoint.meters[self.unit]

    @property
    def breaker_on(self) -> bool:
        return self.endpoint.switch_on(self.breaker_unit, self.breaker_channel)

    def set_fault(self, fault: Literal["silent", "exception", "garbage"] | None) -> None:
        """Make the meter stop answering (`silent`), misbehave, or heal (None)."""
        self.endpoint.set_fault(self.unit, fault)

    async def breaker_becomes(self, on: bool) -> None:
        """Return once the gateway has switched the breaker to `on`."""
        await self.endpoint.switched(self.breaker_unit, self.breaker_channel, on)


@dataclass
class SimPoint:
    """One water point: reader pty, valve channel, flow counter channel."""

    id: str
    service: Service
    floor: int
    reader: str
    pty: PtyPort
    endpoint: SimEndpoint
    valve_channel: int
    counter_unit: int
    counter_channel: int

    @property
    def counter(self) -> SimCounter:
        return self.endpoint.counters[self.counter_unit]

    @property
    def valve_open(self) -> bool:
        return self.endpoint.switch_on(VALVE_UNIT, self.valve_channel)

    async def valve_becomes(self, on: bool) -> None:
        """Return once the gateway has opened (`True`) or closed the valve."""
        await self.endpoint.switched(VALVE_UNIT, self.valve_channel, on)

    def set_flow(self, ml_per_s: float) -> None:
        """The rate water runs at while the valve is open (the tap's handle)."""
        c = self.counter
        c.advance(time.monotonic())
        c.flow[self.counter_channel] = ml_per_s / ML_PER_PULSE


@dataclass
class Person:
    name: str
    card: str
    account: str
    room: str
    kind: str = "student"
    status: str = "active"


@dataclass
class Floor:
    number: int
    endpoint: SimEndpoint
    port: int = 0
    rooms: list[SimRoom] = field(default_factory=list)
    points: list[SimPoint] = field(default_factory=list)


class SimulatedBuilding:
    """See the module docstring. `workdir` holds the config, ptys and, by default, the state."""

    def __init__(
        self,
        workdir: Path,
        *,
        rooms: int = 12,
        building: str = "demo",
        rooms_per_floor: int = 8,
        showers_per_floor: int = 2,
        drinking_per_floor: int = 1,
        state_dir: Path | None = None,
        seed: int = 1,
        dlt_rooms: int = 0,
    ) -> None:
        if rooms < 1:
            raise ValueError("a building needs at least one room")
        if not 1 <= rooms_per_floor <= 99:
            raise ValueError("rooms_per_floor must be 1..99")
        if showers_per_floor + drinking_per_floor > MAX_POINTS_PER_FLOOR:
            raise ValueError(f"at most {MAX_POINTS_PER_FLOOR} water points a floor")
        self.workdir = workdir
        self.building = building
        self.state_dir = state_dir or workdir / "state"
        self.rng = random.Random(seed)
        self.floors: list[Floor] = []
        self.rooms: dict[str, SimRoom | SimDltRoom] = {}
        self.dlt_rooms = dlt_rooms
        self.dlt_floor: DltFloor | None = None
        self.points: dict[str, SimPoint] = {}
        self.people: list[Person] = []
        self.lost: Person
        self.poor: Person
        self.broke_room = self.kettle_room = self.offline_room = self.cooker_room = ""
        self._layout = (rooms, rooms_per_floor, showers_per_floor, drinking_per_floor)
        self.started = False

    # --- layout and lifecycle ------------------------------------------------------

    async def start(self) -> None:
        """Serve every floor on a free port, make the ptys, switch every breaker on."""
        rooms, per_floor, showers, drinking = self._layout
        self.workdir.mkdir(parents=True, exist_ok=True)
        n_floors = -(-rooms // per_floor)
        try:
            for f in range(1, n_floors + 1):
                n_rooms = min(per_floor, rooms - (f - 1) * per_floor)
                n_points = showers + drinking
                endpoint = SimEndpoint(
                    meters=range(1, n_rooms + 1),
                    relays=[*(BREAKER_BASE + b for b in range(-(-n_rooms // COILS))), VALVE_UNIT],
                    counters=[COUNTER_BASE + c for c in range(-(-n_points // COUNTER_CHANNELS))]
                    if n_points else [],
                )
                floor = Floor(f, endpoint)
                self.floors.append(floor)
                for i in range(n_rooms):
                    room_id = f"{f}{i + 1:02d}"
                    room = SimRoom(room_id, f"room-{self.building}-{room_id}", f, endpoint,
                                   unit=i + 1, breaker_unit=BREAKER_BASE + i // COILS,
                                   breaker_channel=i % COILS)
                    room.meter.energy_kwh = self.rng.uniform(300.0, 3000.0)
                    endpoint.follow(room.breaker_unit, room.breaker_channel,
                                    room.meter.set_supplied)
                    floor.rooms.append(room)
                    self.rooms[room_id] = room
                for j in range(n_points):
                    service: Service = "shower" if j < showers else "drinking"
                    n = j + 1 if j < showers else j - showers + 1
                    point_id = f"{'shower' if service == 'shower' else 'drink'}-{f}-{n}"
                    reader = f"r-{point_id}"
                    point = SimPoint(point_id, service, f, reader,
                                     PtyPort(self.workdir / f"tty-{reader}"), endpoint,
                                     valve_channel=j, counter_unit=COUNTER_BASE + j // COUNTER_CHANNELS,
                                     counter_channel=j % COUNTER_CHANNELS)
                    counter = point.counter
                    endpoint.follow(VALVE_UNIT, j, _valve_follower(counter, point.counter_channel))
                    point.set_flow(SHOWER_ML_S if service == "shower" else DRINKING_ML_S)
                    floor.points.append(point)
                    self.points[point_id] = point
                floor.port = await endpoint.start_tcp("127.0.0.1", 0)
                for room in floor.rooms:
                    await endpoint.set_coil(room.breaker_unit, room.breaker_channel, True)
            if self.dlt_rooms:
                await self._start_dlt_floor(n_floors + 1)
        except BaseException:
            await self.stop()
            raise
        self._make_people()
        self.started = True

    async def _start_dlt_floor(self, number: int) -> None:
        """The DL/T 645 floor: its meters keep the building's clock (relay deadlines)."""
        self.dlt_floor = DltFloor(number, ZoneInfo(system_timezone()))
        for i in range(self.dlt_rooms):
            room = self.dlt_floor.add_room(self.building, i, self.rng.uniform(300.0, 3000.0))
            self.rooms[room.id] = room
        await self.dlt_floor.start()

    def _make_people(self) -> None:
        """Two students a room (at least eight people). The last one's card was
        reported lost; the one before has less on the card than a shower needs."""
        names = list(NAMES)
        self.rng.shuffle(names)
        rooms = list(self.rooms.values())
        for n in range(max(2 * len(rooms), 8)):
            room = rooms[n // 2 % len(rooms)]
            name = names[n % len(names)] + ("" if n < len(names) else f" {n // len(names) + 1}")
            card = f"04{0xA10000 + n * 37:08X}"
            self.people.append(Person(name, card, f"stu-{room.id}-{n}", room.id))
        self.lost = self.people[-1]
        self.lost.status = "lost"
        self.poor = self.people[-2]
        # The cast of the demo day: distinct rooms when there are six or more.
        ids = list(self.rooms)
        self.broke_room, self.kettle_room, self.offline_room, self.cooker_room = (
            ids[min(k, len(ids) - 1)] for k in (2, 3, 4, 5))

    async def stop(self) -> None:
        """Stop serving and unplug every reader."""
        for floor in self.floors:
            await floor.endpoint.stop()
            for point in floor.points:
                point.pty.close()
        if self.dlt_floor is not None:
            await self.dlt_floor.stop()

    # --- for the daemon ------------------------------------------------------------

    def write_config(
        self,
        path: Path | None = None,
        *,
        speed: float = 1.0,
        broker: str | None = None,
        metrics_port: int | None = None,
        poll_interval_s: float = 0.5,
        center_public_key: Path | None = None,
    ) -> Path:
        """Write the daemon's config for this building; returns its path (see
        `sim.config_file.write_config`)."""
        from sim.config_file import write_config

        return write_config(self, path, speed=speed, broker=broker, metrics_port=metrics_port,
                            poll_interval_s=poll_interval_s, center_public_key=center_public_key)

    def balances(self) -> dict[str, int]:
        """What `seed_store` credits, in fen: rooms 30 to 80 yuan, students 50 yuan;
        the broke room enough for about 9 minutes of its air conditioner (1.1 kW) at
        the campus price; the poor student less than a shower's minimum balance."""
        out: dict[str, int] = {}
        for room in self.rooms.values():
            out[room.account] = self.rng_for(room.id).randrange(3000, 8000)
        for person in self.people:
            out[person.account] = 5000
        out[self.rooms[self.broke_room].account] = int(BROKE_ROOM_W / 1000 * 0.15 * float(PRICE_POWER) * 100)
        out[self.poor.account] = 20
        return out

    def rng_for(self, key: str) -> random.Random:
        return random.Random(f"{key}")

    def seed_store(self, balances: dict[str, int] | None = None) -> dict[str, int]:
        """Credit the accounts and issue the cards (blocking; no daemon may be running).

        Returns the balances credited, which the demo's summary checks against.
        """
        balances = dict(self.balances() if balances is None else balances)
        store = Store.open(self.state_dir, self.building)
        try:
            for account, fen in balances.items():
                store.call(lambda t, a=account, f=fen: Ledger.credit(t, a, f))  # type: ignore[misc]
            for person in self.people:
                card = Card(person.card, person.account, person.kind, person.status, None)
                store.call(lambda t, c=card: Cards.put(t, c))  # type: ignore[misc]
        finally:
            store.close()
        return balances

    # --- what happens in the building ---------------------------------------------

    def set_load(self, room: str, watts: float, pf: float = 0.9) -> None:
        """What is plugged in in `room` from now on (drawn while its breaker is on)."""
        meter = self.rooms[room].meter
        meter.advance(time.monotonic())
        meter.power_w, meter.pf = watts, pf

    def meter_fault(self, room: str, fault: Literal["silent", "exception", "garbage"] | None) -> None:
        """Make a room's meter stop answering (`silent`), misbehave, or heal (None)."""
        self.rooms[room].set_fault(fault)

    async def tap(self, point: str, card: str) -> None:
        """A card held on a point's reader for a moment."""
        pty = self.points[point].pty
        for i in range(HOLD_FRAMES):
            if i:
                await asyncio.sleep(HOLD_INTERVAL_S)
            with contextlib.suppress(OSError):
                pty.write(frame(card, "rdm6300"))

    def person(self, name: str) -> Person:
        return next(p for p in self.people if p.name == name)


def _valve_follower(counter: SimCounter, channel: int) -> Callable[[bool, float], None]:
    def follow(on: bool, now: float) -> None:
        counter.set_open(channel, on, now)
    return follow
