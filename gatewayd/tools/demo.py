"""`gatewayd demo`: a simulated building and the real daemon against it, on loopback.

What runs: `sim.building` (Modbus TCP floors with meters behind
breakers, showers and drinking water with valves and flow counters, serial
card readers on ptys), the real daemon as a subprocess (`gatewayd run`, its
JSON log in DIR/daemon.log) with its real drivers, store and rules, and, as
the campus center, a private mosquitto when it is installed (or `--broker`).
A scripted day, compressed `--speed` times, plays against it.

The view reads only what staff could read on a real box: the daemon's
`state_dir/status.json` and its event log through a read-only SQLite
connection. On a terminal it is a live rich view; otherwise plain lines.
`--duration S` ends by itself; Ctrl-C ends too. Either way the daemon gets
SIGTERM (valves closed, sessions charged), and a summary computed from the
store's events is checked against the accounts' balances.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from gatewayd.config.load import BROKER_RE

if TYPE_CHECKING:
    # Imported when the demo runs: `gatewayd run` and `check-config` stay light.
    from sim.building import CenterStub, DayClock

# The daemon must be ready (store open, valves closed) within this; a fresh
# machine's first start compiles bytecode, hence the margin.
READY_TIMEOUT_S = 60.0
# SIGTERM to exit: the daemon promises 10 s; then SIGKILL.
STOP_TIMEOUT_S = 15.0
MOSQUITTO_START_S = 5.0
REFRESH_S = 0.5
PLAIN_STATUS_EVERY_S = 10.0
EVENTS_SHOWN = 12
STORY_SHOWN = 4


def add_subcommand(subparsers: Any) -> None:
    """Register `gatewayd demo` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "demo", help="run a simulated building and the real daemon against it",
        description="A simulated dorm building on 127.0.0.1 with the real daemon against it.")
    p.add_argument("--rooms", type=int, default=12, help="rooms in the building (default 12)")
    p.add_argument("--speed", type=float, default=60.0,
                   help="how many times faster the day runs than the clock (default 60: a "
                        "minute a second); prices are scaled alike")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds and print the summary (default: until Ctrl-C)")
    p.add_argument("--broker", metavar="URL",
                   help="the center's MQTT broker (mqtt://HOST:PORT); default: a private "
                        "mosquitto on 127.0.0.1 when installed")
    p.add_argument("--offline", action="store_true",
                   help="no center at all: events wait in the store (store-and-forward)")
    p.add_argument("--dir", type=Path, default=None,
                   help="keep the config, store and logs here (default: a temporary directory, "
                        "removed after a clean run)")
    p.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    finite = math.isfinite(args.speed) and (args.duration is None or math.isfinite(args.duration))
    if (not finite or args.rooms < 1 or args.speed <= 0
            or (args.duration is not None and args.duration <= 0)):
        print("gatewayd demo: --rooms, --speed and --duration must be numbers above 0",
              file=sys.stderr)
        return 2
    if args.broker is not None and not BROKER_RE.fullmatch(args.broker):
        print(f"gatewayd demo: --broker: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], "
              f"got {args.broker!r}", file=sys.stderr)
        return 2
    workdir = (args.dir.resolve() if args.dir else
               Path(tempfile.mkdtemp(prefix="gatewayd-demo-")))
    workdir.mkdir(parents=True, exist_ok=True)
    _quiet_logs()
    demo = Demo(args, workdir, keep=args.dir is not None)
    try:
        return asyncio.run(demo.run())
    except KeyboardInterrupt:
        return 130


def _quiet_logs() -> None:
    """The demo's own process logs nothing but warnings (the daemon logs to its file)."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    logging.basicConfig(level=logging.ERROR, force=True)


# --- peers ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Mosquitto:
    """A private broker on a free port of 127.0.0.1, for the demo's center."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false"]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to its own user and cannot read DIR
        conf.write_text("\n".join(lines) + "\n")
        with (self.workdir / "mosquitto.log").open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                "mosquitto", "-c", str(conf), stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + MOSQUITTO_START_S
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                break
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                return
            await asyncio.sleep(0.05)
        await self.stop()
        raise RuntimeError(f"mosquitto did not start (see {self.workdir / 'mosquitto.log'})")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5)
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()


class DaemonProcess:
    """`gatewayd run` as a child in its own session, READY read from its sd_notify."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.log_path = workdir / "daemon.log"
        self.proc: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._drain: asyncio.Task[None] | None = None
        self.status = ""   # the daemon's last STATUS= line

    async def start(self) -> None:
        """Start it and return once it says READY=1; raise if it exits or times out."""
        path = self.workdir / "notify.sock"
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.setblocking(False)
        self._sock = sock
        env = {**os.environ, "NOTIFY_SOCKET": str(path)}
        env.pop("WATCHDOG_USEC", None)
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gatewayd.app.cli", "run", "-c", str(self.config),
                "--log-format", "json", stdin=asyncio.subprocess.DEVNULL, stdout=log,
                stderr=log, env=env, start_new_session=True)
        loop = asyncio.get_running_loop()
        exited = loop.create_task(self.proc.wait())
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                while True:
                    received = loop.create_task(loop.sock_recv(sock, 4096))
                    done, _ = await asyncio.wait({received, exited},
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if received in done:
                        if b"READY=1" in received.result():
                            # Keep reading, as systemd does: the daemon goes on
                            # sending STATUS= lines, and a full socket queue must
                            # not be what stops it.
                            self._drain = loop.create_task(self._read_notifications(sock))
                            return
                        continue
                    received.cancel()
                    raise RuntimeError(f"the daemon exited with code {self.proc.returncode} "
                                       f"before it was ready:\n{self.log_tail()}")
        except TimeoutError:
            await self.stop()
            raise RuntimeError(f"the daemon was not ready within {READY_TIMEOUT_S:.0f} s:\n"
                               f"{self.log_tail()}") from None
        finally:
            exited.cancel()

    async def _read_notifications(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.sock_recv(sock, 4096)
            except OSError:
                return
            for line in data.decode(errors="replace").splitlines():
                if line.startswith("STATUS="):
                    self.status = line.removeprefix("STATUS=")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def exited(self) -> bool:
        return self.proc is not None and self.proc.returncode is not None

    async def stop(self) -> int | None:
        """SIGTERM, wait, SIGKILL if it does not stop in time; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
            self._drain = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        return self.proc.returncode

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


# --- reading the daemon's state --------------------------------------------------------


@dataclass
class StoredEvent:
    seq: int
    type: str
    doc: dict[str, Any]
    published: bool


class EventTail:
    """New events from the store, through a read-only connection (safe while it runs)."""

    def __init__(self, db: Path, after_seq: int = 0) -> None:
        self.db = db
        self.last_seq = after_seq
        self._conn: sqlite3.Connection | None = None

    def poll(self, limit: int = 500) -> list[StoredEvent]:
        if self._conn is None:
            self._conn = connect_ro(self.db)
        rows = self._conn.execute(
            "SELECT seq, type, payload, published FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (self.last_seq, limit)).fetchall()
        out = [StoredEvent(seq, type_, json.loads(payload), published is not None)
               for seq, type_, payload, published in rows]
        if out:
            self.last_seq = out[-1].seq
        return out

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


async def _answers(port: int, wait_s: float = 2.0) -> bool:
    """Whether the daemon's metrics endpoint listens (it binds right after READY)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return True
        await asyncio.sleep(0.1)
    return False


def connect_ro(db: Path) -> sqlite3.Connection:
    # Used from worker threads (asyncio.to_thread), one at a time.
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0, check_same_thread=False)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


# --- the store at start and at the end: what the summary checks -----------------------


@dataclass
class Ledgers:
    """Balances and money charged but not yet in an event, at one moment."""

    balances: dict[str, int]
    unreported: dict[str, int]   # power accrued + open water sessions, per account
    last_seq: int
    # Accounts an account.sync from the center has set: their balance is the
    # center's figure then, which no event carries.
    synced: frozenset[str] = frozenset()


def read_ledgers(db: Path, room_accounts: dict[str, str]) -> Ledgers:
    conn = connect_ro(db)
    try:
        balances = {a: int(b) for a, b in conn.execute("SELECT account, balance_fen FROM accounts")}
        unreported: Counter[str] = Counter()
        for room, fen in conn.execute("SELECT room, accrued_fen FROM rooms"):
            if room in room_accounts:
                unreported[room_accounts[room]] += int(fen)
        for account, fen in conn.execute("SELECT account, charged_fen FROM water_sessions"):
            unreported[account] += int(fen)
        (last,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        synced = set()
        for (result,) in conn.execute("SELECT result FROM commands"):
            with contextlib.suppress(ValueError):
                doc = json.loads(result)
                body = doc.get("result") if isinstance(doc, dict) else None
                if isinstance(body, dict) and "unreported_fen" in body:   # account.sync's
                    synced.add(str(body.get("account")))
        return Ledgers(balances, dict(unreported), int(last), frozenset(synced))
    finally:
        conn.close()


def all_events(db: Path, after_seq: int) -> list[StoredEvent]:
    tail = EventTail(db, after_seq)
    try:
        out: list[StoredEvent] = []
        while batch := tail.poll(5000):
            out += batch
        return out
    finally:
        tail.close()


@dataclass
class Summary:
    lines: list[str] = field(default_factory=list)
    matches: bool = True


def summarize(events: list[StoredEvent], before: Ledgers, after: Ledgers,
              real_s: float, day: str) -> Summary:
    """What happened, from the events; and whether every account's balance moved by
    exactly its credits minus its charges."""
    taps = [e.doc for e in events if e.type == "tap"]
    refused = Counter(t["reason"] for t in taps if not t["granted"])
    sessions = [e.doc for e in events if e.type == "water.session"]
    by_service = Counter(s["service"] for s in sessions)
    cuts = Counter(e.doc["reason"] for e in events if e.type == "breaker.cut")
    restores = Counter(e.doc["reason"] for e in events if e.type == "breaker.restored")
    usage = [e.doc for e in events if e.type == "power.usage"]
    credits = [e.doc for e in events if e.type == "account.credited"]
    alarms = Counter((e.doc["code"], e.doc["active"]) for e in events if e.type == "alarm")

    credited: Counter[str] = Counter()
    debited: Counter[str] = Counter()
    for c in credits:
        credited[c["account"]] += c["amount_fen"]
    for s in sessions:
        debited[s["account"]] += s["amount_fen"]
    for u in usage:
        debited[u["account"]] += u["amount_fen"]
    power_fen = sum(u["amount_fen"] for u in usage)
    water_fen = sum(s["amount_fen"] for s in sessions)
    unreported_change = sum(after.unreported.values()) - sum(before.unreported.values())

    mismatches = []
    synced = after.synced - before.synced
    for account in sorted(set(before.balances) | set(after.balances)):
        if account in synced:
            continue
        change = after.balances.get(account, 0) - before.balances.get(account, 0)
        charged = (debited[account] + after.unreported.get(account, 0)
                   - before.unreported.get(account, 0))
        if change != credited[account] - charged:
            mismatches.append(f"    {account}: balance moved {_yuan(change)}, events say "
                              f"{_yuan(credited[account] - charged)}")

    def counts(c: Counter[str]) -> str:
        return ", ".join(f"{k} {v}" for k, v in c.most_common()) or "none"

    out = Summary()
    out.lines = [
        f"What happened ({real_s:.0f} s, the day reached {day}):",
        f"  taps:        {len(taps)} ({len(taps) - sum(refused.values())} granted; refused: "
        f"{counts(refused)})",
        f"  sessions:    {len(sessions)} ({counts(by_service)}), "
        f"{sum(s['volume_ml'] for s in sessions) / 1000:.2f} L, charged {_yuan(water_fen)}",
        f"  cuts:        {sum(cuts.values())} ({counts(cuts)}); restored {sum(restores.values())} "
        f"({counts(restores)})",
        f"  electricity: charged {_yuan(power_fen + unreported_change)} "
        f"({len(usage)} usage reports, {_yuan(power_fen)}; not yet reported "
        f"{_yuan(unreported_change)})",
        f"  credits:     {len(credits)}, {_yuan(sum(credited.values()))}",
        "  alarms:      " + (", ".join(
            f"{code} {'raised' if active else 'cleared'} {n}"
            for (code, active), n in sorted(alarms.items())) or "none"),
        f"  events:      {len(events)} (seq {before.last_seq + 1} to {after.last_seq}), "
        f"published to the center {sum(1 for e in events if e.published)}",
        f"  money charged in all: {_yuan(power_fen + water_fen + unreported_change)}",
    ]
    out.matches = not mismatches
    out.lines.append(
        f"  balances of {len(after.balances)} accounts = start + credits - charges: "
        f"matches the store: {'yes' if out.matches else 'NO'}")
    if synced:
        out.lines.append(f"  ({len(synced)} accounts set by the center's account.sync are not "
                         f"checked: {', '.join(sorted(synced))})")
    out.lines += mismatches
    return out


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}¥{abs(fen) // 100}.{abs(fen) % 100:02d}"


def describe(e: StoredEvent, names: dict[str, str]) -> str:
    """One line for an event, as a person at the desk would say it."""
    d = e.doc

    def who(card: str | None) -> str:
        return names.get(card or "", card or "?")

    if e.type == "tap":
        verdict = (("in" if d["reason"] == "start" else "out") if d["granted"]
                   else f"REFUSED ({d['reason']})")
        return f"tap {d.get('point') or d['reader']}: {who(d['card'])} {verdict}"
    if e.type == "water.session":
        return (f"{d['service']} {d['point']}: {who(d['card'])} {d['volume_ml'] / 1000:.2f} L, "
                f"{d['seconds']} s, {_yuan(d['amount_fen'])} (ended: {d['end_reason']})")
    if e.type == "power.usage":
        return (f"usage room {d['room']}: {d['wh']} Wh, {_yuan(d['amount_fen'])}, "
                f"balance {_yuan(d['balance_fen'])}")
    if e.type == "account.credited":
        return (f"credit {d['account']}: +{_yuan(d['amount_fen'])}, "
                f"balance {_yuan(d['balance_fen'])}")
    if e.type == "breaker.cut":
        power = "" if d.get("power_w") is None else f", {d['power_w']:.0f} W"
        return f"CUT room {d['room']} ({d['reason']}{power})"
    if e.type == "breaker.restored":
        return f"restored room {d['room']} ({d['reason']})"
    if e.type == "balance.low":
        return f"low balance {d['account']}: {_yuan(d['balance_fen'])}"
    if e.type == "alarm":
        state = "RAISED" if d["active"] else "cleared"
        detail = f": {d['detail']}" if d.get("detail") and d["active"] else ""
        return f"alarm {d['code']} {d['device']} {state}{detail}"
    return e.type


# --- views --------------------------------------------------------------------------------


class View:
    """What the demo shows; `PlainView` and `LiveView` implement it."""

    def narrate(self, at: str, text: str) -> None:
        raise NotImplementedError

    def events(self, events: list[StoredEvent]) -> None:
        raise NotImplementedError

    def status(self, doc: dict[str, Any] | None) -> None:
        raise NotImplementedError

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None


class PlainView(View):
    """Lines, for logs and pipes: the story, every event, a status line now and then."""

    def __init__(self, out: IO[str], names: dict[str, str], header: Callable[[], str]) -> None:
        self.out = out
        self.names = names
        self.header = header
        self._last_status = time.monotonic()  # the first after a while: meters are read by then

    def _print(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def narrate(self, at: str, text: str) -> None:
        self._print(f"[{at}] {text}")

    def events(self, events: list[StoredEvent]) -> None:
        for e in events:
            if e.type == "power.usage":
                continue  # the status line carries balances; usage reports would drown the story
            self._print(f"    event #{e.seq} {describe(e, self.names)}")

    def status(self, doc: dict[str, Any] | None) -> None:
        now = time.monotonic()
        if doc is None or now - self._last_status < PLAIN_STATUS_EVERY_S:
            return
        self._last_status = now
        rooms = doc.get("rooms", [])
        points = doc.get("points", [])
        cut = [r["room"] for r in rooms if r.get("breaker") == "off"]
        offline = [r["room"] for r in rooms if not r.get("online")]
        open_ = [p["point"] for p in points if p.get("state") == "open"]
        header = self.header().replace("\n", "; ")
        self._print(f"[status] {header}; rooms {len(rooms)}: cut {cut or 'none'}, meters "
                    f"offline {offline or 'none'}; water points open {open_ or 'none'}; "
                    f"{sum(r.get('power_w') or 0 for r in rooms):.0f} W in all")


class LiveView(View):
    """A live rich view: rooms, water points, the story and recent events."""

    def __init__(self, names: dict[str, str], header: Callable[[], str]) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console()
        self.names = names
        self.header = header
        self.story: deque[tuple[str, str]] = deque(maxlen=STORY_SHOWN)
        self.recent: deque[StoredEvent] = deque(maxlen=EVENTS_SHOWN)
        self.doc: dict[str, Any] | None = None
        self.live = Live(console=self.console, auto_refresh=False, transient=False)

    def start(self) -> None:
        self.live.start()

    def stop(self) -> None:
        self.live.update(self._render(), refresh=True)
        self.live.stop()

    def narrate(self, at: str, text: str) -> None:
        self.story.append((at, text))
        self._refresh()

    def events(self, events: list[StoredEvent]) -> None:
        self.recent.extend(e for e in events if e.type != "power.usage")

    def status(self, doc: dict[str, Any] | None) -> None:
        if doc is not None:
            self.doc = doc
        self._refresh()

    def _refresh(self) -> None:
        self.live.update(self._render(), refresh=True)

    def _render(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        doc = self.doc or {}
        alarms: dict[str, list[str]] = {}
        for a in doc.get("alarms", []):
            alarms.setdefault(a["device"].split(":", 1)[-1], []).append(a["code"])
        height = self.console.size.height
        room_rows = max(4, height - 14 - STORY_SHOWN - min(len(self.recent), EVENTS_SHOWN))

        rooms = Table(title="rooms", expand=True, pad_edge=False)
        for col, justify in (("room", "left"), ("balance", "right"), ("power W", "right"),
                             ("breaker", "left"), ("cut / faults", "left")):
            rooms.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        all_rooms = doc.get("rooms", [])
        for r in all_rooms[:room_rows]:
            breaker = r.get("breaker", "unknown")
            faults = [*([f"cut: {r['cut_reason']}"] if r.get("cut_reason") else []),
                      *alarms.get(r["room"], [])]
            online = bool(r.get("online"))
            if not online and "meter_offline" not in faults:
                faults.append("no reading yet")
            rooms.add_row(
                r["room"],
                Text(_yuan(r["balance_fen"]), style="red" if r["balance_fen"] <= 0 else ""),
                "-" if r.get("power_w") is None or not online else f"{r['power_w']:.0f}",
                Text(breaker, style={"on": "green", "off": "bold red"}.get(breaker, "yellow")),
                Text(", ".join(dict.fromkeys(faults)), style="yellow"),
            )
        if len(all_rooms) > room_rows:
            rooms.caption = f"and {len(all_rooms) - room_rows} more rooms (gatewayd status shows all)"

        points = Table(title="water points", expand=True, pad_edge=False)
        for col in ("point", "state", "who", "volume", "charge"):
            points.add_column(col, no_wrap=True)
        for p in doc.get("points", []):
            state = p.get("state", "?")
            points.add_row(
                p["point"], Text(state, style={"open": "bold cyan", "fault": "bold red"}.get(state, "")),
                self.names.get(p.get("card") or "", p.get("card") or ""),
                "" if p.get("volume_ml") is None else f"{p['volume_ml'] / 1000:.2f} L",
                "" if p.get("amount_fen") is None else _yuan(p["amount_fen"]),
            )

        story = Text()
        for i, (at, text) in enumerate(self.story):
            story.append(f"{at}  ", style="dim")
            story.append(text + ("\n" if i < len(self.story) - 1 else ""),
                         style="bold" if i == len(self.story) - 1 else "")
        recent = Text()
        for i, e in enumerate(self.recent):
            line = describe(e, self.names)
            style = ("bold red" if e.type == "breaker.cut" or "REFUSED" in line or
                     (e.type == "alarm" and e.doc.get("active")) else
                     "green" if e.type in ("breaker.restored", "account.credited") else "")
            recent.append(f"#{e.seq:<5} ", style="dim")
            recent.append(line + ("\n" if i < len(self.recent) - 1 else ""), style=style)

        grid = Table.grid(expand=True, padding=(0, 1))
        grid.add_column(ratio=3)
        grid.add_column(ratio=2)
        grid.add_row(rooms, Group(points, Panel(story, title="the day", border_style="blue")))
        return Group(
            Text(self.header(), style="bold"),
            grid,
            Panel(recent, title="events (from the store)", border_style="dim"),
            Text("Ctrl-C stops the demo (the daemon closes every valve and charges open sessions)",
                 style="dim"),
        )


# --- the demo -----------------------------------------------------------------------------


class Demo:
    def __init__(self, args: argparse.Namespace, workdir: Path, *, keep: bool) -> None:
        self.args = args
        self.workdir = workdir
        self.keep = keep
        self.stop = asyncio.Event()
        self.stop_reason = ""
        self.broker_label = "none (offline: events wait in the store)"
        self.center: CenterStub | None = None
        self.clock: DayClock | None = None
        self.daemon: DaemonProcess | None = None
        self.doc: dict[str, Any] | None = None

    def header(self) -> str:
        day = self.clock.label() if self.clock else "-"
        doc = self.doc or {}
        link = doc.get("center") or {}
        if self.center is None:
            center = self.broker_label
        elif link.get("configured") and link.get("connected"):
            center = (f"gateway connected to {self.broker_label}; the center received "
                      f"{self.center.events} events")
        else:
            center = f"{self.broker_label}; gateway not connected"
        seq = (doc.get("store") or {}).get("next_seq", 1) - 1
        return (f"gatewayd demo · building {doc.get('building', '?')} · {day} (x{self.args.speed:g}) · "
                f"daemon pid {self.daemon.pid if self.daemon else '-'} · last seq {seq}\n"
                f"center: {center}")

    def request_stop(self, why: str) -> None:
        if not self.stop.is_set():
            self.stop_reason = why
            self.stop.set()

    async def run(self) -> int:
        from sim.building import CenterStub, DayClock, DayScript, SimulatedBuilding

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop, "interrupted")
        args = self.args
        out = sys.stdout
        interactive = out.isatty() and not args.plain
        mosquitto: Mosquitto | None = None
        sim = SimulatedBuilding(self.workdir, rooms=args.rooms)
        tasks: list[asyncio.Task[Any]] = []
        code = 1
        view: View | None = None
        started = time.monotonic()
        try:
            broker = args.broker
            if broker:
                self.broker_label = broker
            elif not args.offline and shutil.which("mosquitto"):
                mosquitto = Mosquitto(self.workdir)
                await mosquitto.start()
                broker = mosquitto.url
                self.broker_label = f"private mosquitto {broker}"
            elif not args.offline:
                self.broker_label = "none (mosquitto is not installed): events wait in the store"
            await sim.start()
            metrics_port = free_port()
            config = sim.write_config(speed=args.speed, broker=broker, metrics_port=metrics_port)
            db = sim.state_dir / "gatewayd.db"
            seeded = not db.exists()
            if seeded:
                await asyncio.to_thread(sim.seed_store)
            room_accounts = {r.id: r.account for r in sim.rooms.values()}
            before = await asyncio.to_thread(read_ledgers, db, room_accounts)
            names = {p.card: p.name for p in sim.people}
            print(f"gatewayd demo: {len(sim.rooms)} rooms, {len(sim.points)} water points on "
                  f"127.0.0.1; config {config}; daemon log {self.workdir / 'daemon.log'}",
                  file=out, flush=True)
            view = LiveView(names, self.header) if interactive else PlainView(out, names, self.header)
            clock = DayClock(args.speed)
            if broker:
                self.center = CenterStub(broker, sim.building)
                await self.center.start()
            script = DayScript(sim, clock, view.narrate, self.center)
            script.start_loads()
            self.daemon = DaemonProcess(config, self.workdir)
            await self.daemon.start()
            if await _answers(metrics_port):
                print(f"Prometheus metrics: http://127.0.0.1:{metrics_port}/metrics", file=out,
                      flush=True)
            clock.t0 = time.monotonic()
            self.clock = clock
            started = time.monotonic()
            view.start()
            tasks.append(loop.create_task(script.run(), name="day-script"))
            tasks.append(loop.create_task(self._watch(view, sim.state_dir, before.last_seq),
                                          name="view"))
            if args.duration is not None:
                loop.call_later(args.duration, self.request_stop, "duration")
            await self.stop.wait()
            real_s = time.monotonic() - started
            day = clock.label()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            tasks = []
            view.stop()
            view = None
            died = self.daemon.exited
            exit_code = await self.daemon.stop()
            if died:
                print(f"the daemon stopped by itself (exit code {exit_code}):\n"
                      f"{self.daemon.log_tail()}", file=out)
            elif exit_code != 0:
                print(f"the daemon exited with code {exit_code} after SIGTERM:\n"
                      f"{self.daemon.log_tail()}", file=out)
            after = await asyncio.to_thread(read_ledgers, db, room_accounts)
            events = await asyncio.to_thread(all_events, db, before.last_seq)
            summary = summarize(events, before, after, real_s, day)
            print("\n".join(summary.lines), file=out, flush=True)
            code = 0 if summary.matches and not died and exit_code == 0 else 1
        except RuntimeError as e:
            print(f"gatewayd demo: {e}", file=sys.stderr)
            code = 1
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if view is not None:
                view.stop()
            if self.daemon is not None:
                await self.daemon.stop()
            if self.center is not None:
                await self.center.stop()
            await sim.stop()
            if mosquitto is not None:
                await mosquitto.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        if code == 0 and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        elif code != 0 or self.keep:
            print(f"the demo's files (config, store, logs) are in {self.workdir}", file=out)
        return code

    async def _watch(self, view: View, state_dir: Path, after_seq: int) -> None:
        """Feed the view from status.json and the event log; notice a dead daemon."""
        assert self.daemon is not None
        tail = EventTail(state_dir / "gatewayd.db", after_seq)
        status_path = state_dir / "status.json"
        try:
            while True:
                self.doc = await asyncio.to_thread(read_json, status_path) or self.doc
                try:
                    view.events(await asyncio.to_thread(tail.poll))
                except sqlite3.Error:
                    tail.close()  # busy for a moment (checkpoint): try again next round
                view.status(self.doc)
                if self.daemon.exited:
                    self.request_stop("the daemon exited")
                    return
                await asyncio.sleep(REFRESH_S)
        finally:
            tail.close()
