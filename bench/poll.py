"""Benchmark: poll simulated meters the way the daemon does, and print what it costs.

TCP (default): starts `python -m sim.modbus` as a subprocess (its CPU is
not counted) with `--meters` SDM120 meters, 50 per endpoint (one `ModbusBus` per
endpoint, as one `[[buses]]` entry per floor gateway), and polls every meter once
per `--interval` seconds for `--seconds`, each meter in its own task. Prints CPU
seconds of this process, peak RSS, requests per meter per cycle and the latency
from a poll's scheduled time to its reading.

`--rtu`: one RTU line at `--baud` whose simulator charges real wire time; polls
the meters back to back and prints meters/s against the wire's theoretical limit.

    python bench/poll.py --meters 500 --seconds 60
    python bench/poll.py --rtu --meters 10 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.errors import DeviceError  # noqa: E402
from drivers.modbus import ModbusBus, ModbusMeter  # noqa: E402
from drivers.modbus.frames.adu import frame_gap_s  # noqa: E402
from drivers.profile import SHIPPED_DIR, load_profile  # noqa: E402
from drivers.serial_line import character_time_s  # noqa: E402


def start_sim(extra: list[str]) -> tuple[subprocess.Popen[str], dict[str, object]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.modbus", *extra],
        stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise SystemExit("simulator did not start")
    return proc, json.loads(line)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


@dataclass
class TcpRun:
    """What polling every meter on schedule gave: latencies from schedule, worst per tick."""

    interval: float
    t0: float
    end: float
    latencies: list[float] = field(default_factory=list)
    cycle_done: dict[int, float] = field(default_factory=dict)
    reads: int = 0
    errors: int = 0

    async def poll(self, meter: ModbusMeter) -> None:
        """Read `meter` at each tick until the end, as the daemon's poll loop does."""
        loop = asyncio.get_running_loop()
        tick = 0
        while True:
            due = self.t0 + tick * self.interval
            if due >= self.end:
                return
            await asyncio.sleep(max(0.0, due - loop.time()))
            try:
                await meter.read()
                self.reads += 1
            except DeviceError:
                self.errors += 1
            done = loop.time()
            self.latencies.append(done - due)
            self.cycle_done[tick] = max(self.cycle_done.get(tick, 0.0), done - due)
            tick += max(1, round(meter.health.poll_delay(self.interval) / self.interval))


async def open_tcp_meters(args: argparse.Namespace, ports: list[int],
                          ) -> tuple[list[ModbusBus], list[ModbusMeter]]:
    """A bus per endpoint, 50 meters on each, started and read once (every bus connected)."""
    profile = load_profile(args.profile, [SHIPPED_DIR])
    buses = [ModbusBus.tcp(f"floor{i}", "127.0.0.1", p, timeout_s=1.0, retries=1,
                           max_in_flight=args.in_flight)
             for i, p in enumerate(ports)]
    meters = [buses[i // 50].meter(f"m{i}", i % 50 + 1, profile) for i in range(args.meters)]
    for bus in buses:
        await bus.start()
    await asyncio.gather(*(m.read() for m in meters))
    return buses, meters


def print_tcp(args: argparse.Namespace, run: TcpRun, buses: int, requests: int, cpu: float,
              wall: float) -> None:
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    latencies, cycles = run.latencies, list(run.cycle_done.values())
    print(f"meters: {args.meters} on {buses} TCP endpoints, interval {args.interval} s, "
          f"{args.seconds} s, max_in_flight {args.in_flight}")
    print(f"reads: {run.reads} ok, {run.errors} failed; requests per meter per cycle: "
          f"{requests / max(1, run.reads + run.errors):.2f}")
    print(f"CPU: {cpu:.2f} s in {wall:.1f} s wall = {100 * cpu / wall:.1f} % of one core "
          f"({cpu / wall * 60:.2f} CPU s per 60 s; {1e6 * cpu / max(1, requests):.0f} us/request)")
    print(f"peak RSS: {rss_mb:.1f} MB")
    print(f"read latency from schedule: p50 {1000 * pct(latencies, 0.5):.1f} ms, "
          f"p95 {1000 * pct(latencies, 0.95):.1f} ms, p99 {1000 * pct(latencies, 0.99):.1f} ms, "
          f"max {1000 * max(latencies, default=0):.1f} ms")
    print(f"cycle time (last meter of a tick): p50 {1000 * pct(cycles, 0.5):.1f} ms, "
          f"p95 {1000 * pct(cycles, 0.95):.1f} ms, max {1000 * max(cycles, default=0):.1f} ms")


async def bench_tcp(args: argparse.Namespace) -> None:
    proc, info = start_sim(["--meters", str(args.meters), "--per-endpoint", "50"])
    try:
        ports = info["ports"]
        assert isinstance(ports, list)
        buses, meters = await open_tcp_meters(args, ports)
        t0 = asyncio.get_running_loop().time() + 0.5
        run = TcpRun(args.interval, t0, t0 + args.seconds)
        gc.collect()
        requests0 = sum(b.stats.requests for b in buses)
        cpu0 = time.process_time()
        wall0 = time.monotonic()
        await asyncio.gather(*(run.poll(m) for m in meters))
        cpu = time.process_time() - cpu0
        wall = time.monotonic() - wall0
        requests = sum(b.stats.requests for b in buses) - requests0
        for bus in buses:
            await bus.close()
    finally:
        proc.terminate()
        proc.wait(10)
    print_tcp(args, run, len(buses), requests, cpu, wall)


async def bench_rtu(args: argparse.Namespace) -> None:
    proc, info = start_sim(["--rtu", "--meters", str(args.meters), "--baud", str(args.baud)])
    try:
        port = info["rtu"]
        assert isinstance(port, str)
        profile = load_profile(args.profile, [SHIPPED_DIR])
        bus = ModbusBus.rtu("rs485", port, baudrate=args.baud, timeout_s=0.5, retries=1)
        await bus.start()
        meters = [bus.meter(f"m{i}", i + 1, profile) for i in range(args.meters)]
        per_read = meters[0].requests_per_read
        await meters[0].read()
        ok = errors = 0
        cpu0 = time.process_time()
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            for m in meters:
                try:
                    await m.read()
                    ok += 1
                except DeviceError:
                    errors += 1
        wall = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        await bus.close()
    finally:
        proc.terminate()
        proc.wait(10)
    # One read: request 8 bytes, answer 5 + 2 * count bytes, a frame gap after each.
    blocks = meters[0]._plan
    char = character_time_s(args.baud)
    wire = sum((8 + 5 + 2 * req.count) * char + 2 * frame_gap_s(args.baud) for req, _ in blocks)
    print(f"RTU {args.baud} baud, {args.meters} meters, {per_read} request(s) per read, "
          f"{args.seconds} s")
    print(f"reads: {ok} ok, {errors} failed; {ok / wall:.1f} meters/s "
          f"(wire limit {1 / wire:.1f} meters/s with zero device turnaround: "
          f"{100 * ok / wall * wire:.0f} % of it)")
    print(f"CPU: {cpu:.2f} s = {100 * cpu / wall:.1f} % of one core")


def main() -> None:
    parser = argparse.ArgumentParser(description="Modbus polling benchmark")
    parser.add_argument("--meters", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--in-flight", type=int, default=2, help="TCP requests in flight per bus")
    parser.add_argument("--rtu", action="store_true")
    parser.add_argument("--baud", type=int, default=9600)
    parser.add_argument("--profile", default="eastron-sdm120",
                        help="meter profile (eastron-sdm120-import reads in one request)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.rtu:
        args.meters = args.meters or 10
        asyncio.run(bench_rtu(args))
    else:
        args.meters = args.meters or 500
        asyncio.run(bench_tcp(args))


if __name__ == "__main__":
    main()
