"""Water points as pure functions (behaviour.md "Water" and "Accounts and cards").

`check_tap` decides whether a card may open a closed point. `advance` charges
an open session for what was measured since the last call and says whether
it must end. No I/O and no clocks: times come in (monotonic seconds).

Quantities are integers before they are priced: the volume is
`floor(pulses * ml_per_pulse)` recomputed from the session's total pulses (no
drift), time is whole seconds since the session opened. A point is billed by
volume when its tariff is per litre, by time when per minute.

A counter change is charged only when water could have flowed that much: at
most `MAX_FLOW_ML_PER_S` since the previous reading, plus `SLACK_PULSES`. A
counter that restarted at 0 (its board lost power) or jumped is not charged:
the new count is the baseline and `advance` returns a `meter_reset` alarm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from fractions import Fraction

from gatewayd.contract.enums import AlarmCode, EndReason, TapReason, WaterUse
from gatewayd.rules import pricing

# The most water a point can pass, far above any shower head (6 to 15 L/min)
# or fountain: 1 L/s = 60 L/min. A counter change beyond it in the time since
# the previous reading is not water but a counter reset or a wrong reading.
MAX_FLOW_ML_PER_S = 1000
# Pulses allowed beyond that, for readings taken a bus round trip apart and a
# pulse counted just before or after a reading.
SLACK_PULSES = 5


@dataclass(frozen=True, slots=True)
class Card:
    uid: str
    account: str
    kind: str
    status: str        # active, lost, cancelled
    expires: date | None  # valid through this day (building time zone)


@dataclass(frozen=True, slots=True)
class TapFacts:
    """What the gateway knows at a tap on a closed point."""

    card: Card | None
    kinds: frozenset[str]
    today: date
    balance_fen: int
    account_known: bool
    min_balance_fen: int
    step_fen: int
    offline: bool              # the center is unreachable
    offline_spent_fen: int     # by this card today while offline
    offline_limit_fen: int
    busy: bool = False         # the point has a session of another card
    fault: bool = False        # the point's valve or flow meter is faulty


def check_card(card: Card | None, today: date) -> TapReason | None:
    """Why this card opens nothing anywhere (unknown, lost, cancelled, expired), or None."""
    if card is None:
        return TapReason.UNKNOWN_CARD
    if card.status == "lost":
        return TapReason.LOST
    if card.status == "cancelled":
        return TapReason.CANCELLED
    if card.status != "active":
        return TapReason.UNKNOWN_CARD
    if card.expires is not None and today > card.expires:
        return TapReason.EXPIRED
    return None


def check_tap(f: TapFacts) -> TapReason | None:
    """The refusal reason, or None when the session may start.

    The card's identity comes first, so that a lost card tapped at a busy or
    faulty point is still reported as `lost`; then the point (`busy`,
    `fault`); then what the card may do there (kind, account, balance, the
    offline limit).
    """
    reason = check_card(f.card, f.today)
    if reason is not None:
        return reason
    card = f.card
    assert card is not None
    if f.busy:
        return TapReason.BUSY
    if f.fault:
        return TapReason.FAULT
    if card.kind not in f.kinds:
        return TapReason.KIND
    if not f.account_known:
        return TapReason.UNKNOWN_ACCOUNT
    if f.balance_fen < max(f.min_balance_fen, f.step_fen):
        return TapReason.BALANCE
    if f.offline and f.offline_spent_fen + f.step_fen > f.offline_limit_fen:
        return TapReason.OFFLINE_LIMIT
    return None


@dataclass(frozen=True, slots=True)
class Session:
    """An open session. Counts are raw counter values; times monotonic.

    `offline` says the session started while the center was unreachable (the
    `water.session` event's flag); the offline limit looks at each charge.
    """

    session: str
    point: str
    card: str
    account: str
    service: WaterUse
    offline: bool
    started_wall: float
    started_mono: float
    counter_start: int | None = None
    pulses: int = 0             # counted since the start (wraps handled)
    counter_last: int | None = None
    volume_ml: int = 0
    seconds: int = 0
    charged_fen: int = 0
    carry: Fraction = Fraction(0)
    last_flow_mono: float = 0.0
    # When `counter_last` was read, or earlier (after a restart): the flow bound
    # may only err on the generous side.
    counter_mono: float = 0.0


@dataclass(frozen=True, slots=True)
class Billing:
    by_volume: bool            # tariff per L (else per min)
    rate: Fraction             # fen per mL or per second
    ml_per_pulse: Decimal      # 0 without a flow meter
    counter_bits: int = 32


@dataclass(frozen=True, slots=True)
class Limits:
    step_fen: int
    max_session_s: float
    idle_close_s: float
    offline_limit_fen: int


@dataclass(frozen=True, slots=True)
class FlowAlarm:
    """A one-off alarm about the point's flow meter; `detail` is text for people."""

    code: AlarmCode
    detail: str


@dataclass(frozen=True, slots=True)
class Advance:
    session: Session
    charge_fen: int            # to debit now
    end: EndReason | None      # when the session must end now
    offline_fen: int = 0       # of charge_fen, spent while the center is unreachable
    alarm: FlowAlarm | None = None  # to record with the charge


def pulses_between(last: int, now: int, bits: int) -> int:
    """Pulses from `last` to `now` on a counter that wraps at 2**bits."""
    return (now - last) % (1 << bits)


def max_pulses(seconds: float, ml_per_pulse: Decimal) -> int:
    """The most pulses water can make in `seconds` (at `MAX_FLOW_ML_PER_S`, plus slack)."""
    # Exact (as the float `seconds` stands), so that the bound is the same wherever it is computed.
    bound = MAX_FLOW_ML_PER_S * Fraction(max(seconds, 0.0)) / Fraction(ml_per_pulse)
    return math.floor(bound) + SLACK_PULSES


def flow_step(last: int, count: int, seconds: float, billing: Billing) -> tuple[int, FlowAlarm | None]:
    """Pulses to charge from `last` to `count`, read `seconds` apart.

    A change no flow can explain (backwards, or forwards too fast) charges
    nothing and is a `meter_reset`: the count is the new baseline.
    """
    delta = pulses_between(last, count, billing.counter_bits)
    if not delta or not billing.ml_per_pulse:
        return delta, None
    if delta <= max_pulses(seconds, billing.ml_per_pulse):
        return delta, None
    return 0, FlowAlarm(AlarmCode.METER_RESET, f"flow counter went from {last} to {count} in "
                                   f"{max(seconds, 0.0):.0f} s: not charged, new baseline")


def advance(
    s: Session,
    billing: Billing,
    limits: Limits,
    *,
    now: float,
    count: int | None,
    balance_fen: int,
    offline: bool = False,
    offline_spent_fen: int = 0,
    final: bool = False,
) -> Advance:
    """Charge what was measured up to `now` (`count`: the counter now, or None).

    `offline`: the center is unreachable now, so this charge counts toward the
    card's offline day limit (`offline_spent_fen` spent so far today). With
    `final` the session is ending anyway: charge and do not decide an end.
    """
    pulses = s.pulses
    last_flow = s.last_flow_mono
    counter_last, counter_mono = s.counter_last, s.counter_mono
    alarm = None
    if count is not None:
        if counter_last is not None:
            delta, alarm = flow_step(counter_last, count, now - counter_mono, billing)
            if delta:
                pulses += delta
                last_flow = now
        counter_last, counter_mono = count, now
    # Exact: Decimal arithmetic rounds to its context's precision (28 digits),
    # which could round a volume up to the next mL.
    volume = math.floor(pulses * Fraction(billing.ml_per_pulse)) if billing.ml_per_pulse else 0
    elapsed = max(now - s.started_mono, 0.0)
    seconds = min(int(elapsed), int(limits.max_session_s))
    quantity = (volume - s.volume_ml) if billing.by_volume else (seconds - s.seconds)
    fen, carry = pricing.charge(max(quantity, 0), billing.rate, s.carry)
    new = replace(
        s, pulses=pulses, counter_last=counter_last, counter_mono=counter_mono, volume_ml=volume,
        seconds=seconds, charged_fen=s.charged_fen + fen, carry=carry, last_flow_mono=last_flow,
    )
    end = None
    if not final:
        left = balance_fen - fen
        if left < limits.step_fen:
            end = EndReason.BALANCE
        elif offline and offline_spent_fen + fen + limits.step_fen > limits.offline_limit_fen:
            end = EndReason.BALANCE  # the offline day limit is the card's balance here
        elif elapsed >= limits.max_session_s:
            end = EndReason.MAX_DURATION
        elif billing.ml_per_pulse and now - last_flow >= limits.idle_close_s:
            end = EndReason.IDLE
    return Advance(new, fen, end, fen if offline else 0, alarm)


def billing_for(price_yuan: Decimal, unit: str, ml_per_pulse: Decimal = Decimal(0),
                counter_bits: int = 32) -> Billing:
    """How a point is billed: per mL when the tariff is per litre, else per second."""
    return Billing(by_volume=unit == "L", rate=pricing.fen_per_quantity(price_yuan, unit),
                   ml_per_pulse=ml_per_pulse, counter_bits=counter_bits)
