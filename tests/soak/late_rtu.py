"""Campaign `late_rtu` (issue 14, item 4): a pulse-counter board on an RTU line
answers late at random, while showers run on some of its channels and stay dry
on others.

In-process: `WaterService` on a real store and the `Hardware` the daemon builds,
its bus on a pty pair served by a pymodbus RTU server (`SimRtu`) that holds one
in four of the board's answers back past the bus' timeout (up to twice it). Each round taps
every idle point open, lets it run, and taps it closed; meanwhile a probe reads
the points' flow counters through the same bus. RTU answers carry no
transaction id, so only the line discipline (gatewayd's `RtuLink`) keeps a
late answer from being taken for the next request.

Points come in pairs on neighbouring channels: a wet shower and a dry one whose
counts differ by a few pulses (a count of one taken for the other looks like
plausible flow, as in the issue), pairs 100,000 pulses apart. Invariants:
- every count read is the channel's own (a dry channel: exactly its count; a
  wet one: between its start and its count now);
- a dry shower is never charged, for volume or money;
- a wet shower is charged for at most the pulses its counter really made;
- no flow counter ever looks reset (backwards, or a jump no flow explains);
- every balance is its credit less its sessions' amounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from drivers.errors import DeviceError
from drivers.protocols import CardTap
from gatewayd.rules.water import Card
from gatewayd.services.water.service import WaterService
from gatewayd.store.cards import Cards
from gatewayd.store.ledger import Ledger
from gatewayd.store.txn import Txn
from sim.modbus_endpoint import SimEndpoint
from sim.modbus_rtu import SimRtu
from tests.soak.harness import Checks, Row
from tests.test_water_service import running_water

COUNTER = 40
RELAY = 31
TIMEOUT_S = 0.3
ML_PER_PULSE = 10
CREDIT_FEN = 1_000_000
PAIR_SPACING = 100_000
LATE_SHARE = 0.25


def _device(unit: int, profile: str, channel: int) -> str:
    return f'bus = "rs485-b", unit = {unit}, profile = "{profile}", channel = {channel}'


def _config(tmp: Path, port: str, points: int) -> Path:
    body = "".join(f"""
[[points]]
id = "shower-{j}"
service = "shower"
reader = "r{j}"
valve = {{ {_device(RELAY, "relay-board", j)} }}
flow = {{ {_device(COUNTER, "pulse-counter", j)}, ml_per_pulse = {ML_PER_PULSE} }}
[[readers]]
id = "r{j}"
type = "serial"
port = "/dev/null-{j}"
""" for j in range(points))
    path = tmp / "gw.toml"
    path.write_text(f"""
[gateway]
building = "b07"
state_dir = "{tmp / 'state'}"
poll_interval_s = 0.5
[tariffs]
shower = {{ price = "1", unit = "L" }}
[water]
min_balance_fen = 1
max_session_s = 600
idle_close_s = 60
[[buses]]
name = "rs485-b"
type = "rtu"
port = "{port}"
baudrate = 9600
timeout_s = {TIMEOUT_S}
retries = 1
{body}""")
    return path


def _delay(rng: random.Random) -> float:
    """One answer in LATE_SHARE comes after the timeout (up to twice it), the
    others within a few frame times."""
    if rng.random() < LATE_SHARE:
        return rng.uniform(TIMEOUT_S, 2 * TIMEOUT_S)
    return rng.uniform(0.0, 0.05)


def _card(j: int) -> str:
    return f"04000000{j:02X}"


class Probe:
    """Reads the points' flow counters at random through the service's bus and
    checks that each value is its channel's own."""

    def __init__(self, service: WaterService, sim: SimRtu, starts: list[float],
                 wet: list[bool], checks: Checks, rng: random.Random) -> None:
        self.service, self.sim, self.starts, self.wet = service, sim, starts, wet
        self.checks, self.rng = checks, rng
        self.reads = self.failed = 0

    async def run(self) -> None:
        counter = self.sim.endpoint.counters[COUNTER]
        while True:
            j = self.rng.randrange(len(self.starts))
            flow = self.service.points[f"shower-{j}"].flow
            assert flow is not None
            try:
                value = await flow.read()
            except DeviceError:
                self.failed += 1
            else:
                self.reads += 1
                counter.advance(time.monotonic())
                low, high = int(self.starts[j]), int(counter.counts[j])
                if self.wet[j]:
                    self.checks.check(low <= value <= high, f"probe: channel {j} (wet) read "
                                      f"{value}, its count is {low}..{high}")
                else:
                    self.checks.check(value == low, f"probe: channel {j} (dry) read {value}, "
                                      f"its count is {low}")
            await asyncio.sleep(self.rng.uniform(0.0, 0.1))


async def late_rtu(iterations: int) -> Row:
    """`iterations` rounds of showers on a board answering late at random."""
    t0 = time.monotonic()
    rng = random.Random(20261203)
    checks = Checks()
    notes: list[str] = []
    points = 4 if iterations < 20 else 8
    sim = SimRtu(SimEndpoint(relays=[RELAY], counters=[COUNTER]), seed=rng.randrange(2**32))
    counter = sim.endpoint.counters[COUNTER]
    wet = [j % 2 == 0 for j in range(points)]
    for j in range(points):
        pair = j // 2
        counter.counts[j] = float(PAIR_SPACING * (pair + 1) - 7 * (j % 2))
        counter.flow[j] = rng.uniform(10.0, 30.0) if wet[j] else 0.0
        sim.endpoint.follow(RELAY, j, functools.partial(counter.set_open, j))
    starts = list(counter.counts[:points])
    await sim.start()
    try:
        with tempfile.TemporaryDirectory(prefix="soak-late_rtu-") as tmp_name:
            tmp = Path(tmp_name)

            def seed(txn: Txn) -> None:
                for j in range(points):
                    Ledger.credit(txn, f"stu-{j}", CREDIT_FEN)
                    Cards.put(txn, Card(_card(j), f"stu-{j}", "student", "active", None))

            sim.delay_replies(COUNTER, functools.partial(_delay, rng))
            config = _config(tmp, sim.client_port, points)
            async with running_water(config, seed, lambda: True) as (service, store):
                probe = Probe(service, sim, starts, wet, checks, rng)
                probing = asyncio.get_running_loop().create_task(probe.run(), name="probe")
                opened = 0
                try:
                    for _ in range(iterations):
                        # Every idle point tapped open, at once (students do not queue).
                        idle = [j for j in range(points)
                                if service.points[f"shower-{j}"].session is None]
                        await asyncio.gather(*(service.on_tap(CardTap(f"r{j}", _card(j),
                                                                  time.monotonic()))
                                               for j in idle))
                        opened += sum(service.points[f"shower-{j}"].session is not None
                                      for j in idle)
                        await asyncio.sleep(rng.uniform(1.0, 2.0))
                        running = [j for j in range(points)
                                   if service.points[f"shower-{j}"].session is not None]
                        await asyncio.gather(*(service.on_tap(CardTap(f"r{j}", _card(j),
                                                                  time.monotonic()))
                                               for j in running))
                finally:
                    probing.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await probing
                await service.shutdown()
                rows = await store.read(lambda t: t.execute(
                    "SELECT type, payload FROM events WHERE type IN ('water.session', 'alarm') "
                    "ORDER BY seq").fetchall())
                balances = dict(await store.read(lambda t: t.execute(
                    "SELECT account, balance_fen FROM accounts").fetchall()))
    finally:
        await sim.stop()

    counter.advance(time.monotonic())
    sessions = [json.loads(p) for t, p in rows if t == "water.session"]
    alarms = [json.loads(p) for t, p in rows if t == "alarm"]
    volume: dict[str, int] = defaultdict(int)
    paid: dict[str, int] = defaultdict(int)
    for s in sessions:
        volume[s["point"]] += s["volume_ml"]
        paid[s["account"]] += s["amount_fen"]
        j = int(s["point"].split("-")[1])
        if not wet[j]:
            checks.check(s["volume_ml"] == 0 and s["amount_fen"] == 0,
                         f"{s['point']} (dry) charged {s['amount_fen']} fen for "
                         f"{s['volume_ml']} mL")
    for j in range(points):
        made = int(counter.counts[j]) - int(starts[j])
        checks.check(volume[f"shower-{j}"] <= made * ML_PER_PULSE,
                     f"shower-{j}: charged for {volume[f'shower-{j}']} mL, its counter "
                     f"made {made * ML_PER_PULSE} mL")
        checks.check(balances.get(f"stu-{j}") == CREDIT_FEN - paid[f"stu-{j}"],
                     f"stu-{j}: balance {balances.get(f'stu-{j}')}, credited {CREDIT_FEN}, "
                     f"sessions {paid[f'stu-{j}']}")
    resets = [a for a in alarms if a.get("code") == "meter_reset"]
    checks.check(not resets, f"flow counters looked reset {len(resets)} times: {resets[:3]}")
    checks.check(opened > 0 and probe.reads > 0, "no session opened or no probe read succeeded")
    late = sum(d > TIMEOUT_S for d in sim.delays)
    wet_ml = sum(volume[f"shower-{j}"] for j in range(points) if wet[j])
    notes.append(f"{len(sim.delays)} answers delayed, {late} past the {TIMEOUT_S} s timeout; "
                 f"{opened} sessions opened, {len(sessions)} reported, {wet_ml} mL charged on "
                 f"wet points; probe {probe.reads} reads ok, {probe.failed} failed")
    return Row("late_rtu", iterations, late, checks.count, checks.violations, notes,
               time.monotonic() - t0)
