"""The outbox in the store: what leaves first, what the cap drops, what is kept."""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from gatewayd.contract.enums import Priority, TapReason
from gatewayd.contract.events import PowerUsage, Tap
from gatewayd.store import outbox, retention
from gatewayd.store.db import Store
from gatewayd.store.outbox import OutMessage
from gatewayd.store.retention import ALARM_CLEAR_RATIO
from gatewayd.store.txn import Txn

TS = "2026-11-25T10:00:00.000+08:00"
DAY = 86400.0
TAP = Tap(reader="r1", card="04A1B2C3", point=None, granted=False,
               reason=TapReason.UNKNOWN_CARD)
USAGE = PowerUsage(room="301", account="a", wh=10, amount_fen=1, meter_wh_from=0,
                        meter_wh_to=10, balance_fen=100)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "state", "b07")
    try:
        yield s
    finally:
        s.close()


def add(store: Store, kinds: str, *, wall: float | None = None) -> list[int]:
    """Add events: 't' a tap (class 2), 'm' a power.usage (class 1). Return their seqs."""
    def job(txn: Txn) -> list[int]:
        return [txn.event(TAP if k == "t" else USAGE,
                          ts=TS, wall=wall).seq for k in kinds]
    return store.call(job)


def add_result(store: Store, cid: str, received: float) -> None:
    store.call(lambda txn: txn.execute("INSERT INTO commands (id, received, result) VALUES (?, ?, ?)",
                                       (cid, received, b'{"id":"%s","ok":true,"result":{}}' % cid.encode())))


def page(store: Store, **kw: Any) -> list[OutMessage]:
    return store.call(lambda txn: outbox.next_page(txn, **kw))


def keys(msgs: list[OutMessage]) -> list[tuple[int, str | int]]:
    return [(int(m.klass), m.key) for m in msgs]


def mark(store: Store, msgs: list[OutMessage]) -> outbox.Pending:
    return store.call(lambda txn: outbox.mark_published(txn, msgs, now=time.time()))


def test_results_then_money_then_events_then_telemetry_each_oldest_first(store: Store) -> None:
    add(store, "tmtmt")  # seqs 1..5: 1 t, 2 m, 3 t, 4 m, 5 t
    store.call(lambda txn: outbox.queue_telemetry(txn, b'{"ts":"a"}', wall=1.0))
    add_result(store, "c2", 20.0)
    add_result(store, "c1", 10.0)
    got = page(store, limit=100)
    assert keys(got) == [(0, "c1"), (0, "c2"), (1, 2), (1, 4), (2, 1), (2, 3), (2, 5), (3, 1)]
    assert got[2].payload.startswith(b'{"id":')


def test_page_limit_exclusions_and_lower_class_cap(store: Store) -> None:
    add(store, "ttttmm")  # 1-4 taps, 5-6 money
    assert keys(page(store, limit=3)) == [(1, 5), (1, 6), (2, 1)]
    assert keys(page(store, limit=10, exclude=[(1, 5), (1, 1)])) == [(1, 6), (2, 2), (2, 3), (2, 4)]
    # Lower classes capped at 2 while money is not.
    assert keys(page(store, limit=10, lower_limit=2)) == [(1, 5), (1, 6), (2, 1), (2, 2)]
    assert keys(page(store, limit=10, lower_limit=0)) == [(1, 5), (1, 6)]


def test_marking_published_leaves_the_outbox_and_updates_counts(store: Store) -> None:
    add(store, "tm")
    store.call(lambda txn: outbox.queue_telemetry(txn, b"x" * 10, wall=1.0))
    add_result(store, "c1", 1.0)
    before = store.call(outbox.pending)
    assert before.counts == (1, 1, 1, 1)
    assert before.messages == 3
    left = mark(store, page(store, limit=100))
    assert left.counts == (0, 0, 0, 0) and left.total_bytes == 0
    assert page(store, limit=100) == []
    # Results and events stay (published); telemetry rows go.
    assert store.call(lambda t: t.execute("SELECT COUNT(*) FROM events WHERE published IS NOT NULL")
                      .fetchone()[0]) == 2
    assert store.call(lambda t: t.execute("SELECT COUNT(*) FROM telemetry").fetchone()[0]) == 0


def test_pending_counts_are_exact_after_every_kind_of_change(store: Store) -> None:
    add(store, "tmtm")
    mark(store, page(store, limit=2))  # the two money events
    store.call(lambda t: t.execute("DELETE FROM events WHERE seq = 1"))
    store.call(lambda t: outbox.resend(t, 1, 4))

    def scan(txn: Txn) -> tuple[int, int]:
        row = txn.execute(
            "SELECT COUNT(*), SUM(length(payload)) FROM events WHERE published IS NULL").fetchone()
        return row[0], row[1]

    p = store.call(outbox.pending)
    assert (p.counts[1] + p.counts[2], p.bytes[1] + p.bytes[2]) == store.call(scan)


def test_cap_drops_oldest_telemetry_first_and_raises_the_alarm_once(store: Store) -> None:
    add(store, "m")
    for i in range(10):
        doc = b"%03d" % i + b"x" * 97
        store.call(partial(outbox.queue_telemetry, payload=doc, wall=float(i)))
    total = store.call(outbox.pending).total_bytes
    cap = total - 250  # three 100-byte telemetry documents must go
    out = store.call(lambda txn: retention.enforce_cap(txn, cap, ts=TS))
    assert (out.dropped_telemetry, out.dropped_events, out.alarm, out.over_cap) == (3, 0, True, False)
    left = store.call(lambda t: [bytes(r[0][:3])
                                 for r in t.execute("SELECT payload FROM telemetry ORDER BY id")])
    assert left == [b"%03d" % i for i in range(3, 10)]
    alarms = alarm_events(store)
    assert [(a["code"], a["device"], a["active"]) for a in alarms] == [("outbox_full", "outbox", True)]
    # Still full: no second alarm, only drops.
    store.call(lambda txn: outbox.queue_telemetry(txn, b"y" * 100, wall=11.0))
    out = store.call(lambda txn: retention.enforce_cap(txn, cap, ts=TS))
    assert out.alarm is None and out.dropped_telemetry >= 1
    assert len(alarm_events(store)) == 1
    assert store.call(retention.dropped_counts) == (3 + out.dropped_telemetry, 0)


def test_cap_drops_other_events_only_after_telemetry_and_never_money(store: Store) -> None:
    seqs = add(store, "tmtmtm")
    store.call(lambda txn: outbox.queue_telemetry(txn, b"t" * 50, wall=1.0))
    out = store.call(lambda txn: retention.enforce_cap(txn, 1, ts=TS))  # everything droppable must go
    assert out.dropped_telemetry == 1 and out.dropped_events == 3 and out.over_cap
    pending_seqs = store.call(lambda t: [r[0] for r in t.execute(
        "SELECT seq FROM events WHERE published IS NULL AND type != 'alarm' ORDER BY seq")])
    assert pending_seqs == [seqs[1], seqs[3], seqs[5]]  # every money event kept
    assert store.call(retention.dropped_counts) == (1, 3)
    # Again: the money events and the alarm stay, nothing else to drop (alarms are
    # never dropped: the outbox_full raise must reach the center before its clear).
    out = store.call(lambda txn: retention.enforce_cap(txn, 1, ts=TS))
    assert out.dropped_events == 0 and out.over_cap
    assert [a["active"] for a in alarm_events(store)] == [True]
    assert store.call(lambda t: t.execute("SELECT COUNT(*) FROM events WHERE class = 1").fetchone()[0]) == 3


def test_drop_counts_survive_a_restart(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "state", "b07")
    add(s, "tt")
    s.call(lambda txn: retention.enforce_cap(txn, 1, ts=TS))
    s.close()
    s = Store.open(tmp_path / "state", "b07")
    try:
        assert s.call(retention.dropped_counts) == (0, 2)
        assert s.call(retention.alarm_active)
    finally:
        s.close()


def test_alarm_clears_under_ninety_percent_of_the_cap(store: Store) -> None:
    for _ in range(10):
        store.call(lambda txn: outbox.queue_telemetry(txn, b"x" * 100, wall=1.0))
    cap = 900
    store.call(lambda txn: retention.enforce_cap(txn, cap, ts=TS))
    assert store.call(retention.alarm_active)
    # Publish everything but 0.9 * cap worth: still above the clear level with the alarm event.
    msgs = page(store, limit=100)
    mark(store, msgs)
    total = store.call(outbox.pending).total_bytes
    assert total <= cap * ALARM_CLEAR_RATIO
    out = store.call(lambda txn: retention.enforce_cap(txn, cap, ts=TS))
    assert out.alarm is False
    assert [a["active"] for a in alarm_events(store)] == [True, False]


def test_retention_keeps_unpublished_and_recent(store: Store) -> None:
    now = time.time()
    old = add(store, "tt", wall=now - 8 * DAY)
    recent = add(store, "t", wall=now - 1 * DAY)
    mark(store, [m for m in page(store, limit=10) if m.key == old[0]])  # old[1] stays unpublished
    store.call(lambda t: t.execute("UPDATE events SET published = wall WHERE seq = ?", (old[0],)))
    add_result(store, "old-published", now - 8 * DAY)
    add_result(store, "old-unpublished", now - 8 * DAY)
    add_result(store, "new", now - 6 * DAY)
    store.call(lambda t: t.execute("UPDATE commands SET published = 1 WHERE id != 'old-unpublished'"))
    n = store.call(lambda txn: retention.prune(txn, now=now, keep_events_days=7))
    assert n == 2
    kept = store.call(lambda t: [r[0] for r in t.execute("SELECT seq FROM events ORDER BY seq")])
    assert kept == [old[1], *recent]
    assert store.call(lambda t: sorted(r[0] for r in t.execute("SELECT id FROM commands"))) == [
        "new", "old-unpublished"]


def test_a_backlog_delivered_late_is_kept_from_its_delivery(store: Store) -> None:
    """Events created 8 days ago, offline since, acknowledged just now: still kept
    for events.resend (keep_events_days counts from the acknowledgement too)."""
    now = time.time()
    late = add(store, "mt", wall=now - 8 * DAY)
    mark(store, page(store, limit=10))
    assert store.call(lambda txn: retention.prune(txn, now=now, keep_events_days=7)) == 0
    kept = store.call(lambda t: [r[0] for r in t.execute("SELECT seq FROM events ORDER BY seq")])
    assert kept == late
    later = now + 7 * DAY + 60
    assert store.call(lambda txn: retention.prune(txn, now=later, keep_events_days=7)) == 2


def test_command_ids_are_kept_seven_days_even_with_shorter_event_retention(store: Store) -> None:
    now = time.time()
    add_result(store, "c", now - 3 * DAY)
    store.call(lambda t: t.execute("UPDATE commands SET published = 1"))
    assert store.call(lambda txn: retention.prune(txn, now=now, keep_events_days=1)) == 0


def test_resend_requeues_kept_events_and_names_the_missing(store: Store) -> None:
    seqs = add(store, "tmtmtmtm")
    mark(store, page(store, limit=100))
    store.call(lambda t: t.execute("DELETE FROM events WHERE seq IN (2, 3, 6)"))
    r = store.call(lambda txn: outbox.resend(txn, 1, 20))
    assert (r.to_seq, r.queued, r.missing, r.missing_count) == (8, 5, ((2, 3), (6, 6)), 3)
    assert sorted(m.key for m in page(store, limit=100)) == [1, 4, 5, 7, 8]
    assert seqs[-1] == 8
    r = store.call(lambda txn: outbox.resend(txn, 6, None))
    assert (r.to_seq, r.queued, r.missing) == (8, 2, ((6, 6),))
    r = store.call(lambda txn: outbox.resend(txn, 1, 1))
    assert (r.queued, r.missing) == (1, ())
    store.call(lambda t: t.execute("DELETE FROM events WHERE seq >= 7"))
    r = store.call(lambda txn: outbox.resend(txn, 7, 8))
    assert (r.queued, r.missing) == (0, ((7, 8),))
    # Issue 17: beyond the last seq, an empty range (to_seq None), never to_seq < from_seq.
    for lo, hi in ((9, None), (9, 20), (100, 101)):
        r = store.call(partial(outbox.resend, from_seq=lo, to_seq=hi))
        assert (r.from_seq, r.to_seq, r.queued, r.missing) == (lo, None, 0, ())


def alarm_events(store: Store) -> list[dict[str, Any]]:
    import json

    return store.call(lambda t: [json.loads(r[0]) for r in t.execute(
        "SELECT payload FROM events WHERE type = 'alarm' ORDER BY seq")])


def test_message_identity_separates_tables() -> None:
    assert OutMessage(Priority.MONEY, 1, b"").ident != OutMessage(Priority.TELEMETRY, 1, b"").ident
    assert OutMessage(Priority.MONEY, 1, b"").ident == OutMessage(Priority.EVENT, 1, b"").ident
