"""Benchmark: the electricity figures of the whole daemon process, printed (no pass/fail).

A simulated building runs in a separate process (its CPU is not the daemon's):
`--meters` SDM120 meters, 50 per Modbus TCP endpoint (one `[[buses]]` per
endpoint, like one gateway per floor), and on each endpoint the relay boards
for that floor's breakers (units 201.., 16 coils each; room on unit u is
breaker channel (u-1) % 16 of board 201 + (u-1) // 16). `sim.modbus`
as a command offers one 16-channel board for the whole building, too few for
500 breakers, so this bench builds its endpoints from `SimEndpoint` itself and
talks to that process over a small JSON-lines control channel (stdin/stdout):
set a room's load, read request counts, and be told of every coil write with
the simulator's `time.monotonic()` when the request arrived (same machine,
same monotonic clock as this process).

The real daemon (`python -m gatewayd.app.cli run`) polls every room each
`poll_interval_s` = 1. For each meter profile (`eastron-sdm120`, 2 requests a
reading; `eastron-sdm120-import`, 1) it prints, over `--seconds`:
CPU seconds of the daemon (utime+stime from /proc/PID/stat), peak RSS (VmHWM),
and requests per meter per cycle counted at the simulator. Then detection to
cut, from the moment a rule's condition is met in the meter's registers to the
breaker's coil write arriving at the simulator:

- balance: rooms with 30 fen (10 fen/Wh: 3 Wh) draw 1000..1360 W from energy 0;
  their balance reaches zero at the first reading whose register rounds to
  3 Wh, i.e. once the simulator's integrated energy reaches 2.5 Wh at
  T0 + 2.5 * 3600 / P.
- overload: rooms go to 2000 W (limit 1500) at T; the condition of the brief,
  "over the limit for trip_after_s", is met at T + trip_after_s. The rule
  (behaviour.md) starts the timer at the first reading above the limit, so
  this figure includes up to one poll period of timer start by design; the
  daemon reads the meter again the moment the timer runs out (not at the
  next poll), so the cut follows the timer within one request.

Each is also given from the last meter request before the cut (the reading
that decided it) to the cut: the gateway's own processing. Target: one poll
period plus 100 ms.

    .venv/bin/python bench/daemon_poll.py [--meters 500] [--seconds 60] [--trials 10]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import math
import os
import random
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402
from pymodbus.pdu import ModbusPDU  # noqa: E402

from gatewayd.store.db import Store  # noqa: E402
from gatewayd.store.ledger import Ledger  # noqa: E402
from gatewayd.store.txn import Txn  # noqa: E402
from sim.modbus_endpoint import SimEndpoint  # noqa: E402
from sim.modbus_units import COILS  # noqa: E402

PER_ENDPOINT = 50
RELAY_BASE = 201
VALVE_BASE = 201
BUILDING = "b07"
# 100 yuan per kWh: 10 fen per Wh, so a small balance runs out in seconds.
PRICE_YUAN_KWH = "100"
FEN_PER_WH = 10
MAX_POWER_W = 1500
TRIP_AFTER_S = 2.0
POLL_S = 1.0
RICH_FEN = 10**9
BALANCE_FEN = 30
# Safety nets against a hung bench, not measurements.
START_TIMEOUT_S = 60.0
CUT_TIMEOUT_S = 30.0


def room_id(index: int) -> str:
    """Room index 0.. -> "101".."150", "201".., one floor per endpoint."""
    return f"{index // PER_ENDPOINT + 1}{index % PER_ENDPOINT + 1:02d}"


def locate(index: int) -> tuple[int, int]:
    """(endpoint, meter unit) of room `index`."""
    return index // PER_ENDPOINT, index % PER_ENDPOINT + 1


def breaker_of(unit: int) -> tuple[int, int]:
    """(relay unit, channel) of the breaker of the room metered by `unit`."""
    return RELAY_BASE + (unit - 1) // COILS, (unit - 1) % COILS


# --- the simulator process ---------------------------------------------------------------


class RecordingEndpoint(SimEndpoint):
    """A SimEndpoint that counts requests by (unit, function) and reports coil writes."""

    def __init__(self, index: int, on_write: Callable[[float, int, int, int, bool], None],
                 **kinds: Any) -> None:
        super().__init__(**kinds)
        self.index = index
        self.on_write = on_write
        self.by_fc: collections.Counter[tuple[int, int]] = collections.Counter()
        self.watched: set[int] = set()
        self.reads: dict[int, list[float]] = collections.defaultdict(list)

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            now = time.monotonic()
            fc, unit = pdu.function_code, pdu.dev_id
            self.by_fc[unit, fc] += 1
            if fc in (5, 15):
                bits = getattr(pdu, "bits", None) or [False]
                self.on_write(now, self.index, unit, int(getattr(pdu, "address", 0)), bool(bits[0]))
            elif fc in (3, 4) and unit in self.watched:
                self.reads[unit].append(now)
        return super()._trace_pdu(sending, pdu)


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def sim_child(meters: int, valves: int, seed: int) -> None:
    """Serve the building and answer control commands on stdin until EOF or SIGTERM."""
    def on_write(t: float, ep: int, unit: int, addr: int, on: bool) -> None:
        _emit({"ev": "write", "t": t, "ep": ep, "unit": unit, "addr": addr, "on": on})

    endpoints: list[RecordingEndpoint] = []
    for e in range(-(-meters // PER_ENDPOINT)):
        n = min(PER_ENDPOINT, meters - e * PER_ENDPOINT)
        boards = -(-n // COILS)
        endpoints.append(RecordingEndpoint(
            e, on_write, meters=range(1, n + 1), relays=[RELAY_BASE + b for b in range(boards)]))
    if valves:
        endpoints.append(RecordingEndpoint(
            len(endpoints), on_write, relays=[VALVE_BASE + b for b in range(-(-valves // COILS))]))
    rng = random.Random(seed)
    for ep in endpoints:
        for m in ep.meters.values():
            m.power_w, m.pf = rng.uniform(20.0, 1000.0), rng.uniform(0.85, 1.0)
            m.energy_kwh = rng.uniform(0.0, 5000.0)
    ports = [await ep.start_tcp() for ep in endpoints]
    for ep in endpoints[: len(endpoints) - bool(valves)]:
        for relay in ep.relays:  # every breaker on: the daemon must find nothing to fix
            for ch in range(COILS):
                await ep.set_coil(relay, ch, True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    _emit({"ev": "ready", "ports": ports})

    def handle(cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd["op"]
        if op == "load":
            ep = endpoints[cmd["ep"]]
            m = ep.meters[cmd["unit"]]
            now = time.monotonic()
            m.advance(now)
            m.power_w = float(cmd["w"])
            if "kwh" in cmd:
                m.energy_kwh = float(cmd["kwh"])
            return {"t": now}
        if op == "watch":
            for ep_i, unit in cmd["meters"]:
                endpoints[ep_i].watched.add(unit)
            return {}
        if op == "reads":
            return {"t": endpoints[cmd["ep"]].reads.get(cmd["unit"], [])}
        if op == "counts":
            meter_reads = relay_reads = writes = 0
            for ep in endpoints:
                for (unit, fc), n in ep.by_fc.items():
                    if unit in ep.meters and fc in (3, 4):
                        meter_reads += n
                    elif fc in (1, 3):
                        relay_reads += n
                    elif fc in (5, 15):
                        writes += n
            return {"t": time.monotonic(), "meter_reads": meter_reads, "relay_reads": relay_reads,
                    "writes": writes}
        raise ValueError(f"unknown op {op!r}")

    async def commands() -> None:
        while line := await reader.readline():
            cmd = json.loads(line)
            try:
                reply = handle(cmd)
            except Exception as e:  # a bench bug: say so, keep serving
                reply = {"error": repr(e)}
            _emit({"id": cmd["id"], **reply})
        stop.set()

    task = asyncio.create_task(commands())
    await stop.wait()
    task.cancel()
    for ep in endpoints:
        await ep.stop()


# --- driving the simulator and the daemon ------------------------------------------------


@dataclass
class Write:
    t: float
    ep: int
    unit: int
    addr: int
    on: bool


@dataclass
class SimProc:
    """The simulator subprocess and its control channel."""

    proc: asyncio.subprocess.Process
    ports: list[int]
    writes: list[Write] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _replies: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _next: int = 0
    _task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, meters: int, valves: int = 0, seed: int = 1) -> SimProc:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), "--sim-child", "--meters", str(meters),
            "--valves", str(valves), "--seed", str(seed),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
            limit=1 << 24,
        )
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(START_TIMEOUT_S):
                line = await proc.stdout.readline()
            ready = json.loads(line)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        sim = cls(proc, ready["ports"])
        sim._task = asyncio.create_task(sim._read())
        return sim

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            if msg.get("ev") == "write":
                self.writes.append(Write(msg["t"], msg["ep"], msg["unit"], msg["addr"], msg["on"]))
                self.changed.set()
            elif "id" in msg:
                self._replies.pop(msg["id"]).set_result(msg)

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self._next += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[self._next] = fut
        self.proc.stdin.write((json.dumps({"id": self._next, "op": op, **args}) + "\n").encode())
        await self.proc.stdin.drain()
        reply = await fut
        if "error" in reply:
            raise RuntimeError(f"simulator: {reply['error']}")
        return reply

    async def write_to(self, ep: int, unit: int, addr: int, on: bool, *, after: float,
                       timeout: float = CUT_TIMEOUT_S) -> Write:
        """The first coil write to (ep, unit, addr) = on arriving after `after`."""
        async with asyncio.timeout(timeout):
            while True:
                for w in reversed(self.writes):
                    if w.t < after:
                        break
                    if (w.ep, w.unit, w.addr, w.on) == (ep, unit, addr, on):
                        return w
                self.changed.clear()
                await self.changed.wait()

    async def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(10):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def cpu_s(self) -> float:
        return cpu_seconds(self.proc.pid)


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` in seconds, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


def seed_store(state_dir: Path, balances: dict[str, int]) -> None:
    store = Store.open(state_dir, BUILDING)
    try:
        def job(txn: Txn) -> None:
            for account, fen in balances.items():
                Ledger.credit(txn, account, fen)
        store.call(job)
    finally:
        store.close()


def account(room: str) -> str:
    return f"room-{BUILDING}-{room}"


class Daemon:
    """The real daemon as a subprocess; READY through a private NOTIFY_SOCKET."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.log = workdir / "daemon.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        sock_path = self.workdir / "notify"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(sock_path))
        sock.setblocking(False)
        try:
            with self.log.open("ab") as out:
                self.proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "gatewayd.app.cli", "run", "-c", str(self.config),
                    "--log-format", "json", cwd=ROOT, stdout=out, stderr=asyncio.subprocess.STDOUT,
                    env={**os.environ, "NOTIFY_SOCKET": str(sock_path)},
                )
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(START_TIMEOUT_S):
                while b"READY=1" not in await loop.sock_recv(sock, 4096):
                    pass
        except BaseException:
            await self.stop()
            raise
        finally:
            sock.close()
            sock_path.unlink(missing_ok=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(20):
                return await proc.wait()
        except TimeoutError:
            proc.kill()
            return await proc.wait()

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def rooms_config(ports: Sequence[int], meters: int, profile: str) -> list[str]:
    """The [[buses]] and [[rooms]] of the simulated building."""
    lines: list[str] = []
    for e, port in enumerate(ports[: -(-meters // PER_ENDPOINT)]):
        lines += ["[[buses]]", f'name = "floor{e + 1}"', 'type = "tcp"', 'host = "127.0.0.1"',
                  f"port = {port}", "timeout_s = 1.0", ""]
    for i in range(meters):
        e, unit = locate(i)
        relay, ch = breaker_of(unit)
        lines += [
            "[[rooms]]", f'id = "{room_id(i)}"',
            f'meter = {{ bus = "floor{e + 1}", unit = {unit}, profile = "{profile}" }}',
            f'breaker = {{ bus = "floor{e + 1}", unit = {relay}, profile = "relay-board", '
            f"channel = {ch} }}", "",
        ]
    return lines


def write_config(workdir: Path, ports: Sequence[int], meters: int, profile: str) -> Path:
    lines = [
        "[gateway]", f'building = "{BUILDING}"', f'state_dir = "{workdir / "state"}"',
        f"poll_interval_s = {POLL_S}", 'clock_synced = "yes"', "",
        "[tariffs]", f'power = {{ price = "{PRICE_YUAN_KWH}", unit = "kWh" }}', "",
        "[power]", f"max_power_w = {MAX_POWER_W}", f"trip_after_s = {TRIP_AFTER_S}",
        "reclose_after_s = 600", "",
        *rooms_config(ports, meters, profile),
    ]
    path = workdir / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


# --- figures -----------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(values: Sequence[float]) -> str:
    if not values:
        return "no samples"
    v = [x * 1000 for x in values]
    return (f"n={len(v)} p50={statistics.median(v):.0f} ms max={max(v):.0f} ms "
            f"(min {min(v):.0f} ms)")


@dataclass
class CutTrial:
    room: int
    met: float            # when the condition was met in the registers
    cut: float = math.nan  # the breaker write arriving at the simulator
    reading: float = math.nan  # the last meter request before the cut
    timer: float = math.nan  # overload: the first reading above the limit + trip_after_s


def readings(requests: Sequence[float]) -> list[tuple[float, float]]:
    """(first, last) request time of each reading: its requests come back to back."""
    out: list[tuple[float, float]] = []
    for t in sorted(requests):
        if out and t - out[-1][1] < 0.2 * POLL_S:
            out[-1] = (out[-1][0], t)
        else:
            out.append((t, t))
    return out


async def cut_trials(sim: SimProc, balance_rooms: list[int], overload_rooms: list[int],
                     ) -> tuple[list[CutTrial], list[CutTrial]]:
    """Start the loads (balance first, then overloads staggered) and time every cut."""
    balance: list[CutTrial] = []
    start = time.monotonic()
    for k, i in enumerate(balance_rooms):
        e, unit = locate(i)
        watts = 1000 + 40 * k
        t0 = (await sim.call("load", ep=e, unit=unit, w=watts))["t"]
        # Balance 30 fen at 10 fen/Wh: zero at a register of 3 Wh, reached at 2.5 Wh.
        wh_zero = math.ceil(BALANCE_FEN / FEN_PER_WH)
        balance.append(CutTrial(i, t0 + (wh_zero - 0.5) * 3600 / watts))
    overload: list[CutTrial] = []
    for k, i in enumerate(overload_rooms):
        await asyncio.sleep(0.137 * (k > 0))  # spread the start over the poll phase
        e, unit = locate(i)
        t = (await sim.call("load", ep=e, unit=unit, w=2000))["t"]
        overload.append(CutTrial(i, t + TRIP_AFTER_S))
    for trial in [*balance, *overload]:
        e, unit = locate(trial.room)
        relay, ch = breaker_of(unit)
        w = await sim.write_to(e, relay, ch, False, after=start)
        trial.cut = w.t
        reads = (await sim.call("reads", ep=e, unit=unit))["t"]
        trial.reading = max((t for t in reads if t <= w.t), default=math.nan)
        if trial in overload:
            # The first reading that starts after the load rose (with two requests a
            # reading, power is in the first) starts the rule's timer when it ends.
            starts = readings(reads)
            t_load = trial.met - TRIP_AFTER_S
            end = next(b for a, b in starts if a >= t_load)
            trial.timer = end + TRIP_AFTER_S
    return balance, overload


async def run_profile(args: argparse.Namespace, profile: str) -> None:
    meters = args.meters
    rng = random.Random(7)
    # Test rooms spread over every endpoint, never the same room twice.
    picks = rng.sample(range(meters), min(meters, 2 * args.trials))
    balance_rooms, overload_rooms = picks[: len(picks) // 2], picks[len(picks) // 2:]
    sim = await SimProc.start(meters)
    daemon: Daemon | None = None
    try:
        for i in picks:
            e, unit = locate(i)
            await sim.call("load", ep=e, unit=unit, w=0, kwh=0.0)
        await sim.call("watch", meters=[list(locate(i)) for i in picks])
        with tempfile.TemporaryDirectory(prefix="bench-daemon-poll-") as tmp:
            workdir = Path(tmp)
            config = write_config(workdir, sim.ports, meters, profile)
            balances = {account(room_id(i)): RICH_FEN for i in range(meters)}
            balances.update({account(room_id(i)): BALANCE_FEN for i in balance_rooms})
            seed_store(workdir / "state", balances)
            daemon = Daemon(config, workdir)
            t_start = time.monotonic()
            await daemon.start()
            ready_s = time.monotonic() - t_start
            await asyncio.sleep(3.0)  # settle: every bus connected, every room read
            c0, cpu0, sim_cpu0 = await sim.call("counts"), cpu_seconds(daemon.pid), sim.cpu_s()
            await asyncio.sleep(args.seconds)
            c1, cpu1, sim_cpu1 = await sim.call("counts"), cpu_seconds(daemon.pid), sim.cpu_s()
            wall = c1["t"] - c0["t"]
            cycles = wall / POLL_S
            cpu = cpu1 - cpu0
            print(f"\n== {profile}: {meters} rooms on {len(sim.ports)} Modbus TCP endpoints, "
                  f"poll {POLL_S:g} s, {wall:.1f} s measured")
            print(f"  start to READY           {ready_s:.2f} s")
            print(f"  daemon CPU               {cpu:.2f} s in {wall:.1f} s "
                  f"({100 * cpu / wall:.1f} % of one core, {1000 * cpu / cycles:.1f} ms per cycle)")
            print(f"  daemon CPU since start   {cpu1:.2f} s")
            print(f"  daemon peak RSS (VmHWM)  {peak_rss_mb(daemon.pid):.1f} MiB")
            meter_rate = (c1["meter_reads"] - c0["meter_reads"]) / meters / cycles
            relay_rate = (c1["relay_reads"] - c0["relay_reads"]) / meters / cycles
            print(f"  meter requests           {meter_rate:.3f} per meter per cycle")
            print(f"  breaker reads            {relay_rate:.3f} per room per cycle")
            print(f"  simulator CPU            {sim_cpu1 - sim_cpu0:.2f} s (separate process)")

            try:
                balance, overload = await cut_trials(sim, balance_rooms, overload_rooms)
            except BaseException:
                print(daemon.tail(8000), file=sys.stderr)
                raise
            target = POLL_S + 0.1
            for name, trials in (("balance reaches zero", balance),
                                 (f"power > max_power_w for {TRIP_AFTER_S:g} s", overload)):
                print(f"  detection to cut, {name}:")
                print(f"    condition met -> breaker write    {ms([t.cut - t.met for t in trials])}")
                if trials is overload:
                    print("    timer start + trip_after_s -> write "
                          f"{ms([t.cut - t.timer for t in trials])}")
                print(f"    deciding reading -> breaker write {ms([t.cut - t.reading for t in trials])}")
                within = sum(1 for t in trials if t.cut - t.met <= target)
                line = f"    within poll period + 100 ms ({target * 1000:.0f} ms): {within}/{len(trials)}"
                if trials is overload:
                    timely = sum(1 for t in trials if t.cut - t.timer <= target)
                    line += f" from the condition; {timely}/{len(trials)} from the timer"
                print(line)
            code = await daemon.stop()
            daemon = None
            if code != 0:
                print(f"  daemon exited with {code}")
    finally:
        if daemon is not None:
            await daemon.stop()
        await sim.stop()


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--meters", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--trials", type=int, default=10, help="rooms per detection-to-cut case")
    parser.add_argument("--profile", action="append",
                        help="meter profile (repeatable; default both SDM120 profiles)")
    parser.add_argument("--sim-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--valves", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sim_child:
        await sim_child(args.meters, args.valves, args.seed)
        return
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(f"daemon_poll: {os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    for profile in args.profile or ["eastron-sdm120", "eastron-sdm120-import"]:
        await run_profile(args, profile)


if __name__ == "__main__":
    asyncio.run(main())
