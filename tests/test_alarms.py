"""Alarms across a restart: the registry against a real store."""

from __future__ import annotations

import json
from pathlib import Path

from gatewayd.contract.enums import AlarmCode
from gatewayd.services.alarms import Alarms
from gatewayd.services.clock import Clock
from gatewayd.store.db import Store


def alarm_events(store: Store) -> list[tuple[str, str, bool]]:
    rows = store.call(lambda t: t.execute(
        "SELECT payload FROM events WHERE type = 'alarm' ORDER BY seq").fetchall())
    return [(e["code"], e["device"], e["active"]) for e in (json.loads(r[0]) for r in rows)]


async def test_a_restart_clears_what_it_no_longer_sees_and_repeats_nothing(tmp_path: Path) -> None:
    clock = Clock("UTC", "yes")
    store = Store.open(tmp_path, "b07")
    try:
        before = Alarms(store, clock)
        await before.load()
        for device in ("meter:101", "meter:102", "meter:103"):
            await before.report(AlarmCode.METER_OFFLINE, device, "no answer", True)
        # The daemon stops here (or is killed); a new one starts on the same store.
        after = Alarms(store, clock)
        await after.load()
        assert set(after.recorded) == {("meter_offline", f"meter:{r}") for r in (101, 102, 103)}
        await after.report(AlarmCode.METER_OFFLINE, "meter:101", "no answer", True)  # still dead
        await after.report(AlarmCode.METER_OFFLINE, "meter:102", "", False)          # answered again
        assert after.is_active(AlarmCode.METER_OFFLINE, "meter:101")
        await after.settle()  # 103 was never seen again: well, or gone from the config
        assert alarm_events(store) == [
            ("meter_offline", "meter:101", True), ("meter_offline", "meter:102", True),
            ("meter_offline", "meter:103", True),
            ("meter_offline", "meter:102", False), ("meter_offline", "meter:103", False)]
        third = Alarms(store, clock)
        await third.load()
        assert set(third.recorded) == {("meter_offline", "meter:101")}
    finally:
        store.close()
