"""The store side of delivery to the center (center-link.md "Delivery").

Contract of the layer: plain functions of a `Txn`, run as store jobs
(`await store.run(lambda txn: outbox.f(txn, ...))`); no asyncio, no MQTT, no
clock (callers pass epoch seconds and RFC 3339 stamps). The center link
decides when to call them (`gatewayd/center/`: pump, telemetry, retention).

The outbox is three tables:

- `commands WHERE published IS NULL`: command results, class 0;
- `events WHERE published IS NULL`: money events (class 1) and other events
  (class 2), in `seq` order within a class;
- `telemetry`: telemetry documents queued while offline, class 3; a row
  leaves the table once published (telemetry is not kept).

`outbox_pending` (schema version 3) holds the exact count and payload bytes of
each class, kept by triggers in the same transactions as the rows, so the cap
and the status document's `pending` never scan the backlog.

What leaves the outbox unpublished (the cap) and what is deleted after it was
published (retention) is `gatewayd.store.retention`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gatewayd.contract.enums import Priority
from gatewayd.store.schema import CLASS_EVENT, CLASS_MONEY, CLASS_RESULT, CLASS_TELEMETRY
from gatewayd.store.txn import Txn

__all__ = [
    "OutMessage",
    "Pending",
    "Resend",
    "mark_published",
    "next_page",
    "pending",
    "queue_telemetry",
    "resend",
]


@dataclass(frozen=True, slots=True)
class OutMessage:
    """One message to publish: its class, its key in its table, its payload.

    `key` is the command id (class 0), the event seq (1, 2) or the telemetry
    row id (3).
    """

    klass: Priority
    key: str | int
    payload: bytes

    @property
    def ident(self) -> tuple[int, str | int]:
        """A key unique across classes (a seq and a telemetry id may be equal)."""
        return (0 if self.klass is Priority.RESULT else 3 if self.klass is Priority.TELEMETRY else 1,
                self.key)


@dataclass(frozen=True, slots=True)
class Pending:
    """What is unpublished, per class: counts and payload bytes."""

    counts: tuple[int, int, int, int]
    bytes: tuple[int, int, int, int]

    @property
    def messages(self) -> int:
        """Results and events not yet acknowledged: the status document's `pending`.

        Queued telemetry is not counted: `pending: 0` tells the center that a
        `seq` gap is a loss, which telemetry has nothing to do with.
        """
        return self.counts[CLASS_RESULT] + self.counts[CLASS_MONEY] + self.counts[CLASS_EVENT]

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes)


@dataclass(frozen=True, slots=True)
class Resend:
    """What `resend` queued: kept events in range, and the seqs no longer kept."""

    from_seq: int
    to_seq: int | None  # the range served (clamped to the last seq); None: no seq in it yet
    queued: int  # kept events in the range, all unpublished now
    missing: tuple[tuple[int, int], ...] = field(default=())  # inclusive ranges not kept

    @property
    def missing_count(self) -> int:
        return sum(b - a + 1 for a, b in self.missing)


# --- reading --------------------------------------------------------------------


def pending(txn: Txn) -> Pending:
    """Counts and bytes of every class, from the trigger-kept totals."""
    counts = [0, 0, 0, 0]
    sizes = [0, 0, 0, 0]
    for klass, count, size in txn.execute("SELECT class, count, bytes FROM outbox_pending"):
        counts[klass] = count
        sizes[klass] = size
    return Pending(counts=(counts[0], counts[1], counts[2], counts[3]),
                   bytes=(sizes[0], sizes[1], sizes[2], sizes[3]))


def next_page(
    txn: Txn,
    *,
    limit: int,
    lower_limit: int | None = None,
    exclude: Iterable[tuple[int, str | int]] = (),
) -> list[OutMessage]:
    """The next messages to publish, at most `limit`: results, then money, then
    other events, then telemetry, each oldest first.

    `exclude` holds the `OutMessage.ident` of messages already in flight or
    acknowledged but not yet marked; they are skipped. `lower_limit` caps how
    many of the page may be class 2 or 3 (None: no separate cap), so that a
    backlog of those never fills the window ahead of a later money event.
    """
    if limit <= 0:
        return []
    skip: dict[int, set[str | int]] = {0: set(), 1: set(), 3: set()}
    for table, key in exclude:
        skip[table].add(key)
    page: list[OutMessage] = []

    def room(klass: int) -> int:
        left = limit - len(page)
        if klass >= CLASS_EVENT and lower_limit is not None:
            left = min(left, lower_limit - sum(1 for m in page if m.klass >= Priority.EVENT))
        return max(left, 0)

    want = room(CLASS_RESULT)
    if want:
        skipped = skip[0]
        rows = txn.execute(
            "SELECT id, result FROM commands WHERE published IS NULL ORDER BY received, rowid LIMIT ?",
            (want + len(skipped),),
        )
        got = [OutMessage(Priority.RESULT, cid, bytes(result)) for cid, result in rows
               if cid not in skipped]
        page.extend(got[:want])
    for klass in (CLASS_MONEY, CLASS_EVENT):
        want = room(klass)
        if not want:
            continue
        skipped = skip[1]
        rows = txn.execute(
            "SELECT seq, payload FROM events WHERE published IS NULL AND class = ? ORDER BY seq LIMIT ?",
            (klass, want + len(skipped)),
        )
        got = [OutMessage(Priority(klass), seq, bytes(payload)) for seq, payload in rows
               if seq not in skipped]
        page.extend(got[:want])
    want = room(CLASS_TELEMETRY)
    if want:
        skipped = skip[3]
        rows = txn.execute("SELECT id, payload FROM telemetry ORDER BY id LIMIT ?", (want + len(skipped),))
        got = [OutMessage(Priority.TELEMETRY, rid, bytes(payload)) for rid, payload in rows
               if rid not in skipped]
        page.extend(got[:want])
    return page


# --- writing --------------------------------------------------------------------


def mark_published(txn: Txn, messages: Sequence[OutMessage], *, now: float) -> Pending:
    """Record that the broker acknowledged `messages`; return what is still pending.

    Results and events keep their row (`published` set, for duplicates and
    `events.resend`); telemetry rows are deleted.
    """
    results = [(now, m.key) for m in messages if m.klass is Priority.RESULT]
    events = [(now, m.key) for m in messages if m.klass in (Priority.MONEY, Priority.EVENT)]
    telemetry = [(m.key,) for m in messages if m.klass is Priority.TELEMETRY]
    if results:
        txn.conn.executemany("UPDATE commands SET published = ? WHERE id = ? AND published IS NULL", results)
    if events:
        txn.conn.executemany("UPDATE events SET published = ? WHERE seq = ? AND published IS NULL", events)
    if telemetry:
        txn.conn.executemany("DELETE FROM telemetry WHERE id = ?", telemetry)
    return pending(txn)


def queue_telemetry(txn: Txn, payload: bytes, *, wall: float) -> int:
    """Queue one telemetry document for later; return its row id."""
    cur = txn.execute("INSERT INTO telemetry (wall, payload) VALUES (?, ?)", (wall, payload))
    rowid = cur.lastrowid
    assert rowid is not None
    return rowid


def resend(txn: Txn, from_seq: int, to_seq: int | None = None) -> Resend:
    """Queue the kept events with `from_seq <= seq <= to_seq` for publishing again.

    `to_seq` None means up to the last seq assigned; a `to_seq` beyond it is
    clamped (those seqs do not exist yet, they are not lost). The result
    lists, as inclusive ranges, the seqs in range that are no longer kept
    (pruned after `keep_events_days`, or dropped by the cap). When no seq in
    range has been assigned yet (`from_seq` beyond the last seq), nothing is
    queued and the result's `to_seq` is None: never a `to_seq` below `from_seq`.
    """
    last = txn.last_seq()
    hi = last if to_seq is None else min(to_seq, last)
    lo = max(from_seq, 1)
    if hi < lo:
        return Resend(from_seq=from_seq, to_seq=None, queued=0)
    txn.execute(
        "UPDATE events SET published = NULL WHERE seq BETWEEN ? AND ? AND published IS NOT NULL", (lo, hi)
    )
    queued = txn.execute("SELECT COUNT(*) FROM events WHERE seq BETWEEN ? AND ?", (lo, hi)).fetchone()[0]
    missing: list[tuple[int, int]] = []
    if queued < hi - lo + 1:
        # Gaps between consecutive kept seqs, found by SQLite, not a Python walk.
        prev = lo - 1
        rows = txn.execute(
            "SELECT prev, seq FROM (SELECT seq, LAG(seq, 1, ?) OVER (ORDER BY seq) AS prev FROM events"
            " WHERE seq BETWEEN ? AND ?) WHERE seq - prev > 1",
            (prev, lo, hi),
        )
        missing = [(p + 1, s - 1) for p, s in rows]
        tail = txn.execute("SELECT MAX(seq) FROM events WHERE seq BETWEEN ? AND ?", (lo, hi)).fetchone()[0]
        tail = lo - 1 if tail is None else tail
        if tail < hi:
            missing.append((tail + 1, hi))
    return Resend(from_seq=from_seq, to_seq=hi, queued=queued, missing=tuple(missing))
