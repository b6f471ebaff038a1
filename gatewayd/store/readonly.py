"""A read-only view of a store from another process: events as they come, balances.

What the demo (and any tool) reads of a running daemon's store, through a
read-only connection that is safe while the daemon writes.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class StoredEvent:
    seq: int
    type: str
    doc: dict[str, Any]
    published: bool


class EventTail:
    """New events from the store, through a read-only connection (safe while it runs)."""

    def __init__(self, db: Path, after_seq: int = 0) -> None:
        self.db = db
        self.last_seq = after_seq
        self._conn: sqlite3.Connection | None = None

    def poll(self, limit: int = 500) -> list[StoredEvent]:
        if self._conn is None:
            self._conn = connect_ro(self.db)
        rows = self._conn.execute(
            "SELECT seq, type, payload, published FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (self.last_seq, limit)).fetchall()
        out = [StoredEvent(seq, type_, json.loads(payload), published is not None)
               for seq, type_, payload, published in rows]
        if out:
            self.last_seq = out[-1].seq
        return out

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def connect_ro(db: Path) -> sqlite3.Connection:
    # Used from worker threads (asyncio.to_thread), one at a time.
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0, check_same_thread=False)


# --- the store at start and at the end: what the summary checks -----------------------


@dataclass
class Ledgers:
    """Balances and money charged but not yet in an event, at one moment."""

    balances: dict[str, int]
    unreported: dict[str, int]   # power accrued + open water sessions, per account
    last_seq: int
    # Accounts an account.sync from the center has set: their balance is the
    # center's figure then, which no event carries.
    synced: frozenset[str] = frozenset()


def read_ledgers(db: Path, room_accounts: dict[str, str]) -> Ledgers:
    conn = connect_ro(db)
    try:
        balances = {a: int(b) for a, b in conn.execute("SELECT account, balance_fen FROM accounts")}
        unreported: Counter[str] = Counter()
        for room, fen in conn.execute("SELECT room, accrued_fen FROM rooms"):
            if room in room_accounts:
                unreported[room_accounts[room]] += int(fen)
        for account, fen in conn.execute("SELECT account, charged_fen FROM water_sessions"):
            unreported[account] += int(fen)
        (last,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        synced = set()
        for (result,) in conn.execute("SELECT result FROM commands"):
            with contextlib.suppress(ValueError):
                doc = json.loads(result)
                body = doc.get("result") if isinstance(doc, dict) else None
                if isinstance(body, dict) and "unreported_fen" in body:   # account.sync's
                    synced.add(str(body.get("account")))
        return Ledgers(balances, dict(unreported), int(last), frozenset(synced))
    finally:
        conn.close()


def all_events(db: Path, after_seq: int) -> list[StoredEvent]:
    tail = EventTail(db, after_seq)
    try:
        out: list[StoredEvent] = []
        while batch := tail.poll(5000):
            out += batch
        return out
    finally:
        tail.close()


