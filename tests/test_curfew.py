"""Curfew windows in the building's time zone, and the clock's sync modes."""

from __future__ import annotations

from datetime import datetime, time
from zoneinfo import ZoneInfo

import pytest

from gatewayd.config.model import Curfew
from gatewayd.rules.curfew import in_window, rooms_under_curfew
from gatewayd.services.clock import Clock, kernel_ntp_synced

SH = ZoneInfo("Asia/Shanghai")
NIGHT = Curfew(days=frozenset({"mon"}), start=time(23, 30), end=time(6, 0),
               except_rooms=frozenset({"101"}))
NOON = Curfew(days=frozenset({"sat", "sun"}), start=time(12, 0), end=time(13, 0),
              except_rooms=frozenset())


@pytest.mark.parametrize(("when", "inside"), [
    ("2026-11-23 23:29", False),  # Monday, before the window
    ("2026-11-23 23:30", True),   # Monday 23:30: starts
    ("2026-11-24 05:59", True),   # Tuesday morning: Monday's window
    ("2026-11-24 06:00", False),  # ends
    ("2026-11-24 23:45", False),  # Tuesday night: no window starts on Tuesday
    ("2026-11-23 05:00", False),  # Monday morning: Sunday has no window
])
def test_window_crossing_midnight_belongs_to_its_start_day(when: str, inside: bool) -> None:
    local = datetime.fromisoformat(when).replace(tzinfo=SH)
    assert in_window(NIGHT, local) is inside


def test_same_day_window_and_exceptions() -> None:
    sat_noon = datetime(2026, 11, 28, 12, 30, tzinfo=SH)
    assert in_window(NOON, sat_noon)
    assert not in_window(NOON, sat_noon.replace(hour=13))
    monday_night = datetime(2026, 11, 23, 23, 45, tzinfo=SH)
    rooms = ["101", "102", "103"]
    assert rooms_under_curfew([NIGHT], rooms, monday_night) == {"102", "103"}  # 101 excepted
    assert rooms_under_curfew([NOON, NIGHT], rooms, monday_night) == {"102", "103"}
    assert rooms_under_curfew([NOON], rooms, monday_night) == set()
    assert rooms_under_curfew([], rooms, monday_night) == set()


def test_clock_sync_modes_and_local_time() -> None:
    assert Clock("UTC", "yes").synced() is True
    assert Clock("UTC", "no").synced() is False
    auto = Clock("Asia/Shanghai", "auto").synced()
    assert auto is bool(kernel_ntp_synced())
    stamp = Clock("Asia/Shanghai").stamp(1795439045.12)
    assert stamp == "2026-11-23T21:04:05.120+08:00"


def test_synced_is_timedateds_rule_maximum_error_under_16_s() -> None:
    """systemd-timedated's NTPSynchronized: maxerror < 16 s, STA_UNSYNC ignored."""
    from gatewayd.services.clock import synced_from_maxerror

    assert synced_from_maxerror(15_999_999) is True
    assert synced_from_maxerror(16_000_000) is False
    assert synced_from_maxerror(0) is True
