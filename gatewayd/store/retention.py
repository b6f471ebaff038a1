"""What the store stops keeping: the outbox cap, and the retention of old rows.

Contract of the layer: plain functions of a `Txn`, run as store jobs, like
`gatewayd.store.outbox` (whose tables and `outbox_pending` totals these read);
the center link decides when to call them (`gatewayd.center.retention`).

The cap (`center.outbox_max_mb`, MiB of payload bytes, all four classes
counted; SQLite's own overhead comes on top, roughly 1.5 to 2 times):
`enforce_cap` runs when the link queues telemetry and every few seconds.
When the total is over the cap it deletes, until the total is at or under
the cap:

1. the oldest queued telemetry documents;
2. then, only if still over, the oldest unpublished events of class 2
   (`tap`, `breaker.*`, `balance.low`; alarms are kept: few, and the
   operators' only view of faults); their `seq` becomes a gap that
   `events.resend` reports as no longer kept.

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

Retention (`prune`): events acknowledged more than `keep_events_days` ago,
and published command results whose id no longer needs to be remembered
(center-link.md "Signing"), are deleted in bounded chunks. What is
unpublished is never pruned.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from gatewayd.contract.enums import AlarmCode
from gatewayd.contract.events import Alarm
from gatewayd.store import meta
from gatewayd.store.outbox import pending
from gatewayd.store.schema import CLASS_EVENT
from gatewayd.store.txn import Txn

__all__ = [
    "ALARM_CLEAR_RATIO",
    "ALARM_DEVICE",
    "COMMAND_KEEP_MIN_DAYS",
    "CapOutcome",
    "alarm_active",
    "dropped_counts",
    "enforce_cap",
    "prune",
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
class CapOutcome:
    """What `enforce_cap` did."""

    total_bytes: int  # before any drop
    dropped_telemetry: int = 0
    dropped_events: int = 0
    alarm: bool | None = None  # True raised, False cleared, None unchanged
    over_cap: bool = False  # still over after dropping (money and results only)


def dropped_counts(txn: Txn) -> tuple[int, int]:
    """(telemetry documents, events) dropped by the cap since the store was made."""
    return meta.get_int(txn, _META_DROPPED_TELEMETRY), meta.get_int(txn, _META_DROPPED_EVENTS)


def alarm_active(txn: Txn) -> bool:
    """Whether the outbox_full alarm is raised."""
    return meta.get_int(txn, _META_FULL) == 1


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
        meta.add(txn, _META_DROPPED_TELEMETRY, n_telemetry)
    if n_events:
        meta.add(txn, _META_DROPPED_EVENTS, n_events)
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
    meta.put(txn, _META_FULL, "1" if active else "0")

