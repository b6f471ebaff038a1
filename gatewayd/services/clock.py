"""Time for the rules: monotonic for durations, wall time for reports and curfews.

`synced()` says whether the wall clock can be trusted (a Pi has no RTC until
NTP syncs): the kernel's NTP status (what timedatectl shows as
NTPSynchronized), unless `gateway.clock_synced` forces yes or no.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo

import structlog

from gatewayd.contract.wire import rfc3339

log = structlog.get_logger(__name__)

# systemd-timedated's NTPSynchronized (what timedatectl shows): the kernel's
# maximum error (adjtimex(2), microseconds) under its ceiling of 16 s. STA_UNSYNC
# is ignored, as timedated does: chrony without rtcsync sets it on a synced clock
# to keep the kernel off the RTC.
MAXERROR_SYNCED_US = 16_000_000


class _Timex(ctypes.Structure):
    # The leading fields of struct timex; the kernel writes more, hence the tail.
    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 256),
    )


def kernel_ntp_synced() -> bool | None:
    """The kernel's view (read-only adjtimex, modes 0); None when it cannot be asked."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return synced_from_maxerror(tx.maxerror)


def synced_from_maxerror(maxerror_us: int) -> bool:
    return maxerror_us < MAXERROR_SYNCED_US


class Clock:
    """The daemon's clock; tests substitute one with settable time."""

    def __init__(self, timezone: str, synced_mode: str = "auto") -> None:
        self.tz: tzinfo = ZoneInfo(timezone)
        self.synced_mode = synced_mode

    def mono(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def local(self, wall: float | None = None) -> datetime:
        return datetime.fromtimestamp(self.wall() if wall is None else wall, self.tz)

    def stamp(self, wall: float | None = None) -> str:
        """RFC 3339 with offset in the building's zone, for events."""
        return rfc3339(self.wall() if wall is None else wall, self.tz)

    def synced(self) -> bool:
        if self.synced_mode == "yes":
            return True
        if self.synced_mode == "no":
            return False
        return bool(kernel_ntp_synced())
