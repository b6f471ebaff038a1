"""Benchmark: the electricity figures of the whole daemon process, printed (no pass/fail).

A simulated building runs in a separate process (its CPU is not the daemon's):
`--meters` SDM120 meters, 50 per Modbus TCP endpoint, and their breakers' relay
boards (bench/building.py lays them out, bench/building_sim.py serves them and
stamps every coil write with the simulator's `time.monotonic()`).

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
import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import structlog  # noqa: E402
from building import (  # noqa: E402
    account,
    gateway_config,
    locate,
    rich_rooms,
    room_id,
    rooms_config,
    seed_store,
    write_config,
)
from building_sim import SimProc  # noqa: E402
from cuts import (  # noqa: E402
    BALANCE_FEN,
    MAX_POWER_W,
    POLL_S,
    PRICE_YUAN_KWH,
    TRIP_AFTER_S,
    CutTrial,
    cut_trials,
)
from daemon_process import Daemon  # noqa: E402
from figures import spread  # noqa: E402
from proc_stats import cpu_seconds, peak_rss_mb  # noqa: E402

# Settle: every bus connected, every room read.
SETTLE_S = 3.0


def daemon_config(workdir: Path, ports: Sequence[int], meters: int, profile: str) -> Path:
    return write_config(workdir, [
        *gateway_config(workdir, f"poll_interval_s = {POLL_S}"),
        "[tariffs]", f'power = {{ price = "{PRICE_YUAN_KWH}", unit = "kWh" }}', "",
        "[power]", f"max_power_w = {MAX_POWER_W}", f"trip_after_s = {TRIP_AFTER_S}",
        "reclose_after_s = 600", "",
        *rooms_config(ports, meters, profile),
    ])


async def measure_polling(sim: SimProc, daemon: Daemon, seconds: float, profile: str, meters: int,
                          ready_s: float) -> None:
    """Print the daemon's CPU, memory and requests per meter over `seconds` of polling."""
    c0, cpu0, sim_cpu0 = await sim.call("counts"), cpu_seconds(daemon.pid), sim.cpu_s()
    await asyncio.sleep(seconds)
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


def print_cuts(balance: list[CutTrial], overload: list[CutTrial]) -> None:
    """Detection to cut of each case, against one poll period plus 100 ms."""
    target = POLL_S + 0.1
    for name, trials in (("balance reaches zero", balance),
                         (f"power > max_power_w for {TRIP_AFTER_S:g} s", overload)):
        print(f"  detection to cut, {name}:")
        print(f"    condition met -> breaker write    {spread([t.cut - t.met for t in trials])}")
        if trials is overload:
            print("    timer start + trip_after_s -> write "
                  f"{spread([t.cut - t.timer for t in trials])}")
        print(f"    deciding reading -> breaker write {spread([t.cut - t.reading for t in trials])}")
        within = sum(1 for t in trials if t.cut - t.met <= target)
        line = f"    within poll period + 100 ms ({target * 1000:.0f} ms): {within}/{len(trials)}"
        if trials is overload:
            timely = sum(1 for t in trials if t.cut - t.timer <= target)
            line += f" from the condition; {timely}/{len(trials)} from the timer"
        print(line)


async def run_daemon(args: argparse.Namespace, sim: SimProc, workdir: Path, profile: str,
                     balance_rooms: list[int], overload_rooms: list[int]) -> None:
    """Start the daemon on the simulated building, measure it polling, then time the cuts."""
    meters = args.meters
    config = daemon_config(workdir, sim.ports, meters, profile)
    balances = rich_rooms(meters)
    balances.update({account(room_id(i)): BALANCE_FEN for i in balance_rooms})
    seed_store(workdir / "state", balances)
    daemon = Daemon(config, workdir)
    t_start = time.monotonic()
    async with daemon.running(tail=8000, indent="  "):
        ready_s = time.monotonic() - t_start
        await asyncio.sleep(SETTLE_S)
        await measure_polling(sim, daemon, args.seconds, profile, meters, ready_s)
        balance, overload = await cut_trials(sim, balance_rooms, overload_rooms)
        print_cuts(balance, overload)


async def run_profile(args: argparse.Namespace, profile: str) -> None:
    meters = args.meters
    rng = random.Random(7)
    # Test rooms spread over every endpoint, never the same room twice.
    picks = rng.sample(range(meters), min(meters, 2 * args.trials))
    balance_rooms, overload_rooms = picks[: len(picks) // 2], picks[len(picks) // 2:]
    sim = await SimProc.start(meters)
    try:
        for i in picks:
            e, unit = locate(i)
            await sim.call("load", ep=e, unit=unit, w=0, kwh=0.0)
        await sim.call("watch", meters=[list(locate(i)) for i in picks])
        with tempfile.TemporaryDirectory(prefix="bench-daemon-poll-") as tmp:
            await run_daemon(args, sim, Path(tmp), profile, balance_rooms, overload_rooms)
    finally:
        await sim.stop()


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--meters", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--trials", type=int, default=10, help="rooms per detection-to-cut case")
    parser.add_argument("--profile", action="append",
                        help="meter profile (repeatable; default both SDM120 profiles)")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(f"daemon_poll: {os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    for profile in args.profile or ["eastron-sdm120", "eastron-sdm120-import"]:
        await run_profile(args, profile)


if __name__ == "__main__":
    asyncio.run(main())
