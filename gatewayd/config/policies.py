"""The rule tables: [tariffs] (prices), [power] (the electricity rules, also overridden per
room, and its [[power.curfew]] windows) and [water] (shower and drinking sessions).

Contract of the module: each reader takes its table, records every problem on
it and returns the frozen rules, the defaults of config.md for what is absent.
"""

from __future__ import annotations

from datetime import time as dtime
from decimal import Decimal

from gatewayd.config.model import DAYS, HHMM_RE, Curfew, PowerRules, Tariff, Tariffs, WaterRules
from gatewayd.config.validate import Problem, Table, show

__all__ = ["read_curfew", "read_power_rules", "read_tariffs", "read_water"]


def read_tariffs(t: Table | None) -> Tariffs:
    """[tariffs]: a price and unit per service."""
    defaults = {
        "power": Tariff(Decimal("0.56"), "kWh"),
        "shower": Tariff(Decimal("0.03"), "L"),
        "drinking": Tariff(Decimal("0.01"), "L"),
    }
    units = {"power": ("kWh",), "shower": ("L", "min"), "drinking": ("L", "min")}
    if t is None:
        return Tariffs(**defaults)
    out = dict(defaults)
    for service in ("power", "shower", "drinking"):
        sub = t.table(service)
        if sub is None:
            continue
        price = sub.decimal("price", defaults[service].price)
        unit = sub.text("unit", defaults[service].unit, choices=units[service])
        sub.done()
        out[service] = Tariff(price, unit)  # type: ignore[arg-type]
    t.done()
    return Tariffs(**out)


def read_power_rules(t: Table, base: PowerRules) -> PowerRules:
    """The electricity rules of [power] (over the defaults) or of a room (over [power])."""
    return PowerRules(
        max_power_w=t.integer("max_power_w", base.max_power_w, minimum=100),
        trip_after_s=t.number("trip_after_s", base.trip_after_s, above=0),
        reclose_after_s=t.number("reclose_after_s", base.reclose_after_s, above=0),
        lockout_trips=t.integer("lockout_trips", base.lockout_trips, minimum=1),
        lockout_window_s=t.number("lockout_window_s", base.lockout_window_s, above=0),
        lockout_s=t.number("lockout_s", base.lockout_s, above=0),
        resistive_step_w=t.integer("resistive_step_w", base.resistive_step_w, minimum=1),
        resistive_pf=t.number("resistive_pf", base.resistive_pf, above=0, maximum=1),
        low_balance_fen=t.integer("low_balance_fen", base.low_balance_fen, minimum=0),
        report_fen=t.integer("report_fen", base.report_fen, minimum=1),
        report_interval_s=t.number("report_interval_s", base.report_interval_s, above=0),
        meter_offline_cut_s=t.number("meter_offline_cut_s", base.meter_offline_cut_s, minimum=0),
    )


def read_curfew(t: Table, room_ids: set[str], warnings: list[Problem]) -> Curfew:
    """One [[power.curfew]]; `room_ids` are the rooms of the file, for its `except`."""
    days = t.str_list("days", choices=DAYS, default=DAYS)
    start = t.text("from", "", required=True, pattern=HHMM_RE, pattern_text='"HH:MM"')
    end = t.text("to", "", required=True, pattern=HHMM_RE, pattern_text='"HH:MM"')
    # The contract's own example excepts rooms a building may not have: a
    # room not in this file is a warning, not an error (docs/decisions.md).
    excepted = t.str_list("except")
    for i, room in enumerate(excepted):
        if room not in room_ids:
            warnings.append(Problem(
                t.at(f"except[{i}]"), f"no room {show(room)} in this file (ignored)"
            ))
    if t.has("days") and not days and isinstance(t.data["days"], list):
        warnings.append(Problem(t.at("days"), "no days: this curfew never applies"))
    if start and start == end:
        t.problem("to", "a curfew window must not start and end at the same time")
    t.done()
    return Curfew(
        days=frozenset(days),
        start=_hhmm(start),
        end=_hhmm(end),
        except_rooms=frozenset(r for r in excepted if r in room_ids),
    )


def read_water(t: Table | None) -> WaterRules:
    """[water]."""
    if t is None:
        return WaterRules()
    w = WaterRules(
        min_balance_fen=t.integer("min_balance_fen", 50, minimum=0),
        step_fen=t.integer("step_fen", 1, minimum=1),
        max_session_s=t.number("max_session_s", 1800.0, above=0),
        idle_close_s=t.number("idle_close_s", 90.0, above=0),
        offline_limit_fen=t.integer("offline_limit_fen", 2000, minimum=0),
    )
    t.done()
    return w


def _hhmm(text: str) -> dtime:
    if not text:
        return dtime(0, 0)
    hours, minutes = text.split(":")
    return dtime(int(hours), int(minutes))
