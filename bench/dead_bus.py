"""Benchmark: what dead buses cost the daemon, and how soon READY comes, printed (no pass/fail).

1. The mixed building of tests/soak/dead_bus.py for `--seconds` (60): two live
   rooms beside a room and a shower on each of four dead buses (an RTU port
   that does not exist, a refused TCP port, an endpoint that accepts and closes
   at once, one that accepts and never answers), the real daemon with its debug
   log. Printed: CPU seconds of the daemon from READY to the end (utime+stime
   from /proc/PID/stat) and as a share of one core, log lines at INFO and above,
   `valve_fault` lines, failed operations per dead device, connection attempts
   per dead bus, and what the closing and silent endpoints saw.
2. conf/generate.py's 312-room building on endpoints that accept and never
   answer, `--trials` (3) times: seconds from the spawn of `gatewayd run` to
   READY=1 (the promise is 10 s; device I/O at start gets START_IO_S), and
   whether the one live room was then cut for overload.

    .venv/bin/python bench/dead_bus.py [--seconds 60] [--trials 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the scenarios live in tests/soak/dead_bus.py

from gatewayd.services.component import START_IO_S  # noqa: E402 - after the path above
from tests.soak.dead_bus import run_mixed, run_silent  # noqa: E402


async def main(seconds: float, trials: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-deadbus-") as tmp:
        run = await run_mixed(Path(tmp), seconds)
    print(f"dead buses, {run.seconds:.0f} s after READY (READY {run.ready_s:.1f} s after spawn):")
    print(f"  daemon CPU: {run.cpu_s:.2f} s ({100 * run.cpu_s / run.seconds:.1f} % of one core)")
    print(f"  log lines at INFO and above: {run.lines} "
          f"(all levels: {sum(run.events.values())}); valve_fault lines: {dict(run.valve_lines)}")
    print(f"  failed operations per dead device: {dict(sorted(run.operations.items()))}")
    print(f"  failed connection attempts per bus: {dict(sorted(run.attempts.items()))}")
    print(f"  connections to the closing endpoint: {run.peer['closing']}; "
          f"requests at the silent one: {run.peer['silent']}")
    print(f"  live rooms: overload cut {run.overload_cut}, balance cut {run.balance_cut}")
    ready: list[float] = []
    for t in range(trials):
        with tempfile.TemporaryDirectory(prefix="bench-silent-") as tmp:
            s = await run_silent(Path(tmp))
        print(f"312-room silent building, trial {t + 1}: READY after "
              f"{'none' if s.ready_s is None else f'{s.ready_s:.2f} s'} (start I/O budget "
              f"{START_IO_S:g} s); {s.unconfirmed} valves unconfirmed, {s.unverified} breakers "
              f"unverified; live room cut for overload: {s.cut}")
        if s.ready_s is not None:
            ready.append(s.ready_s)
    if ready:
        print(f"READY after spawn: median {statistics.median(ready):.2f} s, max {max(ready):.2f} s")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--trials", type=int, default=3)
    args = p.parse_args()
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    asyncio.run(main(args.seconds, args.trials))
