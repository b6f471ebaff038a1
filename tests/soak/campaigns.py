"""The campaigns of issue 7. Each is `async def NAME(iterations) -> Row`.

`FULL` and `SHORT` give each campaign's iteration count for `python -m
tests.soak` and its `--short` form (the one `make test` runs). What each one
does, and what it found, is in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.protocols import CardTap
from gatewayd.config.load import load_config
from gatewayd.config.model import Config
from gatewayd.contract.events import breaker_device, meter_device, valve_device
from gatewayd.contract.wire import rfc3339
from gatewayd.errors import CanonicalFormError
from gatewayd.rules.water import Card
from gatewayd.services.alarms import Alarms
from gatewayd.services.clock import Clock
from gatewayd.services.component import Heartbeat
from gatewayd.services.hardware import Hardware
from gatewayd.services.power.service import PowerService
from gatewayd.services.water.service import WaterService
from gatewayd.store.cards import Cards
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger
from sim.modbus import SimBuilding
from sim.serial_card import PtyPort, frame
from sim.vcard import VirtualCard
from tests.cardreader_fixtures import VPCD_READER, Pcscd, pcscd_unavailable, private_pcscd
from tests.mqtt_fixtures import Broker, Collector, mosquitto
from tests.soak.command_flood import command_flood
from tests.soak.harness import (
    BUILDING,
    ROOT,
    Checks,
    Daemon,
    FlakyEndpoint,
    Layout,
    Outbox,
    Row,
    StoreSnapshot,
    alarm_pairs,
    check_all,
    check_balances,
    check_money,
    check_seq,
    check_sessions_accounted,
    coil,
    hold_card,
    read_outbox,
    read_store,
    rss_of,
    seed,
    start_building,
    until,
)
from tests.soak.late_rtu import late_rtu
from tests.soak.removed_store import removed_store

Campaign = Callable[[int], Awaitable[Row]]


@contextlib.asynccontextmanager
async def workdir(name: str) -> AsyncIterator[Path]:
    """A scratch directory, removed afterwards unless SOAK_KEEP=1 (to read daemon.log)."""
    path = Path(tempfile.mkdtemp(prefix=f"soak-{name}-"))
    try:
        yield path
    finally:
        if os.environ.get("SOAK_KEEP") == "1":
            print(f"kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


# --- 1. power cut ------------------------------------------------------------------------


class TapDriver:
    """Random showers on every point: a card taps to open, taps again to close."""

    def __init__(self, layout: Layout, ports: list[PtyPort], cards: list[list[str]],
                 rng: random.Random) -> None:
        self.layout, self.ports, self.cards, self.rng = layout, ports, cards, rng
        self.paused = True
        self.taps = 0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._point(j), name=f"taps-{j}")
                       for j in range(len(self.ports))]

    async def _point(self, j: int) -> None:
        while True:
            if self.paused:
                await asyncio.sleep(0.05)
                continue
            uid = self.rng.choice(self.cards[j])
            await hold_card(self.ports[j], uid)
            self.taps += 1
            await asyncio.sleep(self.rng.uniform(0.4, 2.5))
            if not self.paused:
                await hold_card(self.ports[j], uid)
                self.taps += 1
            await asyncio.sleep(self.rng.uniform(0.4, 1.0))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def settled_consistency(sim: SimBuilding, layout: Layout, checks: Checks, label: str) -> None:
    """Each breaker agrees with the store and with the last breaker event of its room
    (eventually: a decision just committed may still be on its way to the relay)."""
    def disagreements() -> list[str]:
        s = read_store(layout.db)
        last: dict[str, str] = {}
        for e in s.events:
            if e["type"] in {"breaker.cut", "breaker.restored"}:
                last[e["room"]] = e["type"]
        bad = []
        for i in range(layout.rooms):
            room = layout.room_id(i)
            on = coil(sim, *layout.breaker(i))
            row = s.rooms.get(room)
            stored_on = row is None or row["cut_reason"] is None
            if on != stored_on:
                bad.append(f"room {room}: breaker {'on' if on else 'off'} but the store says "
                           f"cut_reason={None if row is None else row['cut_reason']}")
            logged_on = last.get(room, "breaker.restored") == "breaker.restored"
            if on != logged_on:
                held = bool(row and row["hold"])
                bad.append(f"room {room}: breaker {'on' if on else 'off'} but its last event is "
                           f"{last.get(room, 'none')}{' (held at restart)' if held else ''}")
        return bad

    bad = disagreements()
    for _ in range(10):
        if not bad:
            break
        await asyncio.sleep(0.2)
        bad = disagreements()
    checks.extend(2 * layout.rooms, (f"{label}: {b}" for b in bad))


ROOT_TOPIC = f"ecard/v1/{BUILDING}"
MONEY_TYPES = frozenset({"water.session", "power.usage", "account.credited"})


def busy_building_layout(tmp: Path, short: bool, center: dict[str, Any] | None = None) -> Layout:
    """power_cut's building: overloaded rooms that trip, poor accounts cut for balance,
    showers tapped at random."""
    return Layout(
        tmp, rooms=24 if short else 100, points=3 if short else 8, poll_s=0.5,
        power_rules={"max_power_w": 1000, "trip_after_s": 0.5, "reclose_after_s": 1.5,
                     "lockout_trips": 1000, "lockout_window_s": 60, "lockout_s": 60,
                     "report_fen": 20, "report_interval_s": 5, "low_balance_fen": 100},
        water_rules={"min_balance_fen": 10, "max_session_s": 60, "idle_close_s": 30},
        center=center or {},
    )


def furnish(layout: Layout, sim: SimBuilding, rng: random.Random) -> list[list[str]]:
    """Loads, flows, credits and cards of the busy building (seeded in the store);
    returns the cards of each point."""
    credits: dict[str, int] = {}
    for i in range(layout.rooms):
        overload = i % 10 == 7
        sim.set_load(i, rng.uniform(1300, 2000) if overload else rng.uniform(100, 900),
                     pf=rng.uniform(0.8, 1.0))
        if i % 3 == 0:
            credits[layout.account(i)] = rng.randint(30, 300)   # runs out: cut for balance
        elif i % 3 == 1:
            credits[layout.account(i)] = 10_000_000
        # i % 3 == 2: never credited, an unknown account: charged below zero, never cut
    cards: list[list[str]] = []
    card_rows: list[Card] = []
    for j in range(layout.points):
        uids = [f"{j + 1:02X}{k:08X}" for k in range(3)]
        cards.append(uids)
        for k, uid in enumerate(uids):
            account = f"stu-{j}-{k}"
            card_rows.append(Card(uid, account, "student", "active", None))
            credits[account] = 150 if k == 0 else 1_000_000
        fu, fch = layout.flow(j)
        sim.set_flow(fu - SimBuilding.COUNTER_BASE, fch, 20.0)
    seed(layout.state_dir, credits, card_rows)
    return cards


def center_section(broker: Broker, **extra: Any) -> dict[str, Any]:
    return {"broker": broker.url, "insecure_unsigned_commands": True, **extra}


def credit_command(cid: str, account: str, fen: int) -> bytes:
    """An unsigned account.credit (the campaigns run with insecure_unsigned_commands)."""
    return json.dumps({"id": cid, "to": BUILDING, "type": "account.credit",
                       "ts": rfc3339(time.time(), datetime.UTC),
                       "args": {"account": account, "amount_fen": fen}}).encode()


class CommandSender:
    """The center sending account.credit commands now and then (QoS 1 on `{root}/cmd`):
    unique ids, and every fifth send a repeat of a recent one (the same payload).

    A publish that fails (no PUBACK: the broker went away) may still have reached
    the gateway, so the center sends that same command again, same id, until a
    publish is acknowledged; one never acknowledged is `unconfirmed`."""

    def __init__(self, center: Collector, accounts: list[str], rng: random.Random,
                 prefix: str = "cmd") -> None:
        self.center, self.accounts, self.rng, self.prefix = center, accounts, rng, prefix
        self.sent: dict[str, bytes] = {}
        self.unconfirmed: dict[str, bytes] = {}
        self.sends: Counter[str] = Counter()
        self.repeats = 0
        self.paused = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="commands")

    async def send_one(self) -> None:
        if self.unconfirmed:
            cid, payload = next(iter(self.unconfirmed.items()))
            repeat = True
        elif self.sent and self.rng.random() < 0.2:
            cid = self.rng.choice(list(self.sent)[-10:])
            payload = self.sent[cid]
            repeat = True
        else:
            cid = f"{self.prefix}-{len(self.sent) + len(self.unconfirmed) + 1}-{uuid.uuid4().hex[:8]}"
            payload = credit_command(cid, self.rng.choice(self.accounts), self.rng.randint(1, 500))
            repeat = False
        self.sends[cid] += 1
        if cid not in self.sent:
            self.unconfirmed[cid] = payload
        async with asyncio.timeout(10):
            await self.center.publish(f"{ROOT_TOPIC}/cmd", payload)
        self.unconfirmed.pop(cid, None)
        self.sent[cid] = payload
        self.repeats += repeat

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.rng.uniform(0.2, 1.2))
            if self.paused:
                continue
            with contextlib.suppress(Exception):   # the broker away: the center tries later
                await self.send_one()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for _ in list(self.unconfirmed):   # the center's last tries, same ids
            with contextlib.suppress(Exception):
                await self.send_one()

    def results(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for s in self.center.on("/cmd/result"):
            doc = s.json()
            out[str(doc.get("id"))].append(doc)
        return out

    def answered(self) -> bool:
        got = self.results()
        return all(cid in got for cid in self.sent)

    def check(self, s: StoreSnapshot, checks: Checks, label: str) -> str:
        """Every command answered, each id applied exactly once, its results all alike."""
        got = self.results()
        applied = Counter(e["command"] for e in s.of("account.credited"))
        for cid in self.sent:
            results = got.get(cid, [])
            checks.check(bool(results), f"{label}: command {cid} sent {self.sends[cid]} times, "
                         "no result")
            checks.check(applied[cid] == 1, f"{label}: command {cid} (sent {self.sends[cid]} "
                         f"times) applied {applied[cid]} times")
            firsts = [{k: v for k, v in r.items() if k != "duplicate"} for r in results]
            checks.check(all(r == firsts[0] for r in firsts),
                         f"{label}: command {cid}: results differ: {results}")
            checks.check(all(r.get("ok") is True for r in results),
                         f"{label}: command {cid} refused: {results[:1]}")
        for cid in self.unconfirmed:
            # Never acknowledged: it may or may not have reached the gateway.
            results = got.get(cid, [])
            checks.check(applied[cid] <= 1 and (applied[cid] == 1 or not results),
                         f"{label}: unconfirmed command {cid}: applied {applied[cid]} times, "
                         f"{len(results)} results")
            checks.check(all(r.get("ok") is True for r in results),
                         f"{label}: unconfirmed command {cid} refused: {results[:1]}")
        strays = set(got) - set(self.sent) - set(self.unconfirmed)
        checks.check(not strays, f"{label}: results for commands never sent: {sorted(strays)[:5]}")
        dup = sum(1 for rs in got.values() for r in rs if r.get("duplicate"))
        return (f"{len(self.sent)} commands ({sum(self.sends.values())} sends, {self.repeats} "
                f"repeats), {sum(len(r) for r in got.values())} results ({dup} marked duplicate)")


async def power_cut(iterations: int) -> Row:
    """SIGKILL the daemon at random moments while rooms are charged, showers run and
    commands arrive."""
    t0 = time.monotonic()
    rng = random.Random(20261123)
    checks = Checks()
    short = iterations < 50
    async with workdir("powercut") as tmp:
        with mosquitto(tmp / "mosquitto") as broker:
            layout = busy_building_layout(tmp, short, center_section(broker, telemetry_interval_s=5))
            sim = await start_building(layout)
            ports = [PtyPort(layout.tty(j)) for j in range(layout.points)]
            room_accounts = {layout.room_id(i): layout.account(i) for i in range(layout.rooms)}
            cards = furnish(layout, sim, rng)
            config = layout.config(sim)
            daemon = Daemon(config, tmp)
            taps = TapDriver(layout, ports, cards, rng)
            taps.start()
            center = Collector(broker, [f"{ROOT_TOPIC}/cmd/result", f"{ROOT_TOPIC}/status"],
                               client_id="center-soak")
            await center.start()
            commands = CommandSender(center, sorted(room_accounts.values()), rng)
            # A command published before the gateway's first subscription has no
            # session at the broker to wait in (it is lost, as with any MQTT
            # client): the center starts once the gateway has been online.
            commands.paused = True
            commands.start()
            kills = aborted_starts = 0
            before_coils = {i: coil(sim, *layout.breaker(i)) for i in range(layout.rooms)}
            first = read_store(layout.db)
            prev: StoreSnapshot | None = first
            kill_seq = first.last_seq
            try:
                for it in range(iterations):
                    label = f"kill {it + 1}"
                    await daemon.start()
                    if rng.random() < 0.15:
                        # A cut during start-up (before or around READY).
                        await asyncio.sleep(rng.uniform(0.0, 1.0))
                        aborted_starts += 1
                    else:
                        await daemon.ready()
                        if commands.paused:
                            await center.wait_for(lambda seen: any(
                                s.topic.endswith("/status") and s.json().get("online")
                                for s in seen), timeout=60)
                            commands.paused = False
                        open_valves = [layout.point_id(j) for j in range(layout.points)
                                       if coil(sim, *layout.valve(j))]
                        checks.check(not open_valves, f"{label}: valves open at READY: {open_valves}")
                        await asyncio.sleep(1.0)
                        now = read_store(layout.db)
                        moved = {e["room"] for e in now.events[kill_seq:]
                                 if e["type"] in {"breaker.cut", "breaker.restored"}}
                        # A decision committed before the kill but not yet on the coil
                        # (`switch_pending`) is carried out at start, under its own event.
                        assert prev is not None
                        last: dict[str, str] = {}
                        for e in prev.events:
                            if e["type"] in {"breaker.cut", "breaker.restored"}:
                                last[e["room"]] = e["type"]
                        for i in range(layout.rooms):
                            room = layout.room_id(i)
                            after = coil(sim, *layout.breaker(i))
                            row = prev.rooms.get(room) or {}
                            finished = bool(row.get("switch_pending")) and after == (
                                last.get(room, "breaker.restored") == "breaker.restored")
                            checks.check(after == before_coils[i] or room in moved or finished,
                                         f"{label}: room {room} breaker flipped "
                                         f"{'on' if after else 'off'} by the restart, no event")
                        await settled_consistency(sim, layout, checks, label)
                        taps.paused = False
                        await asyncio.sleep(rng.uniform(0.2, 3.0))
                        taps.paused = True
                    before_coils = {i: coil(sim, *layout.breaker(i)) for i in range(layout.rooms)}
                    await daemon.kill()
                    kills += 1
                    snap = read_store(layout.db)
                    check_all(prev, snap, room_accounts, checks, label)
                    prev, kill_seq = snap, snap.last_seq
                    if it % 10 == 9:
                        # The center credits a few accounts cut for balance (applied to the store
                        # as CommandService would, while the daemon is down).
                        broke = [a for a, b in snap.balances.items()
                                 if b <= 0 and a in snap.known and a.startswith("room-")]
                        if broke:
                            seed(layout.state_dir, dict.fromkeys(rng.sample(broke, min(3, len(broke))), 200),
                                 command=f"credit-{it}")
                            prev = read_store(layout.db)
                            kill_seq = prev.last_seq
                # A last clean run: restart, settle, SIGTERM.
                await daemon.start()
                await daemon.ready()
                still_open = [j for j in range(layout.points) if coil(sim, *layout.valve(j))]
                checks.check(not still_open, f"final start: valves open at READY: {still_open}")
                await commands.close()
                await until(commands.answered, 60.0, step=0.5)   # the last ones come in
                await asyncio.sleep(1.5)
                await settled_consistency(sim, layout, checks, "final")
                code = await daemon.stop()
                checks.check(code == 0, f"final SIGTERM: exit code {code}")
                snap = read_store(layout.db)
                check_all(prev, snap, room_accounts, checks, "final")
                checks.check(not snap.sessions, f"final: sessions left open {sorted(snap.sessions)}")
                command_note = commands.check(snap, checks, "final")
                checks.extend(1, daemon.log_problems())
            finally:
                await commands.close()
                await center.stop()
                await taps.close()
                await daemon.close()
                for p in ports:
                    p.close()
                await sim.stop()
            s = read_store(layout.db)
            notes = [f"{kills} SIGKILLs ({aborted_starts} during start-up), {len(s.events)} events, "
                     f"{len(s.of('power.usage'))} power.usage, {len(s.of('water.session'))} water.session, "
                     f"{len(s.of('breaker.cut'))} cuts, {taps.taps} card presentations",
                     f"commands: {command_note}"]
    return Row("power_cut", iterations, kills, checks.count, checks.violations, notes,
               time.monotonic() - t0)


# --- 2. center outage ----------------------------------------------------------------------


class Received:
    """What the center's subscriber got, parsed once, in arrival order."""

    def __init__(self, center: Collector) -> None:
        self.center = center
        self._n = 0
        self.events: list[dict[str, Any]] = []
        self.status: list[dict[str, Any]] = []
        self.telemetry: list[dict[str, Any]] = []
        self.ids: set[str] = set()

    def update(self) -> Received:
        new = self.center.seen[self._n:]
        self._n += len(new)
        for m in new:
            doc = m.json()
            if m.topic.endswith("/events"):
                self.events.append(doc)
                self.ids.add(doc["id"])
            elif m.topic.endswith("/status"):
                self.status.append(doc)
            elif m.topic.endswith("/telemetry"):
                self.telemetry.append(doc)
        return self


def delivery(got: Received, s: StoreSnapshot, checks: Checks, label: str) -> tuple[int, int]:
    """Events received against the store: the same set of ids, one content per id, and
    within each class (money, other) first arrivals in `seq` order. Returns (messages,
    duplicates)."""
    got.update()
    stored = {e["id"]: {k: v for k, v in e.items() if not k.startswith("_")} for e in s.events}
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    firsts: dict[str, list[int]] = {"money": [], "other": []}
    for doc in got.events:
        if doc["id"] not in by_id:
            firsts["money" if doc["type"] in MONEY_TYPES else "other"].append(doc["seq"])
        by_id[doc["id"]].append(doc)
    missing = sorted(stored[i]["seq"] for i in set(stored) - set(by_id))
    strays = sorted(by_id[i][0]["seq"] for i in set(by_id) - set(stored))
    checks.check(not missing, f"{label}: {len(missing)} stored events never received, seqs "
                 f"{missing[:10]}")
    checks.check(not strays, f"{label}: {len(strays)} events received that the store has not, "
                 f"seqs {strays[:10]}")
    changed = [docs[0]["seq"] for i, docs in by_id.items()
               if any(d != docs[0] for d in docs) or (i in stored and stored[i] != docs[0])]
    checks.check(not changed, f"{label}: {len(changed)} ids received with a content other than "
                 f"stored or than before, seqs {changed[:10]}")
    for klass, seqs in firsts.items():
        back = [(a, b) for a, b in itertools.pairwise(seqs) if b <= a]
        checks.check(not back, f"{label}: {klass} events out of seq order on first arrival: "
                     f"{back[:5]}")
    return len(got.events), len(got.events) - len(by_id)


@dataclass
class OutageSample:
    at: float                      # seconds into the outage
    rss_kb: int
    box: Outbox


async def outage_run(name: str, tmp: Path, rng: random.Random, *, outages: int, outage_s: float,
                     short: bool, cap_mb: float | None, checks: Checks, notes: list[str]) -> int:
    """One daemon behind one broker; the broker stopped `outages` times for `outage_s` with the
    building busy; returns the faults injected (broker stops)."""
    tiny = cap_mb is not None
    telemetry_s = 0.5 if tiny else 1.0
    with mosquitto(tmp / "mosquitto") as broker:
        extra: dict[str, Any] = {"telemetry_interval_s": telemetry_s}
        if cap_mb is not None:
            extra["outbox_max_mb"] = cap_mb
        layout = busy_building_layout(tmp, short, center_section(broker, **extra))
        sim = await start_building(layout)
        ports = [PtyPort(layout.tty(j)) for j in range(layout.points)]
        room_accounts = {layout.room_id(i): layout.account(i) for i in range(layout.rooms)}
        cards = furnish(layout, sim, rng)
        daemon = Daemon(layout.config(sim), tmp)
        taps = TapDriver(layout, ports, cards, rng)
        center = Collector(broker, [f"{ROOT_TOPIC}/{t}" for t in ("events", "status", "telemetry",
                                                                    "cmd/result")],
                           client_id=f"center-{name}")
        commands = CommandSender(center, sorted(room_accounts.values()), rng, prefix=name)
        got = Received(center)
        samples: list[list[OutageSample]] = []
        seen_types: dict[int, str] = {}        # seq -> type of every event ever seen in the store
        drains: list[float] = []
        faults = 0
        try:
            await center.start()
            await daemon.start()
            await daemon.ready()
            online = await until(lambda: any(d.get("online") for d in got.update().status), 30.0)
            checks.check(bool(online), f"{name}: no online status within 30 s of READY")
            taps.start()
            taps.paused = False
            commands.start()
            await asyncio.sleep(3.0 if short else 10.0)
            for k in range(outages):
                label = f"{name} outage {k + 1}"
                commands.paused = True
                await asyncio.sleep(1.0)
                assert daemon.proc is not None
                await asyncio.to_thread(broker.stop)
                faults += 1
                t_off = time.monotonic()
                run: list[OutageSample] = []
                while (left := outage_s - (time.monotonic() - t_off)) > 0:
                    box = read_outbox(layout.db)
                    seen_types.update(box.types)
                    run.append(OutageSample(time.monotonic() - t_off, rss_of(daemon.proc.pid), box))
                    await asyncio.sleep(min(1.0, left))
                box = read_outbox(layout.db)
                seen_types.update(box.types)
                run.append(OutageSample(time.monotonic() - t_off, rss_of(daemon.proc.pid), box))
                samples.append(run)
                checks.check(daemon.alive, f"{label}: the daemon died while the broker was down")
                last_seq = max(box.types, default=0)
                await asyncio.to_thread(broker.start)
                t_on = time.monotonic()
                mark = len(got.update().status)

                def drained(mark: int = mark, last_seq: int = last_seq) -> bool:
                    got.update()
                    kept = read_outbox(layout.db)
                    waiting = {i for i, q in {**kept.published, **kept.unpublished}.items()
                               if q <= last_seq}
                    return waiting <= got.ids and any(
                        d.get("online") and d.get("pending") == 0 and d.get("last_seq", 0) >= last_seq
                        for d in got.status[mark:])
                ok = await until(drained, 150.0, step=0.5)
                drains.append(time.monotonic() - t_on)
                checks.check(bool(ok), f"{label}: backlog to seq {last_seq} not received, or no status "
                             f"with pending 0, {drains[-1]:.0f} s after the broker came back")
                commands.paused = False
                if tiny:
                    def cleared() -> bool:
                        raised, clear = alarm_pairs(read_store(layout.db), "outbox_full", "outbox")
                        return raised > 0 and raised == clear
                    ok = await until(cleared, 20.0, step=0.5)
                    raised, clear = alarm_pairs(read_store(layout.db), "outbox_full", "outbox")
                    center_saw = [d["active"] for d in got.update().events
                                  if d["type"] == "alarm" and d["code"] == "outbox_full"]
                    checks.check(raised >= 1 and True in center_saw,
                                 f"{label}: no outbox_full raise in the store nor at the center "
                                 f"(cap {cap_mb} MiB; the center saw {center_saw})")
                    checks.check(bool(ok) or raised == 0, f"{label}: outbox_full raised {raised}, "
                                 f"cleared {clear} 20 s after the backlog drained")
                await asyncio.sleep(3.0 if short else 10.0)
            # The end: quiet, then a clean stop; what the drain at stop leaves is delivered by one
            # more start (it stays in the outbox for the next start, by contract).
            taps.paused = True
            await commands.close()
            await until(commands.answered, 30.0, step=0.5)
            await asyncio.sleep(2.0)
            code = await daemon.stop()
            checks.check(code == 0, f"{name}: SIGTERM exit code {code}")
            unsent = read_outbox(layout.db).unpublished
            if unsent:
                notes.append(f"{name}: {len(unsent)} events left unpublished by the stop's drain, "
                             "delivered at the next start")
                await daemon.start()
                await daemon.ready()
                await until(lambda: not read_outbox(layout.db).unpublished, 60.0, step=0.5)
                code = await daemon.stop()
                checks.check(code == 0, f"{name}: second SIGTERM exit code {code}")
            final = read_outbox(layout.db)
            await until(lambda: set(final.published) <= got.update().ids, 10.0)
            checks.check(not final.unpublished, f"{name}: {len(final.unpublished)} events never "
                         "published")
            s = read_store(layout.db)
            seen_types.update(final.types)
            messages, dups = delivery(got, s, checks, name)
            # The store's own invariants; with the cap, seq has the gaps of the dropped events.
            dropped_t = final.meta_int("outbox.dropped_telemetry")
            dropped_e = final.meta_int("outbox.dropped_events")
            money_results = [check_money(s), check_balances(s, room_accounts)]
            if dropped_e == 0:   # dropped `tap` events leave sessions without their start tap
                money_results.append(check_sessions_accounted(s))
            for n, bad in money_results:
                checks.extend(n, (f"{name}: {b}" for b in bad))
            kept = {e["seq"] for e in s.events}
            gaps = sorted(set(range(1, s.last_seq + 1)) - kept)
            if tiny:
                checks.check(len(gaps) == dropped_e, f"{name}: {len(gaps)} seqs missing from the "
                             f"store, the cap counted {dropped_e} events dropped")
                lost_money = [q for q in gaps if seen_types.get(q) in MONEY_TYPES]
                checks.check(not lost_money, f"{name}: money events gone from the store: {lost_money[:10]}")
                checks.check(dropped_t > 0, f"{name}: no telemetry dropped under a {cap_mb} MiB cap")
                logged = Counter[str]()
                for r in daemon.log_records():
                    if r.get("event") == "outbox_dropped":
                        logged["telemetry"] += int(r.get("telemetry", 0))
                        logged["events"] += int(r.get("events", 0))
                checks.check(logged["telemetry"] == dropped_t and logged["events"] == dropped_e,
                             f"{name}: drops logged {dict(logged)} != counted telemetry {dropped_t}, "
                             f"events {dropped_e}")
                # Telemetry first: while events were being dropped, no telemetry was queued.
                for run in samples:
                    for a, b in itertools.pairwise(run):
                        de = b.box.meta_int("outbox.dropped_events") - a.box.meta_int("outbox.dropped_events")
                        if de > 0:
                            checks.check(b.box.telemetry_queued <= 1 and b.box.meta_int(
                                "outbox.dropped_telemetry") > 0,
                                f"{name}: {de} events dropped by {b.at:.0f} s into the outage with "
                                f"{b.box.telemetry_queued} telemetry documents still queued")
                unknown = [q for q in gaps if q not in seen_types]
                notes.append(f"{name}: cap {cap_mb} MiB: dropped {dropped_t} telemetry, {dropped_e} "
                             f"events (of which {len(gaps) - len(unknown)} seen as class 2 before, "
                             f"{len(unknown)} dropped between samples); money events kept "
                             f"{len([e for e in s.events if e['type'] in MONEY_TYPES])}")
            else:
                checks.extend(*check_seq(s))
                checks.check(dropped_t == dropped_e == 0, f"{name}: dropped telemetry {dropped_t}, "
                             f"events {dropped_e} under the default cap")
                seqs = sorted({d["seq"] for d in got.events})
                checks.check(seqs == list(range(1, s.last_seq + 1)),
                             f"{name}: seqs received not 1..{s.last_seq} ({len(seqs)} distinct)")
                stamps = [d["ts"] for d in got.telemetry]
                queued = sum(1 for a, b in itertools.pairwise(stamps) if b < a)
                checks.check(queued == 0, f"{name}: telemetry out of order {queued} times")
            # Memory while offline.
            for k, run in enumerate(samples):
                rss = [x.rss_kb for x in run if x.rss_kb]
                if not rss:
                    continue
                half = rss[len(rss) // 2:]
                growth = rss[-1] - rss[0]
                checks.check(growth < 40_000, f"{name} outage {k + 1}: daemon RSS grew {growth} kB "
                             f"({rss[0]} -> {rss[-1]} kB)")
                checks.check(max(half) - min(half) < 20_000, f"{name} outage {k + 1}: RSS over the "
                             f"second half {min(half)}..{max(half)} kB")
                box0, box1 = run[0].box, run[-1].box
                notes.append(
                    f"{name} outage {k + 1} ({outage_s:.0f} s): RSS {rss[0] // 1024} -> "
                    f"{rss[-1] // 1024} MiB (max {max(rss) // 1024}); outbox "
                    f"{sum(b for _, b in box0.pending.values()) // 1024} -> "
                    f"{sum(b for _, b in box1.pending.values()) // 1024} KiB payload, "
                    f"{len(box1.unpublished)} events and {box1.telemetry_queued} telemetry waiting; "
                    f"drained {drains[k]:.0f} s after the broker came back")
            notes.append(f"{name}: {len(s.events)} events, {messages} received ({dups} duplicates by "
                         f"id), {len(got.telemetry)} telemetry, {len(got.status)} status; "
                         f"{commands.check(s, checks, name)}")
            checks.extend(1, daemon.log_problems())
        finally:
            await commands.close()
            await taps.close()
            await center.stop()
            await daemon.close()
            for p in ports:
                p.close()
            await sim.stop()
    return faults


async def center_outage(iterations: int) -> Row:
    """The broker down for a compressed day, `iterations` times, with the building busy; then
    once more with a tiny outbox cap."""
    t0 = time.monotonic()
    rng = random.Random(2)
    checks = Checks()
    notes: list[str] = []
    short = iterations <= 1
    outage_s = 15.0 if short else 90.0
    # paho (through the in-process center subscriber) logs every connection the outage resets.
    logging.getLogger("mqtt").setLevel(logging.CRITICAL)
    async with workdir("outage") as tmp:
        faults = await outage_run("day", tmp / "day", rng, outages=iterations, outage_s=outage_s,
                                  short=short, cap_mb=None, checks=checks, notes=notes)
        faults += await outage_run("cap", tmp / "cap", rng, outages=1, outage_s=outage_s,
                                   short=short, cap_mb=0.05, checks=checks, notes=notes)
    return Row("center_outage", iterations, faults, checks.count, checks.violations, notes,
               time.monotonic() - t0)


# --- 3. device faults ---------------------------------------------------------------------

ONE_OFF_ALARMS = frozenset({"meter_reset", "meter_jump"})


def alarm_balance(s: StoreSnapshot) -> dict[tuple[str, str], bool]:
    """The last state of every lasting alarm in the log: True while raised."""
    state: dict[tuple[str, str], bool] = {}
    for e in s.of("alarm"):
        if e["code"] not in ONE_OFF_ALARMS:
            state[(e["code"], e["device"])] = e["active"]
    return state


# The test suite sets this to its session's pcscd: only one pcscd can run on a
# machine (it always serves /run/pcscd/pcscd.comm), so the campaign restarts that one.
SHARED_PCSCD: Pcscd | None = None
PCSC_CARD = "04A1B2C3"


@contextlib.contextmanager
def campaign_pcscd() -> Iterator[tuple[Pcscd | None, str]]:
    """A pcscd with vpcd for the campaign to restart, or None and why there is none."""
    if SHARED_PCSCD is not None:
        yield SHARED_PCSCD, ""
        return
    why = pcscd_unavailable()
    if why is not None:
        yield None, why
        return
    with private_pcscd() as daemon:
        yield daemon, ""


async def pcsc_tap(pc: Pcscd, db: Path, reader: str, card: str, timeout: float = 10.0) -> bool:
    """Place the virtual card until the daemon records a tap from `reader`; lift it and
    wait until pcscd has seen it go and the debounce window has passed."""
    def taps() -> int:
        return sum(1 for e in read_store(db).of("tap") if e["reader"] == reader)
    before = taps()
    async with VirtualCard(card, port=pc.port):
        served = await until(lambda: taps() > before, timeout)
    await asyncio.sleep(1.5)  # pcscd polls vpcd presence about every 400 ms; debounce 0.3 s
    return bool(served)


async def device_faults(iterations: int) -> Row:
    """10 % of requests spoiled on one bus, meters vanishing, an endpoint flapping, a serial
    reader unplugged, pcscd restarted, a valve failing; `iterations` rounds of all of them
    at once."""
    with campaign_pcscd() as (pc, why):
        return await _device_faults(iterations, pc, why)


async def _device_faults(iterations: int, pc: Pcscd | None, no_pcsc: str) -> Row:
    t0 = time.monotonic()
    rng = random.Random(3)
    checks = Checks()
    injected = 0
    notes: list[str] = []
    async with workdir("faults") as tmp:
        # e0: 10 rooms, the relay boards and counters, 10 % of requests spoiled;
        # e1: 10 rooms, connections dropped; e2: 10 rooms, nothing wrong (the control).
        # Points 0 and 1 have serial readers; point 2 (when pcscd can run) a PC/SC one.
        serial_points = 2
        pcsc = {serial_points: VPCD_READER} if pc is not None else {}
        layout = Layout(tmp, rooms=30, points=serial_points + len(pcsc), per_endpoint=10,
                        poll_s=0.5, water_rules={"min_balance_fen": 10}, pcsc_readers=pcsc)
        sim = await start_building(layout, FlakyEndpoint)
        e0, e1, e2 = sim.endpoints[:3]
        assert isinstance(e0, FlakyEndpoint)
        e0.rate = 0.10
        for i in range(layout.rooms):
            sim.set_load(i, rng.uniform(50, 500))
        ports = [PtyPort(layout.tty(j)) for j in range(serial_points)]
        card = "0A0B0C0D0E"
        seed(layout.state_dir, {**{layout.account(i): 10_000_000 for i in range(layout.rooms)},
                                "stu-1": 1_000_000, "stu-2": 1_000_000},
             [Card(card, "stu-1", "student", "active", None),
              Card(PCSC_CARD, "stu-2", "student", "active", None)])
        daemon = Daemon(layout.config(sim), tmp, watchdog_usec=2_000_000)
        vanish = {(0, 1): "silent", (0, 2): "exception"}   # (endpoint, unit): fault
        valve_unit, _ = layout.valve(1)
        try:
            await daemon.start()
            ready_at = await daemon.ready()
            await asyncio.sleep(2.0)   # readers open their ports after READY
            counts0 = {ep: dict(ep.request_count) for ep in (e0, e1, e2)}
            window0 = time.monotonic()
            for rnd in range(iterations):
                label = f"round {rnd + 1}"
                for (k, unit), fault in vanish.items():
                    sim.endpoints[k].set_fault(unit, fault)  # type: ignore[arg-type]
                ports[0].unplug()
                e0.set_fault(valve_unit, "exception")
                injected += len(vanish) + 2
                if pc is not None:
                    await asyncio.to_thread(pc.stop)
                    injected += 1
                for _ in range(3):
                    await hold_card(ports[1], card)   # a tap on a failing valve: refused, alarmed
                    await asyncio.sleep(0.4)
                for _ in range(4):
                    e1.drop_connections()
                    injected += 1
                    await asyncio.sleep(1.5)
                for (k, unit) in vanish:
                    sim.endpoints[k].set_fault(unit, None)
                ports[0].plug()
                e0.set_fault(valve_unit, None)
                if pc is not None:
                    await asyncio.to_thread(pc.start)

                def settled() -> bool:
                    return not any(alarm_balance(read_store(layout.db)).values())
                ok = await until(settled, 45.0, step=0.5)
                s = read_store(layout.db)
                pcsc_devices = [f"reader:r{j}" for j in pcsc]
                for dev in ("meter:101", "meter:102", "reader:r0", "valve:shower-2", *pcsc_devices):
                    acode = {"meter": "meter_offline", "reader": "reader_offline",
                             "valve": "valve_fault"}[dev.split(":")[0]]
                    raised, cleared = alarm_pairs(s, acode, dev)
                    checks.check(raised >= rnd + 1, f"{label}: {acode} on {dev} raised {raised} times")
                    checks.check(raised == cleared, f"{label}: {acode} on {dev} raised {raised}, "
                                 f"cleared {cleared}")
                still = [k for k, v in alarm_balance(s).items() if v]
                checks.check(bool(ok), f"{label}: alarms not cleared after healing: {still}")
                checks.check(daemon.alive, f"{label}: the daemon died")
                await hold_card(ports[0], card)   # the replugged reader serves taps again
                served = await until(lambda: [e for e in read_store(layout.db).of("tap")
                                              if e["reader"] == "r0"], 5.0)
                checks.check(bool(served), f"{label}: no tap from the replugged reader")
                await asyncio.sleep(0.5)
                await hold_card(ports[0], card)   # close that session again
                await asyncio.sleep(0.5)
                if pc is not None:  # the PC/SC reader serves taps again after pcscd's restart
                    opened = await pcsc_tap(pc, layout.db, f"r{serial_points}", PCSC_CARD)
                    checks.check(opened, f"{label}: no tap from the PC/SC reader after pcscd "
                                 "restarted")
                    closed = await pcsc_tap(pc, layout.db, f"r{serial_points}", PCSC_CARD)
                    checks.check(closed, f"{label}: the PC/SC reader's second tap not served")
            window = time.monotonic() - window0
            expected = window / layout.poll_s
            rates = {}
            for name, ep, units in (("noisy bus", e0, range(3, 11)), ("flapping bus", e1, range(1, 11)),
                                    ("control bus", e2, range(1, 11))):
                got = [ep.request_count[u] - counts0[ep].get(u, 0) for u in units]
                rates[name] = min(got) / expected
                if name == "control bus":
                    for u, n in zip(units, got, strict=True):
                        checks.check(n >= 0.9 * expected, f"control room unit {u}: {n} polls in "
                                     f"{window:.0f} s, expected {expected:.0f}")
            beats = daemon.notify.times("WATCHDOG=1", ready_at)
            gaps = [b - a for a, b in zip([ready_at, *beats], beats, strict=False)]
            checks.check(bool(beats) and max(gaps) < 2.0,
                         f"watchdog: longest gap {max(gaps, default=0):.2f} s (deadline 2 s)")
            checks.check(time.monotonic() - (beats[-1] if beats else 0) < 2.0, "watchdog: not fed at the end")
            code = await daemon.stop()
            checks.check(code == 0, f"SIGTERM: exit code {code}")
            s = read_store(layout.db)
            check_all(None, s, {layout.room_id(i): layout.account(i) for i in range(layout.rooms)},
                      checks, "end")
            checks.extend(1, daemon.log_problems())
            injected += sum(e0.injected.values())
            if pc is None:
                notes.append(f"pcscd restart not exercised: {no_pcsc}")
            notes += [f"spoiled requests {dict(e0.injected)}; slowest room's poll rate over "
                     f"{window:.0f} s: " + ", ".join(f"{k} {v:.0%}" for k, v in rates.items())
                     + f"; watchdog longest gap {max(gaps, default=0):.2f} s"]
        finally:
            await daemon.close()
            for p in ports:
                p.close()
            await sim.stop()
    return Row("device_faults", iterations, injected, checks.count, checks.violations, notes,
               time.monotonic() - t0)


# --- 6. clock ----------------------------------------------------------------------------------


class JumpClock(Clock):
    """The daemon's clock with a wall clock that jumps (`offset`) and a settable NTP state;
    the monotonic clock is the real one."""

    def __init__(self, timezone: str) -> None:
        super().__init__(timezone, "yes")
        self.offset = 0.0
        self.is_synced = True

    def wall(self) -> float:
        return time.time() + self.offset

    def synced(self) -> bool:
        return self.is_synced

    def local_hour(self) -> float:
        t = self.local()
        return t.hour + t.minute / 60

    def jump_to_hour(self, hour: float) -> None:
        """Jump so that the local time is `hour` o'clock today."""
        now = self.local()
        self.offset += (hour - (now.hour + now.minute / 60 + now.second / 3600)) * 3600


class InProcess:
    """The daemon's services on a real store and the simulated building, in this loop
    (the clock can then be replaced); `start()`/`stop()` are a daemon start and a clean stop."""

    def __init__(self, config: Config, clock: Clock) -> None:
        self.config, self.clock = config, clock
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        config, clock = self.config, self.clock
        self.store = Store.open(config.gateway.state_dir, config.gateway.building)
        self.ledger, self.cards, alarms = Ledger(), Cards(), Alarms()
        await self.store.read(self.ledger.load)
        await self.store.read(self.cards.load)
        self.hw = Hardware(config)
        self.power = PowerService(config, self.store, ledger=self.ledger, alarms=alarms, clock=clock,
                                  devices={r.id: (self.hw.meter(meter_device(r.id), r.meter),
                                                  self.hw.switch(breaker_device(r.id), r.breaker))
                                           for r in config.rooms})
        self.hw.on_health(self.power.meter_health_changed)
        self.water = WaterService(config, self.store, ledger=self.ledger, cards=self.cards,
                                  alarms=alarms, clock=clock,
                                  devices={p.id: (self.hw.switch(valve_device(p.id), p.valve), None)
                                           for p in config.points},
                                  readers={}, center_online=lambda: False)
        await self.hw.start()
        await self.power.start()
        await self.water.start()
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self.power.run(Heartbeat("power", None)), name="power"),
                      loop.create_task(self.water.run(Heartbeat("water", None)), name="water")]

    async def stop(self) -> None:
        await self.water.shutdown()
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.hw.close()
        self.store.close()

    def crashed(self) -> list[str]:
        return [f"{t.get_name()} task ended: {t.exception()!r}" for t in self.tasks
                if t.done() and not t.cancelled()]


async def clock_jumps(iterations: int) -> Row:
    """The wall clock jumps by hours, back and forth, `iterations` times, under the rules."""
    t0 = time.monotonic()
    rng = random.Random(6)
    checks = Checks()
    reclose_s = 3.0
    async with workdir("clock") as tmp:
        layout = Layout(
            tmp, rooms=4, points=1, poll_s=0.5, shower_price="0.6", shower_unit="min",
            power_rules={"max_power_w": 1000, "trip_after_s": 0.5, "reclose_after_s": reclose_s,
                         "lockout_trips": 1000, "lockout_window_s": 60, "lockout_s": 60,
                         "report_fen": 20, "report_interval_s": 5},
            water_rules={"min_balance_fen": 10, "max_session_s": 3600, "idle_close_s": 3600},
            curfews=['days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]\nfrom = "02:00"\n'
                     'to = "04:00"\nexcept = ["101", "103", "104"]'],
        )
        sim = await start_building(layout)
        sim.set_load(0, 1500)   # 101: overloaded, trips and recloses for ever
        sim.set_load(1, 300)    # 102: under curfew 02:00-04:00
        sim.set_load(2, 600)    # 103: charged
        sim.set_load(3, 400)    # 104: unknown account
        card = "0C10C10C10"
        seed(layout.state_dir, {layout.account(i): 10_000_000 for i in range(3)} | {"stu-1": 1_000_000},
             [Card(card, "stu-1", "student", "active", None)])
        config = load_config(layout.config(sim))
        clock = JumpClock(config.gateway.timezone)
        clock.jump_to_hour(12.0)
        switches: list[tuple[float, bool]] = []
        unit, ch = layout.breaker(0)
        sim.endpoints[0].follow(unit, ch, lambda on, now: switches.append((now, on)))
        restarts: list[float] = []
        sessions: list[tuple[float, float]] = []   # monotonic open, close
        gw = InProcess(config, clock)
        jumps = 0

        def random_jump() -> None:
            nonlocal jumps
            while True:
                hours = rng.choice((-1, 1)) * rng.uniform(1, 12)
                clock.offset += hours * 3600
                if not 1.5 <= clock.local_hour() <= 4.5:
                    break
                clock.offset -= hours * 3600
            jumps += 1

        async def curfew_state(want_cut: bool, label: str, timeout: float = 3.0) -> None:
            u, c = layout.breaker(1)
            got = await until(lambda: coil(sim, u, c) is not want_cut, timeout)
            checks.check(bool(got), f"{label}: room 102 {'not cut' if want_cut else 'still cut'} "
                         f"{timeout} s after the clock said {clock.local():%H:%M} (synced "
                         f"{clock.is_synced})")

        async def tap() -> None:
            await gw.water.on_tap(CardTap("r0", card, time.monotonic()))

        try:
            await gw.start()
            await tap()
            sessions.append((time.monotonic(), 0.0))
            for step in range(iterations):
                label = f"step {step + 1}"
                random_jump()
                await asyncio.sleep(rng.uniform(0.3, 1.2))
                if step % 10 == 4:
                    # Curfew follows the (jumped) wall clock while it is synchronised.
                    clock.jump_to_hour(3.0)
                    await curfew_state(True, label)
                    clock.jump_to_hour(rng.uniform(5, 23))
                    await curfew_state(False, label)
                    jumps += 2
                if step % 10 == 8:
                    # Not synchronised: the curfew is skipped, then applies once synced.
                    clock.is_synced = False
                    clock.jump_to_hour(3.0)
                    await asyncio.sleep(2.0)
                    u, c = layout.breaker(1)
                    checks.check(coil(sim, u, c), f"{label}: room 102 cut by a curfew while the "
                                 "clock was not synchronised")
                    clock.is_synced = True
                    await curfew_state(True, label)
                    clock.jump_to_hour(rng.uniform(5, 23))
                    await curfew_state(False, label)
                    jumps += 2
                if step % 15 == 14:
                    await tap()   # ends the session
                    sessions[-1] = (sessions[-1][0], time.monotonic())
                    await tap()
                    sessions.append((time.monotonic(), 0.0))
                if step % 20 == 12:
                    # A restart with the wall clock hours away from where it stopped.
                    await gw.stop()
                    random_jump()
                    restarts.append(time.monotonic())
                    gw = InProcess(config, clock)
                    await gw.start()
                    sessions[-1] = (sessions[-1][0], restarts[-1])   # a clean stop ends it
                    await tap()
                    sessions.append((time.monotonic(), 0.0))
                checks.extend(1, (f"{label}: {c}" for c in gw.crashed()))
            await tap()
            sessions[-1] = (sessions[-1][0], time.monotonic())
            await gw.stop()
        finally:
            with contextlib.suppress(Exception):
                await gw.stop()
            await sim.stop()
        # Reclose after an overload: reclose_after_s of monotonic time, whatever the wall did.
        cycles = 0
        for (t_off, on1), (t_on, on2) in itertools.pairwise(switches):
            if on1 or not on2:
                continue
            across_restart = any(t_off <= r <= t_on for r in restarts)
            off_for = t_on - t_off
            cycles += 1
            if across_restart:
                checks.check(off_for <= reclose_s + 15, f"reclose across a restart took {off_for:.1f} s")
            else:
                checks.check(reclose_s - 0.05 <= off_for <= reclose_s + layout.poll_s + 0.7,
                             f"reclose after {off_for:.2f} s (reclose_after_s {reclose_s})")
        checks.check(cycles >= iterations // 8, f"only {cycles} overload cycles observed")
        s = read_store(layout.db)
        # Time billing counts monotonic seconds: each session's seconds match what it ran.
        reported = s.of("water.session")
        checks.check(len(reported) == len(sessions), f"{len(reported)} sessions for {len(sessions)} opened")
        for e, (opened, closed) in zip(reported, sessions, strict=False):
            ran = closed - opened
            checks.check(abs(e["seconds"] - ran) <= 1.5 and e["amount_fen"] == e["seconds"],
                         f"session {e['session'][:8]} ({e['end_reason']}): {e['seconds']} s, "
                         f"{e['amount_fen']} fen, ran {ran:.1f} s")
        check_all(None, s, {layout.room_id(i): layout.account(i) for i in range(layout.rooms)},
                  checks, "end")
        notes = [f"{jumps} jumps, {len(restarts)} restarts, {cycles} overload reclose cycles, "
                 f"{len(reported)} time-billed sessions, {len(s.of('breaker.cut'))} cuts"]
    return Row("clock_jumps", iterations, jumps, checks.count, checks.violations, notes,
               time.monotonic() - t0)


# --- 5. disk full ----------------------------------------------------------------------------


def fill(directory: Path) -> int:
    """Fill the file system of `directory` with a filler file; return the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    with (directory / "filler").open("wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError:
                break
        while True:   # the last few bytes
            try:
                written += f.write(b"\0" * 512)
            except OSError:
                break
    return written


def can_mount() -> bool:
    return sys.platform == "linux" and shutil.which("mount") is not None and os.geteuid() == 0


async def disk_full(iterations: int) -> Row:
    """The state directory (a small tmpfs) fills up while a room runs out of money, a room
    is overloaded and a shower runs; then space comes back. `iterations` fill/free cycles."""
    t0 = time.monotonic()
    checks = Checks()
    notes: list[str] = []
    if not can_mount():
        return Row("disk_full", 0, 0, 0, [], ["not run: mounting a tmpfs needs root on Linux"])
    async with workdir("disk") as tmp:
        layout = Layout(
            tmp, rooms=3, points=2, poll_s=0.5,
            power_rules={"max_power_w": 1000, "trip_after_s": 0.5, "reclose_after_s": 1.5,
                         "lockout_trips": 1000, "lockout_window_s": 60, "lockout_s": 60,
                         "report_fen": 20, "report_interval_s": 5},
            water_rules={"min_balance_fen": 10, "max_session_s": 600, "idle_close_s": 600},
            room_extra=lambda i: "max_power_w = 5000" if i == 0 else "",
        )
        layout.state_dir.mkdir(mode=0o700)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs",
                        str(layout.state_dir)], check=True)
        sim = await start_building(layout)
        ports = [PtyPort(layout.tty(j)) for j in range(layout.points)]
        card0, card1 = "0D150F0000", "0D150F0001"
        seed(layout.state_dir, {layout.account(1): 10_000_000, "stu-1": 1_000_000},
             [Card(card0, "stu-0", "student", "active", None),
              Card(card1, "stu-1", "student", "active", None)])
        for j in range(layout.points):
            fu, fch = layout.flow(j)
            sim.set_flow(fu - SimBuilding.COUNTER_BASE, fch, 20.0)   # 200 mL/s: 20 fen/s
        sim.set_load(0, 3600)    # 101: 10 fen/s, 60 fen: out of money 6 s into the outage
        sim.set_load(1, 200)     # 102: a kettle is switched on while the disk is full
        sim.set_load(2, 200)     # 103: an unknown account
        daemon = Daemon(layout.config(sim), tmp)
        room_accounts = {layout.room_id(i): layout.account(i) for i in range(layout.rooms)}
        prev: StoreSnapshot | None = None
        try:
            for cycle in range(iterations):
                label = f"cycle {cycle + 1}"
                # Money for this cycle: room 101 and the shower card get a little.
                snap = read_store(layout.db)
                seed(layout.state_dir, {layout.account(0): 60 - min(snap.balances.get(
                    layout.account(0), 0), 0), "stu-0": 120 - min(snap.balances.get("stu-0", 0), 0)},
                     command=f"cycle-{cycle}")
                await daemon.start()
                await daemon.ready()
                await asyncio.sleep(1.5)
                b0 = layout.breaker(0)
                checks.check(coil(sim, *b0), f"{label}: room 101 off before the disk filled")
                await hold_card(ports[0], card0)   # a shower with 6 s of money
                await until(lambda: coil(sim, *layout.valve(0)), 3.0)
                checks.check(coil(sim, *layout.valve(0)), f"{label}: shower-1 did not open")
                filled = fill(layout.state_dir)
                full_at = time.monotonic()
                await asyncio.sleep(0.5)
                await hold_card(ports[1], card1)   # cannot be recorded: must be refused
                # A kettle switched on in room 102 now: over the limit, it must trip.
                b1 = layout.breaker(1)
                sim.set_load(1, 1500)
                kettle_at = time.monotonic()
                def off(b: tuple[int, int] = b1) -> bool:
                    return not coil(sim, *b)
                tripped = await until(off, 5.0, step=0.05)
                trip_s = time.monotonic() - kettle_at
                checks.check(bool(tripped) and trip_s <= 0.5 + 2 * layout.poll_s + 0.5,
                             f"{label}: overloaded room 102 not cut within {trip_s:.1f} s while the "
                             "disk was full (trip_after_s 0.5)")
                await asyncio.sleep(max(0.0, 12.0 - (time.monotonic() - full_at)))
                checks.check(not coil(sim, *b0), f"{label}: room 101 out of money but not cut while "
                             "the disk was full")
                checks.check(not coil(sim, *layout.valve(0)), f"{label}: shower-1 still open 12 s "
                             "into the outage, its 6 s of money spent")
                checks.check(not coil(sim, *layout.valve(1)), f"{label}: shower-2 opened by a tap "
                             "that could not be recorded")
                checks.check(daemon.alive, f"{label}: the daemon died on a full disk")
                errors = [r for r in daemon.log_records() if r.get("level") == "error"]
                checks.check(bool(errors), f"{label}: nothing logged at error level")
                (layout.state_dir / "filler").unlink()
                sim.set_load(1, 200)
                await asyncio.sleep(4.0)
                await hold_card(ports[0], card0)   # the shower ends (if it is still open)
                await asyncio.sleep(1.0)
                code = await daemon.stop()
                checks.check(code == 0, f"{label}: SIGTERM exit code {code}")
                snap = read_store(layout.db)
                check_all(prev, snap, room_accounts, checks, label)
                cut = [e for e in snap.events[(prev.last_seq if prev else 0):]
                       if e["type"] == "breaker.cut" and e["room"] == "101"]
                checks.check(bool(cut), f"{label}: the cut of room 101 was never recorded")
                trip = [e for e in snap.events[(prev.last_seq if prev else 0):]
                        if e["type"] == "breaker.cut" and e["room"] == "102"]
                checks.check(bool(trip) and trip[0]["reason"] in ("overload", "lockout"),
                             f"{label}: the overload cut of room 102 made while the disk was full "
                             f"was not recorded after it recovered: {trip}")
                checks.check(not snap.sessions, f"{label}: sessions left open {list(snap.sessions)}")
                notes.append(f"{label}: filler {filled // 1024} KiB; {len(errors)} error log lines; "
                             f"102 tripped {trip_s:.1f} s after the kettle")
                prev = snap
            checks.extend(1, daemon.log_problems(allowed={"point_loop_failed", "tap_failed",
                                                          "power_decision_not_recorded",
                                                          "room_evaluation_failed",
                                                          "card_tap_sink_failed"}))
            kinds = Counter(str(r.get("event")) for r in daemon.log_records()
                            if r.get("level") == "error")
            notes.append(f"error log events: {dict(kinds)}")
        finally:
            await daemon.close()
            for p in ports:
                p.close()
            await sim.stop()
            subprocess.run(["umount", str(layout.state_dir)], check=False)
    return Row("disk_full", iterations, iterations, checks.count, checks.violations, notes,
               time.monotonic() - t0)


# --- 4. hostile input ------------------------------------------------------------------------

COMMAND_TYPES = ("account.credit", "account.sync", "card.put", "card.block", "card.unblock",
                 "cards.load", "tariff.set", "room.cut", "room.restore", "room.limit",
                 "events.resend", "state.get", "ping", "nonsense")


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def junk_value(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value, biased to the edges: huge, negative, empty, odd text, deep."""
    pick = rng.randrange(12 if depth < 3 else 8)
    options: list[Callable[[], Any]] = [
        lambda: rng.choice([0, -1, 1, 2**31, 2**63, -(2**63), 10**30]),
        lambda: rng.choice([0.5, -0.0, 1e308, 1e-300]),
        lambda: rng.choice(["", " ", "101", "room-b07-101", "0.56", "kWh", "L", "min", "abc" * 40,
                            "\u0000", "\u202e", "😀", "../../etc", "' OR 1=1 --", "1e9999"]),
        lambda: rng.choice([True, False, None]),
        lambda: rng.randint(-5, 10**6),
        lambda: "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(10))),
        lambda: rng.choice(["2026-11-25", "2026-02-30", "yesterday", "2026-11-25T10:00:00Z"]),
        lambda: f"{rng.randrange(10**6) / 100:.2f}",
        lambda: [junk_value(rng, depth + 1) for _ in range(rng.randrange(4))],
        lambda: {rng.choice(["card", "account", "x", ""]): junk_value(rng, depth + 1)
                 for _ in range(rng.randrange(3))},
        lambda: [{"card": f"{rng.randrange(16**8):08X}", "account": "a",
                  "kind": rng.choice(["student", "teacher", "alien"]),
                  "status": rng.choice(["active", "lost", "zombie"])} for _ in range(rng.randrange(50))],
        lambda: "x" * rng.randrange(70_000),
    ]
    return options[pick]()


def random_args(rng: random.Random, type_: str) -> dict[str, Any]:
    """Mostly well-formed arguments of `type_`, some fields replaced by junk or left out."""
    table: dict[str, dict[str, Any]] = {
        "account.credit": {"account": rng.choice(["room-b07-101", "stu-1", "x"]),
                           "amount_fen": rng.randint(1, 10_000)},
        "account.sync": {"account": rng.choice(["room-b07-102", "stu-1"]),
                         "balance_fen": rng.randint(-100, 10_000), "through_seq": rng.randint(0, 50)},
        "card.put": {"card": f"{rng.randrange(16**8):08x}", "account": "stu-1",
                     "kind": "student", "status": rng.choice(["active", "lost", "cancelled"])},
        "card.block": {"card": rng.choice(["0A0B0C0D", "FFFF"])},
        "card.unblock": {"card": rng.choice(["0A0B0C0D", "FFFF"])},
        "cards.load": {"version": rng.randint(0, 100), "full": rng.random() < 0.5,
                       "cards": [{"card": f"{k:08X}", "account": "a", "kind": "student",
                                  "status": "active"} for k in range(rng.randrange(5))]},
        "tariff.set": {"service": rng.choice(["power", "shower", "drinking", "gas"]),
                       "price": rng.choice(["0.56", "0", "-1", "1e3", "abc"]),
                       "unit": rng.choice(["kWh", "L", "min", "m3"])},
        "room.cut": {"room": rng.choice(["101", "102", "999"]), "hold": rng.random() < 0.5},
        "room.restore": {"room": rng.choice(["101", "102", "999"])},
        "room.limit": {"room": "101", "max_power_w": rng.randint(-10, 5000)},
        "events.resend": {"from_seq": rng.randint(-1, 100)},
        "state.get": rng.choice([{}, {"room": "101"}, {"account": "stu-1"}, {"card": "X"}]),
        "ping": {},
        "nonsense": {"a": 1},
    }
    good = dict(table[type_])
    if rng.random() < 0.4:
        keys = [*good, "extra"]
        key = rng.choice(keys)
        if rng.random() < 0.2:
            good.pop(key, None)
        else:
            good[key] = junk_value(rng)
    return good


async def _fixed_status() -> dict[str, Any]:
    return {"ok": 1}


async def fuzz_commands(n: int, tmp: Path, checks: Checks, notes: list[str]) -> int:
    """`n` hostile commands into CommandService.handle; every well-addressed one answered once."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gatewayd.center.apply import CommandService
    from gatewayd.contract.signing import sign_command

    rng = random.Random(4)
    layout = Layout(tmp, rooms=3, points=1, shower_unit="min")
    sim = await start_building(layout)
    key = Ed25519PrivateKey.generate()
    (tmp / "center.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    path = layout.config(sim)
    path.write_text(path.read_text().replace(
        "[tariffs]", f'[center]\nbroker = "mqtt://127.0.0.1:1"\ncommand_public_key_file = '
        f'"{tmp / "center.pub"}"\n[tariffs]'))
    config = load_config(path)
    clock = JumpClock(config.gateway.timezone)
    gw = InProcess(config, clock)
    await gw.start()
    service = CommandService(config, gw.store, clock, ledger=gw.ledger, cards=gw.cards, power=gw.power,
                             water=gw.water, public_key=key.public_key(), status=_fixed_status)
    seen: dict[str, bytes] = {}   # id -> first result
    sent: dict[str, dict[str, Any]] = {}
    answered = slow = 0
    rss: list[int] = []

    def stored(cid: str) -> bytes | None:
        row = gw.store.submit(lambda t: t.execute(
            "SELECT result FROM commands WHERE id = ?", (cid,)).fetchone(), write=False).result()
        return None if row is None else bytes(row[0])

    try:
        for i in range(n):
            if i in (n // 2, n - 1):
                rss.append(rss_kb())
            r = rng.random()
            cid: str | None = None
            if r < 0.15:
                payload = rng.randbytes(rng.randrange(200))
            elif r < 0.30:
                payload = json.dumps(junk_value(rng)).encode()
            else:
                type_ = rng.choice(COMMAND_TYPES)
                cmd: dict[str, Any] = {"id": str(uuid.uuid4()), "to": "b07", "type": type_,
                                       "ts": clock.stamp(clock.wall() - (0 if rng.random() < 0.95
                                                                         else 3600)),
                                       "args": random_args(rng, type_)}
                if seen and rng.random() < 0.1:
                    # The center sends a command again (same id, type and args, a fresh ts).
                    cmd = {**sent[rng.choice(list(seen))], "ts": clock.stamp(clock.wall())}
                cid = cmd["id"]
                sent[cid] = cmd
                try:
                    cmd = sign_command(cmd, key)
                except CanonicalFormError:
                    # A non-integer or an integer past 2^53-1: no canonical form, so no
                    # signature; refused bad_request before the signature, id not remembered.
                    cmd["sig"] = "AAAA"
                    cid = None
                if rng.random() < 0.08:
                    cmd["args"] = random_args(rng, type_)   # changed after signing
                    cid = None  # refused, id not remembered: answered directly, not stored
                payload = json.dumps(cmd).encode()
            before = stored(cid) if cid else None
            t = time.monotonic()
            try:
                async with asyncio.timeout(10):
                    direct = await service.handle(payload, "building")
            except TimeoutError:
                checks.check(False, f"command {i}: no answer within 10 s")
                continue
            except Exception as e:
                checks.check(False, f"command {i}: handle raised {e!r}")
                continue
            slow += time.monotonic() - t > 1.0
            answered += 1
            if direct is not None:
                doc = json.loads(direct)
                checks.check(isinstance(doc, dict) and "id" in doc and ("ok" in doc),
                             f"command {i}: malformed result {direct[:80]!r}")
            if cid is None:
                continue
            after = stored(cid)
            if before is not None:   # a repeated id: answered with the first result, marked
                want = {**json.loads(before), "duplicate": True}
                checks.check(direct is not None and json.loads(direct) == want and after == before,
                             f"command {i}: duplicate {cid} answered {direct!r}")
            else:
                # Exactly one result: refused at once (direct), or applied/refused and stored.
                checks.check((direct is None) == (after is not None),
                             f"command {i} ({cmd['type']}): direct {direct is not None}, "
                             f"stored {after is not None}")
                if after is not None:
                    seen[cid] = after
        checks.extend(1, gw.crashed())
        checks.check(rss[-1] - rss[0] < 64 * 1024, f"commands: RSS grew {rss[0]} -> {rss[-1]} kB "
                     "over the second half")
        notes.append(f"commands: {answered} answered, {len(seen)} applied or stored, {slow} over 1 s, "
                     f"RSS {rss[0] // 1024}->{rss[-1] // 1024} MB over the second half")
    finally:
        await service.screen.shutdown()   # its worker process, as the daemon stops it
        await gw.stop()
        await sim.stop()
    return n


def mutate_frame(rng: random.Random) -> bytes:
    """One hostile chunk for an RDM6300 reader: noise, broken frames, valid strangers."""
    uid = f"{rng.randrange(16**10):010X}"
    good = frame(uid, "rdm6300")
    r = rng.random()
    if r < 0.25:
        return rng.randbytes(rng.randrange(1, 40))
    if r < 0.45:
        b = bytearray(good)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)   # one bit flipped
        return bytes(b)
    if r < 0.55:
        return good[: rng.randrange(1, len(good))]          # cut short
    if r < 0.65:
        return b"\x02" + rng.randbytes(rng.randrange(500, 5000))   # STX and no end
    if r < 0.75:
        return good * rng.randrange(2, 5)                  # repeats (one tap)
    if r < 0.85:
        return bytes([2]) + uid.lower().encode() + good[11:]  # lower-case hex
    return good                                            # a stranger's valid card


async def fuzz_serial(n: int, tmp: Path, checks: Checks, notes: list[str]) -> int:
    """`n` hostile chunks into a reader of the real daemon; sentinel taps still served."""
    rng = random.Random(44)
    layout = Layout(tmp, rooms=1, points=1, water_rules={"min_balance_fen": 10})
    sim = await start_building(layout)
    port = PtyPort(layout.tty(0))
    # The sentinel is a known card: its taps are granted, never folded with the
    # refusals the mutated frames cause (a flooded reader folds those).
    sentinel = "5E5E5E5E5E"
    seed(layout.state_dir, {layout.account(0): 1_000_000, "sentinel": 1_000_000},
         [Card(sentinel, "sentinel", "student", "active", None)])
    daemon = Daemon(layout.config(sim), tmp)
    sentinels = 0
    rss: list[int] = []
    try:
        await daemon.start()
        await daemon.ready()
        await asyncio.sleep(1.0)
        every = max(100, n // 10)
        for i in range(n):
            if i % every == every - 1:
                await asyncio.sleep(0.4)       # a quiet line, then the sentinel card
                await hold_card(port, sentinel)
                sentinels += 1
                await asyncio.sleep(0.4)
            if i in (n // 2, n - 1):
                rss.append(daemon.rss_kb())
            try:
                port.write(mutate_frame(rng))
            except OSError:
                await asyncio.sleep(0.1)
            if i % 20 == 0:
                await asyncio.sleep(0.005)
        await asyncio.sleep(1.0)
        taps = [e for e in read_store(layout.db).of("tap") if e["card"] == sentinel]
        checks.check(len(taps) == sentinels, f"serial: {len(taps)} sentinel taps recorded of {sentinels}")
        checks.check(daemon.alive, "serial: the daemon died")
        checks.check(rss[-1] - rss[0] < 32 * 1024, f"serial: daemon RSS grew {rss[0]} -> {rss[-1]} kB")
        code = await daemon.stop()
        checks.check(code == 0, f"serial: SIGTERM exit code {code}")
        checks.extend(1, daemon.log_problems())
        s = read_store(layout.db)
        notes.append(f"serial: {len(s.of('tap'))} tap events from {n} chunks, daemon RSS "
                     f"{rss[0] // 1024}->{rss[-1] // 1024} MB over the second half")
    finally:
        await daemon.close()
        port.close()
        await sim.stop()
    return n


def mutate_config(rng: random.Random, text: str) -> str:
    lines = text.splitlines()
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(lines))
        op = rng.randrange(8)
        line = lines[i]
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, line)                       # a duplicate key or table
        elif op == 2 and "=" in line:
            k = line.split("=", 1)[0]
            lines[i] = f"{k}= {json.dumps(junk_value(rng))[:300]}"
        elif op == 3:
            lines[i] = line[: rng.randrange(len(line) + 1)]   # cut
        elif op == 4:
            pos = rng.randrange(len(line) + 1)
            lines[i] = line[:pos] + rng.choice(['"', "[", "]", "{", "=", "#", "\\", "\x00", "é"]) + line[pos:]
        elif op == 5 and "=" in line:
            k = line.split("=", 1)[0]
            lines[i] = k + "= " + rng.choice(["-1", "0", "1e400", "nan", "inf", '""', "[]", "{}", "true"])
        elif op == 6:
            lines.insert(i, rng.choice(["[[rooms]]", "[[points]]", "[[buses]]", "[bogus]", "x = 1",
                                        "[gateway]", "[[readers]]", "[[power.curfew]]"]))
        else:
            lines[i] = line.replace("1", rng.choice(["-1", "99999999999999999999", "0", "1.5"]))
    return "\n".join(lines) + "\n"


def fuzz_configs(n: int, tmp: Path, checks: Checks, notes: list[str]) -> int:
    """`n` mutated config files through `gatewayd check-config`: exit 0 or 2, never a traceback."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from gatewayd.app.cli import main as cli_main

    rng = random.Random(444)
    # A rich base: the example, plus rooms, readers, points and a curfew.
    base = (ROOT / "conf" / "example.toml").read_text()
    layout = Layout(tmp, rooms=3, points=2,
                    curfews=['days = ["mon"]\nfrom = "23:30"\nto = "06:00"\nexcept = ["101"]'])
    sim_ports = type("P", (), {"ports": [1502]})()
    richer = layout.config(sim_ports).read_text()
    codes: Counter[int] = Counter()
    for i in range(n):
        text = mutate_config(rng, base if i % 2 else richer)
        path = tmp / "fuzz.toml"
        path.write_bytes(text.encode("utf-8", errors="surrogateescape"))
        out, err = io.StringIO(), io.StringIO()
        try:
            with redirect_stdout(out), redirect_stderr(err):
                code = cli_main(["check-config", str(path)])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 99
        except Exception as e:
            checks.check(False, f"config {i}: check-config raised {e!r}")
            (tmp / f"crash-{i}.toml").write_text(text)
            continue
        codes[code] += 1
        checks.check(code in (0, 2), f"config {i}: exit code {code}")
        if code == 2:
            checks.check(bool(err.getvalue().strip()), f"config {i}: exit 2 without a message")
        if i % 100 == 0:   # the real command line too
            proc = subprocess.run([sys.executable, "-m", "gatewayd.app.cli", "check-config", str(path)],
                                  cwd=ROOT, capture_output=True, text=True, timeout=60)
            checks.check(proc.returncode in (0, 2) and "Traceback" not in proc.stderr,
                         f"config {i}: subprocess exit {proc.returncode}: {proc.stderr[-300:]}")
    notes.append(f"configs: exit codes {dict(codes)}")
    return n


async def hostile_input(iterations: int) -> Row:
    """`iterations` fuzzed commands and serial chunks, and iterations // 5 configs."""
    t0 = time.monotonic()
    checks = Checks()
    notes: list[str] = []
    async with workdir("fuzz") as tmp:
        for sub in ("cmd", "serial", "config"):
            (tmp / sub).mkdir()
        faults = await fuzz_commands(iterations, tmp / "cmd", checks, notes)
        faults += await fuzz_serial(iterations, tmp / "serial", checks, notes)
        faults += fuzz_configs(max(50, iterations // 5), tmp / "config", checks, notes)
    return Row("hostile_input", iterations, faults, checks.count, checks.violations, notes,
               time.monotonic() - t0)


# --- the table -------------------------------------------------------------------------------

from tests.soak.dead_bus import dead_bus  # noqa: E402 - its own file; it uses workdir above

CAMPAIGNS: dict[str, Campaign] = {
    "power_cut": power_cut,
    "center_outage": center_outage,
    "device_faults": device_faults,
    "clock_jumps": clock_jumps,
    "disk_full": disk_full,
    "hostile_input": hostile_input,
    "dead_bus": dead_bus,
    "late_rtu": late_rtu,
    "command_flood": command_flood,
    "removed_store": removed_store,
}
FULL: dict[str, int] = {"power_cut": 200, "center_outage": 2, "device_faults": 6, "clock_jumps": 120,
                        "disk_full": 5, "hostile_input": 10_000,
                        "dead_bus": 3, "late_rtu": 50, "command_flood": 40, "removed_store": 30}
SHORT: dict[str, int] = {"power_cut": 6, "center_outage": 1, "device_faults": 1, "clock_jumps": 14,
                         "disk_full": 1, "hostile_input": 600,
                         "dead_bus": 1, "late_rtu": 5, "command_flood": 3, "removed_store": 3}

