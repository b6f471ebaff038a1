"""The commands the center sent, as the store remembers them (center-link.md "Commands").

Contract: plain functions of a `Txn`, run as store jobs.
- A command handled is remembered by its id with its first result (the
  `commands` table, class 0 of the outbox), until its validity ended at
  least (`valid_until`; `gatewayd.store.retention.prune` deletes it later),
  so that a repeat is answered with that result and never applied again.
- The newest `ts` (epoch seconds) of any command handled is kept in `meta`
  in the same transaction: the floor of "now" while the clock is not
  synchronised. It only ever rises.
"""

from __future__ import annotations

from typing import Final

from gatewayd.store import meta
from gatewayd.store.txn import Txn

#: `meta` key of the newest `ts` (epoch seconds) of any command handled.
NEWEST_TS_KEY: Final = "commands.newest_ts"


def first_result(txn: Txn, command_id: str) -> bytes | None:
    """The result recorded for `command_id`, None if it was never handled."""
    row = txn.execute("SELECT result FROM commands WHERE id = ?", (command_id,)).fetchone()
    return None if row is None else bytes(row[0])


def newest_ts(txn: Txn) -> float | None:
    """The newest `ts` of any command handled, None before the first."""
    value = meta.get(txn, NEWEST_TS_KEY)
    return None if value is None else float(value)


def remember(txn: Txn, command_id: str, result: bytes, *, received: float,
             valid_until: float, issued: float) -> None:
    """Record a command as handled: its first result, kept until `valid_until`
    at least, and `issued` as the newest `ts` if it is newer."""
    txn.execute(
        "INSERT INTO commands (id, received, result, valid_until) VALUES (?, ?, ?, ?)",
        (command_id, received, result, valid_until))
    txn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
        "value = excluded.value WHERE CAST(excluded.value AS REAL) > CAST(value AS REAL)",
        (NEWEST_TS_KEY, repr(issued)))
