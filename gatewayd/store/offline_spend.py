"""Water each card paid for while the center was unreachable, per day (the offline day limit).

The store holds it; this mirror of today's answers taps and charges without
touching the disk. `add` runs inside the store job that debits the charge;
`note` updates the mirror with the same amount after the commit.
"""

from __future__ import annotations

from gatewayd.store.txn import Txn


class OfflineSpend:
    def __init__(self) -> None:
        self.spent: dict[tuple[str, str], int] = {}   # (card, day) -> fen

    def load(self, txn: Txn, day: str) -> None:
        """What each card spent offline on `day` (the building's date)."""
        self.spent = {(card, d): fen for card, d, fen in txn.execute(
            "SELECT card, day, fen FROM offline_spend WHERE day = ?", (day,)).fetchall()}

    def of(self, card: str, day: str) -> int:
        return self.spent.get((card, day), 0)

    def note(self, card: str, day: str, fen: int) -> None:
        if fen:
            key = (card, day)
            self.spent[key] = self.spent.get(key, 0) + fen

    # --- inside store jobs --------------------------------------------------------

    @staticmethod
    def add(txn: Txn, card: str, day: str, fen: int) -> None:
        txn.execute(
            "INSERT INTO offline_spend (card, day, fen) VALUES (?, ?, ?) "
            "ON CONFLICT (card, day) DO UPDATE SET fen = fen + excluded.fen", (card, day, fen))
