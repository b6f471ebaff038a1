"""The rooms table: each room's power state as the rules left it, and whether a
recorded cut or restore is still to be carried out on its breaker.

The row codec takes the rules' `RoomState`. The state's timers are monotonic
seconds of this boot; a row holds them as epoch seconds (`encode`), and
`decode` puts them back on the new boot's monotonic clock, each clamped to the
longest it can run (the room's rules) so that a wall clock jump cannot stretch
or skip it. The SQL helpers run inside store jobs, in the transaction of the
events and the charge they go with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from gatewayd.contract.enums import CutReason
from gatewayd.rules import pricing
from gatewayd.rules.power import RoomState
from gatewayd.store.txn import Txn

# How stale the stored time of a room's meter baseline may get (see `change_key`).
BASELINE_SAVE_S = 60.0

# The state's columns, in the order of a row.
COLUMNS = (
    "baseline_wh", "carry", "accrued_wh", "accrued_fen", "chain_from_wh", "low_sent", "hold",
    "cut_reason", "trip_reason", "reclose_at", "lockout_until", "trips", "max_power_w",
    "accrued_since", "baseline_wall",
)
_SELECT = f"SELECT room, {', '.join(COLUMNS)}, switch_pending FROM rooms"
_UPSERT = (
    f"INSERT INTO rooms (room, {', '.join(COLUMNS)}) VALUES (?, {', '.join('?' * len(COLUMNS))}) "
    f"ON CONFLICT (room) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in COLUMNS)}"
)

Row = tuple[Any, ...]   # a room's COLUMNS


class Longest(Protocol):
    """How long each stored timer can run at most (a room's `PowerRules`)."""

    @property
    def report_interval_s(self) -> float: ...

    @property
    def reclose_after_s(self) -> float: ...

    @property
    def lockout_s(self) -> float: ...

    @property
    def lockout_window_s(self) -> float: ...


@dataclass(frozen=True, slots=True)
class StoredRoom:
    room: str
    row: Row
    switch_pending: bool   # a committed cut/restore not yet on the coil


# --- the row codec ------------------------------------------------------------------


def encode(s: RoomState, now_mono: float, now_wall: float) -> Row:
    """The row of `s`, its timers as epoch seconds."""

    def w(mono: float | None) -> float | None:
        return None if mono is None else now_wall + (mono - now_mono)

    return (
        s.baseline_wh, pricing.carry_to_text(s.carry), s.accrued_wh, s.accrued_fen,
        s.chain_from_wh, int(s.low_sent), int(s.hold), s.cut_reason, s.trip_reason,
        w(s.reclose_at), w(s.lockout_until), json.dumps([w(t) for t in s.trips]),
        s.max_power_w, w(s.accrued_since), w(s.baseline_at),
    )


def change_key(row: Row) -> tuple[Any, ...]:
    """The part of a row whose change must be written (times move every poll).

    The baseline's time is written once a BASELINE_SAVE_S: after a restart
    the meter-jump bound counts from it, so it must not lag the last
    reading by more than that (an idle room's would otherwise stay at
    the last time its energy moved, days ago)."""
    return (*row[:9], row[9] is None, row[10] is None, row[11], row[12],
            row[13] is None, None if row[14] is None else int(row[14] // BASELINE_SAVE_S))


def decode(row: Row, longest: Longest, now_mono: float, now_wall: float) -> RoomState:
    """The state a row holds, its timers on this boot's monotonic clock."""
    (baseline, carry, acc_wh, acc_fen, chain, low, hold, cut, trip, reclose, lockout,
     trips, max_w, acc_since, base_wall) = row

    def ago(wall: float, at_most: float) -> float:
        return now_mono - min(max(now_wall - wall, 0.0), at_most)

    def ahead(wall: float | None, at_most: float) -> float | None:
        return None if wall is None else now_mono + min(max(wall - now_wall, 0.0), at_most)

    return RoomState(
        baseline_wh=baseline,
        # Unclamped: the meter-jump bound counts from the baseline's true age.
        baseline_at=None if base_wall is None else ago(base_wall, float("inf")),
        carry=pricing.carry_from_text(carry),
        accrued_wh=acc_wh,
        accrued_fen=acc_fen,
        chain_from_wh=chain,
        accrued_since=None if acc_since is None else ago(acc_since, longest.report_interval_s),
        low_sent=bool(low),
        hold=bool(hold),
        meter_cut=cut == CutReason.METER_OFFLINE,  # checked first: recorded whenever it holds
        cut_reason=None if cut is None else CutReason(cut),
        trip_reason=None if trip is None else CutReason(trip),
        reclose_at=ahead(reclose, longest.reclose_after_s),
        lockout_until=ahead(lockout, longest.lockout_s),
        trips=tuple(ago(x, longest.lockout_window_s) for x in json.loads(trips)),
        max_power_w=max_w,
    )


# --- inside store jobs --------------------------------------------------------------


def load(txn: Txn) -> list[StoredRoom]:
    return [StoredRoom(r[0], tuple(r[1:-1]), bool(r[-1])) for r in txn.execute(_SELECT)]


def save(txn: Txn, room: str, row: Row) -> None:
    txn.execute(_UPSERT, (room, *row))


def set_switch_pending(txn: Txn, room: str, pending: bool) -> None:
    txn.execute("UPDATE rooms SET switch_pending = ? WHERE room = ?", (int(pending), room))
