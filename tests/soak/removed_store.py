"""Campaign `removed_store`: the database removed or replaced under the running daemon.

While rooms are charged and showers run, each round does one of what a person
or a script does to a live box: unlink `gatewayd.db` with its `-wal` and `-shm`,
move an older copy of the store over it (a backup restored the wrong way), or
remove the whole state directory. The daemon must notice (`store_failing`),
put the database back from what it has open and clear the alarm. Every few
rounds it is killed and restarted on the restored file.

Invariants: nothing committed before a fault is lost or changed, seq rises by
exactly 1 and never restarts, balances equal what the log says, the store keeps
its `store_id` (no `store_created` after the first start), every fault raises
and clears `store_failing` once, and it is noticed within the contract's 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import sqlite3
import time
from pathlib import Path

from sim.serial_card import PtyPort
from tests.soak.harness import (
    Checks,
    Daemon,
    Row,
    StoreSnapshot,
    alarm_pairs,
    check_all,
    read_only,
    read_store,
    start_building,
    until,
)

FAULTS = ("unlinked", "replaced", "state_dir_removed")
# The contract: noticed within 10 s. The probe runs every 5 s.
NOTICE_S = 10.0
RESTART_EVERY = 4


def store_id(db: Path) -> str:
    row = read_only(db, lambda c: c.execute(
        "SELECT value FROM meta WHERE key = 'store_id'").fetchone())
    return str(row[0]) if row else ""


def copy_of(db: Path, dest: Path) -> None:
    """A consistent copy of the live store (what a backup script makes)."""
    dest.unlink(missing_ok=True)
    out = sqlite3.connect(dest)
    try:
        read_only(db, lambda c: c.backup(out))
    finally:
        out.close()


def snapshot_when_back(db: Path) -> StoreSnapshot | None:
    with contextlib.suppress(sqlite3.Error, OSError):
        return read_store(db, attempts=1)
    return None


async def removed_store(iterations: int) -> Row:
    # Shared with power_cut: its building, loads, credits and random showers.
    # Imported here: campaigns.py imports this module for its table.
    from tests.soak.campaigns import TapDriver, busy_building_layout, furnish, workdir

    t0 = time.monotonic()
    rng = random.Random(20261214)
    checks = Checks()
    notes: list[str] = []
    short = iterations < 10
    async with workdir("removed-store") as tmp:
        layout = busy_building_layout(tmp, short)
        sim = await start_building(layout)
        ports = [PtyPort(layout.tty(j)) for j in range(layout.points)]
        room_accounts = {layout.room_id(i): layout.account(i) for i in range(layout.rooms)}
        cards = furnish(layout, sim, rng)
        daemon = Daemon(layout.config(sim), tmp)
        taps = TapDriver(layout, ports, cards, rng)
        taps.start()
        db = layout.db
        old_copy = tmp / "old-copy.db"
        first_id = store_id(db)
        noticed: list[float] = []
        restarts = 0
        try:
            await daemon.start()
            await daemon.ready()
            taps.paused = False
            copy_of(db, old_copy)
            for it in range(iterations):
                label = f"round {it + 1}"
                fault = FAULTS[it % len(FAULTS)]
                # Any phase against the probe's 5 s period: the worst case is right after one.
                await asyncio.sleep(rng.uniform(0.2, 5.2))
                before = read_store(db)
                raised, cleared = alarm_pairs(before, "store_failing", "store")
                restored_logs = sum(1 for r in daemon.log_records() if r.get("event") == "store_restored")
                at = time.monotonic()
                if fault == "unlinked":
                    for suffix in ("", "-wal", "-shm"):
                        Path(f"{db}{suffix}").unlink(missing_ok=True)
                elif fault == "replaced":
                    old_copy.replace(db)
                else:
                    shutil.rmtree(layout.state_dir)

                def back(n: int = restored_logs) -> bool:
                    return sum(1 for r in daemon.log_records()
                               if r.get("event") == "store_restored") > n
                ok = await until(back, 60.0, step=0.1)
                took = time.monotonic() - at
                noticed.append(took)
                checks.check(bool(ok), f"{label}: {fault}: the store was not put back within 60 s")
                checks.check(took <= NOTICE_S, f"{label}: {fault}: put back {took:.1f} s after the "
                             f"fault (the contract: noticed within {NOTICE_S:.0f} s)")
                def clearing(n: int = cleared) -> StoreSnapshot | None:
                    # The clearing event is committed right after the restore.
                    s = snapshot_when_back(db)
                    return s if s is not None and alarm_pairs(s, "store_failing", "store")[1] > n \
                        else None
                now = await until(clearing, 20.0)
                if not now:
                    checks.check(False, f"{label}: {fault}: store_failing never cleared")
                    break
                check_all(before, now, room_accounts, checks, label)
                checks.check(alarm_pairs(now, "store_failing", "store") == (raised + 1, cleared + 1),
                             f"{label}: {fault}: store_failing raised/cleared "
                             f"{alarm_pairs(now, 'store_failing', 'store')}, was {(raised, cleared)}")
                checks.check(store_id(db) == first_id, f"{label}: store_id changed")
                if fault == "replaced":
                    kept = sorted(layout.state_dir.glob("gatewayd.db.replaced-*"))
                    checks.check(bool(kept), f"{label}: the file moved over the store was not kept")
                    for k in kept:
                        k.unlink()
                copy_of(db, old_copy)   # the next "replaced" round restores this older copy
                if it % RESTART_EVERY == RESTART_EVERY - 1 or it == iterations - 1:
                    await daemon.kill()
                    restarts += 1
                    after_kill = read_store(db)
                    check_all(now, after_kill, room_accounts, checks, f"{label} (killed)")
                    await daemon.start()
                    await daemon.ready()
                    checks.check(store_id(db) == first_id, f"{label}: store_id changed at restart")
            taps.paused = True
            await asyncio.sleep(1.0)
            last = read_store(db)
            code = await daemon.stop()
            checks.check(code == 0, f"final SIGTERM: exit code {code}")
            final = read_store(db)
            check_all(last, final, room_accounts, checks, "final")
            held = [float(r.get("took_ms", 0)) for r in daemon.log_records()
                    if r.get("event") == "store_restored"] or [0.0]
            created = [r for r in daemon.log_records() if r.get("event") == "store_created"]
            checks.check(not created, f"a new store was started: {created[:1]}")
            checks.extend(1, daemon.log_problems())
            notes.append(
                f"{iterations} faults ({', '.join(FAULTS)} in turn), {restarts} restarts, "
                f"{len(final.events)} events, {len(final.of('power.usage'))} power.usage, "
                f"{len(final.of('water.session'))} water.session, {taps.taps} card presentations; "
                f"put back {min(noticed):.1f} to {max(noticed):.1f} s after the fault, "
                f"the writer held {max(held):.0f} ms at most")
        finally:
            await taps.close()
            await daemon.close()
            for p in ports:
                p.close()
            await sim.stop()
    return Row("removed_store", iterations, iterations, checks.count, checks.violations, notes,
               time.monotonic() - t0)
