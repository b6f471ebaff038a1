"""How many money events per second the store commits durably.

    .venv/bin/python bench/store.py [--events N] [--dir PATH]

Two modes, both with WAL and synchronous=FULL (every commit fsynced):
- group commit: N debits submitted together, as a busy building produces them;
  the writer commits whatever has queued in one transaction;
- one per transaction: each debit awaited before the next is submitted.
Each debit is what the ledger does for a water session: update the balance,
append the `water.session` event with its seq, in one job.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gatewayd.contract.enums import EndReason, WaterUse
from gatewayd.contract.events import WaterSession
from gatewayd.store.db import Store
from gatewayd.store.txn import Txn


def debit(account: str, fen: int) -> Callable[[Txn], int]:
    def job(txn: Txn) -> int:
        txn.execute(
            "INSERT INTO accounts (account, balance_fen, known, updated) VALUES (?, ?, 1, 0) "
            "ON CONFLICT (account) DO UPDATE SET balance_fen = balance_fen - ?",
            (account, 10_000 - fen, fen),
        )
        bal = txn.execute("SELECT balance_fen FROM accounts WHERE account = ?", (account,)).fetchone()[0]
        assert bal >= 0
        return txn.event(
            WaterSession(
                session="s", point="shower-1", service=WaterUse.SHOWER, card="04A1B2C3",
                account=account, started="2026-11-25T10:00:00.000+08:00",
                ended="2026-11-25T10:05:00.000+08:00", volume_ml=5200, seconds=300,
                amount_fen=fen, end_reason=EndReason.TAP, offline=False),
            ts="2026-11-25T10:05:00.000+08:00",
        ).seq

    return job


async def grouped(store: Store, n: int) -> float:
    t0 = time.perf_counter()
    await asyncio.gather(*(store.run(debit(f"acct-{i % 500}", 3)) for i in range(n)))
    return time.perf_counter() - t0


async def one_by_one(store: Store, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        await store.run(debit(f"acct-{i % 500}", 3))
    return time.perf_counter() - t0


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--single-events", type=int, default=2000)
    p.add_argument("--dir", type=Path, default=None, help="state dir (default: a temp dir under /var/tmp)")
    args = p.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="gatewayd-bench-", dir="/var/tmp"))
    try:
        store = Store.open(base / "state", "bench")
        try:
            commits0 = store.commits
            t = await grouped(store, args.events)
            groups = store.commits - commits0
            print(f"group commit:       {args.events / t:10.0f} money events/s "
                  f"({args.events} events in {groups} transactions, {t:.2f} s)")
            t = await one_by_one(store, args.single_events)
            print(f"one per transaction:{args.single_events / t:10.0f} money events/s "
                  f"({args.single_events} events, {t:.2f} s, {t / args.single_events * 1e3:.2f} ms each)")
        finally:
            store.close()
        print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MB; "
              f"database: {sum(f.stat().st_size for f in (base / 'state').iterdir()) / 1e6:.1f} MB "
              f"on {base}")
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
