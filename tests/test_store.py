"""The store: migrations, refusal of bad databases, lock, group commit, crash safety."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from gatewayd.contract.enums import AlarmCode
from gatewayd.contract.events import AccountCredited, Alarm, BalanceLow
from gatewayd.errors import StoreError, StoreLocked
from gatewayd.store import schema as store_mod
from gatewayd.store.db import Store
from gatewayd.store.schema import SCHEMA_VERSION
from gatewayd.store.txn import Txn

ROOT = Path(__file__).resolve().parent.parent


def credit(account: str, fen: int) -> Callable[[Txn], int]:
    """A money job as the ledger will do it: balance change and event together."""

    def job(txn: Txn) -> int:
        txn.execute(
            "INSERT INTO accounts (account, balance_fen, known, updated) VALUES (?, ?, 1, 0) "
            "ON CONFLICT (account) DO UPDATE SET balance_fen = balance_fen + excluded.balance_fen",
            (account, fen),
        )
        (balance,) = txn.execute(
            "SELECT balance_fen FROM accounts WHERE account = ?", (account,)
        ).fetchone()
        ev = txn.event(AccountCredited(account=account, amount_fen=fen,
                                            balance_fen=balance, command="c"),
                       ts="2026-11-25T10:00:00.000+08:00")
        return ev.seq

    return job


def test_new_store_has_current_schema(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "state", "b07")
    s.close()
    assert oct((tmp_path / "state").stat().st_mode & 0o777) == "0o700"
    conn = sqlite3.connect(tmp_path / "state" / "gatewayd.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"accounts", "cards", "events", "commands", "water_sessions", "rooms",
            "offline_spend", "meta"} <= tables


async def test_events_get_consecutive_seq_with_envelope(tmp_path: Path) -> None:
    s = Store.open(tmp_path, "b07")
    try:
        seqs = await asyncio.gather(*(s.run(credit(f"a{i % 7}", 100)) for i in range(300)))
        assert sorted(seqs) == list(range(1, 301))
        # Grouped: far fewer transactions than jobs.
        assert s.commits < 300
        rows = await s.read(lambda t: t.execute(
            "SELECT seq, payload FROM events ORDER BY seq").fetchall())
        first = json.loads(rows[0][1])
        assert list(first)[:5] == ["id", "seq", "ts", "building", "type"]
        assert first["seq"] == 1 and first["building"] == "b07"
        balances = dict(await s.read(lambda t: t.execute(
            "SELECT account, balance_fen FROM accounts").fetchall()))
        assert sum(balances.values()) == 300 * 100
    finally:
        s.close()


async def test_failing_job_rolls_back_alone_and_keeps_no_seq(tmp_path: Path) -> None:
    s = Store.open(tmp_path, "b07")

    def bad(txn: Txn) -> None:
        txn.event(BalanceLow(account="x", balance_fen=1), ts="t")
        raise ValueError("boom")

    try:
        first, failed, third = await asyncio.gather(
            s.run(credit("a", 1)), s.run(bad), s.run(credit("a", 2)), return_exceptions=True
        )
        assert (first, third) == (1, 2) and isinstance(failed, ValueError)
        rows = await s.read(lambda t: t.execute("SELECT seq, type FROM events").fetchall())
        assert rows == [(1, "account.credited"), (2, "account.credited")]
    finally:
        s.close()


def test_seq_continues_after_reopen(tmp_path: Path) -> None:
    s = Store.open(tmp_path, "b07")
    assert s.call(credit("a", 1)) == 1
    s.close()
    s = Store.open(tmp_path, "b07")
    try:
        assert s.call(credit("a", 1)) == 2
    finally:
        s.close()


def test_second_store_on_same_dir_is_refused(tmp_path: Path) -> None:
    s = Store.open(tmp_path, "b07")
    try:
        with pytest.raises(StoreLocked, match=rf"another gatewayd \(pid {os.getpid()}\) is "
                                              rf"already using {tmp_path}"):
            Store.open(tmp_path, "b07")
    finally:
        s.close()
    Store.open(tmp_path, "b07").close()  # released on close


def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    Store.open(tmp_path, "b07").close()
    db = tmp_path / "gatewayd.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    before = db.read_bytes()
    with pytest.raises(StoreError, match="schema version 99, written by a newer gatewayd"):
        Store.open(tmp_path, "b07")
    assert db.read_bytes() == before


def test_corrupt_database_is_refused_not_recreated(tmp_path: Path) -> None:
    db = tmp_path / "gatewayd.db"
    garbage = b"this is not a database" * 300
    db.write_bytes(garbage)
    with pytest.raises(StoreError, match=r"is damaged .* will not recreate it"):
        Store.open(tmp_path, "b07")
    assert db.read_bytes() == garbage


def test_damaged_pages_are_refused(tmp_path: Path) -> None:
    s = Store.open(tmp_path, "b07")
    for i in range(200):
        s.call(credit(f"acct{i}", i + 1))
    s.close()
    db = tmp_path / "gatewayd.db"
    data = bytearray(db.read_bytes())
    for off in range(4096 * 2, len(data), 997):  # scribble over pages after the header
        data[off] = (data[off] + 91) % 256
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="is damaged"):
        Store.open(tmp_path, "b07")


def test_migration_to_next_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Store.open(tmp_path, "b07")
    s.call(credit("a", 5))
    s.close()
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS,
                        "CREATE TABLE extra (x INTEGER);\nALTER TABLE accounts ADD COLUMN note TEXT;"])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    s = Store.open(tmp_path, "b07")
    try:
        assert s.call(lambda t: t.execute("PRAGMA user_version").fetchone()[0]) == SCHEMA_VERSION + 1
        assert s.call(lambda t: t.execute("SELECT balance_fen, note FROM accounts").fetchall()) == [
            (5, None)]
    finally:
        s.close()


def test_failed_migration_leaves_old_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Store.open(tmp_path, "b07").close()
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS,
                        "CREATE TABLE extra (x INTEGER);\nTHIS IS NOT SQL;"])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(StoreError):
        Store.open(tmp_path, "b07")
    conn = sqlite3.connect(tmp_path / "gatewayd.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT name FROM sqlite_master WHERE name='extra'").fetchone() is None


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {root!r})
    from tests.test_store import credit
    from gatewayd.store.db import Store

    async def main():
        s = Store.open({state!r}, "b07")
        async def one(i):
            seq = await s.run(credit("a" + str(i % 13), 1))
            sys.stdout.write(f"committed {{seq}}\\n")
            sys.stdout.flush()
        i = 0
        while True:
            await asyncio.gather(*(one(i + k) for k in range(i % 17 + 1)))
            i += 1

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("run", range(3))
def test_kill_9_mid_stream_loses_no_committed_seq(tmp_path: Path, run: int) -> None:
    state = tmp_path / "state"
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(root=str(ROOT), state=str(state)))
    reported: list[int] = []
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        target = len(reported) + 200 + 137 * run + 61 * round_
        while len(reported) < target and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("committed "):
                reported.append(int(line.split()[1]))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # Lines flushed before the kill are commits too.
        reported += [int(x.split()[1]) for x in proc.stdout.read().splitlines()
                     if x.startswith("committed ")]
    s = Store.open(state, "b07")
    try:
        seqs = s.call(lambda t: [r[0] for r in t.execute("SELECT seq FROM events ORDER BY seq")])
        total = s.call(lambda t: t.execute("SELECT SUM(balance_fen) FROM accounts").fetchone()[0])
    finally:
        s.close()
    assert set(reported) <= set(seqs), "a committed seq was lost"
    assert seqs == list(range(1, len(seqs) + 1)), "gap or repeat in seq"
    assert len(set(reported)) == len(reported)
    assert total == len(seqs)  # every credit has its event and no other


def _alarm(code: str, device: str, active: bool, detail: str | int = "") -> Callable[[Txn], None]:
    def job(txn: Txn) -> None:
        txn.event(Alarm(code=AlarmCode(code), device=device, detail=detail,
                             active=active), ts="2026-11-25T10:00:00.000+08:00")
    return job


def test_alarms_on_record_are_kept_from_the_event_log(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Migration 5 fills `alarms_active` from the log of a version-4 store; from then
    on a trigger keeps it: the lasting alarms whose last event says active."""
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", 4)
    s = Store.open(tmp_path, "b07")
    s.call(_alarm("meter_offline", "meter:101", True, "no answer"))
    s.call(_alarm("meter_offline", "meter:102", True))
    s.call(_alarm("meter_offline", "meter:102", False))
    s.call(_alarm("meter_jump", "meter:103", True, 500))
    s.close()
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION)
    s = Store.open(tmp_path, "b07")
    try:
        def active() -> list[tuple[str, str, str]]:
            return s.call(lambda t: t.execute(
                "SELECT code, device, detail FROM alarms_active ORDER BY code, device").fetchall())
        assert active() == [("meter_offline", "meter:101", "no answer")]
        s.call(_alarm("reader_offline", "reader:r1", True, "unplugged"))
        s.call(_alarm("meter_offline", "meter:101", False))
        s.call(_alarm("meter_reset", "meter:104", True, "went back"))
        assert active() == [("reader_offline", "reader:r1", "unplugged")]
    finally:
        s.close()


# --- store_id, and a database removed or replaced under the running store -------------

UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


def test_a_new_store_is_logged_as_such_and_keeps_its_id(tmp_path: Path) -> None:
    """center-link.md: `store_id` changes only with a new store; behaviour.md: a
    gateway that has to start a new store says so."""
    with structlog.testing.capture_logs() as logs:
        s = Store.open(tmp_path, "b07")
        s.call(credit("a", 1))
        first = s.store_id
        s.close()
        s = Store.open(tmp_path, "b07")
        again = s.store_id
        s.close()
    assert re.fullmatch(UUID_RE, first) and again == first
    created = [e for e in logs if e["event"] == "store_created"]
    opened = [e for e in logs if e["event"] == "store_opened"]
    assert [(e["log_level"], e["store_id"]) for e in created] == [("warning", first)]
    assert [(e["log_level"], e["store_id"], e["next_seq"]) for e in opened] == [("info", first, 2)]


def test_a_migration_gives_an_existing_store_its_id(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", 5)
    s = Store.open(tmp_path, "b07")
    assert s.call(credit("a", 7)) == 1
    assert s.store_id == ""
    s.close()
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION)
    with structlog.testing.capture_logs() as logs:
        s = Store.open(tmp_path, "b07")
    try:
        assert re.fullmatch(UUID_RE, s.store_id)
        assert s.call(credit("a", 1)) == 2
        assert s.call(lambda t: t.execute("SELECT balance_fen FROM accounts").fetchall()) == [(8,)]
    finally:
        s.close()
    assert "store_created" not in [e["event"] for e in logs]


def _events(db: Path) -> list[int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")]
    finally:
        conn.close()


async def test_a_removed_database_is_put_back_from_the_open_one(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "state", "b07")
    db = s.path
    try:
        for _ in range(40):
            await s.run(credit("a", 10))
        assert await s.file_problem() is None
        for suffix in ("", "-wal", "-shm"):
            os.unlink(f"{db}{suffix}")
        # Commits go on meanwhile, into the open (unlinked) file.
        seqs = [await s.run(credit("a", 10)) for _ in range(5)]
        assert seqs == [41, 42, 43, 44, 45]
        assert await s.file_problem() == "gatewayd.db was removed"
        assert "restored gatewayd.db" in await s.restore()
        assert await s.file_problem() is None
        assert _events(db) == list(range(1, 46))   # on disk at the path, before any close
        assert await s.run(credit("a", 10)) == 46
        store_id = s.store_id
    finally:
        s.close()
    s = Store.open(tmp_path / "state", "b07")
    try:
        assert s.store_id == store_id and s.next_seq == 47
        assert s.call(lambda t: t.execute("SELECT balance_fen FROM accounts").fetchall()) == [(460,)]
    finally:
        s.close()


async def test_a_file_moved_over_the_database_is_kept_aside_and_ours_put_back(
    tmp_path: Path,
) -> None:
    """An old copy of the store moved over the live one (a backup restored while
    the daemon runs): the live store wins, the other file is kept, not deleted."""
    s = Store.open(tmp_path, "b07")
    try:
        for _ in range(10):
            await s.run(credit("a", 1))
        live, old = sqlite3.connect(s.path), sqlite3.connect(tmp_path / "old.db")
        live.backup(old)
        live.close()
        old.close()
        for _ in range(10):
            await s.run(credit("a", 1))
        os.replace(tmp_path / "old.db", s.path)
        assert await s.file_problem() == "gatewayd.db was replaced by another file"
        assert "kept the file found at its place as gatewayd.db.replaced-" in await s.restore()
        assert await s.run(credit("a", 1)) == 21
    finally:
        s.close()
    (kept,) = tmp_path.glob("gatewayd.db.replaced-*")
    assert _events(kept) == list(range(1, 11))
    assert _events(tmp_path / "gatewayd.db") == list(range(1, 22))


async def test_a_removed_state_dir_is_made_again_and_locked(tmp_path: Path) -> None:
    state = tmp_path / "state"
    s = Store.open(state, "b07")
    try:
        await s.run(credit("a", 1))
        shutil.rmtree(state)
        assert await s.file_problem() == f"the state directory {state} was removed"
        await s.restore()
        assert await s.file_problem() is None
        assert oct(state.stat().st_mode & 0o777) == "0o700"
        with pytest.raises(StoreLocked):
            Store.open(state, "b07")   # the new lock file is held
        assert await s.run(credit("a", 1)) == 2
    finally:
        s.close()
    assert _events(state / "gatewayd.db") == [1, 2]
