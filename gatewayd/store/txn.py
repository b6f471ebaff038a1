"""What a store job sees: the transaction, and the events it appends.

Contract:
- A job is a function of a `Txn`, run in the store's writer thread inside
  the group's transaction (`gatewayd.store.db`); it is all or nothing.
- `Txn.event` gives an event its `seq` inside the job that makes the ledger
  change it reports: `seq` rises by exactly 1 and is never reused. The
  contract module decides the event's type and delivery class; no event
  payload is written by hand.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gatewayd.contract.enums import priority_of
from gatewayd.contract.events import EventBody, EventEnvelope, encode_event, event_type_of


@dataclass(frozen=True, slots=True)
class Event:
    """An event as committed: what the outbox publishes."""

    seq: int
    id: str
    type: str
    payload: bytes


_KINDS: dict[type[EventBody], tuple[str, int]] = {}


def _kind(body: EventBody) -> tuple[str, int]:
    """The event's type and delivery class, worked out once per body type."""
    kind = _KINDS.get(type(body))
    if kind is None:
        type_ = event_type_of(body)
        kind = _KINDS[type(body)] = (type_.value, int(priority_of(type_)))
    return kind


def last_assigned_seq(conn: sqlite3.Connection) -> int:
    """The last event seq assigned in the store, 0 before the first event."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    return int(row[0]) if row else 0


class Txn:
    """What a job sees: the connection, inside the group's transaction.

    `next_seq` is the seq the next event gets; the writer takes it back when
    a job fails and hands it on to the store after each job.
    """

    def __init__(self, conn: sqlite3.Connection, building: str, next_seq: int) -> None:
        self.conn = conn
        self.building = building
        self.next_seq = next_seq
        self.events: list[Event] = []

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def last_seq(self) -> int:
        """The last event seq assigned (events may have been pruned or dropped since)."""
        return last_assigned_seq(self.conn)

    def event(self, body: EventBody, *, ts: str, wall: float | None = None) -> Event:
        """Append an event to the log in this transaction; return it with its seq.

        `body` is the type's own fields, a contract type: the contract decides
        the event's `type` and its delivery class. The envelope (id, seq, ts,
        building) is added here, in the contract's key order.
        """
        seq = self.next_seq
        event_id = str(uuid.uuid4())
        type_, klass = _kind(body)
        payload = encode_event(EventEnvelope(id=event_id, seq=seq, ts=ts, building=self.building), body)
        self.conn.execute(
            "INSERT INTO events (seq, id, type, class, wall, payload) VALUES (?, ?, ?, ?, ?, ?)",
            (seq, event_id, type_, klass, time.time() if wall is None else wall, payload),
        )
        self.next_seq = seq + 1
        ev = Event(seq, event_id, type_, payload)
        self.events.append(ev)
        return ev


Job = Callable[[Txn], Any]
