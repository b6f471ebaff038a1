"""Benchmark: a card emulator cycling UIDs at one reader, printed as figures (no pass/fail).

The real daemon (`python -m gatewayd.app.cli run`) serves two water points, each
with an RDM6300 on a pty; their valves are a relay board in a separate
process (bench/building_sim.py, which stamps coil writes with
`time.monotonic()`). For `--seconds`, an emulator writes `--rate` distinct
unknown UIDs a second to one reader (67 a second is an RDM6300's frame rate
at 9600 baud), while known cards are tapped at the other reader and, every
fifth sample, at the flooded one too.

Printed: tap -> valve latency during the flood; what the refusals left in the
store (single `tap` events, folded ones and the refusals they stand for);
that projected to a day, against one event per refusal without folding; the
daemon's CPU and peak RSS.

    .venv/bin/python bench/reader_flood.py [--seconds 70] [--rate 67] [--taps 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sqlite3
import statistics
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
    RICH_FEN,
    STUDENT,
    gateway_config,
    seed_store,
    serial_shower_config,
    valves_bus_config,
    write_config,
)
from building_sim import SimProc  # noqa: E402
from daemon_process import Daemon  # noqa: E402
from figures import summary  # noqa: E402
from proc_stats import cpu_seconds, peak_rss_mb  # noqa: E402
from serial_taps import DEBOUNCE_S, SERIAL_CARDS, first_tap, tap_open_close  # noqa: E402

from sim.serial_card import PtyPort, frame  # noqa: E402


def daemon_config(workdir: Path, valve_port: int, ttys: Sequence[Path]) -> Path:
    lines = [
        *gateway_config(workdir, f"tap_debounce_s = {DEBOUNCE_S}"),
        "[tariffs]", 'shower = { price = "0.06", unit = "min" }', "",
        *valves_bus_config(valve_port),
    ]
    for i, tty in enumerate(ttys):
        lines += serial_shower_config(f"r{i}", f"shower-{i}", tty, i)
    return write_config(workdir, lines)


async def flood(pty: PtyPort, rate: float, seconds: float) -> int:
    """Distinct unknown UIDs at `rate` a second for `seconds`; return how many were sent."""
    sent, start = 0, time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) + 1
        if due > sent:
            pty.write(b"".join(frame(f"E0{i:08X}", "rdm6300") for i in range(sent, due)))
            sent = due
        await asyncio.sleep(1 / rate)
    return sent


async def taps_during_flood(args: argparse.Namespace, valves: SimProc, ptys: Sequence[PtyPort],
                            ) -> tuple[int, list[float], list[float]]:
    """Flood reader r1; meanwhile tap known cards at r0 and, every fifth sample, at r1.
    Returns the UIDs sent and the samples at the other reader and at the flooded one."""
    flooding = asyncio.create_task(flood(ptys[1], args.rate, args.seconds))
    other: list[float] = []
    same: list[float] = []
    spacing = max(args.seconds - 5, 1) / max(args.taps, 1)
    for i in range(args.taps):
        if flooding.done():
            break
        if i % 5 == 4:
            same.append(await tap_open_close(valves, ptys[1], 1, SERIAL_CARDS[2 + i % 14]))
        else:
            other.append(await tap_open_close(valves, ptys[0], 0, SERIAL_CARDS[2 + i % 14]))
        await asyncio.sleep(spacing)
    return await flooding, other, same


def print_stored(args: argparse.Namespace, db: Path, sent: int) -> None:
    """What the refusals at r1 left in the store, and that projected to a day."""
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT payload FROM events WHERE type = 'tap'").fetchall()
    conn.close()
    taps = [json.loads(r[0]) for r in rows]
    refused = [t for t in taps if t["reader"] == "r1" and not t["granted"]]
    folded = [t for t in refused if "count" in t]
    stands_for = len(refused) - len(folded) + sum(t["count"] for t in folded)
    size = statistics.mean(len(r[0]) for r in rows) if rows else 0
    print(f"  stored at r1: {len(refused) - len(folded)} single refused tap events "
          f"and {len(folded)} folded ones (counts "
          f"{[t['count'] for t in folded]}): {stands_for} of the {sent} refusals "
          "accounted for (the minute under way is recorded at the stop)")
    per_min = len(refused) / (args.seconds / 60)
    print(f"  a day at this rate: ~{per_min * 1440 * size / 1e6:.0f} MB of tap events "
          f"(avg {size:.0f} bytes), against "
          f"~{args.rate * 86400 * size / 1e9:.1f} GB with one event per refusal")


async def run_daemon(args: argparse.Namespace, workdir: Path, valves: SimProc,
                     ptys: Sequence[PtyPort]) -> None:
    """Start the daemon, flood one reader while tapping both, stop it and print the figures."""
    config = daemon_config(workdir, valves.ports[0], [p.path for p in ptys])
    seed_store(workdir / "state", {STUDENT: RICH_FEN}, SERIAL_CARDS)
    daemon = Daemon(config, workdir)
    stopped = False
    try:
        await daemon.start()
        for ch, pty in enumerate(ptys):
            await first_tap(valves, pty, ch, SERIAL_CARDS[ch])
        cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        sent, other, same = await taps_during_flood(args, valves, ptys)
        await asyncio.sleep(2.0)   # the roll of a minute that just ended
        cpu1, t1 = cpu_seconds(daemon.pid), time.monotonic()
        rss = peak_rss_mb(daemon.pid)
        code = await daemon.stop()
        stopped = True
        print(f"reader_flood: {sent} unknown UIDs in {args.seconds:g} s at r1 "
              f"({args.rate:g}/s)")
        print(summary("  known card at the other reader, last byte -> valve coil", other))
        print(summary("  known card at the flooded reader, last byte -> valve coil", same))
        print_stored(args, workdir / "state" / "gatewayd.db", sent)
        print(f"  daemon CPU: {cpu1 - cpu0:.1f} s in {t1 - t0:.1f} s; peak RSS {rss:.1f} MiB;"
              f" exit {code}")
    finally:
        if not stopped:
            print(daemon.tail(4000), file=sys.stderr)
            await daemon.stop()


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=70.0,
                        help="flood duration (more than 60: the first minute's folds are recorded)")
    parser.add_argument("--rate", type=float, default=67.0, help="unknown UIDs a second")
    parser.add_argument("--taps", type=int, default=60, help="known-card samples during the flood")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    valves = await SimProc.start(0, valves=2)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
            workdir = Path(tmp)
            ptys = [PtyPort(workdir / f"ttyRDM{i}") for i in range(2)]
            try:
                await run_daemon(args, workdir, valves, ptys)
            finally:
                for p in ptys:
                    p.close()
    finally:
        await valves.stop()


if __name__ == "__main__":
    asyncio.run(main())
