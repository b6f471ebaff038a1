"""The electricity rules as pure functions: charging, reports, trips, lockout, curfew."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.config.model import POWER_DEFAULTS, PowerRules
from gatewayd.contract.enums import CutReason, RestoreReason
from gatewayd.rules import pricing
from gatewayd.rules.power import (
    BalanceFell,
    Charge,
    Context,
    Cut,
    MeterAlarm,
    Reading,
    Report,
    Restore,
    RoomState,
    remote_cut,
    remote_restore,
    step,
)

RATE = pricing.fen_per_quantity(Decimal("0.56"), "kWh")  # 0.056 fen per Wh


def ctx(now: float, balance: int = 10_000, *, known: bool = True, curfew: bool = False,
        rules: PowerRules = POWER_DEFAULTS, resistive: bool = True,
        online: bool = True) -> Context:
    return Context(now=now, rules=rules, resistive_cutoff=resistive, rate=RATE,
                   balance_fen=balance, account_known=known, curfew=curfew, meter_online=online)


def reading(at: float, wh: int, w: float = 100.0, pf: float | None = 0.9) -> Reading:
    return Reading(energy_wh=wh, power_w=w, pf=pf, at=at)


def kinds(decisions: Sequence[object]) -> list[str]:
    return [type(d).__name__ for d in decisions]


def test_first_reading_sets_baseline_without_charge() -> None:
    out = step(RoomState(), ctx(0), reading(0, 1_000_000))
    assert out.decisions == []
    assert out.state.baseline_wh == 1_000_000 and out.state.chain_from_wh == 1_000_000


def test_charge_is_exact_with_carry() -> None:
    s = step(RoomState(), ctx(0), reading(0, 1000)).state
    out = step(s, ctx(100), reading(100, 1010))  # 10 Wh at 0.056 fen = 0.56 fen
    assert out.decisions == [Charge(10, 0)]
    assert out.state.carry == Fraction(56, 100)
    out = step(out.state, ctx(200), reading(200, 1020))  # 1.12 fen total
    assert Charge(10, 1) in out.decisions
    assert out.state.carry == Fraction(12, 100)


def test_report_when_fen_reached_chains_meter_values() -> None:
    rules = replace(POWER_DEFAULTS, report_fen=2, max_power_w=100_000)
    s = step(RoomState(), ctx(0, rules=rules), reading(0, 5000)).state
    out = step(s, ctx(100, rules=rules), reading(100, 5040, 1440))  # 40 Wh = 2.24 fen
    reports = [d for d in out.decisions if isinstance(d, Report)]
    assert reports == [Report(wh=40, fen=2, meter_wh_from=5000, meter_wh_to=5040)]
    out = step(out.state, ctx(200, rules=rules), reading(200, 5080, 1440))
    assert [d for d in out.decisions if isinstance(d, Report)] == [
        Report(wh=40, fen=2, meter_wh_from=5040, meter_wh_to=5080)]


def test_report_by_interval() -> None:
    rules = replace(POWER_DEFAULTS, report_interval_s=60)
    s = step(RoomState(), ctx(0, rules=rules), reading(0, 0)).state
    s = step(s, ctx(10, rules=rules), reading(10, 1)).state  # 0.056 fen: not due
    out = step(s, ctx(71, rules=rules), reading(71, 1))
    assert [d for d in out.decisions if isinstance(d, Report)] == [Report(1, 0, 0, 1)]


def test_cut_at_zero_reports_usage_and_restores_on_credit() -> None:
    s = step(RoomState(), ctx(0, balance=3), reading(0, 0)).state
    out = step(s, ctx(3600, balance=3), reading(3600, 100, 100))  # 5.6 fen > 3
    assert Cut(CutReason.BALANCE, 100) in out.decisions
    assert [d for d in out.decisions if isinstance(d, Report)] == [Report(100, 5, 0, 100)]
    assert kinds(out.decisions).index("Report") < kinds(out.decisions).index("Cut")
    s = out.state
    assert s.cut_reason == "balance"
    # Still at or below zero: stays cut, no new event.
    assert step(s, ctx(3601, balance=-2)).decisions == []
    out = step(s, ctx(3602, balance=498))
    assert out.decisions == [Restore(RestoreReason.BALANCE)]


def test_unknown_account_is_charged_but_never_cut_for_balance() -> None:
    s = step(RoomState(), ctx(0, balance=0, known=False), reading(0, 0)).state
    out = step(s, ctx(3600, balance=0, known=False), reading(3600, 100))
    assert Charge(100, 5) in out.decisions
    assert not any(isinstance(d, Cut | BalanceFell) for d in out.decisions)


def test_balance_low_once_per_crossing() -> None:
    s = step(RoomState(), ctx(0, balance=600), reading(0, 0)).state
    out = step(s, ctx(3600, balance=600), reading(3600, 2000, 500))  # 112 fen -> 488
    assert BalanceFell(488) in out.decisions
    out = step(out.state, ctx(3700, balance=488), reading(3700, 2010, 500))
    assert not any(isinstance(d, BalanceFell) for d in out.decisions)
    s = step(out.state, ctx(3800, balance=5000)).state  # topped up
    assert not s.low_sent
    out = step(s, ctx(3900, balance=400))
    assert BalanceFell(400) in out.decisions


def test_overload_timer_trip_reclose_and_lockout() -> None:
    rules = replace(POWER_DEFAULTS, max_power_w=1000, trip_after_s=3, reclose_after_s=60,
                    lockout_trips=2, lockout_window_s=600, lockout_s=1800)

    def c(t: float) -> Context:
        return ctx(t, rules=rules)

    s = step(RoomState(), c(0), reading(0, 0, 1500)).state
    s = step(s, c(2), reading(2, 1, 1500)).state  # 2 s over: not yet
    s = step(s, c(2.5), reading(2.5, 1, 900)).state  # at or below clears the timer
    s = step(s, c(3), reading(3, 2, 1500)).state
    out = step(s, c(5.9), reading(5.9, 3, 1500))
    assert not any(isinstance(d, Cut) for d in out.decisions)
    out = step(out.state, c(6), reading(6, 4, 1500))
    assert Cut(CutReason.OVERLOAD, 1500) in out.decisions
    s = out.state
    assert step(s, c(65), reading(65, 4, 0)).decisions == []
    out = step(s, c(66), reading(66, 4, 0))
    assert out.decisions == [Restore(RestoreReason.RECLOSE)]
    # Second trip within the window: lockout.
    s = step(out.state, c(70), reading(70, 4, 1500)).state
    out = step(s, c(73), reading(73, 5, 1500))
    assert Cut(CutReason.LOCKOUT, 1500) in out.decisions
    s = out.state
    assert step(s, c(73 + 1799), reading(1872, 5, 0)).decisions == []
    out = step(s, c(73 + 1800), reading(1873, 5, 0))
    assert out.decisions == [Restore(RestoreReason.LOCKOUT_END)]


def test_negative_power_is_a_load_too() -> None:
    """A current transformer fitted backwards reads the load negative: it still trips."""
    rules = replace(POWER_DEFAULTS, max_power_w=1000, trip_after_s=3)
    s = step(RoomState(), ctx(0, rules=rules), reading(0, 0, -1500)).state
    out = step(s, ctx(3, rules=rules), reading(3, 1, -1500))
    assert Cut(CutReason.OVERLOAD, -1500) in out.decisions
    s = step(RoomState(), ctx(0, rules=rules), reading(0, 0, -100, pf=0.99)).state
    out = step(s, ctx(1, rules=rules), reading(1, 0, -900, pf=0.99))
    assert Cut(CutReason.RESISTIVE, -900) in out.decisions


def test_trips_exactly_a_window_apart_lock_out() -> None:
    """"lockout_trips trips within lockout_window_s": the window's end is within."""
    rules = replace(POWER_DEFAULTS, max_power_w=1000, trip_after_s=3, reclose_after_s=60,
                    lockout_trips=3, lockout_window_s=600, lockout_s=1800)
    s = RoomState()
    cuts = []
    for first in (0.0, 297.0, 600.0):   # trips at 3, 300 and 603: 600 s from the first
        s = step(s, ctx(first, rules=rules), reading(first, 0, 1500)).state
        out = step(s, ctx(first + 3, rules=rules), reading(first + 3, 0, 1500))
        cuts += [d for d in out.decisions if isinstance(d, Cut)]
        s = step(out.state, ctx(first + 200, rules=rules), reading(first + 200, 0, 0)).state
    assert cuts == [Cut(CutReason.OVERLOAD, 1500), Cut(CutReason.OVERLOAD, 1500),
                    Cut(CutReason.LOCKOUT, 1500)]


def test_resistive_step_with_high_pf_trips_only_when_enabled() -> None:
    s = step(RoomState(), ctx(0), reading(0, 0, 100, 0.95)).state
    kettle = reading(1, 0, 1100, 0.99)
    assert Cut(CutReason.RESISTIVE, 1100) in step(s, ctx(1), kettle).decisions
    assert not step(s, ctx(1, resistive=False), kettle).decisions
    # A motor (low pf) stepping up is not a resistive load.
    assert not step(s, ctx(1), reading(1, 0, 1100, 0.6)).decisions


def test_curfew_cuts_and_ends() -> None:
    s = step(RoomState(), ctx(0), reading(0, 0)).state
    out = step(s, ctx(1, curfew=True))
    assert out.decisions == [Cut(CutReason.CURFEW, 100)]
    out = step(out.state, ctx(2, curfew=False))
    assert out.decisions == [Restore(RestoreReason.CURFEW_END)]


def test_curfew_end_with_empty_balance_stays_cut() -> None:
    s = step(RoomState(), ctx(0), reading(0, 0)).state
    s = step(s, ctx(1, curfew=True)).state
    out = step(s, ctx(2, balance=0, curfew=False))
    assert out.decisions == [BalanceFell(0)] and out.state.cut_reason == "balance"
    assert step(out.state, ctx(3, balance=100)).decisions == [Restore(RestoreReason.BALANCE)]


def test_remote_hold_and_restore() -> None:
    s = step(RoomState(), ctx(0), reading(0, 0)).state
    out = remote_cut(s, ctx(1), hold=True)
    assert out.decisions == [Cut(CutReason.REMOTE, 100)]
    s = out.state
    assert step(s, ctx(10_000)).decisions == []  # no automatic restore
    out = remote_restore(s, ctx(10_001))
    assert out.decisions == [Restore(RestoreReason.REMOTE)]


def test_remote_cut_without_hold_recloses() -> None:
    s = step(RoomState(), ctx(0), reading(0, 0)).state
    s = remote_cut(s, ctx(1), hold=False).state
    assert s.cut_reason == "remote"
    assert step(s, ctx(61)).decisions == [Restore(RestoreReason.RECLOSE)]


def test_remote_restore_does_not_override_balance() -> None:
    s = step(RoomState(), ctx(0, balance=0), reading(0, 0)).state
    assert s.cut_reason == "balance"
    out = remote_restore(s, ctx(1, balance=0))
    assert out.decisions == [] and out.state.cut_reason == "balance"


def test_meter_reset_and_jump_start_new_chain_uncharged() -> None:
    rules = replace(POWER_DEFAULTS, max_power_w=1000, report_fen=10_000)
    s = step(RoomState(), ctx(0, rules=rules), reading(0, 10_000)).state
    s = step(s, ctx(3600, rules=rules), reading(3600, 10_500, 500)).state
    out = step(s, ctx(3601, rules=rules), reading(3601, 20))
    assert [kinds(out.decisions)] == [["Report", "MeterAlarm"]]
    assert out.decisions[0] == Report(500, 28, 10_000, 10_500)
    alarm = out.decisions[1]
    assert isinstance(alarm, MeterAlarm) and alarm.code == "meter_reset"
    assert out.state.baseline_wh == 20 and out.state.chain_from_wh == 20
    # 2 kW max for 60 s is 33 Wh: 500 Wh is a jump, not charged.
    out = step(out.state, ctx(3661, rules=rules), reading(3661, 520))
    (alarm,) = out.decisions
    assert isinstance(alarm, MeterAlarm) and alarm.code == "meter_jump" and alarm.detail == 500
    assert "500 Wh uncharged" in alarm.note
    assert out.state.baseline_wh == 520 and out.state.accrued_fen == 0


def test_a_coarse_register_step_is_charged_not_taken_for_a_jump() -> None:
    """A float32 kWh register above 16,384 kWh moves in ~1.95 Wh steps: a step
    of 2 Wh one second after the last reading (more than 2 x 1500 W x 1 s + 1 Wh)
    is plausible when the reading says how coarse its register is."""
    s = step(RoomState(), ctx(0), reading(0, 20_000_000)).state
    coarse = Reading(energy_wh=20_000_002, power_w=700.0, pf=0.9, at=1.0, step_wh=1.953125)
    out = step(s, ctx(1), coarse)
    assert [d for d in out.decisions if isinstance(d, MeterAlarm)] == []
    assert out.state.baseline_wh == 20_000_002 and out.state.accrued_wh == 2
    # The same rise from a register with a fine step is a jump (behaviour.md).
    fine = step(s, ctx(1), reading(1, 20_000_002)).decisions
    assert [d.code for d in fine if isinstance(d, MeterAlarm)] == ["meter_jump"]


def test_a_reading_without_energy_charges_nothing_but_still_trips() -> None:
    """behaviour.md "Bad readings": the energy register held a value no meter can
    report (the meter gives None for it). Nothing is charged, the baseline does
    not move, and the power beside it still drives the overload rule."""
    rules = replace(POWER_DEFAULTS, max_power_w=1000, trip_after_s=3)
    s = step(RoomState(), ctx(0, rules=rules), reading(0, 5000)).state
    no_energy = [Reading(energy_wh=None, power_w=3000.0, pf=0.5, at=t) for t in (1, 4)]
    out = step(s, ctx(1, rules=rules), no_energy[0])
    assert out.decisions == []
    out = step(out.state, ctx(4, rules=rules), no_energy[1])
    assert out.decisions == [Cut(CutReason.OVERLOAD, 3000.0)]
    assert out.state.baseline_wh == 5000 and out.state.baseline_at == 0
    assert out.state.accrued_wh == 0 and out.charged_fen == 0
    # The next good reading charges what the register moved since the baseline.
    out = step(out.state, ctx(10, rules=rules), reading(10, 5002, 0))
    assert Charge(2, 0) in out.decisions


def test_a_reading_without_power_is_charged_and_keeps_the_overload_timer() -> None:
    rules = replace(POWER_DEFAULTS, max_power_w=1000, trip_after_s=3)
    s = step(RoomState(), ctx(0, rules=rules), reading(0, 5000, 1500)).state
    assert s.over_since == 0
    out = step(s, ctx(2, rules=rules), Reading(energy_wh=5001, power_w=None, pf=None, at=2))
    assert out.decisions == [Charge(1, 0)]
    assert out.state.over_since == 0 and out.state.last_power_w == 1500
    out = step(out.state, ctx(3, rules=rules), reading(3, 5001, 1500))
    assert Cut(CutReason.OVERLOAD, 1500) in out.decisions


def test_meter_offline_cut_after_its_time_and_restored_at_the_first_good_reading() -> None:
    rules = replace(POWER_DEFAULTS, meter_offline_cut_s=60)
    s = step(RoomState(), ctx(0, rules=rules), reading(0, 5000)).state
    # Offline from t=10 (the health's verdict): the timer runs from there.
    s = step(s, ctx(10, rules=rules, online=False)).state
    assert s.offline_since == 10
    out = step(s, ctx(69.9, rules=rules, online=False))
    assert out.decisions == []
    out = step(out.state, ctx(70, rules=rules, online=False))
    assert out.decisions == [Cut(CutReason.METER_OFFLINE, None)]
    assert out.state.cut_reason == "meter_offline"
    # A reading without energy is not a good reading: still cut, nothing charged.
    partial = Reading(energy_wh=None, power_w=100.0, pf=1.0, at=80)
    out = step(out.state, ctx(80, rules=rules, online=False), partial)
    assert out.decisions == []
    # Health back online but no reading yet (a restart, a poll not yet due): still cut.
    out = step(out.state, ctx(85, rules=rules))
    assert out.decisions == [] and out.state.cut_reason == "meter_offline"
    out = step(out.state, ctx(90, rules=rules), reading(90, 5010, 0))
    assert Restore(RestoreReason.METER_ONLINE) in out.decisions
    assert out.state.cut_reason is None and out.state.offline_since is None


def test_meter_offline_never_cuts_by_default_and_a_good_poll_restarts_the_timer() -> None:
    s = step(RoomState(), ctx(0), reading(0, 5000)).state
    assert POWER_DEFAULTS.meter_offline_cut_s == 0
    out = step(s, ctx(1, online=False))
    out = step(out.state, ctx(1_000_000, online=False))
    assert out.decisions == [] and out.state.cut_reason is None
    rules = replace(POWER_DEFAULTS, meter_offline_cut_s=60)
    s = step(s, ctx(0, rules=rules, online=False)).state
    s = step(s, ctx(50, rules=rules), reading(50, 5000)).state   # back for one poll
    s = step(s, ctx(51, rules=rules, online=False)).state
    out = step(s, ctx(110, rules=rules, online=False))
    assert out.decisions == []
    assert step(out.state, ctx(111, rules=rules, online=False)).decisions == [
        Cut(CutReason.METER_OFFLINE, None)]


def test_meter_back_with_no_balance_stays_cut_for_balance() -> None:
    rules = replace(POWER_DEFAULTS, meter_offline_cut_s=60)
    s = step(RoomState(), ctx(0, rules=rules), reading(0, 5000)).state
    s = step(s, ctx(1, rules=rules, online=False)).state
    out = step(s, ctx(61, rules=rules, online=False))
    assert out.decisions == [Cut(CutReason.METER_OFFLINE, None)]
    out = step(out.state, ctx(70, 0, rules=rules), reading(70, 5000, 0))
    assert not any(isinstance(d, Restore) for d in out.decisions)
    assert out.state.cut_reason == "balance"


def test_meter_offline_is_checked_first_so_the_stored_reason_says_it() -> None:
    """A room cut for a curfew whose meter then stays offline: its stored cut
    reason becomes meter_offline (what a restart loads), and the curfew's end
    does not restore it; the meter's first good reading does."""
    rules = replace(POWER_DEFAULTS, meter_offline_cut_s=60)
    s = step(RoomState(), ctx(0, rules=rules), reading(0, 5000)).state
    s = step(s, ctx(1, rules=rules, curfew=True, online=False)).state
    assert s.cut_reason == "curfew"
    out = step(s, ctx(61, rules=rules, curfew=True, online=False))
    assert out.decisions == [] and out.state.cut_reason == "meter_offline"
    out = step(out.state, ctx(62, rules=rules, online=False))
    assert out.decisions == []
    restarted = RoomState(baseline_wh=5000, cut_reason=CutReason.METER_OFFLINE, meter_cut=True)
    assert step(restarted, ctx(0, rules=rules)).decisions == []
    assert step(restarted, ctx(1, rules=rules), reading(1, 5000)).decisions == [
        Restore(RestoreReason.METER_ONLINE)]


def test_remote_restore_ends_a_meter_offline_cut_and_its_timer_starts_again() -> None:
    rules = replace(POWER_DEFAULTS, meter_offline_cut_s=60)
    s = step(RoomState(), ctx(0, rules=rules), reading(0, 5000)).state
    s = step(s, ctx(1, rules=rules, online=False)).state
    s = step(s, ctx(61, rules=rules, online=False)).state
    out = remote_restore(s, ctx(100, rules=rules, online=False))
    assert out.decisions == [Restore(RestoreReason.REMOTE)]
    s = step(out.state, ctx(101, rules=rules, online=False)).state
    assert step(s, ctx(160, rules=rules, online=False)).decisions == []
    assert step(s, ctx(161, rules=rules, online=False)).decisions == [Cut(CutReason.METER_OFFLINE, None)]


@settings(max_examples=300, deadline=None)
@given(
    price=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("5"), places=3),
    steps=st.lists(st.integers(min_value=0, max_value=500), min_size=1, max_size=80),
)
def test_charged_fen_equal_exact_price_rounded_down(price: Decimal, steps: list[int]) -> None:
    rate = pricing.fen_per_quantity(price, "kWh")
    rules = replace(POWER_DEFAULTS, max_power_w=1_000_000)
    s = RoomState()
    t, wh, charged, reported = 0.0, 1_000, 0, 0
    s = step(s, replace(ctx(t, rules=rules), rate=rate), reading(t, wh)).state
    for d in steps:
        t += 1
        wh += d
        out = step(s, replace(ctx(t, rules=rules), rate=rate), reading(t, wh, 1000))
        charged += out.charged_fen
        reported += sum(x.fen for x in out.decisions if isinstance(x, Report))
        s = out.state
    exact = Fraction(price) * 100 * (wh - 1_000) / 1000
    assert charged == int(exact)  # floor: exact, not merely within 1 fen
    assert reported + s.accrued_fen == charged


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=50),
       st.sampled_from([("0.03", "L"), ("0.5", "min"), ("0.56", "kWh")]))
def test_pricing_split_any_way_sums_to_floor(parts: list[int], tariff: tuple[str, str]) -> None:
    rate = pricing.fen_per_quantity(Decimal(tariff[0]), tariff[1])
    carry, total = Fraction(0), 0
    for q in parts:
        fen, carry = pricing.charge(q, rate, carry)
        total += fen
        assert 0 <= carry < 1
        assert pricing.carry_from_text(pricing.carry_to_text(carry)) == carry
    assert total == int(rate * sum(parts))
