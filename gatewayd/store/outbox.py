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

The cap (`center.outbox_max_mb`, MiB of payload bytes, all four classes
counted; SQLite's own overhead comes on top, roughly 1.5 to 2 times):
`enforce_cap` runs when the link queues telemetry and every few seconds.
When the total is over the cap it deletes, until the total is at or under
the cap:

1. the oldest queued telemetry documents;
2. then, only if still over, the oldest unpublished events of class 2
   (`tap`, `breaker.*`, `balance.low`, `alarm`); their `seq` becomes a gap
   that `events.resend` reports as no longer kept.

Money events (class 1) and command results (class 0) are never dropped: a
gateway whose outbox holds only those stays over the cap, keeps enforcing the
rules and keeps every one of them (logged as `outbox_over_cap_money_only`).
Every drop is counted in `meta` (`outbox.dropped_telemetry`,
`outbox.dropped_events`), and survives restarts.

The alarm: one `alarm` event, code `outbox_full`, device `outbox`, active
true, is recorded the first time the total exceeds the cap (before anything
is dropped, in the same transaction as the drops); it is cleared (the same
event with active false) the first time the total is back at or under
`ALARM_CLEAR_RATIO` (90 %) of the cap. Its state is kept in `meta`
(`outbox.full`), so a restart neither raises it twice nor forgets to clear
it. The alarm events themselves are class 2 and are inserted after the
drops, so they are the newest of their class and the last to be dropped.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from gatewayd.contract.wire import Alarm, AlarmCode, Priority
from gatewayd.store.schema import CLASS_EVENT, CLASS_MONEY, CLASS_RESULT, CLASS_TELEMETRY
from gatewayd.store.txn import Txn

__all__ = [
    "ALARM_CLEAR_RATIO",
    "ALARM_DEVICE",
    "COMMAND_KEEP_MIN_DAYS",
    "CapOutcome",
    "OutMessage",
    "Pending",
    "Resend",
    "dropped_counts",
    "enforce_cap",
    "mark_published",
    "next_page",
    "pending",
    "prune",
    "queue_telemetry",
    "resend",
]

#: The outbox_full alarm clears when the total is back under this share of the cap.
ALARM_CLEAR_RATIO: Final = 0.9
#: `device` of the outbox_full alarm.
ALARM_DEVICE: Final = "outbox"
#: Command ids are remembered at least this long (center-link.md "Signing").
COMMAND_KEEP_MIN_DAYS: Final = 7.0
#: Rows read per query while dropping or pruning: bounds the memory and the
#: time one job holds the writer thread.
_CHUNK: Final = 2000

_META_DROPPED_TELEMETRY: Final = "outbox.dropped_telemetry"
_META_DROPPED_EVENTS: Final = "outbox.dropped_events"
_META_FULL: Final = "outbox.full"
_DAY_S: Final = 86400.0


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
class CapOutcome:
    """What `enforce_cap` did."""

    total_bytes: int  # before any drop
    dropped_telemetry: int = 0
    dropped_events: int = 0
    alarm: bool | None = None  # True raised, False cleared, None unchanged
    over_cap: bool = False  # still over after dropping (money and results only)


@dataclass(frozen=True, slots=True)
class Resend:
    """What `resend` queued: kept events in range, and the seqs no longer kept."""

    from_seq: int
    to_seq: int  # the range actually served (clamped to the last seq assigned)
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


def dropped_counts(txn: Txn) -> tuple[int, int]:
    """(telemetry documents, events) dropped by the cap since the store was made."""
    return _meta_int(txn, _META_DROPPED_TELEMETRY), _meta_int(txn, _META_DROPPED_EVENTS)


def alarm_active(txn: Txn) -> bool:
    """Whether the outbox_full alarm is raised."""
    return _meta_int(txn, _META_FULL) == 1


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


def enforce_cap(txn: Txn, max_bytes: int, *, ts: str, wall: float | None = None) -> CapOutcome:
    """Apply the cap and the outbox_full alarm as the module doc says.

    Args:
        txn: the store transaction.
        max_bytes: `center.outbox_max_mb` in bytes (MiB * 1024 * 1024).
        ts: RFC 3339 stamp for an alarm event.
        wall: epoch seconds for an alarm event's `wall` (default now).
    """
    total = pending(txn).total_bytes
    active = alarm_active(txn)
    if total <= max_bytes:
        if active and total <= max_bytes * ALARM_CLEAR_RATIO:
            _set_alarm(txn, False, total, max_bytes, ts=ts, wall=wall)
            return CapOutcome(total_bytes=total, alarm=False)
        return CapOutcome(total_bytes=total)
    excess = total - max_bytes
    freed, n_telemetry = _drop_oldest(
        txn, excess,
        select="SELECT id, length(payload) FROM telemetry WHERE id > ? ORDER BY id LIMIT ?",
        delete="DELETE FROM telemetry WHERE id <= ?",
    )
    n_events = 0
    if freed < excess:
        more, n_events = _drop_oldest(
            txn, excess - freed,
            # Alarms are kept: few, and the operators' only view of faults (the
            # outbox_full raise itself among them, found by the outage campaign).
            select="SELECT seq, length(payload) FROM events WHERE published IS NULL"
                   f" AND class = {CLASS_EVENT} AND type != 'alarm' AND seq > ?"
                   " ORDER BY seq LIMIT ?",
            delete=f"DELETE FROM events WHERE published IS NULL AND class = {CLASS_EVENT}"
                   " AND type != 'alarm' AND seq <= ?",
        )
        freed += more
    if n_telemetry:
        _meta_add(txn, _META_DROPPED_TELEMETRY, n_telemetry)
    if n_events:
        _meta_add(txn, _META_DROPPED_EVENTS, n_events)
    raised = None
    if not active:
        _set_alarm(txn, True, total, max_bytes, ts=ts, wall=wall)
        raised = True
    return CapOutcome(total_bytes=total, dropped_telemetry=n_telemetry, dropped_events=n_events,
                      alarm=raised, over_cap=freed < excess)


def prune(txn: Txn, *, now: float, keep_events_days: float, limit: int = _CHUNK) -> int:
    """Delete at most `limit` old rows: events created and acknowledged more than
    `keep_events_days` ago (a backlog drained after a long outage is kept that
    long from its delivery), and published command results older than
    max(COMMAND_KEEP_MIN_DAYS, keep_events_days) whose command's validity has
    ended (its id must outlive its `expires`). Return how many were
    deleted; call again while it returns `limit` or more.

    Unpublished rows are never pruned: what the center has not received is
    not old, it is late.
    """
    events_before = now - keep_events_days * _DAY_S
    commands_before = now - max(COMMAND_KEEP_MIN_DAYS, keep_events_days) * _DAY_S
    n = txn.execute(
        "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE wall < ? AND published < ?"
        " LIMIT ?)", (events_before, events_before, limit),
    ).rowcount
    n += txn.execute(
        "DELETE FROM commands WHERE rowid IN (SELECT rowid FROM commands WHERE received < ?"
        " AND published IS NOT NULL AND (valid_until IS NULL OR valid_until < ?) LIMIT ?)",
        (commands_before, now, limit),
    ).rowcount
    return n


def resend(txn: Txn, from_seq: int, to_seq: int | None = None) -> Resend:
    """Queue the kept events with `from_seq <= seq <= to_seq` for publishing again.

    `to_seq` None means up to the last seq assigned; a `to_seq` beyond it is
    clamped (those seqs do not exist yet, they are not lost). The result
    lists, as inclusive ranges, the seqs in range that are no longer kept
    (pruned after `keep_events_days`, or dropped by the cap).
    """
    last = txn.last_seq()
    hi = last if to_seq is None else min(to_seq, last)
    lo = max(from_seq, 1)
    if hi < lo:
        return Resend(from_seq=from_seq, to_seq=hi, queued=0)
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


# --- helpers --------------------------------------------------------------------


def _drop_oldest(txn: Txn, need: int, *, select: str, delete: str) -> tuple[int, int]:
    """Delete the oldest rows until `need` payload bytes are freed; return (bytes, rows)."""
    freed = rows = 0
    last: int | None = None
    cursor = -1
    while freed < need:
        chunk = txn.execute(select, (cursor, _CHUNK)).fetchall()
        if not chunk:
            break
        for key, size in chunk:
            freed += size
            rows += 1
            last = key
            if freed >= need:
                break
        cursor = chunk[-1][0]
    if last is not None:
        txn.execute(delete, (last,))
    return freed, rows


def _set_alarm(txn: Txn, active: bool, total: int, max_bytes: int, *, ts: str, wall: float | None) -> None:
    mib = 1024 * 1024
    detail = (f"outbox {total / mib:.1f} MiB, cap {max_bytes / mib:.1f} MiB: dropping oldest telemetry, "
              "then oldest non-money events" if active
              else f"outbox {total / mib:.1f} MiB, back under {ALARM_CLEAR_RATIO:.0%} of the cap")
    txn.event(Alarm(code=AlarmCode.OUTBOX_FULL, device=ALARM_DEVICE, detail=detail, active=active),
              ts=ts, wall=time.time() if wall is None else wall)
    txn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = ?",
                (_META_FULL, "1" if active else "0", "1" if active else "0"))


def _meta_int(txn: Txn, key: str) -> int:
    row = txn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def _meta_add(txn: Txn, key: str, n: int) -> None:
    txn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + ? AS TEXT)",
        (key, str(n), n),
    )
