"""Benchmark: a card emulator cycling UIDs at one reader, printed as figures (no pass/fail).

The real daemon (`python -m gatewayd.app.cli run`) serves two water points, each
with an RDM6300 on a pty; their valves are a relay board in a separate
process (bench/daemon_poll.py's simulator, which stamps coil writes with
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
from daemon_poll import BUILDING, VALVE_BASE, Daemon, SimProc, cpu_seconds, peak_rss_mb  # noqa: E402

from gatewayd.rules.water import Card  # noqa: E402
from gatewayd.store.cards import Cards  # noqa: E402
from gatewayd.store.db import Store  # noqa: E402
from gatewayd.store.ledger import Ledger  # noqa: E402
from gatewayd.store.txn import Txn  # noqa: E402
from sim.serial_card import PtyPort, frame  # noqa: E402

DEBOUNCE_S = 0.05
CARDS = [f"04A1B2C3{i:02X}" for i in range(16)]
# Safety net against a hung bench, not a measurement.
TAP_TIMEOUT_S = 10.0


def write_config(workdir: Path, valve_port: int, ttys: Sequence[Path]) -> Path:
    lines = [
        "[gateway]", f'building = "{BUILDING}"', f'state_dir = "{workdir / "state"}"',
        f"tap_debounce_s = {DEBOUNCE_S}", 'clock_synced = "yes"', "",
        "[tariffs]", 'shower = { price = "0.06", unit = "min" }', "",
        "[[buses]]", 'name = "valves"', 'type = "tcp"', 'host = "127.0.0.1"',
        f"port = {valve_port}", "timeout_s = 1.0", "",
    ]
    for i, tty in enumerate(ttys):
        lines += [
            "[[readers]]", f'id = "r{i}"', 'type = "serial"', f'port = "{tty}"', "",
            "[[points]]", f'id = "shower-{i}"', 'service = "shower"', f'reader = "r{i}"',
            f'valve = {{ bus = "valves", unit = {VALVE_BASE}, profile = "relay-board", '
            f"channel = {i} }}", "",
        ]
    path = workdir / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def seed(state_dir: Path) -> None:
    store = Store.open(state_dir, BUILDING)
    try:
        def job(txn: Txn) -> None:
            Ledger.credit(txn, "stu-1", 10**9)
            for uid in CARDS:
                Cards.put(txn, Card(uid, "stu-1", "student", "active", None))
        store.call(job)
    finally:
        store.close()


async def tap_open_close(valves: SimProc, pty: PtyPort, ch: int, uid: str) -> float:
    """Tap `uid` at a closed point: seconds from the last byte to the coil write; then close it."""
    data = frame(uid, "rdm6300")
    before = time.monotonic()
    pty.write(data)
    last_byte = time.monotonic()
    opened = await valves.write_to(0, VALVE_BASE, ch, True, after=before, timeout=TAP_TIMEOUT_S)
    await asyncio.sleep(DEBOUNCE_S * 2)
    before = time.monotonic()
    pty.write(data)
    await valves.write_to(0, VALVE_BASE, ch, False, after=before, timeout=TAP_TIMEOUT_S)
    await asyncio.sleep(DEBOUNCE_S * 2)
    return opened.t - last_byte


async def wait_open(valves: SimProc, pty: PtyPort, ch: int) -> None:
    # The reader opens its pty after READY and pyserial flushes what came before.
    async with asyncio.timeout(30):
        while True:
            before = time.monotonic()
            pty.write(frame(CARDS[ch], "rdm6300"))
            try:
                await valves.write_to(0, VALVE_BASE, ch, True, after=before, timeout=0.5)
                break
            except TimeoutError:
                continue
    await asyncio.sleep(DEBOUNCE_S * 2)
    before = time.monotonic()
    pty.write(frame(CARDS[ch], "rdm6300"))
    await valves.write_to(0, VALVE_BASE, ch, False, after=before, timeout=TAP_TIMEOUT_S)
    await asyncio.sleep(DEBOUNCE_S * 2)


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


def summary(name: str, samples: Sequence[float]) -> str:
    v = sorted(x * 1000 for x in samples)
    if not v:
        return f"{name}: no samples"
    p99 = v[min(len(v) - 1, round(0.99 * (len(v) - 1)))]
    return (f"{name}: n={len(v)} p50={statistics.median(v):.2f} ms p99={p99:.2f} ms "
            f"max={v[-1]:.2f} ms")


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=70.0,
                        help="flood duration (more than 60: the first minute's folds are recorded)")
    parser.add_argument("--rate", type=float, default=67.0, help="unknown UIDs a second")
    parser.add_argument("--taps", type=int, default=60, help="known-card samples during the flood")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    valves = await SimProc.start(0, valves=2)
    daemon: Daemon | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
            workdir = Path(tmp)
            ptys = [PtyPort(workdir / f"ttyRDM{i}") for i in range(2)]
            try:
                config = write_config(workdir, valves.ports[0], [p.path for p in ptys])
                seed(workdir / "state")
                daemon = Daemon(config, workdir)
                await daemon.start()
                for ch, pty in enumerate(ptys):
                    await wait_open(valves, pty, ch)
                cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
                flooding = asyncio.create_task(flood(ptys[1], args.rate, args.seconds))
                other: list[float] = []
                same: list[float] = []
                spacing = max(args.seconds - 5, 1) / max(args.taps, 1)
                for i in range(args.taps):
                    if flooding.done():
                        break
                    if i % 5 == 4:
                        same.append(await tap_open_close(valves, ptys[1], 1, CARDS[2 + i % 14]))
                    else:
                        other.append(await tap_open_close(valves, ptys[0], 0, CARDS[2 + i % 14]))
                    await asyncio.sleep(spacing)
                sent = await flooding
                await asyncio.sleep(2.0)   # the roll of a minute that just ended
                cpu1, t1 = cpu_seconds(daemon.pid), time.monotonic()
                rss = peak_rss_mb(daemon.pid)
                code = await daemon.stop()
                daemon = None
                conn = sqlite3.connect(workdir / "state" / "gatewayd.db")
                rows = conn.execute("SELECT payload FROM events WHERE type = 'tap'").fetchall()
                conn.close()
                taps = [json.loads(r[0]) for r in rows]
                refused = [t for t in taps if t["reader"] == "r1" and not t["granted"]]
                folded = [t for t in refused if "count" in t]
                stands_for = len(refused) - len(folded) + sum(t["count"] for t in folded)
                size = statistics.mean(len(r[0]) for r in rows) if rows else 0
                print(f"reader_flood: {sent} unknown UIDs in {args.seconds:g} s at r1 "
                      f"({args.rate:g}/s)")
                print(summary("  known card at the other reader, last byte -> valve coil", other))
                print(summary("  known card at the flooded reader, last byte -> valve coil", same))
                print(f"  stored at r1: {len(refused) - len(folded)} single refused tap events "
                      f"and {len(folded)} folded ones (counts "
                      f"{[t['count'] for t in folded]}): {stands_for} of the {sent} refusals "
                      "accounted for (the minute under way is recorded at the stop)")
                per_min = len(refused) / (args.seconds / 60)
                print(f"  a day at this rate: ~{per_min * 1440 * size / 1e6:.0f} MB of tap events "
                      f"(avg {size:.0f} bytes), against "
                      f"~{args.rate * 86400 * size / 1e9:.1f} GB with one event per refusal")
                print(f"  daemon CPU: {cpu1 - cpu0:.1f} s in {t1 - t0:.1f} s; peak RSS {rss:.1f} MiB;"
                      f" exit {code}")
            finally:
                if daemon is not None:
                    print(daemon.tail(4000), file=sys.stderr)
                    await daemon.stop()
                for p in ptys:
                    p.close()
    finally:
        await valves.stop()


if __name__ == "__main__":
    asyncio.run(main())
