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
- one RDM6300 serial card reader per point on a pseudo-terminal (`PtyPort`).

`start()` serves it and switches every breaker on, as an electrician leaves
a building; `write_config()` writes the daemon's config for it;
`seed_store()` gives the accounts their balances and issues the cards (only
while no daemon runs: the store has one writer). `DayScript` then plays a
compressed day against the running daemon: showers, drinking water, a lost
card, a kettle, a room running out of money and topped up by the center, a
meter going offline and coming back. It only touches what a building has:
cards on readers, loads, water, wires; and, for the top-up, the center's
MQTT command topic (`CenterStub`).

The simulator never imports the daemon's runtime (power, water, daemon).

`python -m sim.building --dir DIR [--rooms N] [--script]` serves a
building, writes DIR/gateway.toml, seeds the store, prints one JSON line
(`{"config": ..., "state_dir": ...}`) and runs until SIGTERM; start the daemon
with `gatewayd run -c DIR/gateway.toml`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from gatewayd.rules.water import Card
from gatewayd.store.cards import Cards
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger
from sim.modbus import COILS, SimCounter, SimEndpoint, SimMeter
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
        self.rooms: dict[str, SimRoom] = {}
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
        except BaseException:
            await self.stop()
            raise
        self._make_people()
        self.started = True

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

    # --- for the daemon ------------------------------------------------------------

    def write_config(
        self,
        path: Path | None = None,
        *,
        speed: float = 1.0,
        broker: str | None = None,
        metrics_port: int | None = None,
        poll_interval_s: float = 0.5,
    ) -> Path:
        """Write the daemon's config for this building; returns its path.

        Prices are the campus prices times `speed`: with the day running
        `speed` times faster than the wall clock, a shower or an evening of
        lights costs what it would in a real day. With `broker`, a `[center]`
        that accepts unsigned commands (a lab setting, warned at every start).
        """
        assert self.started, "start() first: the config names the ports"
        path = path or self.workdir / "gateway.toml"
        # The config names it, and a profiles_dir named in a config must exist.
        (self.workdir / "profiles").mkdir(exist_ok=True)
        k = Decimal(str(speed))
        lines = [
            "# Written by sim.building: a simulated building on 127.0.0.1.",
            f"# Prices are the campus prices x {speed:g} (the demo day runs {speed:g} times faster).",
            "[gateway]",
            f'building = "{self.building}"',
            'site = "demo-campus"',
            f'state_dir = "{self.state_dir}"',
            f"poll_interval_s = {poll_interval_s}",
            "tap_debounce_s = 1.0",
            f'profiles_dir = "{self.workdir / "profiles"}"',
            'clock_synced = "yes"',
            "",
        ]
        if broker is not None:
            lines += [
                "[center]",
                f'broker = "{broker}"',
                "insecure_unsigned_commands = true   # lab only: the demo's center does not sign",
                "telemetry_interval_s = 10",
                "",
            ]
        lines += [
            "[tariffs]",
            f'power = {{ price = "{_price(PRICE_POWER * k)}", unit = "kWh" }}',
            f'shower = {{ price = "{_price(PRICE_SHOWER * k)}", unit = "L" }}',
            f'drinking = {{ price = "{_price(PRICE_DRINKING * k)}", unit = "L" }}',
            "",
            "[power]",
            "max_power_w = 2000",
            "trip_after_s = 2",
            "reclose_after_s = 15",
            "lockout_trips = 3",
            "lockout_window_s = 120",
            "lockout_s = 120",
            "resistive_step_w = 300",
            "resistive_pf = 0.97",
            "low_balance_fen = 500",
            "report_fen = 100",
            "report_interval_s = 30",
            "",
            "[water]",
            "min_balance_fen = 50",
            "step_fen = 1",
            "max_session_s = 600",
            "idle_close_s = 20",
            "offline_limit_fen = 5000",
            "",
        ]
        for floor in self.floors:
            lines += ["[[buses]]", f'name = "floor{floor.number}"', 'type = "tcp"',
                      'host = "127.0.0.1"', f"port = {floor.port}", "timeout_s = 0.5", ""]
        for room in self.rooms.values():
            bus = f"floor{room.floor}"
            lines += [
                "[[rooms]]",
                f'id = "{room.id}"',
                f'meter = {{ bus = "{bus}", unit = {room.unit}, profile = "eastron-sdm120" }}',
                f'breaker = {{ bus = "{bus}", unit = {room.breaker_unit}, profile = "relay-board", '
                f"channel = {room.breaker_channel} }}",
                "resistive_cutoff = true",
                "",
            ]
        for point in self.points.values():
            lines += ["[[readers]]", f'id = "{point.reader}"', 'type = "serial"',
                      f'port = "{point.pty.path}"', 'protocol = "rdm6300"', ""]
        for point in self.points.values():
            bus = f"floor{point.floor}"
            lines += [
                "[[points]]",
                f'id = "{point.id}"',
                f'service = "{point.service}"',
                f'reader = "{point.reader}"',
                f'valve = {{ bus = "{bus}", unit = {VALVE_UNIT}, profile = "relay-board", '
                f"channel = {point.valve_channel} }}",
                f'flow = {{ bus = "{bus}", unit = {point.counter_unit}, profile = "pulse-counter", '
                f"channel = {point.counter_channel}, ml_per_pulse = {ML_PER_PULSE} }}",
                'kinds = ["student", "teacher", "family"]',
                "",
            ]
        if metrics_port is not None:
            lines += ["[metrics]", f'listen = "127.0.0.1:{metrics_port}"', ""]
        path.write_text("\n".join(lines))
        return path

    def balances(self) -> dict[str, int]:
        """What `seed_store` credits, in fen: rooms 30 to 80 yuan, students 50 yuan;
        the broke room enough for about 27 minutes of its air conditioner (1.1 kW) at
        the campus price; the poor student less than a shower's minimum balance."""
        out: dict[str, int] = {}
        for room in self.rooms.values():
            out[room.account] = self.rng_for(room.id).randrange(3000, 8000)
        for person in self.people:
            out[person.account] = 5000
        out[self.rooms[self.broke_room].account] = int(BROKE_ROOM_W / 1000 * 0.45 * float(PRICE_POWER) * 100)
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
        r = self.rooms[room]
        r.endpoint.set_fault(r.unit, fault)

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


def _price(value: Decimal) -> str:
    """A plain decimal string (no exponent, no trailing zeros)."""
    text = format(value.normalize(), "f")
    return text if "." not in text else text.rstrip("0").rstrip(".") or "0"


# --- the center, as far as the demo needs one -------------------------------------


class CenterStub:
    """The campus center's side of the MQTT link, for the demo: sends commands
    (unsigned: the demo's gateway accepts them, `insecure_unsigned_commands`),
    counts the events and results the gateway publishes."""

    def __init__(self, broker: str, building: str, prefix: str = "ecard/v1",
                 on_message: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        url = urlsplit(broker)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (8883 if url.scheme == "mqtts" else 1883)
        self.tls = url.scheme == "mqtts"
        self.building = building
        self.root = f"{prefix}/{building}"
        self.on_message = on_message
        self.events = 0
        self.last_seq = 0
        self.results: dict[str, dict[str, Any]] = {}
        self.gateway_online: bool | None = None
        self.connected = False
        self._outgoing: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="center-stub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def credit(self, account: str, amount_fen: int) -> str:
        """Queue an `account.credit` command; returns its id."""
        command_id = f"demo-{uuid.uuid4()}"
        cmd = {"id": command_id, "to": self.building, "type": "account.credit",
               "ts": datetime.now(UTC).astimezone().isoformat(timespec="milliseconds"),
               "args": {"account": account, "amount_fen": amount_fen}}
        self._outgoing.put_nowait((f"{self.root}/cmd", json.dumps(cmd).encode()))
        return command_id

    async def _run(self) -> None:
        import ssl

        import aiomqtt

        delay = 0.5
        while True:
            try:
                async with aiomqtt.Client(
                    self.host, self.port, identifier=f"demo-center-{uuid.uuid4().hex[:8]}",
                    tls_context=ssl.create_default_context() if self.tls else None,
                ) as client:
                    self.connected = True
                    delay = 0.5
                    for topic in ("events", "cmd/result", "status"):
                        await client.subscribe(f"{self.root}/{topic}", qos=1)
                    sender = asyncio.get_running_loop().create_task(self._send(client))
                    try:
                        async for message in client.messages:
                            self._received(str(message.topic), message.payload)
                    finally:
                        sender.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await sender
            except aiomqtt.MqttError:
                self.connected = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _send(self, client: Any) -> None:
        while True:
            topic, payload = await self._outgoing.get()
            await client.publish(topic, payload, qos=1)

    def _received(self, topic: str, payload: Any) -> None:
        try:
            doc = json.loads(bytes(payload))
        except (TypeError, ValueError):
            return
        if not isinstance(doc, dict):
            return
        kind = topic.removeprefix(self.root + "/")
        if kind == "events":
            self.events += 1
            self.last_seq = max(self.last_seq, int(doc.get("seq", 0) or 0))
        elif kind == "cmd/result" and isinstance(doc.get("id"), str):
            self.results[doc["id"]] = doc
        elif kind == "status":
            self.gateway_online = bool(doc.get("online"))
        if self.on_message is not None:
            self.on_message(kind, doc)


# --- the scripted day -------------------------------------------------------------


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
        a, b, c = sim.people[:3]
        if showers:
            await clock.until(day0 + 60)
            self.say(f"{a.name} (room {a.room}) taps a card at {showers[0]}: the valve opens.")
            self._spawn(self.session(a, showers[0], 9 * 60), "shower-a")
        if drinks:
            await clock.until(day0 + 150)
            self.say(f"{c.name} fills a bottle at {drinks[0]}.")
            self._spawn(self.session(c, drinks[0], 20), "drink-c")
        if len(showers) > 1:
            await clock.until(day0 + 180)
            self.say(f"{b.name} takes {showers[1]}.")
            self._spawn(self.session(b, showers[1], 7 * 60), "shower-b")
        await clock.until(day0 + 300)
        target = None
        for _ in range(300):  # a small building may have every point in use for a while
            target = self.free_point("shower") or self.free_point("drinking")
            if target is not None:
                break
            await asyncio.sleep(0.2)
        if target is not None:
            self.busy.add(target)  # kept free for the two refusals
            try:
                self.say(f"{self.lost.name} taps a card reported lost last week at {target}: "
                         "refused, the valve stays shut.")
                await sim.tap(target, self.lost.card)
                await clock.until(day0 + 420)
                self.say(f"{self.poor.name} has 0.20 yuan on the card, less than the 0.50 a "
                         f"session needs: refused at {target}.")
                await sim.tap(target, self.poor.card)
                await asyncio.sleep(MIN_RETAP_S)
            finally:
                self.busy.discard(target)
        await clock.until(day0 + 12 * 60)
        self.say(f"Room {self.kettle_room} switches on a 1.8 kW kettle (a resistive load, "
                 "banned in dorms): the gateway cuts the room at the next reading.")
        sim.set_load(self.kettle_room, 1800.0 + sim.rooms[self.kettle_room].meter.power_w, pf=1.0)
        self._spawn(self._unplug_after_cut(self.kettle_room, "the kettle"), "kettle")
        await clock.until(day0 + 40 * 60)
        self.say(f"The RS-485 wire to room {self.offline_room}'s meter works loose: "
                 "the meter stops answering.")
        sim.meter_fault(self.offline_room, "silent")
        await clock.until(day0 + 55 * 60)
        self.say(f"Room {self.cooker_room} runs a 2.6 kW induction cooker, over its 2 kW limit: "
                 "overload, cut after 2 s above the limit, reclosed later.")
        sim.set_load(self.cooker_room, 2600.0, pf=0.93)
        self._spawn(self._unplug_after_cut(self.cooker_room, "the cooker"), "cooker")
        await clock.until(day0 + 75 * 60)
        self.say(f"An electrician fixes the wire: room {self.offline_room}'s meter answers again; "
                 "the usage it missed is charged from its energy register.")
        sim.meter_fault(self.offline_room, None)
        if showers:
            await clock.until(day0 + 90 * 60)
            d = self.free_person()
            point = self.free_point("shower")
            if d is not None and point is not None:
                self.say(f"{d.name} leaves {point} without tapping out, water off: the gateway "
                         "closes the valve when no water has flowed for a while.")
                self._spawn(self._forgetful(d, point), "forgetful")

    async def _forgetful(self, person: Person, point: str) -> None:
        pt = self.sim.points[point]
        await self.session(person, point, 5 * 60, tap_out=False)
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
        await self.clock.wait(10 * 60, at_least_s=3.0)
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
        await self.clock.until(self.clock.start + 15 * 60)
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


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    workdir: Path = args.dir
    sim = SimulatedBuilding(workdir, rooms=args.rooms, building=args.building,
                            state_dir=args.state_dir)
    await sim.start()
    try:
        clock = DayClock(args.speed)
        center = CenterStub(args.broker, sim.building) if args.broker else None
        script = DayScript(sim, clock, lambda at, text: print(f"[{at}] {text}", flush=True), center)
        config = sim.write_config(speed=args.speed, broker=args.broker)
        if not (sim.state_dir / "gatewayd.db").exists():
            seeded = await asyncio.to_thread(sim.seed_store)
            (workdir / "seed.json").write_text(json.dumps(seeded, indent=1))
        script.start_loads()
        print(json.dumps({"config": str(config), "state_dir": str(sim.state_dir),
                          "ports": [f.port for f in sim.floors]}), flush=True)
        if args.script:
            if center is not None:
                await center.start()
            clock.t0 = time.monotonic()
            task = loop.create_task(script.run())
            await stop.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if center is not None:
                await center.stop()
        else:
            await stop.wait()
    finally:
        await sim.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry: serve a simulated building until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", required=True, help="where the config, ptys and state go")
    parser.add_argument("--rooms", type=int, default=12)
    parser.add_argument("--building", default="demo")
    parser.add_argument("--state-dir", help="the daemon's state_dir (default DIR/state)")
    parser.add_argument("--speed", type=float, default=60.0, help="day time per wall-clock second")
    parser.add_argument("--broker", help="mqtt://HOST:PORT of the center's broker")
    parser.add_argument("--script", action="store_true",
                        help="play the demo day (start the daemon first)")
    args = parser.parse_args(argv)
    args.dir = Path(args.dir).resolve()
    args.state_dir = Path(args.state_dir).resolve() if args.state_dir else None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
