"""A room as `state.get`, the status view and telemetry show it: its meter's
values rounded to what the meter resolves (`drivers.resolution.resolved`)."""

from __future__ import annotations

from typing import Any

from drivers.resolution import resolved
from gatewayd.contract.enums import AlarmCode
from gatewayd.contract.events import meter_device, room_device
from gatewayd.rules.power import limit_w
from gatewayd.services.alarms import Alarms
from gatewayd.services.power.room import RoomRuntime
from gatewayd.store.ledger import Ledger


def meter_online(rt: RoomRuntime, alarms: Alarms) -> bool:
    """Read at least once, and no meter_offline raised."""
    return not alarms.is_active(AlarmCode.METER_OFFLINE, meter_device(rt.id)) and rt.last is not None


def _resolved(rt: RoomRuntime, name: str, value: float | None) -> float | None:
    return None if value is None else resolved(rt.cfg.meter.profile, name, value)


def describe(rt: RoomRuntime, ledger: Ledger, alarms: Alarms) -> dict[str, Any]:
    """The room's account, breaker, rules' state and last reading."""
    s, last = rt.state, rt.last
    return {
        "room": rt.id, "account": rt.cfg.account,
        "balance_fen": ledger.balance(rt.cfg.account),
        "account_known": ledger.is_known(rt.cfg.account),
        "breaker": "unknown" if rt.breaker_on is None else ("on" if rt.breaker_on else "off"),
        "cut_reason": s.cut_reason, "hold": s.hold,
        "lockout": s.lockout_until is not None,
        "max_power_w": limit_w(s, rt.cfg.rules),
        "online": meter_online(rt, alarms),
        # Its readings keep failing to be handled (room_failing): not healthy.
        "failing": alarms.is_active(AlarmCode.ROOM_FAILING, room_device(rt.id)),
        # Values as the meter resolves them (0.1 V, not 230.10000000000002).
        "power_w": _resolved(rt, "power_w", None if last is None else last.power_w),
        "energy_wh": None if last is None else last.energy_wh,
        "voltage_v": _resolved(rt, "voltage_v", None if last is None else last.voltage_v),
        "current_a": _resolved(rt, "current_a", None if last is None else last.current_a),
        "pf": _resolved(rt, "pf", None if last is None else last.pf),
        "accrued_fen": s.accrued_fen,
    }
