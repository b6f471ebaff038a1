"""What a service is to the supervisor: a component with a start, a loop that
beats a heartbeat, and a graceful stop; and the start budget every start keeps."""

from __future__ import annotations

import time
from typing import Protocol

# Device I/O at start (closing valves, reading breakers) gets this long in all;
# what has not answered by then is handled as offline (its loop keeps trying).
# The spec's READY within 10 s of start leaves the rest for the interpreter,
# opening the store and loading ledger and cards (systemd's TimeoutStartSec
# is 30 s: a generous margin over a slow SD card, not part of the promise).
START_IO_S = 4.0


class Heartbeat:
    """Progress reports of one loop. A loop that beats is alive."""

    def __init__(self, name: str, max_silence_s: float | None) -> None:
        self.name = name
        self.max_silence_s = max_silence_s
        self.last = time.monotonic()

    def beat(self) -> None:
        self.last = time.monotonic()

    def stale(self, now: float) -> bool:
        return self.max_silence_s is not None and now - self.last > self.max_silence_s


class Component(Protocol):
    """A part of the daemon with its own loop."""

    name: str

    async def start(self) -> None:
        """Prepare before READY (e.g. close every valve). May raise to refuse starting."""

    async def run(self, heartbeat: Heartbeat) -> None:
        """The long-lived loop; beat at least every `heartbeat_s`."""

    async def shutdown(self) -> None:
        """Graceful stop step, called in order on SIGTERM before tasks are cancelled."""

    @property
    def heartbeat_s(self) -> float | None:
        """Longest silence that still counts as alive; None: event-driven, exempt."""
