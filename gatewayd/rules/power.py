"""The electricity rules of one room, as a pure function (behaviour.md "Electricity").

`step(state, ctx, reading)` takes the room's state, the moment's context
(time, balance, tariff, curfew) and an optional meter reading, and returns
the new state and the decisions the runtime carries out: charges, reports,
alarms, cuts and restores. No I/O, no clocks: time comes in `ctx.now`
(monotonic seconds); every timer in the state is on that clock.

A room is cut while any reason holds, checked in this order: a meter
offline for `meter_offline_cut_s` (until its first good reading), a remote
hold, a lockout, a curfew, a known account at or below zero, a trip waiting
to reclose (overload, resistive, or a remote cut without hold). `cut_reason`
is the first reason that holds (stored: after a restart it says why the room
is cut); a `breaker.restored` event names what ended the cut (`balance`,
`reclose`, `lockout_end`, `curfew_end`, `remote`, `meter_online`).

A reading may lack its energy or its power (`None`: the meter reported a
value no meter can, behaviour.md "Bad readings"): without energy nothing is
charged and the baseline stays; without power the overload and resistive
rules wait for the next reading. Either way the other half is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from fractions import Fraction

from gatewayd.config.model import PowerRules
from gatewayd.contract.enums import AlarmCode, CutReason, RestoreReason
from gatewayd.rules import pricing

# What ends a cut, by the reason it was cut for.
RESTORE_REASON: dict[CutReason, RestoreReason] = {
    CutReason.BALANCE: RestoreReason.BALANCE,
    CutReason.OVERLOAD: RestoreReason.RECLOSE,
    CutReason.RESISTIVE: RestoreReason.RECLOSE,
    CutReason.REMOTE: RestoreReason.RECLOSE,  # a remote cut without hold recloses like a trip
    CutReason.LOCKOUT: RestoreReason.LOCKOUT_END,
    CutReason.CURFEW: RestoreReason.CURFEW_END,
    CutReason.METER_OFFLINE: RestoreReason.METER_ONLINE,
}


@dataclass(slots=True)
class RoomState:
    """Everything the rules remember about a room. Times are monotonic seconds."""

    baseline_wh: int | None = None       # meter reading last charged
    baseline_at: float | None = None     # when it was read
    carry: Fraction = Fraction(0)        # fraction of a fen carried
    accrued_wh: int = 0                  # charged, not yet reported
    accrued_fen: int = 0
    chain_from_wh: int | None = None     # meter_wh_from of the next report
    accrued_since: float | None = None   # first unreported charge
    low_sent: bool = False               # balance.low sent for this crossing
    hold: bool = False                   # remote cut with hold
    cut_reason: CutReason | None = None  # why it is cut; None: supply on
    trip_reason: CutReason | None = None # overload/resistive/remote trip waiting to reclose
    reclose_at: float | None = None
    lockout_until: float | None = None
    trips: tuple[float, ...] = ()
    max_power_w: int | None = None       # room.limit override
    # Cut because the meter was offline meter_offline_cut_s, until its first good
    # reading. Persisted as cut_reason "meter_offline" (it is checked first).
    meter_cut: bool = False
    # Not persisted: a restart starts these afresh.
    over_since: float | None = None      # first reading above the limit
    last_power_w: float | None = None
    offline_since: float | None = None   # when the meter was first seen offline


@dataclass(frozen=True, slots=True)
class Reading:
    """One meter reading; a value the meter could not give usefully is None."""

    energy_wh: int | None
    power_w: float | None
    pf: float | None
    at: float  # monotonic
    step_wh: float = 0.0  # the energy register's smallest step at its value (MeterReading)

    @property
    def good(self) -> bool:
        """Both energy and power: the meter is back (restores a meter_offline cut)."""
        return self.energy_wh is not None and self.power_w is not None


@dataclass(frozen=True, slots=True)
class Context:
    now: float                 # monotonic
    rules: PowerRules
    resistive_cutoff: bool
    rate: Fraction             # fen per Wh
    balance_fen: int           # before this step's charge
    account_known: bool
    curfew: bool               # a curfew window covers this room now (clock trusted)
    meter_online: bool = True  # the meter's health: False once meter_offline is due


# --- decisions -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Charge:
    wh: int
    fen: int


@dataclass(frozen=True, slots=True)
class Report:
    """A power.usage event; the runtime adds the account's balance after the charge."""

    wh: int
    fen: int
    meter_wh_from: int
    meter_wh_to: int


@dataclass(frozen=True, slots=True)
class MeterAlarm:
    """An alarm about the room's meter; `detail` is text for people, except
    meter_jump: the uncharged Wh (center-link.md)."""

    code: AlarmCode
    detail: str | int
    active: bool = True
    note: str = ""  # the explanation, for the log


@dataclass(frozen=True, slots=True)
class Cut:
    reason: CutReason
    power_w: float | None


@dataclass(frozen=True, slots=True)
class Restore:
    reason: RestoreReason


@dataclass(frozen=True, slots=True)
class BalanceFell:
    """The balance fell under `low_balance_fen`: a `balance.low` event."""

    balance_fen: int


Decision = Charge | Report | MeterAlarm | Cut | Restore | BalanceFell


@dataclass(slots=True)
class Outcome:
    state: RoomState
    decisions: list[Decision] = field(default_factory=list)

    @property
    def charged_fen(self) -> int:
        return sum(d.fen for d in self.decisions if isinstance(d, Charge))


def limit_w(state: RoomState, rules: PowerRules) -> int:
    return state.max_power_w if state.max_power_w is not None else rules.max_power_w


def step(state: RoomState, ctx: Context, reading: Reading | None = None) -> Outcome:
    """Apply one reading (or none: timers, credits, curfew) to a room."""
    out = Outcome(replace(state))
    s = out.state
    balance = ctx.balance_fen
    power = s.last_power_w
    if reading is not None and reading.energy_wh is not None:
        balance -= _meter(s, ctx, reading.energy_wh, reading, out)
    if reading is not None and reading.power_w is not None:
        power = reading.power_w
        _protect(s, ctx, reading.power_w, reading, out)
    _watch_meter(s, ctx, reading)
    _report_if_due(s, ctx, out, force=False)
    _low_balance(s, ctx, balance, out)
    _decide(s, ctx, balance, power, out)
    return out


def _meter(s: RoomState, ctx: Context, energy_wh: int, r: Reading, out: Outcome) -> int:
    """Charge the energy since the baseline; return the fen charged."""
    if s.baseline_wh is None:
        s.baseline_wh, s.baseline_at = energy_wh, r.at
        s.chain_from_wh = energy_wh
        return 0
    delta = energy_wh - s.baseline_wh
    if delta < 0:
        _new_chain(s, ctx, out, MeterAlarm(
            AlarmCode.METER_RESET, f"energy register went back from {s.baseline_wh} to {energy_wh} Wh"),
            energy_wh=energy_wh, at=r.at)
        return 0
    elapsed = max(r.at - (s.baseline_at if s.baseline_at is not None else r.at), 0.0)
    # What the room could draw at twice its limit in the elapsed time, plus one
    # Wh of rounding and one step of the register (a float32 kWh register above
    # 16,384 kWh moves in ~2 Wh steps; a 0.01 kWh register in 10 Wh steps).
    plausible = 2 * limit_w(s, ctx.rules) * elapsed / 3600 + 1 + r.step_wh
    if delta > plausible:
        _new_chain(s, ctx, out, MeterAlarm(
            AlarmCode.METER_JUMP, delta, note=f"{delta} Wh uncharged: energy rose from {s.baseline_wh} "
            f"to {energy_wh} Wh in {elapsed:.0f} s (at most {plausible:.0f} Wh plausible)"),
            energy_wh=energy_wh, at=r.at)
        return 0
    s.baseline_at = r.at
    if delta == 0:
        return 0
    fen, s.carry = pricing.charge(delta, ctx.rate, s.carry)
    s.baseline_wh = energy_wh
    s.accrued_wh += delta
    s.accrued_fen += fen
    if s.accrued_since is None:
        s.accrued_since = ctx.now
    out.decisions.append(Charge(delta, fen))
    return fen


def _new_chain(s: RoomState, ctx: Context, out: Outcome, alarm: MeterAlarm, *,
               energy_wh: int, at: float) -> None:
    _report_if_due(s, ctx, out, force=True)
    out.decisions.append(alarm)
    s.baseline_wh, s.baseline_at, s.chain_from_wh = energy_wh, at, energy_wh


def _report_if_due(s: RoomState, ctx: Context, out: Outcome, *, force: bool) -> None:
    if s.accrued_wh == 0 and s.accrued_fen == 0:
        s.accrued_since = None
        return
    due = (
        force
        or s.accrued_fen >= ctx.rules.report_fen
        or (s.accrued_since is not None and ctx.now - s.accrued_since >= ctx.rules.report_interval_s)
    )
    if not due or s.baseline_wh is None or s.chain_from_wh is None:
        return
    out.decisions.append(Report(s.accrued_wh, s.accrued_fen, s.chain_from_wh, s.baseline_wh))
    s.chain_from_wh = s.baseline_wh
    s.accrued_wh = s.accrued_fen = 0
    s.accrued_since = None


def _protect(s: RoomState, ctx: Context, power_w: float, r: Reading, out: Outcome) -> None:
    """Overload and resistive-load trips (only while the supply is on)."""
    previous = s.last_power_w
    s.last_power_w = power_w
    if s.cut_reason is not None:
        s.over_since = None
        return
    limit = limit_w(s, ctx.rules)
    # The load is what flows, whichever way the meter signs it: a current
    # transformer fitted backwards reads negative power for a real load.
    if abs(power_w) > limit:
        if s.over_since is None:
            s.over_since = r.at
        elif r.at - s.over_since >= ctx.rules.trip_after_s:
            _trip(s, ctx, CutReason.OVERLOAD)
            return
    else:
        s.over_since = None
    if (
        ctx.resistive_cutoff
        and previous is not None
        and r.pf is not None
        and abs(power_w) - abs(previous) >= ctx.rules.resistive_step_w
        and r.pf >= ctx.rules.resistive_pf
    ):
        _trip(s, ctx, CutReason.RESISTIVE)


def _watch_meter(s: RoomState, ctx: Context, r: Reading | None) -> None:
    """Meter offline: cut once it has been offline `meter_offline_cut_s` (0: never),
    until its first good reading (behaviour.md "Meter offline")."""
    if r is not None and r.good:
        s.offline_since = None
        s.meter_cut = False
        return
    if ctx.meter_online:
        s.offline_since = None  # between polls, or failing but not yet offline
        return
    if s.offline_since is None:
        s.offline_since = ctx.now
    cut_s = ctx.rules.meter_offline_cut_s
    if cut_s > 0 and ctx.now - s.offline_since >= cut_s:
        s.meter_cut = True


def _trip(s: RoomState, ctx: Context, reason: CutReason) -> None:
    rules = ctx.rules
    s.over_since = None
    # "Within" the window includes its end: trips exactly lockout_window_s apart count.
    s.trips = (*(t for t in s.trips if ctx.now - t <= rules.lockout_window_s), ctx.now)
    s.trip_reason = reason
    if len(s.trips) >= rules.lockout_trips:
        s.lockout_until = ctx.now + rules.lockout_s
        s.reclose_at = None
        s.trips = ()
    else:
        s.reclose_at = ctx.now + rules.reclose_after_s


def remote_cut(state: RoomState, ctx: Context, *, hold: bool) -> Outcome:
    """room.cut: with hold, off until room.restore; without, it recloses like a trip."""
    s = replace(state)
    if hold:
        s.hold = True
    else:
        s.trip_reason = CutReason.REMOTE
        s.reclose_at = ctx.now + ctx.rules.reclose_after_s
    return _after_command(s, ctx)


def remote_restore(state: RoomState, ctx: Context) -> Outcome:
    """room.restore: clears holds, lockouts, pending trips and a meter_offline cut (its
    timer starts again while the meter stays offline). Balance and curfew still apply."""
    s = replace(state)
    s.meter_cut = False
    s.offline_since = None
    s.hold = False
    s.lockout_until = None
    s.reclose_at = None
    s.trip_reason = None
    s.trips = ()
    return _after_command(s, ctx, restore_reason=RestoreReason.REMOTE)


def _after_command(
    s: RoomState, ctx: Context, restore_reason: RestoreReason | None = None
) -> Outcome:
    out = Outcome(s)
    _decide(s, ctx, ctx.balance_fen, s.last_power_w, out, restore_reason=restore_reason)
    return out


def wanted_cut(s: RoomState, ctx: Context, balance: int) -> CutReason | None:
    """The first reason that keeps the room cut now, or None."""
    if s.meter_cut:
        return CutReason.METER_OFFLINE
    if s.hold:
        return CutReason.REMOTE
    if s.lockout_until is not None and ctx.now < s.lockout_until:
        return CutReason.LOCKOUT
    if ctx.curfew:
        return CutReason.CURFEW
    if ctx.account_known and balance <= 0:
        return CutReason.BALANCE
    if s.reclose_at is not None and ctx.now < s.reclose_at:
        return s.trip_reason or CutReason.OVERLOAD
    return None


def _decide(
    s: RoomState,
    ctx: Context,
    balance: int,
    power: float | None,
    out: Outcome,
    *,
    restore_reason: RestoreReason | None = None,
) -> None:
    # Expired timers end here, so a restore names them.
    if s.lockout_until is not None and ctx.now >= s.lockout_until:
        s.lockout_until = None
    if s.reclose_at is not None and ctx.now >= s.reclose_at:
        s.reclose_at = None
        s.trip_reason = None
    want = wanted_cut(s, ctx, balance)
    if s.cut_reason is None and want is not None:
        _report_if_due(s, ctx, out, force=True)  # usage is reported at a cut
        # An offline meter gives no power: the cut says so rather than show a stale one.
        out.decisions.append(Cut(want, None if want is CutReason.METER_OFFLINE else power))
        s.over_since = None
    elif s.cut_reason is not None and want is None:
        out.decisions.append(Restore(restore_reason or RESTORE_REASON[s.cut_reason]))
    s.cut_reason = want


def _low_balance(s: RoomState, ctx: Context, balance: int, out: Outcome) -> None:
    if not ctx.account_known:
        return
    if balance < ctx.rules.low_balance_fen:
        if not s.low_sent:
            out.decisions.append(BalanceFell(balance))
            s.low_sent = True
    else:
        s.low_sent = False
