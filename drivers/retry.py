"""How anything that fails is tried again and reported (behaviour.md "Faults").

`Backoff` says how long to wait before the next attempt: capped exponential
with jitter, reset on success; it is the one back-off of the code base (the
Modbus bus, device polls, card readers, valves and breakers, the center link,
the supervisor's restarts, `gatewayd tail`). `FailureLog` keeps the log lines of one thing
that keeps failing bounded: the first failure at WARNING (or the level given),
repeats counted and summarised at most once every `SUMMARY_S`, the recovery
at INFO. Together they make a dead bus, port or device cost a few requests a
second and a few log lines a minute, never a busy loop.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, Final

# Repeats of one failure are summarised at most this often: a log line a
# minute says the fault is still there without filling the disk.
SUMMARY_S = 60.0


#: `jitter` for a delay drawn between half and all of the schedule's: never
#: later than the schedule, and a crowd that failed together still spreads out.
HALF_TO_FULL: Final = (0.5, 1.0)

#: The jitter's source when none is given: one generator for every back-off
#: (a `random.Random` holds 2.5 KB of state; a building has a thousand back-offs).
JITTER_RNG: Final = random.Random()


class Backoff:
    """Capped exponential back-off with jitter around each delay, reset on success.

    `jitter` is a fraction (each delay is the schedule's +/- that much) or a
    `(low, high)` pair of factors (each delay is the schedule's times a factor
    drawn between them; `HALF_TO_FULL`). `longest()` is for errors that retrying
    soon will not fix (permissions, refused credentials): `longest_s`, by default
    the cap, with the same jitter.
    """

    def __init__(
        self,
        initial_s: float,
        cap_s: float,
        factor: float = 2.0,
        jitter: float | tuple[float, float] = 0.25,
        rng: random.Random | None = None,
        *,
        longest_s: float | None = None,
    ) -> None:
        if not 0 < initial_s <= cap_s or factor < 1:
            raise ValueError("back-off needs 0 < initial <= cap, factor >= 1")
        if isinstance(jitter, tuple):
            if not 0 <= jitter[0] <= jitter[1]:
                raise ValueError("back-off jitter needs 0 <= low <= high")
        elif not 0 <= jitter < 1:
            raise ValueError("back-off jitter needs 0 <= jitter < 1")
        self.initial_s = initial_s
        self.cap_s = cap_s
        self.factor = factor
        self.jitter = jitter
        self.longest_s = cap_s if longest_s is None else longest_s
        self._rng = rng or JITTER_RNG
        self.attempt = 0

    def delay(self, attempt: int) -> float:
        """The jittered delay before retry number `attempt` (0: the first), changing nothing."""
        try:
            base = min(self.cap_s, self.initial_s * self.factor**attempt)
        except OverflowError:  # a thing failing for days: long past the cap
            base = self.cap_s
        return self._jittered(base)

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; grows until the cap."""
        delay = self.delay(self.attempt)
        self.attempt += 1
        return delay

    def longest(self) -> float:
        """The longest delay, for errors that retrying soon will not fix; still an attempt."""
        self.attempt += 1
        return self._jittered(self.longest_s)

    def reset(self) -> None:
        """It works again: the next failure starts from `initial_s`."""
        self.attempt = 0

    def _jittered(self, base: float) -> float:
        if isinstance(self.jitter, tuple):
            low, high = self.jitter
            return base * (low + (high - low) * self._rng.random())
        return base * (1 + self.jitter * (2 * self._rng.random() - 1))


class FailureLog:
    """The log lines of one thing (a valve, a breaker, a file) that may keep failing.

    `failed()` logs the first failure of a run at `level` under `event`; later
    ones are counted, and logged as `event` with `repeats` (failures since the
    last line) and `failing_s` (since the run began) at most once a
    `summary_s`, at WARNING. `ok()` ends a run with `recovered` at INFO.
    """

    def __init__(self, logger: Any, event: str, *, recovered: str,
                 level: int = logging.WARNING, summary_s: float = SUMMARY_S,
                 clock: Callable[[], float] = time.monotonic, **context: Any) -> None:
        # The context is passed at each line, not bound: a bound logger per device
        # costs memory for lines most devices never log.
        self._log = logger
        self._context = context
        self.event = event
        self.recovered = recovered
        self.level = level
        self.summary_s = summary_s
        self._clock = clock
        self.failures = 0          # in the current run; 0: not failing
        self._since = 0.0          # when the run began
        self._said_at = 0.0        # when its last line was logged
        self._unsaid = 0           # failures since that line

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def failed(self, **fields: Any) -> bool:
        """One more failure; True when it begins a run (the caller may raise an alarm)."""
        now = self._clock()
        self.failures += 1
        if self.failures == 1:
            self._since = self._said_at = now
            self._unsaid = 0
            self._log.log(self.level, self.event, **{**self._context, **fields})
            return True
        self._unsaid += 1
        if now - self._said_at >= self.summary_s:
            self._log.warning(self.event, **{**self._context, "repeats": self._unsaid,
                                             "failing_s": round(now - self._since), **fields})
            self._said_at = now
            self._unsaid = 0
        return False

    def ok(self, **fields: Any) -> bool:
        """It works; True when that ends a run of failures (logged once, at INFO)."""
        if self.failures == 0:
            return False
        self._log.info(self.recovered, **{**self._context, "failures": self.failures,
                                          "failing_s": round(self._clock() - self._since),
                                          **fields})
        self.failures = 0
        return True
