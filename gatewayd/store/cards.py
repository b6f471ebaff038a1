"""Cards: the store holds them, this mirror answers taps without touching the disk.

Changes (card.put, card.block, cards.load) are written in store jobs; `note`
and `load_many` update the mirror after the commit.
"""

from __future__ import annotations

import time
from datetime import date

from gatewayd.rules.water import Card
from gatewayd.store import meta
from gatewayd.store.txn import Txn

# `meta` key of the version of the last cards.load.
_VERSION_KEY = "cards_version"


class Cards:
    def __init__(self) -> None:
        self.cards: dict[str, Card] = {}
        self.version: int | None = None

    def load(self, txn: Txn) -> None:
        for uid, account, kind, status, expires in txn.execute(
            "SELECT uid, account, kind, status, expires FROM cards"
        ):
            self.cards[uid] = Card(uid, account, kind, status,
                                   date.fromisoformat(expires) if expires else None)
        version = meta.get(txn, _VERSION_KEY)
        self.version = int(version) if version is not None else None

    def get(self, uid: str) -> Card | None:
        return self.cards.get(uid)

    def note(self, card: Card) -> None:
        self.cards[card.uid] = card

    def load_many(self, cards: dict[str, Card], version: int, *, replace: bool) -> None:
        """A `cards.load`: the full list replaces the mirror, a partial one upserts."""
        if replace:
            self.cards = cards
        else:
            self.cards.update(cards)
        self.version = version

    # --- inside store jobs --------------------------------------------------------

    @staticmethod
    def put(txn: Txn, card: Card) -> None:
        txn.execute(
            "INSERT INTO cards (uid, account, kind, status, expires, updated) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (uid) DO UPDATE SET account = excluded.account, "
            "kind = excluded.kind, status = excluded.status, expires = excluded.expires, "
            "updated = excluded.updated",
            (card.uid, card.account, card.kind, card.status,
             card.expires.isoformat() if card.expires else None, time.time()),
        )

    @staticmethod
    def clear(txn: Txn) -> None:
        txn.execute("DELETE FROM cards")

    @staticmethod
    def set_version(txn: Txn, version: int) -> None:
        meta.put(txn, _VERSION_KEY, str(version))
