"""Open water sessions in the store: one `water_sessions` row per point with a session.

A session's row goes in with its `tap` event (the same transaction, before
the valve opens), is updated with every progress charge, and is deleted by
its end in the transaction that records the end's `water.session` and
debit; a row found at start is a session a crash left open. The functions
run inside store jobs. The row codec takes the rules' `Session`
(gatewayd/rules/water.py); reading a row back derives the monotonic times a
reboot loses from the wall clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gatewayd.contract.enums import WaterUse
from gatewayd.rules import pricing
from gatewayd.rules.water import Session
from gatewayd.store.txn import Txn

# After a crash the last counter reading's time is derived from the session
# row (started + elapsed_s, whole seconds, the count read just before): the
# flow bound allows this much more time, so that real flow during the outage
# is never taken for a counter reset.
RECOVERY_READ_MARGIN_S = 2.0

_COLUMNS = ("point, session, card, account, service, offline, started, elapsed_s, "
            "counter_start, counter_last, pulses, volume_ml, charged_fen, carry")


def insert(txn: Txn, s: Session) -> None:
    """The row of a session opening now."""
    txn.execute(
        "INSERT INTO water_sessions (point, session, card, account, service, offline, "
        "started) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (s.point, s.session, s.card, s.account, s.service, int(s.offline), s.started_wall))


def save_progress(txn: Txn, s: Session) -> bool:
    """What the session has measured and charged so far; False when its row is
    gone (it ended meanwhile, and was charged there)."""
    return txn.execute(
        "UPDATE water_sessions SET elapsed_s = ?, counter_start = ?, counter_last = ?, "
        "pulses = ?, volume_ml = ?, charged_fen = ?, carry = ? "
        "WHERE point = ? AND session = ?",
        (s.seconds, s.counter_start, s.counter_last, s.pulses, s.volume_ml, s.charged_fen,
         pricing.carry_to_text(s.carry), s.point, s.session)).rowcount != 0


def delete(txn: Txn, s: Session) -> bool:
    """The session's row gone; False when it was gone already (it ended before)."""
    return txn.execute("DELETE FROM water_sessions WHERE point = ? AND session = ?",
                       (s.point, s.session)).rowcount != 0


def delete_point(txn: Txn, point: str) -> None:
    """The row of `point`, whatever its session (a point no longer configured)."""
    txn.execute("DELETE FROM water_sessions WHERE point = ?", (point,))


def open_sessions(txn: Txn, *, now_mono: float, now_wall: float,
                  max_session_s: float) -> list[Session]:
    """Every session the store holds open, as of `now_mono`/`now_wall`."""
    rows = txn.execute(f"SELECT {_COLUMNS} FROM water_sessions").fetchall()
    return [decode(row, now_mono=now_mono, now_wall=now_wall, max_session_s=max_session_s)
            for row in rows]


def decode(row: Sequence[Any], *, now_mono: float, now_wall: float,
           max_session_s: float) -> Session:
    """A session as its row (`_COLUMNS`) left it."""
    (point, sid, card, account, service, offline, started, charged_s, c_start, c_last,
     pulses, volume, charged, carry) = row
    # Time until now (the wall clock is all that survives a reboot),
    # capped at the longest a session may run.
    elapsed = min(max(now_wall - started, 0.0), max_session_s)
    # The last counter reading was committed with elapsed_s, so it was
    # taken no earlier than started + elapsed_s: the time since then
    # bounds the flow the counter may show now.
    since_reading = max(now_wall - started - charged_s, 0.0) + RECOVERY_READ_MARGIN_S
    return Session(
        session=sid, point=point, card=card, account=account, service=WaterUse(service),
        offline=bool(offline), started_wall=started, started_mono=now_mono - elapsed,
        counter_start=c_start, counter_last=c_last, pulses=pulses, volume_ml=volume,
        seconds=int(charged_s), charged_fen=charged, carry=pricing.carry_from_text(carry),
        last_flow_mono=now_mono, counter_mono=now_mono - since_reading,
    )
