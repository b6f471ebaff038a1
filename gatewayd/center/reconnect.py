"""When and how often the center link tries to connect: the reconnect policy.

Contract (center-link.md "Transport"; the model is aioesphomeapi's
`ReconnectLogic`, kept apart from its connection):
- `ReconnectLogic.run(connect, stop)` calls `connect()`, one whole session
  that returns only after the farewell, until it returns or `stop` is set.
  It knows nothing of topics, delivery or commands: it sees a session end
  with an error and decides how long to wait before the next one.
- Jittered, capped exponential back-off (`drivers.retry.Backoff`), capped at
  `BACKOFF_CAP_S` so that the backlog flows within 5 s of a broker's return;
  reset only by a connection that lasted `STABLE_SESSION_S`: one that
  accepts and drops at once is a failed attempt. After an authentication or
  configuration error it waits `BACKOFF_CONFIG_S`.
- The first failure is logged at WARNING, repeats at DEBUG, the recovery at
  INFO; disconnects of a flapping broker are summarised at DEBUG.
- The state is an explicit `LinkState`; the session reports its connect
  through `on_connected`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
from collections.abc import Awaitable, Callable
from typing import Final

import aiomqtt
import structlog
from aiomqtt.exceptions import MqttConnectError  # not re-exported by the package
from paho.mqtt.reasoncodes import ReasonCode

from drivers.retry import HALF_TO_FULL, Backoff
from gatewayd.errors import LinkConfigError

__all__ = ["LinkState", "ReconnectLogic", "reconnect_backoff"]

log = structlog.get_logger(__name__)

#: Reconnect back-off: first delay, and cap. The cap bounds how long after a
#: broker's return the backlog starts flowing (goal 5 s); each delay is jittered
#: to half to all of itself, so a campus of gateways does not come back in step.
BACKOFF_MIN_S: Final = 1.0
BACKOFF_CAP_S: Final = 4.0
#: The wait after an auth or configuration error: only an operator can fix it.
BACKOFF_CONFIG_S: Final = 60.0
#: A connection proves the broker well only once it has lasted this long: one
#: that accepts and drops at once (a broker restarting in a loop, a proxy) is a
#: failed attempt, backed off, and its connect/disconnect lines are summarised.
STABLE_SESSION_S: Final = 30.0
# CONNACK reason codes (MQTT 5 numbering; paho maps 3.1.1 codes onto them) that
# retrying soon cannot fix: wrong protocol, client id, credentials, ACL, ban.
_CONFIG_REASONS: Final = frozenset({0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C})


class LinkState(enum.StrEnum):
    """Where the link is; `connected` is `state is CONNECTED`."""

    IDLE = "idle"  # not started
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKING_OFF = "backing_off"  # waiting before the next attempt
    STOPPING = "stopping"
    STOPPED = "stopped"


def reconnect_backoff(rng: random.Random | None = None) -> Backoff:
    """The link's reconnect back-off: `BACKOFF_MIN_S` doubling to `BACKOFF_CAP_S`, each
    delay half to all of itself; `longest()` (a configuration error) `BACKOFF_CONFIG_S`."""
    return Backoff(BACKOFF_MIN_S, BACKOFF_CAP_S, jitter=HALF_TO_FULL, rng=rng,
                   longest_s=BACKOFF_CONFIG_S)


class ReconnectLogic:
    """Tries sessions with `broker` until stopped; tracks the `LinkState`."""

    def __init__(self, broker: str) -> None:
        self.broker = broker
        self.attempts = 0  # connection attempts, successful or not
        self.connects = 0
        self.last_error = ""
        self._state = LinkState.IDLE
        self._offline_since = time.monotonic()
        self._connected_at = 0.0
        self._flaps = 0  # connections in a row that did not last STABLE_SESSION_S
        self._failures = 0  # attempts since the last stable connection

    @property
    def state(self) -> LinkState:
        return self._state

    def offline_s(self) -> float:
        """Seconds since the link was last connected (or created)."""
        return round(time.monotonic() - self._offline_since, 1)

    def set_state(self, state: LinkState) -> None:
        if state is not self._state:
            log.debug("center_state", state=state.value, previous=self._state.value)
            if self._state is LinkState.CONNECTED:
                self._offline_since = time.monotonic()
            self._state = state

    def attempting(self) -> None:
        """The session is about to connect."""
        self.attempts += 1

    def on_connected(self, **facts: object) -> None:
        """The broker accepted the session; `facts` (what its CONNACK said) are logged."""
        self.set_state(LinkState.CONNECTED)
        self.connects += 1
        self._connected_at = time.monotonic()
        (log.info if self._flaps == 0 else log.debug)(
            "center_connected", broker=self.broker, **facts, failed_attempts=self._failures,
            offline_s=self.offline_s())

    async def run(self, connect: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
        """Call `connect` until it returns (after its farewell) or `stop` is set."""
        backoff = reconnect_backoff()
        self._failures = 0
        while not stop.is_set():
            self.set_state(LinkState.CONNECTING)
            longest = False
            try:
                await connect()
                return  # a session returns only after the farewell
            except* LinkConfigError as group:
                error: BaseException = group.exceptions[0]
                longest = True
            except* MqttConnectError as group:
                refusal = group.exceptions[0]
                assert isinstance(refusal, MqttConnectError)
                error = refusal
                rc = refusal.rc
                longest = (rc.value if isinstance(rc, ReasonCode) else rc) in _CONFIG_REASONS
            except* (aiomqtt.MqttError, OSError) as group:
                error = group.exceptions[0]
                # A certificate the other side refuses will not change by itself.
                longest = "CERTIFICATE" in str(error).upper()
            if stop.is_set():
                return
            delay = self._failed(error, backoff, longest=longest)
            self.set_state(LinkState.BACKING_OFF)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()

    def _failed(self, error: BaseException, backoff: Backoff, *, longest: bool) -> float:
        """Count a session's end, log it, and return the wait before the next attempt."""
        was_connected = self._state is LinkState.CONNECTED
        self.last_error = f"{type(error).__name__}: {error}"
        stable = was_connected and time.monotonic() - self._connected_at >= STABLE_SESSION_S
        if stable:
            self._failures = self._flaps = 0
            backoff.reset()
        else:
            self._failures += 1
        if was_connected:
            self._flaps += 0 if stable else 1
            (log.warning if self._flaps <= 1 else log.debug)(
                "center_disconnected", error=self.last_error, flaps=self._flaps)
        delay = backoff.longest() if longest else backoff.next_delay()
        if self._failures == 1:
            log.warning("center_unreachable", broker=self.broker, error=self.last_error,
                        retry_s=round(delay, 1), config_error=longest)
        elif self._failures > 1:
            log.debug("center_unreachable", broker=self.broker, error=self.last_error,
                      retry_s=round(delay, 1), attempt=self._failures)
        return delay
