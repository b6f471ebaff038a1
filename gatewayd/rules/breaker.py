"""A breaker's reconciliation, as a pure function: what a breaker read to be on or
off calls for, given what the store records about its room (behaviour.md
"Electricity").

The rules want the supply on exactly when no cut reason holds. A breaker read
against that is either on while cut (switched by hand, or a relay board that
lost power and reset): cut again; or off with no cut recorded: left off and
held, never switched on because the gateway cannot explain it. A room whose
recorded switch is still to be carried out (`switch_pending`) has no verdict:
driving its breaker finishes that switch.
"""

from __future__ import annotations

import enum

from gatewayd.rules.power import RoomState


class Verdict(enum.Enum):
    CUT_AGAIN = "cut_again"   # on while the room is cut
    HOLD_OFF = "hold_off"     # off with no cut recorded: leave it off, hold the room


def reconcile(on: bool, state: RoomState, switch_pending: bool) -> Verdict | None:
    """What a breaker read as `on` calls for; None when it is where the rules want
    it or a recorded switch is still pending."""
    if switch_pending or on == (state.cut_reason is None):
        return None
    return Verdict.CUT_AGAIN if on else Verdict.HOLD_OFF
