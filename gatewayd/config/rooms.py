"""[[rooms]]: each room's account, its meter and breaker, and its electricity rules.

Contract of the module: `read_rooms` records every problem at its place and
returns the rooms that are whole, with the ids of every room the file names
(for the curfews' `except`). A room's electricity uses the room's own account.
"""

from __future__ import annotations

from collections.abc import Mapping

from gatewayd.config.buses import Wiring
from gatewayd.config.model import ACCOUNT_RE, ACCOUNT_TEXT, NAME_RE, NAME_TEXT, Bus, PowerRules, Room
from gatewayd.config.policies import read_power_rules
from gatewayd.config.validate import Table, claim, show

__all__ = ["read_rooms"]


def read_rooms(
    root: Table, building: str, power: PowerRules, buses: Mapping[str, Bus], wiring: Wiring
) -> tuple[tuple[Room, ...], set[str]]:
    """The rooms, and the id of every room named (a room may be named and still be wrong)."""
    rooms: list[Room] = []
    accounts: dict[str, str] = {}
    seen: set[str] = set()
    for t in root.tables("rooms"):
        rid = t.text("id", "", required=True, pattern=NAME_RE, pattern_text=NAME_TEXT)
        if t.unique("id", rid, seen, "room"):
            seen.add(rid)
        account = t.text(
            "account", f"room-{building}-{rid}", pattern=ACCOUNT_RE, pattern_text=ACCOUNT_TEXT
        )
        # behaviour.md: "a room's electricity uses the room's own account".
        if rid and account and (owner := claim(accounts, account, rid)):
            t.problem("account", f"account {show(account)} is already used by room "
                      f"{show(owner)}: each room has its own account")
        meter = wiring.device(t, "meter", "meter", buses)
        if meter:
            wiring.use(t.at("meter"), f"room {show(rid)}", "meter", meter)
        breaker = wiring.device(t, "breaker", "switch", buses, channel=True)
        if breaker:
            wiring.use(t.at("breaker"), f"room {show(rid)}", "switch", breaker)
        rules = read_power_rules(t, power)
        resistive = t.flag("resistive_cutoff", False)
        if resistive and meter is not None and not meter.profile.has("pf"):
            t.problem(
                "resistive_cutoff",
                f"meter profile {show(meter.profile.name)} has no pf field, "
                "which the resistive-load cutoff needs",
            )
        t.done()
        if rid and meter and breaker:
            rooms.append(Room(rid, account, meter, breaker, rules, resistive))
    return tuple(rooms), seen
