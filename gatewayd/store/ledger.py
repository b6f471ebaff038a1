"""Account balances: the store holds them, the ledger mirrors them in memory.

The center owns balances (behaviour.md "Accounts and cards"); the gateway
applies credits, debits locally, and re-bases on `account.sync`. The SQL
helpers run inside store jobs, in the same transaction as the events that
report them; `note()` updates the mirror with what the job returned, after
the commit, so the mirror never shows money that is not on disk.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import msgspec

from gatewayd.rules.ledger import DEBIT_TYPES, Unreported
from gatewayd.store.txn import Txn


class _Debit(msgspec.Struct):
    """The two fields of a debit event that `account.sync` needs."""

    account: str | None = None
    amount_fen: int = 0


_DEBIT = msgspec.json.Decoder(_Debit)


class Ledger:
    def __init__(self) -> None:
        self.balances: dict[str, int] = {}
        self.known: set[str] = set()

    def load(self, txn: Txn) -> None:
        for account, balance, known in txn.execute(
            "SELECT account, balance_fen, known FROM accounts"
        ):
            self.balances[account] = balance
            if known:
                self.known.add(account)

    def balance(self, account: str) -> int:
        return self.balances.get(account, 0)

    def is_known(self, account: str) -> bool:
        return account in self.known

    def note(self, account: str, balance: int, known: bool) -> None:
        self.balances[account] = balance
        if known:
            self.known.add(account)

    # --- inside store jobs --------------------------------------------------------

    @staticmethod
    def debit(txn: Txn, account: str, fen: int) -> tuple[int, bool]:
        """Take `fen` from `account` (created unknown if new); return (balance, known)."""
        row = txn.execute(
            "INSERT INTO accounts (account, balance_fen, known, updated) VALUES (?, ?, 0, ?) "
            "ON CONFLICT (account) DO UPDATE SET balance_fen = balance_fen - ?, "
            "updated = excluded.updated RETURNING balance_fen, known",
            (account, -fen, time.time(), fen),
        ).fetchone()
        return int(row[0]), bool(row[1])

    @staticmethod
    def credit(txn: Txn, account: str, fen: int) -> int:
        """Add `fen` to `account`, which the center now knows; return the balance."""
        row = txn.execute(
            "INSERT INTO accounts (account, balance_fen, known, updated) VALUES (?, ?, 1, ?) "
            "ON CONFLICT (account) DO UPDATE SET balance_fen = balance_fen + excluded.balance_fen, "
            "known = 1, updated = excluded.updated RETURNING balance_fen",
            (account, fen, time.time()),
        ).fetchone()
        return int(row[0])

    @staticmethod
    def set_balance(txn: Txn, account: str, fen: int) -> int:
        """Set the balance outright (account.sync after its arithmetic; tools)."""
        txn.execute(
            "INSERT INTO accounts (account, balance_fen, known, updated) VALUES (?, ?, 1, ?) "
            "ON CONFLICT (account) DO UPDATE SET balance_fen = excluded.balance_fen, known = 1, "
            "updated = excluded.updated",
            (account, fen, time.time()),
        )
        return fen

    @staticmethod
    def read(txn: Txn, account: str) -> tuple[int, bool] | None:
        row = txn.execute(
            "SELECT balance_fen, known FROM accounts WHERE account = ?", (account,)
        ).fetchone()
        return None if row is None else (int(row[0]), bool(row[1]))

    @staticmethod
    def unreported(txn: Txn, account: str, after_seq: int, rooms: Sequence[str]) -> Unreported:
        """What `account` spent that a center which saw events up to `after_seq`
        has not seen: later debit events, accrued power of `rooms`, open water."""
        debits = 0
        for (payload,) in txn.execute(
            f"SELECT payload FROM events WHERE seq > ? AND type IN ({', '.join('?' * len(DEBIT_TYPES))})",
            (after_seq, *DEBIT_TYPES),
        ):
            ev = _DEBIT.decode(payload)
            if ev.account == account:
                debits += ev.amount_fen
        accrued = txn.execute(
            "SELECT COALESCE(SUM(accrued_fen), 0) FROM rooms WHERE room IN "
            "(SELECT value FROM json_each(?))", (json.dumps(list(rooms)),),
        ).fetchone()[0]
        open_water = txn.execute(
            "SELECT COALESCE(SUM(charged_fen), 0) FROM water_sessions WHERE account = ?",
            (account,),
        ).fetchone()[0]
        return Unreported(debits_fen=debits, accrued_fen=int(accrued),
                          open_water_fen=int(open_water))
