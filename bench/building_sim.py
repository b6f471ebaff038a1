"""The simulated building in a process of its own (its CPU is not the daemon's), and the
bench's side of its control channel.

`sim.modbus` as a command offers one 16-channel board for the whole building, too
few for 500 breakers, so the endpoints are built here from `SimEndpoint` (the layout
is bench/building.py's). The control channel is JSON lines on the child's
stdin/stdout: set a room's load, read request counts, and be told of every coil
write with the simulator's `time.monotonic()` when the request arrived (same
machine, same monotonic clock as the bench).

    .venv/bin/python bench/building_sim.py --meters N [--valves N] [--seed N]   (run by SimProc)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from building import PER_ENDPOINT, RELAY_BASE, VALVE_BASE  # noqa: E402
from proc_stats import cpu_seconds  # noqa: E402
from pymodbus.pdu import ModbusPDU  # noqa: E402

from sim.modbus_endpoint import SimEndpoint  # noqa: E402
from sim.modbus_units import COILS  # noqa: E402

# Safety nets against a hung bench, not measurements.
START_TIMEOUT_S = 60.0
CUT_TIMEOUT_S = 30.0


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


def _on_write(t: float, ep: int, unit: int, addr: int, on: bool) -> None:
    _emit({"ev": "write", "t": t, "ep": ep, "unit": unit, "addr": addr, "on": on})


def build_endpoints(meters: int, valves: int, seed: int) -> list[RecordingEndpoint]:
    """The floors' endpoints (meters and breaker boards), then the valves' one if any."""
    endpoints: list[RecordingEndpoint] = []
    for e in range(-(-meters // PER_ENDPOINT)):
        n = min(PER_ENDPOINT, meters - e * PER_ENDPOINT)
        boards = -(-n // COILS)
        endpoints.append(RecordingEndpoint(
            e, _on_write, meters=range(1, n + 1), relays=[RELAY_BASE + b for b in range(boards)]))
    if valves:
        endpoints.append(RecordingEndpoint(
            len(endpoints), _on_write, relays=[VALVE_BASE + b for b in range(-(-valves // COILS))]))
    rng = random.Random(seed)
    for ep in endpoints:
        for m in ep.meters.values():
            m.power_w, m.pf = rng.uniform(20.0, 1000.0), rng.uniform(0.85, 1.0)
            m.energy_kwh = rng.uniform(0.0, 5000.0)
    return endpoints


def _request_counts(endpoints: Sequence[RecordingEndpoint]) -> dict[str, Any]:
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


def handle(endpoints: Sequence[RecordingEndpoint], cmd: dict[str, Any]) -> dict[str, Any]:
    """The reply to one control command."""
    op = cmd["op"]
    if op == "load":
        m = endpoints[cmd["ep"]].meters[cmd["unit"]]
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
        return _request_counts(endpoints)
    raise ValueError(f"unknown op {op!r}")


async def serve_commands(endpoints: Sequence[RecordingEndpoint], reader: asyncio.StreamReader,
                         stop: asyncio.Event) -> None:
    """Answer control commands from `reader` until EOF, then set `stop`."""
    while line := await reader.readline():
        cmd = json.loads(line)
        try:
            reply = handle(endpoints, cmd)
        except Exception as e:  # a bench bug: say so, keep serving
            reply = {"error": repr(e)}
        _emit({"id": cmd["id"], **reply})
    stop.set()


async def sim_child(meters: int, valves: int, seed: int) -> None:
    """Serve the building and answer control commands on stdin until EOF or SIGTERM."""
    endpoints = build_endpoints(meters, valves, seed)
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
    task = asyncio.create_task(serve_commands(endpoints, reader, stop))
    await stop.wait()
    task.cancel()
    for ep in endpoints:
        await ep.stop()


# --- the bench's side --------------------------------------------------------------------


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
            sys.executable, str(Path(__file__).resolve()), "--meters", str(meters),
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--meters", type=int, required=True)
    parser.add_argument("--valves", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    asyncio.run(sim_child(args.meters, args.valves, args.seed))


if __name__ == "__main__":
    main()
