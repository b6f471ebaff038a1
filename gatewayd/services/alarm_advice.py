"""What staff should do about each alarm: the one text the status page shows and the
README's alarm table ("what to do" column) repeats; tests/test_status_page.py keeps
the two equal. Text in Markdown: `code` spans only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gatewayd.contract.enums import AlarmCode


@dataclass(frozen=True, slots=True)
class Advice:
    name_zh: str      # the alarm's name for the Chinese-reading staff on the page
    what_to_do: str   # as in the README's table


ADVICE: Mapping[AlarmCode, Advice] = {
    AlarmCode.METER_OFFLINE: Advice(
        "电表离线",
        "Check the meter's RS-485 wiring (A/B swapped, loose, no termination), its unit id and "
        "baud rate against the config, its supply. Several meters of one bus at once: the bus "
        "(adapter, Modbus TCP gateway, cable). A DL/T 645 meter: its 12-digit address against the "
        "nameplate, and the line's baud rate and parity (2400 8E1 unless set otherwise)."),
    AlarmCode.METER_RESET: Advice(
        "电表读数回退",
        "Expected after replacing a meter or a power cut of the counter board. Otherwise check "
        "for a wrong profile or two rooms or points reading the same unit id."),
    AlarmCode.METER_JUMP: Advice(
        "电表读数跳变",
        "A meter swapped without reset, or a profile with a wrong `scale`. Check the profile "
        "against the meter's manual."),
    AlarmCode.BREAKER_MISMATCH: Advice(
        "电闸状态不符",
        "Check the relay board and its wiring; someone may have switched it by hand. A DL/T 645 "
        "meter's relay: the meter refused the password (the alarm's detail says \"refused the trip "
        "command (password)\"; fix the `password_file` line from the commissioning sheet), or its "
        "relay did not move. Once safe, the center's `room.restore` switches a held room back "
        "on."),
    AlarmCode.READER_OFFLINE: Advice(
        "读卡器离线",
        "Check the USB cable and adapter (`ls -l /dev/serial/by-id/`), the port in the config; "
        "for PC/SC, `pcscd` running."),
    AlarmCode.READER_FLOOD: Advice(
        "读卡器异常刷卡",
        "Look at the reader (someone holding a device to it; a reader that keeps seeing cards "
        "with nobody there: its wiring or its antenna near metal). The `tap` events' `card` and "
        "`count` show what it saw. A busy turnstile-like reader with many genuine refusals: raise "
        "`refused_taps_per_min`."),
    AlarmCode.VALVE_FAULT: Advice(
        "水阀故障",
        "Check the valve relay and the valve; close the water supply by hand if it does not "
        "close."),
    AlarmCode.CLOCK_UNSYNCED: Advice(
        "时钟未同步",
        "`timedatectl`; check NTP servers and the network; or set `clock_synced = \"yes\"` on a "
        "site with a trusted RTC."),
    AlarmCode.ROOM_FAILING: Advice(
        "房间处理故障",
        "Send the log (`journalctl -u gatewayd | grep room_evaluation_failed`) to the developers; "
        "a meter with a wrong profile (`scale`) is the first suspect. It clears by itself once "
        "the room's readings are handled again."),
    AlarmCode.STORE_FAILING: Advice(
        "存储故障",
        "A full or failing SD card: free space, check `dmesg`. A removed database: find who or "
        "what removed it (a clean-up script, a wrong backup restore); to restore a backup, stop "
        "the service first."),
    AlarmCode.OUTBOX_FULL: Advice(
        "发件箱已满",
        "Restore the link to the center (`center_unreachable` in the log says why: DNS, TLS, "
        "password, certificate). Enforcement continues meanwhile."),
}
