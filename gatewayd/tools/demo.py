"""`gatewayd demo`: a simulated building and the real daemon against it, on loopback.

What runs: `sim.building` (Modbus TCP floors with meters behind
breakers, showers and drinking water with valves and flow counters, serial
card readers on ptys, and one floor of DL/T 645-2007 meters with their relays
on a simulated RS-485 line at 2400 baud), the real daemon as a subprocess (`gatewayd run`, its
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
import math
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gatewayd.config.model import BROKER_RE
from gatewayd.errors import KeyFileError
from gatewayd.store.readonly import EventTail, Ledgers, all_events, read_ledgers
from gatewayd.tools.demo_keys import DemoKeys, demo_keys, signing_note
from gatewayd.tools.demo_processes import DaemonProcess, Mosquitto, _answers, free_port
from gatewayd.tools.demo_summary import read_json, summarize
from gatewayd.tools.demo_view import LiveView, PlainView, View, buses_line

if TYPE_CHECKING:
    # Imported when the demo runs: `gatewayd run` and `check-config` stay light.
    from sim.building import SimulatedBuilding
    from sim.center import CenterStub
    from sim.day import DayClock, DayScript

REFRESH_S = 0.5


def add_subcommand(subparsers: Any) -> None:
    """Register `gatewayd demo` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "demo", help="run a simulated building and the real daemon against it",
        description="A simulated dorm building on 127.0.0.1 with the real daemon against it.")
    p.add_argument("--rooms", type=int, default=12,
                   help="rooms on the Modbus floors (default 12)")
    p.add_argument("--dlt-rooms", type=int, default=4,
                   help="rooms on the DL/T 645 floor, meters with their relays (default 4; 0: none)")
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
    p.add_argument("--center-public-key", type=Path, default=None, metavar="PEM",
                   help="the center public key (PEM SubjectPublicKeyInfo) the gateway verifies "
                        "commands with, for your own center to sign; default: a key pair the "
                        "demo writes into --dir (center.key, center.pub)")
    p.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    finite = math.isfinite(args.speed) and (args.duration is None or math.isfinite(args.duration))
    if (not finite or args.rooms < 1 or args.speed <= 0 or not 0 <= args.dlt_rooms <= 99
            or (args.duration is not None and args.duration <= 0)):
        print("gatewayd demo: --rooms, --speed and --duration must be numbers above 0 "
              "(--dlt-rooms 0 to 99)",
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
        self.mosquitto: Mosquitto | None = None
        self.doc: dict[str, Any] | None = None
        self.keys = DemoKeys(workdir / "center.pub", None, None)  # set by run()

    def header(self) -> str:
        day = self.clock.label() if self.clock else "-"
        doc = self.doc or {}
        link = doc.get("center") or {}
        if self.center is None:
            center = self.broker_label
        elif link.get("configured") and link.get("connected"):
            # What matters first: a line cut at 80 columns loses only the broker's address.
            center = f"connected, {self.center.events} events received · {self.broker_label}"
        else:
            center = f"gateway NOT connected · {self.broker_label}"
        seq = (doc.get("store") or {}).get("next_seq", 1) - 1
        return (f"gatewayd demo · building {doc.get('building', '?')} · {day} x{self.args.speed:g} · "
                f"last seq {seq} · daemon pid {self.daemon.pid if self.daemon else '-'}\n"
                f"center: {center}\nbuses: {buses_line(doc.get('buses') or [])}")

    def request_stop(self, why: str) -> None:
        if not self.stop.is_set():
            self.stop_reason = why
            self.stop.set()

    async def run(self) -> int:
        from sim.building import SimulatedBuilding
        from sim.day import DayClock

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop, "interrupted")
        args = self.args
        out = sys.stdout
        sim = SimulatedBuilding(self.workdir, rooms=args.rooms, dlt_rooms=args.dlt_rooms)
        tasks: list[asyncio.Task[Any]] = []
        code = 1
        view: View | None = None
        try:
            broker = await self._broker()
            await sim.start()
            metrics_port = free_port()
            config = self._write_config(sim, broker, metrics_port)
            db = sim.state_dir / "gatewayd.db"
            if not db.exists():
                await asyncio.to_thread(sim.seed_store)
            room_accounts = {r.id: r.account for r in sim.rooms.values()}
            before = await asyncio.to_thread(read_ledgers, db, room_accounts)
            names = {p.card: p.name for p in sim.people}
            print(f"gatewayd demo: {len(sim.rooms)} rooms, {len(sim.points)} water points on "
                  f"127.0.0.1; config {config}; daemon log {self.workdir / 'daemon.log'}",
                  file=out, flush=True)
            interactive = out.isatty() and not args.plain
            view = LiveView(names, self.header) if interactive else PlainView(out, names, self.header)
            clock = DayClock(args.speed)
            script = await self._start(sim, clock, view, broker=broker, config=config,
                                       metrics_port=metrics_port)
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
            await _cancel(tasks)
            view.stop()
            view = None
            code = await self._conclude(db, room_accounts, before, real_s, clock.label())
        except (RuntimeError, KeyFileError) as e:
            print(f"gatewayd demo: {e}", file=sys.stderr)
            code = 1
        finally:
            await self._clean_up(tasks, view, sim)
        if code == 0 and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        elif code != 0 or self.keep:
            print(f"the demo's files (config, store, logs) are in {self.workdir}", file=out)
        return code

    def _write_config(self, sim: SimulatedBuilding, broker: str | None, metrics_port: int) -> Path:
        """The daemon's config, its gateway verifying commands with the demo's keys (demo_keys)."""
        self.keys = demo_keys(self.workdir, self.args.center_public_key)
        if broker:
            print(signing_note(self.keys, broker, sim.building), file=sys.stdout, flush=True)
        return sim.write_config(speed=self.args.speed, broker=broker, metrics_port=metrics_port,
                                center_public_key=self.keys.public_path)

    async def _start(self, sim: SimulatedBuilding, clock: DayClock, view: View, *, broker: str | None,
                     config: Path, metrics_port: int) -> DayScript:
        """The center stub, the day's script (its loads on) and the daemon (up to READY)."""
        from sim.center import CenterStub
        from sim.day import DayScript

        if broker:
            self.center = CenterStub(broker, sim.building, key=self.keys.private_key)
            await self.center.start()
        script = DayScript(sim, clock, view.narrate, self.center)
        script.start_loads()
        self.daemon = DaemonProcess(config, self.workdir)
        await self.daemon.start()
        if await _answers(metrics_port):
            print(f"Prometheus metrics: http://127.0.0.1:{metrics_port}/metrics", file=sys.stdout,
                  flush=True)
        return script

    async def _broker(self) -> str | None:
        """The broker the daemon and the center stub use: `--broker`, a private
        mosquitto when it is installed, or none (offline)."""
        args = self.args
        if args.broker:
            self.broker_label = args.broker
            return str(args.broker)
        if not args.offline and shutil.which("mosquitto"):
            self.mosquitto = Mosquitto(self.workdir)
            await self.mosquitto.start()
            self.broker_label = f"private mosquitto {self.mosquitto.url}"
            return self.mosquitto.url
        if not args.offline:
            self.broker_label = "none (mosquitto is not installed): events wait in the store"
        return None

    async def _conclude(self, db: Path, room_accounts: dict[str, str], before: Ledgers,
                        real_s: float, day: str) -> int:
        """Stop the daemon (SIGTERM: valves closed, sessions charged), print the
        summary from the store's events; 0 when it matches the balances."""
        assert self.daemon is not None
        out = sys.stdout
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
        return 0 if summary.matches and not died and exit_code == 0 else 1

    async def _clean_up(self, tasks: list[asyncio.Task[Any]], view: View | None,
                        sim: SimulatedBuilding) -> None:
        await _cancel(tasks)
        if view is not None:
            view.stop()
        if self.daemon is not None:
            await self.daemon.stop()
        if self.center is not None:
            await self.center.stop()
        await sim.stop()
        if self.mosquitto is not None:
            await self.mosquitto.stop()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

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


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    tasks.clear()
