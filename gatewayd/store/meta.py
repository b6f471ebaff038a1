"""The `meta` table: small named values that outlive restarts.

Contract: plain functions of a `Txn`, run as store jobs. Values are text.
Each key belongs to one module, where its reader and writer stand together:
`cards_version` (`gatewayd.store.cards`), the outbox's drop counts and alarm
state (`gatewayd.store.retention`), the newest command `ts`
(`gatewayd.store.command_log`), `probe` (the store probe of
`gatewayd.app.daemon`), and here the prices set by the center (`tariff.set`),
kept as `tariff.<service>` = "<price> <unit>".
"""

from __future__ import annotations

from decimal import Decimal

from gatewayd.store.txn import Txn

_TARIFF_PREFIX = "tariff."


def probe(txn: Txn) -> None:
    """A read that fails when the database cannot be read (the store's health probe)."""
    txn.execute("SELECT 1").fetchone()


def get(txn: Txn, key: str) -> str | None:
    """The value of `key`, None when it was never set."""
    row = txn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def get_int(txn: Txn, key: str) -> int:
    """The value of `key` as an integer, 0 when it was never set."""
    value = get(txn, key)
    return 0 if value is None else int(value)


def put(txn: Txn, key: str, value: str) -> None:
    """Set `key` to `value`."""
    txn.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))


def add(txn: Txn, key: str, n: int) -> None:
    """Add `n` to the integer at `key` (0 when it was never set)."""
    txn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + ? AS TEXT)",
        (key, str(n), n),
    )


def save_tariff(txn: Txn, service: str, price: Decimal, unit: str) -> None:
    """Keep a price set by the center for `service` (`power` or a water service)."""
    put(txn, f"{_TARIFF_PREFIX}{service}", f"{price} {unit}")


def saved_tariffs(txn: Txn) -> list[tuple[str, Decimal, str]]:
    """The prices set by the center, as (service, price, unit)."""
    out: list[tuple[str, Decimal, str]] = []
    for key, value in txn.execute("SELECT key, value FROM meta WHERE key LIKE 'tariff.%'"):
        price, unit = value.split()
        out.append((key.removeprefix(_TARIFF_PREFIX), Decimal(price), unit))
    return out
