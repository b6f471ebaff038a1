"""What every campaign shares: a simulated building, the real daemon as a subprocess,
a read-only view of its store, and the invariant checkers.

- `Layout` says how many rooms and water points; `start_building()` starts the
  pymodbus building for it (rooms wired behind their breakers, flow counters
  behind their valves) and `Layout.config()` writes the daemon's TOML.
- `Daemon` runs `python -m gatewayd.app.cli run` with its own NOTIFY_SOCKET (and
  WATCHDOG_USEC when asked), logs to a file, and is stopped by SIGKILL or
  SIGTERM, by PID.
- `read_store()` opens the database with `mode=ro`, so the checks never write.
- `Checks` counts every invariant checked and keeps each violation in words.

The checkers take a `StoreSnapshot` and derive what the log promises: seq
without gap or repeat, no session charged twice, power.usage chains, and every
balance equal to what the log credits minus what it debits minus what is
charged but not yet reported (gatewayd/services/power/ charges into `rooms.accrued_fen`
until a `power.usage` reports it; gatewayd/services/water/charging.py charges into
`water_sessions.charged_fen` until the `water.session` carries the whole sum).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pymodbus.pdu import ModbusPDU

from gatewayd.contract.events import AccountCredited
from gatewayd.rules.water import Card
from gatewayd.store.cards import Cards
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger
from gatewayd.store.txn import Txn
from sim.modbus import SimBuilding
from sim.modbus_endpoint import SimEndpoint
from sim.modbus_units import COILS
from sim.serial_card import PtyPort, frame

ROOT = Path(__file__).resolve().parents[2]
BUILDING = "b07"
RELAY = SimBuilding.RELAY_BASE
COUNTER = SimBuilding.COUNTER_BASE
COUNTER_CHANNELS = 8
# The wall clock's zone for every campaign config (curfews are local times).
TIMEZONE = "Asia/Shanghai"


# --- results ----------------------------------------------------------------------


@dataclass
class Row:
    """One line of the campaign table."""

    campaign: str
    iterations: int
    faults: int
    checks: int
    violations: list[str]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Checks:
    """Counts invariant checks; keeps the failed ones in words."""

    def __init__(self) -> None:
        self.count = 0
        self.violations: list[str] = []

    def check(self, ok: bool, what: str) -> bool:
        self.count += 1
        if not ok:
            self.violations.append(what)
        return ok

    def extend(self, checked: int, violations: Iterable[str]) -> None:
        self.count += checked
        self.violations.extend(violations)


# --- the building -----------------------------------------------------------------


@dataclass
class Layout:
    """Rooms and water points of a simulated building, and the rules of its config.

    Room i: meter unit i % per_endpoint + 1 on endpoint i // per_endpoint (bus
    `e{k}`); breaker on relay board i // 16, channel i % 16 (endpoint 0). Point j:
    valve on relay board `room_boards + j // 16`, flow on counter j // 8 channel
    j % 8, both on endpoint 0; reader `r{j}` on a pty in `workdir`, or a PC/SC
    reader when `pcsc_readers` names one for the point.
    """

    workdir: Path
    rooms: int
    points: int = 0
    per_endpoint: int = 50
    poll_s: float = 0.5
    power_price: str = "100"          # yuan per kWh: 10 fen per Wh, money moves in seconds
    shower_price: str = "1"           # yuan per L: 1 fen per 10 mL pulse
    shower_unit: str = "L"
    power_rules: dict[str, Any] = field(default_factory=dict)
    water_rules: dict[str, Any] = field(default_factory=dict)
    room_extra: Callable[[int], str] = lambda i: ""
    clock_synced: str = "yes"
    curfews: list[str] = field(default_factory=list)  # raw [[power.curfew]] bodies
    bus_timeout_s: float = 0.3
    extra_endpoints: int = 0          # empty endpoints beyond those the meters need
    center: dict[str, Any] = field(default_factory=dict)  # a [center] section when not empty
    pcsc_readers: dict[int, str] = field(default_factory=dict)  # point: PC/SC reader name prefix

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def db(self) -> Path:
        return self.state_dir / "gatewayd.db"

    @property
    def room_boards(self) -> int:
        return -(-self.rooms // COILS)

    @property
    def relays(self) -> int:
        return self.room_boards + -(-self.points // COILS)

    @property
    def counters(self) -> int:
        return max(1, -(-self.points // COUNTER_CHANNELS))

    @property
    def endpoints(self) -> int:
        return max(1, -(-self.rooms // self.per_endpoint))

    def room_id(self, i: int) -> str:
        return str(101 + i)

    def account(self, i: int) -> str:
        return f"room-{BUILDING}-{self.room_id(i)}"

    def breaker(self, i: int) -> tuple[int, int]:
        return RELAY + i // COILS, i % COILS

    def valve(self, j: int) -> tuple[int, int]:
        return RELAY + self.room_boards + j // COILS, j % COILS

    def flow(self, j: int) -> tuple[int, int]:
        return COUNTER + j // COUNTER_CHANNELS, j % COUNTER_CHANNELS

    def tty(self, j: int) -> Path:
        return self.workdir / f"tty-r{j}"

    def point_id(self, j: int) -> str:
        return f"shower-{j + 1}"

    def config(self, sim: SimBuilding) -> Path:
        """Write the daemon's config for `sim`; return its path."""
        lines = [
            "[gateway]",
            f'building = "{BUILDING}"',
            f'state_dir = "{self.state_dir}"',
            f'timezone = "{TIMEZONE}"',
            f"poll_interval_s = {self.poll_s}",
            "tap_debounce_s = 0.3",
            f'clock_synced = "{self.clock_synced}"',
            "[tariffs]",
            f'power = {{ price = "{self.power_price}", unit = "kWh" }}',
            f'shower = {{ price = "{self.shower_price}", unit = "{self.shower_unit}" }}',
            "[power]",
            *(f"{k} = {_toml(v)}" for k, v in self.power_rules.items()),
        ]
        for body in self.curfews:
            lines += ["[[power.curfew]]", body]
        lines += ["[water]", *(f"{k} = {_toml(v)}" for k, v in self.water_rules.items())]
        for k, port in enumerate(sim.ports):
            lines += ["[[buses]]", f'name = "e{k}"', 'type = "tcp"', 'host = "127.0.0.1"',
                      f"port = {port}", f"timeout_s = {self.bus_timeout_s}"]
        for i in range(self.rooms):
            unit, ch = self.breaker(i)
            lines += [
                "[[rooms]]", f'id = "{self.room_id(i)}"',
                f'meter = {{ bus = "e{i // self.per_endpoint}", unit = {i % self.per_endpoint + 1}, '
                'profile = "eastron-sdm120-import" }',
                f'breaker = {{ bus = "e0", unit = {unit}, profile = "relay-board", channel = {ch} }}',
                self.room_extra(i),
            ]
        for j in range(self.points):
            vu, vch = self.valve(j)
            fu, fch = self.flow(j)
            flow = (f'flow = {{ bus = "e0", unit = {fu}, profile = "pulse-counter", channel = {fch}, '
                    "ml_per_pulse = 10 }") if self.shower_unit == "L" else ""
            reader = (['type = "pcsc"', f"name = {json.dumps(self.pcsc_readers[j])}"]
                      if j in self.pcsc_readers else ['type = "serial"', f'port = "{self.tty(j)}"'])
            lines += [
                "[[readers]]", f'id = "r{j}"', *reader,
                "[[points]]", f'id = "{self.point_id(j)}"', 'service = "shower"', f'reader = "r{j}"',
                f'valve = {{ bus = "e0", unit = {vu}, profile = "relay-board", channel = {vch} }}',
                flow,
            ]
        if self.center:
            lines += ["[center]", *(f"{k} = {_toml(v)}" for k, v in self.center.items())]
        path = self.workdir / "gateway.toml"
        path.write_text("\n".join(lines) + "\n")
        return path


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)


async def start_building(layout: Layout, endpoint: type[SimEndpoint] = SimEndpoint) -> SimBuilding:
    """Start the pymodbus building of `layout` (endpoints of class `endpoint`), breakers on
    and wired to their rooms' meters, flow counters behind their valves."""
    sim = SimBuilding(max(layout.rooms, 1), per_endpoint=layout.per_endpoint,
                      relays=layout.relays, counters=layout.counters)
    sim.endpoints = [
        endpoint(meters=sorted(e.meters), relays=sorted(e.relays), counters=sorted(e.counters))
        for e in sim.endpoints
    ]
    for _ in range(layout.extra_endpoints):
        sim.endpoints.append(endpoint(meters=[1]))
    try:
        for e in sim.endpoints:
            sim.ports.append(await e.start_tcp("127.0.0.1", 0))
    except BaseException:
        await sim.stop()
        raise
    ep0 = sim.endpoints[0]
    for i in range(layout.rooms):
        unit, ch = layout.breaker(i)
        await ep0.set_coil(unit, ch, True)  # as the electrician left it
        sim.couple(i, unit - RELAY, ch)
    for j in range(layout.points):
        fu, fch = layout.flow(j)
        vu, vch = layout.valve(j)
        sim.couple_flow(fu - COUNTER, fch, vu - RELAY, vch)
    return sim


def coil(sim: SimBuilding, unit: int, channel: int) -> bool:
    """A relay channel as last switched (no Modbus round trip, no await)."""
    return sim.endpoints[0].switch_on(unit, channel)


class FlakyEndpoint(SimEndpoint):
    """An endpoint that spoils a fraction of requests: no reply, garbage, or an exception.

    `rate` applies to every unit in `units` (all when None); persistent faults
    (`set_fault`) are left alone. `injected` counts what was spoiled, by kind.
    """

    rate = 0.0
    units: frozenset[int] | None = None

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.injected: Counter[str] = Counter()
        self._spoil: dict[int, str] = {}
        self._dice = random.Random(7)

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending and pdu.dev_id not in self.faults and (
                self.units is None or pdu.dev_id in self.units) and self._dice.random() < self.rate:
            kind = self._dice.choice(("silent", "garbage", "exception"))
            self._spoil[pdu.dev_id] = kind
            self.injected[kind] += 1
        return super()._trace_pdu(sending, pdu)

    async def _action(
        self, unit: int, function_code: int, start_address: int, address: int,
        count: int, registers: list[int], set_values: list[int] | list[bool] | None) -> Any:
        if self._spoil.get(unit) == "exception":
            return self.exception_code
        return await super()._action(unit, function_code, start_address, address, count,
                                     registers, set_values)

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if sending and data and len(data) > 6:
            kind = self._spoil.pop(data[6], None)
            if kind == "silent":
                return b""
            if kind == "garbage":
                return self._rng.randbytes(len(data))
        return super()._trace_packet(sending, data)


# --- seeding the store (the daemon is not running) -------------------------------


def seed(state_dir: Path, credits: dict[str, int], cards: Sequence[Card] = (),
         command: str = "seed") -> None:
    """Credit accounts as CommandService does (balance and `account.credited` in one
    transaction) and put cards, with the daemon stopped."""
    store = Store.open(state_dir, BUILDING)
    try:
        def job(txn: Txn) -> None:
            for n, (account, fen) in enumerate(sorted(credits.items())):
                balance = Ledger.credit(txn, account, fen)
                txn.event(AccountCredited(account=account, amount_fen=fen,
                                               balance_fen=balance, command=f"{command}-{n}"),
                          ts="2026-11-23T21:04:05.120+08:00")
            for card in cards:
                Cards.put(txn, card)
        store.call(job)
    finally:
        store.close()


# --- the daemon -------------------------------------------------------------------


class Notifications:
    """An AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.got: list[tuple[float, str]] = []  # (monotonic, line)
        self._task: asyncio.Task[None] | None = None
        self._new = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read(), name="notify-reader")

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            now = time.monotonic()
            self.got += [(now, line) for line in data.decode(errors="replace").split("\n") if line]
            self._new.set()

    async def wait_for(self, line: str, since: float, timeout: float) -> float:
        """When `line` arrived at or after `since` (monotonic); waits up to `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            for at, got in self.got:
                if at >= since and got == line:
                    return at
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {line} within {timeout} s")
            self._new.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._new.wait()

    def times(self, line: str, since: float = 0.0) -> list[float]:
        return [at for at, got in self.got if got == line and at >= since]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sock.close()
        self.path.unlink(missing_ok=True)


class Daemon:
    """`gatewayd run` as a subprocess, restartable; its JSON log goes to `log_path`."""

    def __init__(self, config: Path, workdir: Path, *, watchdog_usec: int | None = None,
                 env: dict[str, str] | None = None, args: Sequence[str] = ()) -> None:
        self.config = config
        self.args = list(args)  # more `gatewayd run` options, e.g. --log-level debug
        self.log_path = workdir / "daemon.log"
        self.notify = Notifications(workdir / "notify.sock")
        self.watchdog_usec = watchdog_usec
        self.env = env or {}
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.starts = 0
        self.notify.start()

    async def start(self) -> None:
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify.path), **self.env}
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        with self.log_path.open("ab") as log:
            self.started_at = time.monotonic()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gatewayd.app.cli", "run", "-c", str(self.config),
                "--log-format", "json", *self.args, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=asyncio.subprocess.STDOUT,
            )
        self.starts += 1

    async def ready(self, timeout: float = 30.0) -> float:
        """Wait for READY=1 of this start; return when it came (monotonic)."""
        return await self.notify.wait_for("READY=1", self.started_at, timeout)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def rss_kb(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    async def kill(self) -> None:
        """SIGKILL: a power cut as far as the process is concerned."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code (SIGKILL after `timeout`)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                return await self.proc.wait()
        except TimeoutError:
            await self.kill()
            return -9

    async def close(self) -> None:
        if self.alive:
            await self.kill()
        await self.notify.close()

    def log_records(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self.log_path.exists():
            return out
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def log_problems(self, allowed: Iterable[str] = ()) -> list[str]:
        """Crashes and tracebacks in the log: what the campaigns count as violations."""
        allowed = set(allowed)
        bad: list[str] = []
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        plain = "\n".join(line for line in text.splitlines() if not line.startswith("{"))
        bad += ["traceback outside the JSON log"] * plain.count("Traceback (most recent call last)")
        for r in self.log_records():
            event = str(r.get("event", ""))
            if event in allowed:
                continue
            if event in {"component_crashed", "loop_stalled", "component_returned"} or "exception" in r:
                first = str(r.get("exception", "")).strip().splitlines()[-1:] or [""]
                bad.append(f"log: {event} {r.get('component', r.get('room', r.get('point', '')))} "
                           f"{first[0]}".strip())
        return bad


# --- the store, read-only -----------------------------------------------------------


@dataclass
class StoreSnapshot:
    events: list[dict[str, Any]]
    balances: dict[str, int]
    known: set[str]
    rooms: dict[str, dict[str, Any]]
    sessions: dict[str, dict[str, Any]]   # open water sessions by point

    @property
    def last_seq(self) -> int:
        return self.events[-1]["seq"] if self.events else 0

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]


T = TypeVar("T")


def read_only(db: Path, read: Callable[[sqlite3.Connection], T], attempts: int = 20) -> T:
    """`read(conn)` in one read transaction on a `mode=ro` connection (this never
    writes), tried again while the daemon holds the database locked."""
    for attempt in range(attempts):
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                conn.execute("BEGIN")
                result = read(conn)
                conn.execute("COMMIT")
                return result
            finally:
                conn.close()
        except sqlite3.OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


def read_store(db: Path, attempts: int = 20) -> StoreSnapshot:
    """The store as a reader sees it."""
    def read(conn: sqlite3.Connection) -> StoreSnapshot:
        events = [{**json.loads(p), "_seq": s, "_id": i, "_type": t}
                  for s, i, t, p in conn.execute(
                      "SELECT seq, id, type, payload FROM events ORDER BY seq")]
        accounts = conn.execute("SELECT account, balance_fen, known FROM accounts").fetchall()
        cols = ("room", "accrued_fen", "accrued_wh", "cut_reason", "hold", "baseline_wh",
                "chain_from_wh", "reclose_at", "switch_pending")
        rooms = {r[0]: dict(zip(cols, r, strict=True)) for r in conn.execute(
            f"SELECT {', '.join(cols)} FROM rooms")}
        scols = ("point", "session", "account", "card", "charged_fen")
        sessions = {r[0]: dict(zip(scols, r, strict=True)) for r in conn.execute(
            f"SELECT {', '.join(scols)} FROM water_sessions")}
        return StoreSnapshot(events, {a: b for a, b, _ in accounts},
                             {a for a, _, k in accounts if k}, rooms, sessions)
    return read_only(db, read, attempts)


@dataclass
class Outbox:
    """The delivery side of the store: which events are published, what waits, what the cap
    dropped (gatewayd/store/outbox.py)."""

    published: dict[str, int]        # event id -> seq, acknowledged by the broker
    unpublished: dict[str, int]      # event id -> seq, waiting
    types: dict[int, str]            # seq -> type, every event kept
    pending: dict[int, tuple[int, int]]   # class -> (count, bytes)
    meta: dict[str, str]
    telemetry_queued: int

    def meta_int(self, key: str) -> int:
        return int(self.meta.get(key, "0") or 0)


def read_outbox(db: Path, attempts: int = 20) -> Outbox:
    """`published`, `outbox_pending`, `meta` and the queued telemetry, in one read."""
    def read(conn: sqlite3.Connection) -> Outbox:
        rows = conn.execute("SELECT seq, id, type, published FROM events").fetchall()
        pend = {k: (c, b) for k, c, b in conn.execute(
            "SELECT class, count, bytes FROM outbox_pending")}
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        tele = conn.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0]
        return Outbox({i: s for s, i, _, p in rows if p is not None},
                      {i: s for s, i, _, p in rows if p is None},
                      {s: t for s, _, t, _ in rows}, pend, meta, tele)
    return read_only(db, read, attempts)


def rss_of(pid: int) -> int:
    """VmRSS of a process in kB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# --- invariants ------------------------------------------------------------------------


def check_kept(before: StoreSnapshot | None, now: StoreSnapshot) -> tuple[int, list[str]]:
    """Every event committed before is still there, unchanged."""
    if before is None:
        return 0, []
    by_seq = {e["seq"]: e for e in now.events}
    bad = [f"event seq {e['seq']} ({e['type']}) lost or changed"
           for e in before.events if by_seq.get(e["seq"]) != e]
    return len(before.events), bad


def check_seq(s: StoreSnapshot) -> tuple[int, list[str]]:
    """seq rises by exactly 1 from 1, ids unique, payload seq = row seq."""
    bad: list[str] = []
    for n, e in enumerate(s.events, start=1):
        if e["_seq"] != n:
            bad.append(f"seq gap or repeat: row {n} has seq {e['_seq']}")
            break
    bad += [f"payload seq {e['seq']} in row {e['_seq']}" for e in s.events if e["seq"] != e["_seq"]]
    bad += [f"payload id differs in row {e['_seq']}" for e in s.events if e["id"] != e["_id"]]
    ids = Counter(e["id"] for e in s.events)
    bad += [f"event id {i} used {n} times" for i, n in ids.items() if n > 1]
    return 3, bad


def check_money(s: StoreSnapshot) -> tuple[int, list[str]]:
    """No water session reported twice; power.usage reports chain per room."""
    bad: list[str] = []
    sessions = Counter(e["session"] for e in s.of("water.session"))
    bad += [f"water.session {sid} reported {n} times" for sid, n in sessions.items() if n > 1]
    open_ids = {v["session"] for v in s.sessions.values()}
    bad += [f"session {sid} both reported and still open" for sid in open_ids & set(sessions)]
    last_to: dict[str, int | None] = {}
    checks = 1 + len(open_ids)
    for e in s.events:
        if e["type"] == "alarm" and e["code"] in {"meter_reset", "meter_jump"}:
            last_to[e["device"].removeprefix("meter:")] = None
        elif e["type"] == "power.usage":
            checks += 1
            prev = last_to.get(e["room"])
            if prev is not None and e["meter_wh_from"] != prev:
                bad.append(f"power.usage seq {e['seq']} room {e['room']}: from {e['meter_wh_from']} "
                           f"!= previous to {prev}")
            if e["meter_wh_to"] - e["meter_wh_from"] != e["wh"]:
                bad.append(f"power.usage seq {e['seq']}: wh {e['wh']} != to - from")
            last_to[e["room"]] = e["meter_wh_to"]
    # The next report continues the chain from where the last one ended.
    for room, row in s.rooms.items():
        prev = last_to.get(room)
        if prev is not None and row["chain_from_wh"] is not None:
            checks += 1
            if row["chain_from_wh"] != prev:
                bad.append(f"room {room}: stored chain_from_wh {row['chain_from_wh']} != last "
                           f"reported meter_wh_to {prev}")
    return checks, bad


def check_balances(s: StoreSnapshot, room_accounts: dict[str, str]) -> tuple[int, list[str]]:
    """balance = credits - reported debits - charged but unreported, for every account."""
    expected: dict[str, int] = defaultdict(int)
    for e in s.events:
        if e["type"] == "account.credited":
            expected[e["account"]] += e["amount_fen"]
        elif e["type"] in {"power.usage", "water.session"}:
            expected[e["account"]] -= e["amount_fen"]
    for room, row in s.rooms.items():
        if room in room_accounts:
            expected[room_accounts[room]] -= row["accrued_fen"]
    for row in s.sessions.values():
        expected[row["account"]] -= row["charged_fen"]
    bad = []
    for account in sorted(set(expected) | set(s.balances)):
        have, want = s.balances.get(account, 0), expected.get(account, 0)
        if have != want:
            bad.append(f"account {account}: balance {have} != log {want} (diff {have - want})")
    return len(set(expected) | set(s.balances)), bad


def check_sessions_accounted(s: StoreSnapshot) -> tuple[int, list[str]]:
    """Every granted start tap is one session: reported once or still open, per point."""
    starts = Counter(e["point"] for e in s.of("tap") if e["granted"] and e["reason"] == "start")
    ended = Counter(e["point"] for e in s.of("water.session"))
    opened = Counter(s.sessions.keys())
    bad = [f"point {p}: {starts[p]} start taps, {ended[p]} sessions reported, {opened[p]} open"
           for p in set(starts) | set(ended) if starts[p] != ended[p] + opened[p]]
    return max(1, len(starts)), bad


def check_all(before: StoreSnapshot | None, now: StoreSnapshot,
              room_accounts: dict[str, str], checks: Checks, label: str) -> None:
    results = (check_kept(before, now), check_seq(now), check_money(now),
               check_balances(now, room_accounts), check_sessions_accounted(now))
    for n, bad in results:
        checks.extend(n, (f"{label}: {b}" for b in bad))


def alarm_pairs(s: StoreSnapshot, code: str, device: str) -> tuple[int, int]:
    """(raised, cleared) alarm events of `code` on `device`."""
    evs = [e for e in s.of("alarm") if e["code"] == code and e["device"] == device]
    return sum(1 for e in evs if e["active"]), sum(1 for e in evs if not e["active"])


# --- card readers -----------------------------------------------------------------------


def present(port: PtyPort, uid: str) -> bool:
    """One RDM6300 frame of `uid`; False when the pty is gone or its reader closed."""
    try:
        port.write(frame(uid, "rdm6300"))
    except OSError:
        return False
    return True


async def hold_card(port: PtyPort, uid: str, seconds: float = 0.2) -> None:
    """A card held on the reader: the frame repeats about every 100 ms."""
    for _ in range(max(1, int(seconds / 0.1))):
        present(port, uid)
        await asyncio.sleep(0.1)


async def until(check: Callable[[], Any], timeout: float, step: float = 0.1) -> Any:
    """The first truthy value of `check()` within `timeout`, or None."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(step)
