"""How long putting a removed database back holds the store's writer.

    .venv/bin/python bench/store_restore.py [--events N ...] [--dir PATH]

For each size: a store with N `water.session` events (about 0.5 KiB each, as
the outbox keeps them for `keep_events_days`), its files unlinked, then
`Store.restore()` (online backup into a temp file, fsync, rename, reopen),
with a debit submitted just after the restore starts: its wait is what a tap
or a charge waits meanwhile. Prints the database size, the restore time and
that wait. Figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gatewayd.app import logs
from gatewayd.contract.enums import EndReason, WaterUse
from gatewayd.contract.events import WaterSession
from gatewayd.store.db import Store
from gatewayd.store.txn import Txn


def debit(account: str, fen: int) -> Callable[[Txn], int]:
    """A water session's charge: the balance and its event in one job (as bench/store.py)."""
    def job(txn: Txn) -> int:
        txn.execute(
            "INSERT INTO accounts (account, balance_fen, known, updated) VALUES (?, ?, 1, 0) "
            "ON CONFLICT (account) DO UPDATE SET balance_fen = balance_fen - ?",
            (account, 10_000 - fen, fen))
        return txn.event(WaterSession(
            session="s", point="shower-1", service=WaterUse.SHOWER, card="04A1B2C3",
            account=account, started="2026-11-25T10:00:00.000+08:00",
            ended="2026-11-25T10:05:00.000+08:00", volume_ml=5200, seconds=300,
            amount_fen=fen, end_reason=EndReason.TAP, offline=False,
        ), ts="2026-11-25T10:05:00.000+08:00").seq
    return job


async def one(base: Path, events: int) -> None:
    state = base / f"s{events}"
    store = Store.open(state, "b07")
    try:
        for start in range(0, events, 5000):
            await asyncio.gather(*(store.run(debit(f"acct-{i % 500}", 1))
                                   for i in range(start, min(events, start + 5000))))
        size = sum(os.path.getsize(f"{store.path}{s}") for s in ("", "-wal"))
        for suffix in ("", "-wal", "-shm"):
            os.unlink(f"{store.path}{suffix}")
        t0 = time.perf_counter()
        restore = asyncio.ensure_future(store.restore())
        await asyncio.sleep(0)
        waited = asyncio.ensure_future(store.run(debit("acct-0", 1)))
        await restore
        took = time.perf_counter() - t0
        await waited
        wait = time.perf_counter() - t0
        print(f"{events:>8} events  {size / 2**20:7.1f} MiB  restore {took * 1000:8.1f} ms  "
              f"a debit submitted meanwhile waited {wait * 1000:8.1f} ms")
    finally:
        store.close()
        shutil.rmtree(state, ignore_errors=True)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, action="append")
    p.add_argument("--dir", type=Path, default=None, help="where the stores go (default: a temp dir)")
    args = p.parse_args()
    logs.setup("error", json=False)
    base = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        for n in args.events or [10_000, 100_000, 400_000]:
            await one(base, n)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
