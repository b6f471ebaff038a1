"""The dead-bus campaign (issue 14, items 2 and 3): dead devices cost a bounded count
of requests and log lines, never hold the start, and never stop the live rooms' rules.

Two buildings, each run as the real daemon (`gatewayd run`, debug log, so that
every failed operation and connection attempt is a line to count):

- `mixed_building`: two live rooms on a pymodbus server (one overloaded, one
  running out of money) beside a room and a shower on each of four dead buses:
  an RTU bus whose port does not exist (`ttyUSB9`), a TCP bus whose port refuses
  connections, one whose server accepts and closes at once, and one whose
  server accepts and never answers. Serial readers on ports that do not exist.
- `silent_building`: conf/generate.py's 312-room building (6 floors, a Modbus
  TCP gateway each, 36 showers) whose endpoints all accept and never answer,
  but for one room moved onto a live pymodbus server.

`run_mixed()` and `run_silent()` return what was counted; `dead_bus()` is the
campaign (its invariants in `check_mixed`/`check_silent`); tests/test_dead_bus.py
and bench/dead_bus.py use the same runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gatewayd.services.component import START_IO_S
from sim.modbus import SimBuilding
from tests.soak.harness import ROOT, Checks, Daemon, Row, read_store, seed, until

RELAY = SimBuilding.RELAY_BASE
# "A few requests a second at most" (behaviour.md "Faults"), made a number:
# operations, requests and connection attempts per dead device or bus, per
# second of the run, plus a few for the start. A busy loop makes thousands.
FEW_PER_S = 2.0
FEW_AT_START = 6
# Log lines at INFO and above per dead device or bus: its failure, its alarm,
# a summary a minute; plus what any start and stop log.
LINES_PER_DEVICE = 4
LINES_BASE = 60
# CPU of the daemon while it runs with dead buses, as a share of one core: a
# busy loop takes a whole core; this building takes a few per cent.
CPU_SHARE_MAX = 0.5
# What the silent building's READY may take in wall time, in the campaign and the
# test, on a shared and loaded machine: the gateway's own budget is 10 s.
READY_WALL_S = 30.0

DEAD_BUSES = ("dead-rtu", "refused", "closing", "silent")
DEVICES_PER_BUS = 4   # a meter, a breaker, a valve and a flow meter on each dead bus


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` in seconds, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def refused_port() -> int:
    """A local port nothing listens on: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class DeadEndpoint:
    """A Modbus TCP endpoint that is there and useless: `silent` accepts and never
    answers, `close` accepts and closes at once. Counts connections and requests."""

    def __init__(self, mode: Literal["silent", "close"]) -> None:
        self.mode = mode
        self.connections = 0
        self.requests = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "close":
            writer.close()
            return
        self._writers.add(writer)
        try:
            while True:
                header = await reader.readexactly(6)   # MBAP: tid, protocol, length
                (length,) = struct.unpack(">H", header[4:6])
                await reader.readexactly(length)
                self.requests += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()


# --- the mixed building ----------------------------------------------------------


@dataclass
class MixedRun:
    """What one run of the mixed building showed, counted from its debug log and peers."""

    seconds: float                    # from READY to the end of the window
    ready_s: float                    # from the spawn to READY
    cpu_s: float                      # the daemon's CPU over `seconds`
    overload_cut: bool                # room 101's breaker off, `breaker.cut` overload
    balance_cut: bool                 # room 102's likewise, reason balance
    events: Counter[str] = field(default_factory=Counter)    # log lines by event
    lines: int = 0                    # log lines at INFO and above
    valve_lines: Counter[str] = field(default_factory=Counter)       # valve_fault by point
    operations: Counter[str] = field(default_factory=Counter)        # failed ops by device
    attempts: Counter[str] = field(default_factory=Counter)          # failed connects by bus
    peer: dict[str, int] = field(default_factory=dict)  # closing: connections, silent: requests


def mixed_config(workdir: Path, ports: dict[str, int]) -> Path:
    """Two live rooms (101 overloaded, 102 short of money) and, on each dead bus,
    a room (2xx) and a shower with its flow meter."""
    lines = [
        "[gateway]", 'building = "b07"', f'state_dir = "{workdir / "state"}"',
        'timezone = "Asia/Shanghai"', "poll_interval_s = 0.5",
        "[tariffs]", 'power = { price = "100", unit = "kWh" }',
        'shower = { price = "1", unit = "L" }',
        "[power]", "max_power_w = 1000", "trip_after_s = 1", "reclose_after_s = 600",
        "[[buses]]", 'name = "live"', 'type = "tcp"', 'host = "127.0.0.1"',
        f"port = {ports['live']}", "timeout_s = 0.3",
        "[[buses]]", 'name = "dead-rtu"', 'type = "rtu"', f'port = "{workdir / "ttyUSB9"}"',
        "timeout_s = 0.3",
    ]
    for bus in ("refused", "closing", "silent"):
        lines += ["[[buses]]", f'name = "{bus}"', 'type = "tcp"', 'host = "127.0.0.1"',
                  f"port = {ports[bus]}", "timeout_s = 0.3"]
    for i in range(2):
        lines += ["[[rooms]]", f'id = "{101 + i}"',
                  f'meter = {{ bus = "live", unit = {i + 1}, profile = "eastron-sdm120-import" }}',
                  f'breaker = {{ bus = "live", unit = {RELAY}, profile = "relay-board", '
                  f"channel = {i} }}"]
    for k, bus in enumerate(DEAD_BUSES):
        lines += ["[[rooms]]", f'id = "{201 + k}"',
                  f'meter = {{ bus = "{bus}", unit = 1, profile = "eastron-sdm120-import" }}',
                  f'breaker = {{ bus = "{bus}", unit = 31, profile = "relay-board", channel = 0 }}',
                  "[[readers]]", f'id = "r{k + 1}"', 'type = "serial"',
                  f'port = "{workdir / f"ttyR{k + 1}"}"',
                  "[[points]]", f'id = "shower-{k + 1}"', 'service = "shower"',
                  f'reader = "r{k + 1}"',
                  f'valve = {{ bus = "{bus}", unit = 31, profile = "relay-board", channel = 1 }}',
                  f'flow = {{ bus = "{bus}", unit = 40, profile = "pulse-counter", channel = 0, '
                  "ml_per_pulse = 10 }"]
    path = workdir / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _count(run: MixedRun, records: list[dict[str, Any]]) -> None:
    for r in records:
        event = str(r.get("event", ""))
        run.events[event] += 1
        if r.get("level") != "debug":
            run.lines += 1
        if event == "valve_fault":
            run.valve_lines[str(r.get("point"))] += 1
        elif event == "modbus_device_failed":
            run.operations[str(r.get("device"))] += 1
        elif event == "modbus_bus_connect_failed":
            run.attempts[str(r.get("bus"))] += 1


async def run_mixed(workdir: Path, seconds: float) -> MixedRun:
    """Start the mixed building, wait for READY, overload room 101, run `seconds`, stop."""
    sim = await SimBuilding.tcp(2, per_endpoint=2)
    closing, silent = DeadEndpoint("close"), DeadEndpoint("silent")
    daemon: Daemon | None = None
    try:
        for i in range(2):
            await sim.endpoints[0].set_coil(RELAY, i, True)
            sim.couple(i, 0, i)
        sim.set_load(0, 300.0)     # 101: fine until overloaded below
        sim.set_load(1, 800.0)     # 102: 5 fen at 10 fen/Wh: out of money in ~2 s
        ports = {"live": sim.ports[0], "refused": refused_port(),
                 "closing": await closing.start(), "silent": await silent.start()}
        config = mixed_config(workdir, ports)
        seed(workdir / "state", {"room-b07-101": 1_000_000, "room-b07-102": 5})
        daemon = Daemon(config, workdir, args=["--log-level", "debug"])
        await daemon.start()
        spawned = daemon.started_at
        ready = await daemon.ready(READY_WALL_S)
        assert daemon.proc is not None
        cpu0 = cpu_seconds(daemon.proc.pid)
        sim.set_load(0, 3000.0)
        await asyncio.sleep(seconds)
        cpu = cpu_seconds(daemon.proc.pid) - cpu0
        window = time.monotonic() - ready
        coils = [sim.endpoints[0].switch_on(RELAY, i) for i in range(2)]
        await daemon.stop()
        store = read_store(workdir / "state" / "gatewayd.db")
        cuts = {(e["room"], e["reason"]) for e in store.of("breaker.cut")}
        run = MixedRun(seconds=window, ready_s=ready - spawned, cpu_s=cpu,
                       overload_cut=not coils[0] and ("101", "overload") in cuts,
                       balance_cut=not coils[1] and ("102", "balance") in cuts,
                       peer={"closing": closing.connections, "silent": silent.requests})
        _count(run, daemon.log_records())
        return run
    finally:
        if daemon is not None:
            await daemon.close()
        await closing.stop()
        await silent.stop()
        await sim.stop()


def check_mixed(run: MixedRun, checks: Checks, label: str) -> None:
    """The campaign's invariants of one mixed run (counts; CPU as a share of the run)."""
    few = FEW_PER_S * run.seconds + FEW_AT_START
    checks.check(run.overload_cut, f"{label}: live room 101 not cut for overload")
    checks.check(run.balance_cut, f"{label}: live room 102 not cut for balance")
    for k in range(len(DEAD_BUSES)):
        point = f"shower-{k + 1}"
        n = run.valve_lines[point]
        checks.check(1 <= n <= 1 + run.seconds / 60, f"{label}: {n} valve_fault lines for {point}")
    for device, n in sorted(run.operations.items()):
        checks.check(n <= few, f"{label}: {n} operations tried on dead {device} in "
                               f"{run.seconds:.0f} s")
    for bus in ("dead-rtu", "refused"):
        n = run.attempts[bus]
        checks.check(1 <= n <= few, f"{label}: {n} connection attempts on {bus}")
    n = run.peer["closing"]
    checks.check(n <= few, f"{label}: {n} connections to the endpoint that closes at once")
    # The silent endpoint: each of its devices' operations is up to `retries + 1` requests.
    n, most = run.peer["silent"], few * DEVICES_PER_BUS * 2
    checks.check(n <= most, f"{label}: {n} requests at the silent endpoint (bound {most:.0f})")
    most = LINES_BASE + LINES_PER_DEVICE * 3 * len(DEAD_BUSES) * (1 + run.seconds / 60)
    checks.check(run.lines <= most, f"{label}: {run.lines} log lines at INFO and above "
                                    f"(bound {most:.0f}): {run.events.most_common(5)}")
    checks.check(run.cpu_s <= CPU_SHARE_MAX * run.seconds,
                 f"{label}: {run.cpu_s:.1f} CPU s in {run.seconds:.0f} s")
    bad = [e for e in ("component_crashed", "loop_stalled", "point_loop_failed",
                       "room_evaluation_failed") if run.events[e]]
    checks.check(not bad, f"{label}: {bad} in the log")


# --- the silent 312-room building ------------------------------------------------


@dataclass
class SilentRun:
    ready_s: float | None             # from the spawn to READY (None: none within READY_WALL_S)
    cut: bool                         # the live room 601 cut for overload
    rooms: int
    points: int
    unconfirmed: int                  # valves reported not confirmed closed at start
    unverified: int                   # breakers not read within the start's budget


def _generate() -> Any:
    spec = importlib.util.spec_from_file_location("conf_generate", ROOT / "conf" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate


def silent_config(workdir: Path, silent_ports: list[int], live_port: int) -> Path:
    """conf/generate.py's default building (6 x 52 rooms, 36 showers) on `silent_ports`
    (one per floor), with room 601 moved onto the live server at `live_port`."""
    placeholder = 40000
    text: str = _generate()("b07", floors=6, rooms_per_floor=52, showers_per_floor=6,
                            subnet="10.20", host="127.0.0.1", base_port=placeholder)
    for f, port in enumerate(silent_ports):
        text = text.replace(f"\nport = {placeholder + f}\n", f"\nport = {port}\n")
    text = text.replace("[gateway]\n", f'[gateway]\nstate_dir = "{workdir / "state"}"\n', 1)
    moved = [('meter = { bus = "floor6", unit = 1, profile = "eastron-sdm120" }',
              'meter = { bus = "live", unit = 1, profile = "eastron-sdm120-import" }'),
             ('breaker = { bus = "floor6", unit = 200, profile = "relay-board", channel = 0 }',
              f'breaker = {{ bus = "live", unit = {RELAY}, profile = "relay-board", channel = 0 }}')]
    for old, new in moved:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    text += ("\n[[buses]]\nname = \"live\"\ntype = \"tcp\"\nhost = \"127.0.0.1\"\n"
             f"port = {live_port}\ntimeout_s = 0.3\n")
    path = workdir / "gateway.toml"
    path.write_text(text)
    return path


async def run_silent(workdir: Path, cut_within_s: float = 30.0) -> SilentRun:
    """Start the silent building, time READY, overload room 601 and see it cut."""
    sim = await SimBuilding.tcp(1, per_endpoint=1)
    floors = [DeadEndpoint("silent") for _ in range(6)]
    daemon: Daemon | None = None
    try:
        await sim.endpoints[0].set_coil(RELAY, 0, True)
        sim.couple(0, 0, 0)
        sim.set_load(0, 200.0)
        config = silent_config(workdir, [await f.start() for f in floors], sim.ports[0])
        rooms = config.read_text().count("[[rooms]]")
        points = config.read_text().count("[[points]]")
        seed(workdir / "state", {"room-b07-601": 1_000_000})
        daemon = Daemon(config, workdir)
        await daemon.start()
        try:
            ready: float | None = await daemon.ready(READY_WALL_S) - daemon.started_at
        except TimeoutError:
            ready = None
        cut = False
        if ready is not None:
            sim.set_load(0, 3000.0)   # the generated limit is 1500 W, trip after 3 s
            cut = bool(await until(lambda: not sim.endpoints[0].switch_on(RELAY, 0), cut_within_s))
        await daemon.stop()
        records = daemon.log_records()
        unconfirmed = sum(len(r.get("points", [])) for r in records
                          if r.get("event") == "valves_unconfirmed_at_start")
        unverified = sum(int(r.get("count", 0)) for r in records
                         if r.get("event") == "breakers_unverified_at_start")
        if cut:
            cuts = read_store(workdir / "state" / "gatewayd.db").of("breaker.cut")
            cut = any(e["room"] == "601" and e["reason"] == "overload" for e in cuts)
        return SilentRun(ready, cut, rooms, points, unconfirmed, unverified)
    finally:
        if daemon is not None:
            await daemon.close()
        for f in floors:
            await f.stop()
        await sim.stop()


def check_silent(run: SilentRun, checks: Checks) -> None:
    checks.check(run.ready_s is not None,
                 f"silent building: no READY within {READY_WALL_S:g} s (budget {START_IO_S:g} s "
                 "of device I/O)")
    checks.check(run.cut, "silent building: live room 601 not cut for overload")
    checks.check(run.unconfirmed == run.points,
                 f"silent building: {run.unconfirmed} of {run.points} silent valves reported "
                 "not confirmed closed")
    checks.check(run.unverified == run.rooms - 1,
                 f"silent building: {run.unverified} of {run.rooms} breakers unverified "
                 "(all but the live room's)")


# --- the campaign ---------------------------------------------------------------------


async def dead_bus(iterations: int) -> Row:
    """`iterations` runs of the mixed building (8 s each in the short form, 60 s in the
    full one), then the silent 312-room building's start."""
    from tests.soak.campaigns import workdir

    t0 = time.monotonic()
    checks = Checks()
    seconds = 8.0 if iterations < 3 else 60.0
    notes: list[str] = []
    for it in range(iterations):
        async with workdir("deadbus") as tmp:
            run = await run_mixed(tmp, seconds)
        check_mixed(run, checks, f"round {it + 1}")
        notes.append(f"round {it + 1}: {run.cpu_s:.2f} CPU s in {run.seconds:.0f} s, "
                     f"{run.lines} log lines, valve_fault lines {dict(run.valve_lines)}, "
                     f"connect attempts {dict(run.attempts)}, peers {run.peer}")
    async with workdir("silent") as tmp:
        silent = await run_silent(tmp)
    check_silent(silent, checks)
    ready = "none" if silent.ready_s is None else f"{silent.ready_s:.2f} s"
    notes.append(f"silent building: READY after {ready}, "
                 f"{silent.unconfirmed} valves unconfirmed, {silent.unverified} breakers unverified")
    return Row("dead_bus", iterations, iterations * len(DEAD_BUSES) + 6, checks.count,
               checks.violations, notes, time.monotonic() - t0)


__all__ = ["DeadEndpoint", "MixedRun", "SilentRun", "check_mixed", "check_silent", "dead_bus",
           "refused_port", "run_mixed", "run_silent"]
