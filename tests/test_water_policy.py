"""The water rules as pure functions: who may open a point, and what a session costs."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gatewayd.contract.enums import AlarmCode, WaterUse
from gatewayd.rules.water import (
    MAX_FLOW_ML_PER_S,
    SLACK_PULSES,
    Billing,
    Card,
    FlowAlarm,
    Limits,
    Session,
    TapFacts,
    advance,
    billing_for,
    check_card,
    check_tap,
    max_pulses,
    pulses_between,
)

TODAY = date(2025, 3, 14)
T0 = 1000.0  # the session's start on the monotonic clock


def card(**changes: object) -> Card:
    base = Card("04A1B2C3D5", "stu-1", "student", "active", None)
    return replace(base, **changes)  # type: ignore[arg-type]


def facts(**changes: object) -> TapFacts:
    """A tap that is granted; each test changes one thing."""
    base = TapFacts(
        card=card(), kinds=frozenset({"student", "teacher"}), today=TODAY, balance_fen=1000,
        account_known=True, min_balance_fen=50, step_fen=1, offline=False,
        offline_spent_fen=0, offline_limit_fen=2000,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


# --- check_tap ------------------------------------------------------------------------


def test_a_good_card_is_granted() -> None:
    assert check_tap(facts()) is None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"card": None}, "unknown"),
        ({"card": card(status="lost")}, "lost"),
        ({"card": card(status="cancelled")}, "cancelled"),
        ({"card": card(status="frozen")}, "unknown"),  # a status nobody knows opens nothing
        ({"card": card(expires=TODAY - timedelta(days=1))}, "expired"),
        ({"card": card(kind="family")}, "kind"),
        ({"account_known": False}, "unknown_account"),
        ({"balance_fen": 49}, "balance"),  # under min_balance_fen 50
        ({"balance_fen": -5}, "balance"),
        ({"offline": True, "offline_spent_fen": 2000}, "offline_limit"),
        ({"busy": True}, "busy"),
        ({"fault": True}, "fault"),
    ],
)
def test_each_refusal_reason(changes: dict[str, object], reason: str) -> None:
    assert check_tap(facts(**changes)) == reason


@pytest.mark.parametrize(
    ("bad_card", "reason"),
    [
        (None, "unknown"),
        (card(status="lost"), "lost"),
        (card(status="cancelled"), "cancelled"),
        (card(expires=TODAY - timedelta(days=1)), "expired"),
    ],
)
@pytest.mark.parametrize("point", [{"busy": True}, {"fault": True}, {"busy": True, "fault": True}])
def test_the_card_identity_is_checked_before_the_point_state(
    bad_card: Card | None, reason: str, point: dict[str, bool]
) -> None:
    # The center wants to know a lost card was used, even at a busy or faulty point.
    assert check_tap(facts(card=bad_card, **point)) == reason
    assert check_card(bad_card, TODAY) == reason


def test_the_point_state_is_checked_before_what_the_card_may_do_there() -> None:
    poor_stranger = {"card": card(kind="family"), "balance_fen": 0, "account_known": False,
                     "offline": True, "offline_spent_fen": 10_000}
    assert check_tap(facts(busy=True, **poor_stranger)) == "busy"
    assert check_tap(facts(fault=True, **poor_stranger)) == "fault"
    assert check_tap(facts(busy=True, fault=True)) == "busy"
    assert check_card(card(), TODAY) is None


def test_a_card_is_valid_through_its_expiry_day() -> None:
    assert check_tap(facts(card=card(expires=TODAY))) is None
    assert check_tap(facts(card=card(expires=TODAY + timedelta(days=1)))) is None
    assert check_tap(facts(card=card(expires=TODAY), today=TODAY + timedelta(days=1))) == "expired"


def test_the_card_is_refused_for_itself_before_its_account_or_balance() -> None:
    assert check_tap(facts(card=card(status="lost"), balance_fen=0, account_known=False)) == "lost"
    assert check_tap(facts(card=card(kind="family"), balance_fen=0)) == "kind"


@pytest.mark.parametrize(
    ("min_balance", "step", "lowest_granted"),
    [(50, 1, 50), (0, 10, 10), (30, 30, 30), (0, 1, 1)],
)
def test_balance_must_cover_the_larger_of_min_balance_and_step(
    min_balance: int, step: int, lowest_granted: int
) -> None:
    def tap(balance: int) -> str | None:
        return check_tap(facts(balance_fen=balance, min_balance_fen=min_balance, step_fen=step))

    assert tap(lowest_granted) is None
    assert tap(lowest_granted - 1) == "balance"


def test_offline_limit_counts_the_next_step_and_applies_only_offline() -> None:
    # 1995 spent + a 5 fen step = 2000: exactly at the limit is allowed.
    at_limit = {"offline_spent_fen": 1995, "step_fen": 5, "offline_limit_fen": 2000}
    assert check_tap(facts(offline=True, **at_limit)) is None
    assert check_tap(facts(offline=True, **{**at_limit, "offline_spent_fen": 1996})) == "offline_limit"
    # Online, what was spent offline today does not matter.
    assert check_tap(facts(offline=False, offline_spent_fen=10_000)) is None
    # The balance is checked first: a poor card offline says "balance".
    assert check_tap(facts(offline=True, offline_spent_fen=5000, balance_fen=0)) == "balance"


# --- advance --------------------------------------------------------------------------

LIMITS = Limits(step_fen=1, max_session_s=600.0, idle_close_s=60.0, offline_limit_fen=2000)
# 1 yuan per litre: 0.1 fen per mL; a 2.5 mL pulse is a quarter of a fen.
BY_VOLUME = billing_for(Decimal("1"), "L", Decimal("2.5"))
# 0.6 yuan per minute: 1 fen per second, no flow meter.
BY_TIME = billing_for(Decimal("0.6"), "min")


def session(**changes: object) -> Session:
    base = Session(
        session="s-1", point="shower-1", card="04A1B2C3D5", account="stu-1", service=WaterUse.SHOWER,
        offline=False, started_wall=1.7e9, started_mono=T0, last_flow_mono=T0, counter_mono=T0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_billing_for_per_litre_is_by_volume_and_per_minute_by_time() -> None:
    by_volume = billing_for(Decimal("1"), "L", Decimal("2.5"))
    by_time = billing_for(Decimal("0.6"), "min")
    assert by_volume == Billing(True, Fraction(1, 10), Decimal("2.5"), 32)
    assert by_time == Billing(False, Fraction(1), Decimal(0), 32)


def test_the_first_reading_is_the_baseline_and_charges_nothing() -> None:
    step = advance(session(), BY_VOLUME, LIMITS, now=T0 + 1, count=123_456, balance_fen=1000)
    assert step.charge_fen == 0 and step.end is None
    assert (step.session.counter_last, step.session.pulses, step.session.volume_ml) == (123_456, 0, 0)


def test_volume_is_the_floor_of_all_pulses_times_ml_per_pulse_without_drift() -> None:
    s = session(counter_last=1000)
    volumes, charges = [], []
    # One 2.5 mL pulse at a time: 2, 5, 7, 10 mL (2.5 mL is never rounded per reading).
    for i, count in enumerate((1001, 1002, 1003, 1004)):
        step = advance(s, BY_VOLUME, LIMITS, now=T0 + 1 + i, count=count, balance_fen=1000)
        s = step.session
        volumes.append(s.volume_ml)
        charges.append(step.charge_fen)
    assert volumes == [2, 5, 7, 10]
    assert s.pulses == 4
    # 10 mL at 0.1 fen/mL is 1 fen, charged once, when the tenth mL is reached.
    assert charges == [0, 0, 0, 1]
    assert s.charged_fen == 1 and s.carry == 0


def test_counter_wraps_at_2_to_the_32() -> None:
    top = 2**32
    assert pulses_between(top - 2, 3, 32) == 5
    assert pulses_between(7, 7, 32) == 0
    s = session(counter_last=top - 2, last_flow_mono=T0)
    step = advance(s, BY_VOLUME, LIMITS, now=T0 + 1, count=2, balance_fen=1000)
    assert step.session.pulses == 4 and step.session.volume_ml == 10
    assert step.session.counter_last == 2 and step.charge_fen == 1
    # A 16-bit counter wraps at 2**16.
    narrow = billing_for(Decimal("1"), "L", Decimal("2.5"), counter_bits=16)
    step = advance(session(counter_last=65_535), narrow, LIMITS, now=T0 + 1, count=3,
                   balance_fen=1000)
    assert step.session.pulses == 4


def test_volume_is_exact_even_where_decimal_arithmetic_would_round() -> None:
    # 28 significant digits is Decimal's default precision; the volume must not round up.
    ml = Decimal("0.99999999999999999999999999999")
    billing = billing_for(Decimal("1"), "L", ml)
    step = advance(session(counter_last=0), billing, LIMITS, now=T0 + 1, count=1,
                   balance_fen=1000)
    assert step.session.volume_ml == 0


def test_time_billing_charges_whole_seconds() -> None:
    s = session()
    step = advance(s, BY_TIME, LIMITS, now=T0 + 2.9, count=None, balance_fen=1000)
    assert (step.session.seconds, step.charge_fen) == (2, 2)
    step = advance(step.session, BY_TIME, LIMITS, now=T0 + 3.05, count=None, balance_fen=998)
    assert (step.session.seconds, step.charge_fen) == (3, 1)
    step = advance(step.session, BY_TIME, LIMITS, now=T0 + 3.99, count=None, balance_fen=997)
    assert (step.session.seconds, step.charge_fen, step.session.charged_fen) == (3, 0, 3)


def test_time_billing_is_capped_at_max_session_s() -> None:
    limits = replace(LIMITS, max_session_s=10.5)
    step = advance(session(), BY_TIME, limits, now=T0 + 500, count=None, balance_fen=1000,
                   final=True)
    assert step.session.seconds == 10 and step.charge_fen == 10
    # Charged up to the cap already: nothing more however late the end.
    again = advance(step.session, BY_TIME, limits, now=T0 + 900, count=None, balance_fen=990,
                    final=True)
    assert again.charge_fen == 0 and again.session.charged_fen == 10


def test_a_time_billed_point_is_not_charged_for_flow() -> None:
    step = advance(session(counter_last=0), BY_TIME, LIMITS, now=T0 + 1, count=1000,
                   balance_fen=1000)
    assert step.charge_fen == 1 and step.session.volume_ml == 0


def test_ends_on_balance_when_the_next_step_cannot_be_paid() -> None:
    billing = billing_for(Decimal("10"), "L", Decimal("10"))  # 1 fen per mL, 10 fen per pulse
    s = session(counter_last=0)
    # Balance 25, charged 20 now: 5 left pays a step of 5.
    limits = replace(LIMITS, step_fen=5)
    step = advance(s, billing, limits, now=T0 + 1, count=2, balance_fen=25)
    assert (step.charge_fen, step.end) == (20, None)
    # 4 left does not.
    step = advance(s, billing, limits, now=T0 + 1, count=2, balance_fen=24)
    assert (step.charge_fen, step.end) == (20, "balance")
    # Nothing used, but the balance is already under one step.
    step = advance(s, billing, limits, now=T0 + 1, count=0, balance_fen=4)
    assert (step.charge_fen, step.end) == (0, "balance")


def test_ends_at_max_session_s() -> None:
    flowing = session(counter_last=0)
    step = advance(flowing, BY_VOLUME, LIMITS, now=T0 + 599.9, count=100, balance_fen=1000)
    assert step.end is None
    step = advance(flowing, BY_VOLUME, LIMITS, now=T0 + 600, count=100, balance_fen=1000)
    assert step.end == "max_duration"
    step = advance(session(), BY_TIME, LIMITS, now=T0 + 600, count=None, balance_fen=1000)
    assert step.end == "max_duration" and step.session.seconds == 600


def test_idle_ends_only_with_a_flow_meter_and_flow_resets_it() -> None:
    s = session(counter_last=0)
    step = advance(s, BY_VOLUME, LIMITS, now=T0 + 59.9, count=0, balance_fen=1000)
    assert step.end is None
    step = advance(s, BY_VOLUME, LIMITS, now=T0 + 60, count=0, balance_fen=1000)
    assert step.end == "idle"
    # Flow at T0 + 50 restarts the idle time.
    step = advance(s, BY_VOLUME, LIMITS, now=T0 + 50, count=1, balance_fen=1000)
    assert step.session.last_flow_mono == T0 + 50
    step = advance(step.session, BY_VOLUME, LIMITS, now=T0 + 100, count=1, balance_fen=1000)
    assert step.end is None
    step = advance(step.session, BY_VOLUME, LIMITS, now=T0 + 110, count=1, balance_fen=1000)
    assert step.end == "idle"
    # Billed by time, there is no flow to miss.
    step = advance(session(), BY_TIME, LIMITS, now=T0 + 300, count=None, balance_fen=1000)
    assert step.end is None


def test_offline_session_ends_at_the_day_limit() -> None:
    billing = billing_for(Decimal("10"), "L", Decimal("10"))  # 10 fen per pulse
    limits = replace(LIMITS, step_fen=5, offline_limit_fen=100)
    s = session(counter_last=0, offline=True)
    # 60 spent earlier today + 30 now + a 5 fen step = 95: within 100.
    step = advance(s, billing, limits, now=T0 + 1, count=3, balance_fen=1000, offline=True,
                   offline_spent_fen=60)
    assert (step.charge_fen, step.end, step.offline_fen) == (30, None, 30)
    # 66 + 30 + 5 = 101: over the limit, as if the balance had run out.
    step = advance(s, billing, limits, now=T0 + 1, count=3, balance_fen=1000, offline=True,
                   offline_spent_fen=66)
    assert step.end == "balance"


@pytest.mark.parametrize("started_offline", [False, True])
def test_the_offline_limit_looks_at_each_charge_not_at_the_session_start(
    started_offline: bool,
) -> None:
    billing = billing_for(Decimal("10"), "L", Decimal("10"))  # 10 fen per pulse
    limits = replace(LIMITS, step_fen=5, offline_limit_fen=100)
    s = session(counter_last=0, offline=started_offline)
    # The center is unreachable now: the charge counts and the limit ends the session,
    # though the session may have started while the center was reachable.
    step = advance(s, billing, limits, now=T0 + 1, count=3, balance_fen=1000, offline=True,
                   offline_spent_fen=66)
    assert (step.charge_fen, step.offline_fen, step.end) == (30, 30, "balance")
    assert step.session.offline is started_offline  # the event's flag: how it started
    # The center is reachable now: nothing counts toward the limit, nothing ends for it.
    step = advance(s, billing, limits, now=T0 + 1, count=3, balance_fen=1000, offline=False,
                   offline_spent_fen=10_000)
    assert (step.charge_fen, step.offline_fen, step.end) == (30, 0, None)
    # The last charge, at the end, counts too.
    step = advance(s, billing, limits, now=T0 + 1, count=3, balance_fen=1000, offline=True,
                   offline_spent_fen=10_000, final=True)
    assert (step.offline_fen, step.end) == (30, None)


def test_final_charges_but_never_decides_an_end() -> None:
    s = session(counter_last=0, offline=True)
    # Poor, over the offline limit, past max_session_s and idle: all at once.
    step = advance(s, BY_VOLUME, LIMITS, now=T0 + 10_000, count=8, balance_fen=0, offline=True,
                   offline_spent_fen=10_000, final=True)
    assert step.end is None
    assert step.charge_fen == 2 and step.session.volume_ml == 20
    assert advance(s, BY_VOLUME, LIMITS, now=T0 + 10_000, count=8, balance_fen=0).end == "balance"


def test_a_reading_without_the_counter_keeps_what_was_counted() -> None:
    s = session(counter_last=10)
    step = advance(s, BY_VOLUME, LIMITS, now=T0 + 1, count=14, balance_fen=1000)
    step = advance(step.session, BY_VOLUME, LIMITS, now=T0 + 2, count=None, balance_fen=999)
    assert (step.session.pulses, step.session.counter_last, step.charge_fen) == (4, 14, 0)
    step = advance(step.session, BY_VOLUME, LIMITS, now=T0 + 3, count=18, balance_fen=999)
    assert step.session.pulses == 8 and step.session.volume_ml == 20


# --- a flow counter that jumps or restarts is not charged -------------------------------

# 10 mL per pulse at 1 yuan per litre: 1 fen per pulse.
TEN_ML = billing_for(Decimal("1"), "L", Decimal("10"))


def test_a_counter_that_restarted_at_zero_is_not_charged_and_raises_meter_reset() -> None:
    # The audit's case: 5000, then 10 three seconds later (the board lost power).
    # As a 32-bit wrap that would be about 43 million litres.
    s = session(counter_last=5000, counter_mono=T0 + 7, pulses=300, volume_ml=3000,
                charged_fen=300)
    step = advance(s, TEN_ML, LIMITS, now=T0 + 10, count=10, balance_fen=1000)
    assert step.charge_fen == 0 and step.end is None
    assert step.alarm == FlowAlarm(
        AlarmCode.METER_RESET, "flow counter went from 5000 to 10 in 3 s: not charged, new baseline")
    new = step.session
    assert (new.counter_last, new.counter_mono) == (10, T0 + 10)   # the new baseline
    assert (new.pulses, new.volume_ml, new.charged_fen) == (300, 3000, 300)
    assert new.last_flow_mono == s.last_flow_mono   # a reset is not flow: idle keeps counting
    # Flow after the restart is charged from the new baseline.
    step = advance(new, TEN_ML, LIMITS, now=T0 + 11, count=30, balance_fen=1000)
    assert (step.charge_fen, step.alarm, step.session.pulses) == (20, None, 320)


def test_a_forward_jump_faster_than_any_flow_is_not_charged() -> None:
    # 1 L/s for 2 s is 200 pulses of 10 mL, plus the slack.
    bound = max_pulses(2.0, Decimal(10))
    assert bound == 2 * MAX_FLOW_ML_PER_S // 10 + SLACK_PULSES
    s = session(counter_last=1000, counter_mono=T0)
    step = advance(s, TEN_ML, LIMITS, now=T0 + 2, count=1000 + bound, balance_fen=10**6)
    assert (step.charge_fen, step.alarm) == (bound, None)   # at the bound: water
    step = advance(s, TEN_ML, LIMITS, now=T0 + 2, count=1000 + bound + 1, balance_fen=10**6)
    assert step.charge_fen == 0 and step.alarm is not None and step.alarm.code == "meter_reset"
    assert step.session.counter_last == 1000 + bound + 1


def test_a_wrap_is_charged_when_its_wrapped_delta_is_plausible() -> None:
    top = 2**32
    s = session(counter_last=top - 50, counter_mono=T0)
    step = advance(s, TEN_ML, LIMITS, now=T0 + 1, count=40, balance_fen=1000)
    assert (step.charge_fen, step.alarm, step.session.pulses) == (90, None, 90)
    # A 16-bit counter wraps too.
    narrow = billing_for(Decimal("1"), "L", Decimal("10"), counter_bits=16)
    step = advance(session(counter_last=65_530, counter_mono=T0), narrow, LIMITS, now=T0 + 1,
                   count=20, balance_fen=1000)
    assert (step.charge_fen, step.alarm) == (26, None)


def test_the_bound_grows_with_the_time_since_the_last_reading() -> None:
    # Readings failed for a while: the counter kept counting, and all of it is water.
    s = session(counter_last=0, counter_mono=T0)
    step = advance(s, TEN_ML, LIMITS, now=T0 + 1, count=None, balance_fen=10**6)
    assert step.session.counter_mono == T0   # no reading: still the time of the last one
    step = advance(step.session, TEN_ML, LIMITS, now=T0 + 30, count=2500, balance_fen=10**6)
    assert (step.charge_fen, step.alarm) == (2500, None)   # 25 L in 30 s


def test_after_a_restart_the_outage_counts_toward_the_bound() -> None:
    # A recovered session: the last reading was an hour ago (counter_mono far back).
    s = session(counter_last=1000, counter_mono=T0 - 3600)
    step = advance(s, TEN_ML, LIMITS, now=T0, count=1000 + 60_000, balance_fen=10**6, final=True)
    assert (step.charge_fen, step.alarm) == (60_000, None)   # 600 L in an hour: water
    step = advance(s, TEN_ML, LIMITS, now=T0, count=10, balance_fen=10**6, final=True)
    assert step.charge_fen == 0 and step.alarm is not None


def test_a_time_billed_point_with_a_flow_meter_checks_the_counter_too() -> None:
    by_time = billing_for(Decimal("0.6"), "min", Decimal("10"))
    s = session(counter_last=5000, counter_mono=T0)
    step = advance(s, by_time, LIMITS, now=T0 + 3, count=10, balance_fen=1000)
    assert step.alarm is not None and step.session.volume_ml == 0
    assert step.charge_fen == 3   # the seconds, as ever


@given(
    ml=st.decimals(min_value=Decimal("0.5"), max_value=Decimal("50"), places=3),
    last=st.integers(0, 2**32 - 1),
    delta=st.integers(0, 2**32 - 1),
    seconds=st.floats(min_value=0.0, max_value=7200.0),
)
@example(ml=Decimal("0.5"), last=0, delta=605, seconds=0.3)  # 1000 * 0.3 / 0.5 rounds up in floats
@example(ml=Decimal("0.5"), last=2**32 - 5, delta=10, seconds=0.0)  # a wrap within the slack
def test_a_counter_change_is_charged_exactly_when_water_could_have_made_it(
    ml: Decimal, last: int, delta: int, seconds: float
) -> None:
    billing = billing_for(Decimal("1"), "L", ml)
    s = session(counter_last=last, counter_mono=T0)
    step = advance(s, billing, LIMITS, now=T0 + seconds, count=(last + delta) % 2**32,
                   balance_fen=10**12, final=True)
    plausible = delta * ml <= MAX_FLOW_ML_PER_S * Decimal(seconds) + SLACK_PULSES * ml
    assert step.session.counter_last == (last + delta) % 2**32
    if plausible:
        assert step.alarm is None and step.session.pulses == delta
    else:
        assert step.alarm is not None and step.alarm.code == "meter_reset"
        assert step.session.pulses == 0 and step.charge_fen == 0


# --- the whole session is priced exactly ------------------------------------------------

ML_PER_PULSE = st.decimals(min_value=Decimal("0.001"), max_value=Decimal("50"), places=3)
PRICE = st.decimals(min_value=Decimal("0.001"), max_value=Decimal("20"), places=3)


@given(
    ml=ML_PER_PULSE,
    price=PRICE,
    start=st.integers(0, 2**32 - 1),
    steps=st.lists(
        st.one_of(st.none(), st.integers(0, 50), st.integers(0, 2**31 - 1)), max_size=40
    ),
)
def test_total_charged_is_the_floor_of_the_exact_price_of_the_final_volume(
    ml: Decimal, price: Decimal, start: int, steps: list[int | None]
) -> None:
    billing = billing_for(price, "L", ml)
    s = session(counter_last=start)
    count, pulses, charged, now = start, 0, 0, T0
    for delta in steps:
        # Readings far enough apart for every delta to be water (1 L/s at most).
        now += 1 + math.ceil((delta or 0) * ml / MAX_FLOW_ML_PER_S)
        if delta is not None:
            count = (count + delta) % 2**32
            pulses += delta
        step = advance(s, billing, LIMITS, now=now, count=None if delta is None else count,
                       balance_fen=10**12)
        assert step.alarm is None
        s = step.session
        charged += step.charge_fen
        assert step.charge_fen >= 0
    final = advance(s, billing, LIMITS, now=now + 1, count=count, balance_fen=10**12,
                    final=True)
    charged += final.charge_fen
    volume = math.floor(pulses * Fraction(ml))
    assert final.session.pulses == pulses
    assert final.session.volume_ml == volume
    assert charged == final.session.charged_fen
    assert charged == math.floor(volume * Fraction(price) * 100 / 1000)
    assert 0 <= final.session.carry < 1
