"""The alarms on record: what the event log says is raised now.

`alarms_active` is kept from the `alarm` events by the schema (a raise adds
its row, a clear removes it), so a restart knows which alarms the center was
told are raised and has never been told are cleared.
"""

from __future__ import annotations

from gatewayd.store.txn import Txn


def on_record(txn: Txn) -> list[tuple[str, str, str]]:
    """(code, device, detail) of every alarm raised and not cleared on record."""
    return [(str(code), str(device), str(detail)) for code, device, detail in txn.execute(
        "SELECT code, device, detail FROM alarms_active").fetchall()]
