"""Tap debouncing for one reader: sightings of a UID in, taps out. Pure.

A sighting of a UID within `window_s` of its LAST sighting is not a tap, so a
card held on a reader that keeps repeating its frame (RDM6300: every ~100
ms) stays one tap however long it is held, and it takes `window_s` of
absence before the same card taps again. Other UIDs are independent: card B
right after card A is a tap.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Debouncer:
    """Per-reader debouncer keyed by UID.

    Args:
        window_s: `gateway.tap_debounce_s`; 0 makes every sighting a tap.
        clock: monotonic seconds; injectable for tests.
    """

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if window_s < 0:
            raise ValueError(f"debounce window must be >= 0 s, not {window_s}")
        self.window_s = window_s
        self.clock = clock
        self._last_seen: dict[str, float] = {}

    def accept(self, uid: str, now: float | None = None) -> bool:
        """Record a sighting of `uid`; True if it is a new tap."""
        if now is None:
            now = self.clock()
        self._forget_before(now - self.window_s)
        last = self._last_seen.get(uid)
        self._last_seen[uid] = now
        return last is None or now - last >= self.window_s

    def refresh(self, uid: str, now: float | None = None) -> None:
        """Record that `uid` is (still) present without making a tap.

        PC/SC readers call this when a card leaves the field, so the window
        counts from the end of a long hold, not from its start.
        """
        if now is None:
            now = self.clock()
        self._last_seen[uid] = now

    def _forget_before(self, horizon: float) -> None:
        # Bounded memory: only UIDs seen within the window matter.
        if self._last_seen:
            stale = [uid for uid, seen in self._last_seen.items() if seen < horizon]
            for uid in stale:
                del self._last_seen[uid]
