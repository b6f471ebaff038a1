"""Benchmark: the round time of a DL/T 645 bus against what the wire allows.

One simulated line (`sim.dlt645`, real byte timing: 11 bits a byte at 8E1) with
`--meters` meters, read as the daemon reads them: one poll loop per room, each
awaiting its meter's `read()` again as soon as the last one is in (power every
read, energy and the other fields in turn). Prints the achieved round time (every
meter read once) against the wire's limit for the same traffic: the bytes that
crossed the wire x 11 bits / baud, plus the meters' turnaround per request.
The gateway's own cost is what lies between (quiet checks, loop latency).

    python bench/dlt645_round.py --meters 20 --rounds 15
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from pathlib import Path

import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.dlt645.bus import Dlt645Bus  # noqa: E402
from drivers.dlt645.devices import Dlt645Meter, FieldSpec  # noqa: E402
from drivers.errors import DeviceError  # noqa: E402
from sim.dlt645 import SimDltLine, SimDltMeter, pty_parity  # noqa: E402

FIELDS = {   # the shipped dlt645-2007 profile (config.md)
    "energy_wh": FieldSpec(0x00010000, 4, decimals=2, scale=1000),
    "power_w": FieldSpec(0x02030000, 3, decimals=4, signed=True, scale=1000),
    "voltage_v": FieldSpec(0x02010100, 2, decimals=1),
    "current_a": FieldSpec(0x02020100, 3, decimals=3, signed=True),
    "pf": FieldSpec(0x02060000, 2, decimals=3, signed=True),
}


async def room_loop(meter: Dlt645Meter, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(DeviceError):
            await meter.read()


async def bench(args: argparse.Namespace) -> None:
    sims = [SimDltMeter(f"{i + 1:012d}") for i in range(args.meters)]
    for i, s in enumerate(sims):
        s.physics.power_w = 100.0 + 37 * i
    line = SimDltLine(sims, baudrate=args.baud, turnaround_s=args.turnaround)
    await line.start()
    bus = Dlt645Bus("rs485-dlt", line.client_port, baudrate=args.baud, parity=pty_parity("E"),
                    timeout_s=0.5, retries=1)
    await bus.start()
    meters = [bus.meter(f"meter-{s.address}", s.address, FIELDS) for s in sims]
    stop = asyncio.Event()
    loops = [asyncio.create_task(room_loop(m, stop)) for m in meters]
    try:
        while bus.stats.rounds < 2:   # the first round reads every field: not the steady state
            await asyncio.sleep(0.05)
        rounds0, bytes0, requests0 = bus.stats.rounds, line.wire_bytes, line.requests
        t0 = time.monotonic()
        while bus.stats.rounds < rounds0 + args.rounds:
            await asyncio.sleep(0.01)
        wall = time.monotonic() - t0
        rounds = bus.stats.rounds - rounds0
        wire_s = ((line.wire_bytes - bytes0) * line.char_s
                  + (line.requests - requests0) * args.turnaround)
        requests = line.requests - requests0
    finally:
        stop.set()
        for t in loops:
            t.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await bus.close()
        await line.stop()
    print(f"DL/T 645 at {args.baud} baud 8E1, {args.meters} meters, "
          f"turnaround {args.turnaround * 1000:.0f} ms, {rounds} rounds")
    print(f"requests per round: {requests / rounds:.1f} "
          f"({requests / rounds / args.meters:.2f} per meter: power, and a field in turn)")
    print(f"round time: {wall / rounds:.2f} s achieved, {wire_s / rounds:.2f} s the wire's limit: "
          f"{100 * wire_s / wall:.1f} % of it")
    print(f"power of each meter every {wall / rounds:.2f} s; failures {bus.stats.failures}, "
          f"dropped bytes {bus.stats.dropped_bytes}")


def main() -> None:
    parser = argparse.ArgumentParser(description="DL/T 645 bus round benchmark")
    parser.add_argument("--meters", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--baud", type=int, default=2400)
    parser.add_argument("--turnaround", type=float, default=0.02,
                        help="the meters' answer delay, seconds (real meters: 20 to 100 ms)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
