"""The center link: MQTT transport and delivery (center-link.md).

Contract:
- One MQTT connection to the center's broker at a time, MQTT 5 by default
  (3.1.1 by config), with a persistent session (`clean_start` false and a
  `SessionExpiryInterval` of `center.session_expiry_s`; `clean_session`
  false with 3.1.1), so commands sent while the gateway is away wait for it.
  The will is the offline status document, retained, QoS 1.
- Reconnects with jittered, capped exponential back-off, reset on success,
  capped at `BACKOFF_CAP_S` so that the backlog flows within 5 s of a
  broker's return; after an authentication or configuration error it waits
  `BACKOFF_CONFIG_S`. A broker that accepts and then goes silent is given
  up after two `KEEPALIVE_S` (paho pings after one of silence and gives up
  one more later without its answer), so the link says disconnected within
  ~13 s. The first failure is logged at WARNING, repeats at DEBUG, the
  recovery at INFO. The state is an explicit `LinkState`.
- Commands arriving at QoS 0 are ignored without a result, before any
  parsing (center-link.md), and counted. The others are queued within
  `COMMAND_QUEUE_MAX` messages and `COMMAND_QUEUE_BYTES` (a small command
  always fits while the count allows): one that does not fit is
  acknowledged unread, counted and logged within a budget, and gets no
  result. With MQTT 5 the CONNECT says `RECEIVE_MAXIMUM`, so the broker
  itself holds back the QoS 1 commands we have not acknowledged.
- Commands on `{root}/cmd` and `{prefix}/all/cmd` (QoS 1) go one at a time,
  in arrival order, to the `CommandHandler`. They are acknowledged to the
  broker only after the handler returned (and its immediate result, if any,
  was acknowledged): a command the gateway did not finish is delivered again
  after a crash or reconnect, and the handler's duplicate check answers it.
  A handler that raises is logged and the command answered `internal`; it
  never stops the link.
- Delivery: results, then money events, then other events, then queued
  telemetry, oldest first within a class, read from the store in pages
  (`gatewayd.store.outbox`), with up to `MAX_WINDOW` QoS 1 messages in flight
  (fewer when the broker's MQTT 5 Receive Maximum says so). A message is
  marked published, in batches, only after its PUBACK. Lower-class messages
  in flight are capped to what the broker acknowledges in
  `PRIORITY_BUDGET_S`, so a later result or money event never waits more
  than about that behind a backlog. After a reconnect delivery resumes from
  the oldest unpublished message: delivery is at least once.
- Status (retained, QoS 1) on connect, when a fault count changes, when
  `pending` reaches 0 after a status said it was not, and at least every
  `telemetry_interval_s`. Telemetry (QoS 0) every `telemetry_interval_s`:
  published at once when online and nothing older is queued, else queued in
  the store (subject to the cap) and sent after the events.
- `shutdown()` drains the outbox while `SHUTDOWN_DRAIN_S` allows, publishes
  the offline status (the will's document) retained, and disconnects, all
  within `SHUTDOWN_BUDGET_S`. What was not published stays for next time.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import aiomqtt
import msgspec
import paho.mqtt.client as paho
import structlog
from aiomqtt.exceptions import MqttConnectError  # not re-exported by the package
from paho.mqtt import _packet  # the PUBLISH decoder, replaced below (paho is pinned)
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers
from paho.mqtt.reasoncodes import ReasonCode

from drivers.retry import HALF_TO_FULL, Backoff, FailureLog
from gatewayd import __version__
from gatewayd.center.screen import BoundedLog
from gatewayd.config.model import CenterSection, Config
from gatewayd.contract.command_types import MAX_COMMAND_BYTES
from gatewayd.contract.wire import ErrorCode, Faults, Priority, Status, encode_result_error, encode_will
from gatewayd.errors import LinkConfigError, StoreError
from gatewayd.services.clock import Clock
from gatewayd.services.component import Heartbeat
from gatewayd.store import outbox
from gatewayd.store.db import Event, Store, Txn
from gatewayd.store.outbox import OutMessage, Pending

__all__ = [
    "CenterLink",
    "CommandHandler",
    "LinkConfigError",
    "LinkState",
    "TopicKind",
]

log = structlog.get_logger(__name__)

TopicKind = Literal["building", "broadcast"]

# --- timing, with the reason for each ---------------------------------------------

#: MQTT keep-alive: paho pings after this much silence from the broker and gives
#: the connection up when nothing has come one more keep-alive later, so a broker
#: that accepted and went silent is noticed within 2x this plus paho's 1 s tick
#: (13 s; the goal is 20 s, and sessions started meanwhile say `offline`).
#: The broker drops us after 1.5x this without a packet: we ping when idle.
KEEPALIVE_S: Final = 6
#: TCP, TLS and CONNACK on a campus network take well under a second; a broker
#: silent this long is not answering.
CONNECT_TIMEOUT_S: Final = 15.0
#: SUBACK should follow SUBSCRIBE at once; a broker that does not answer is stuck.
SUBSCRIBE_TIMEOUT_S: Final = 10.0
#: A broker that holds an acknowledgment this long is stuck: the connection is
#: dropped and what was in flight is sent again on the next one.
PUBACK_TIMEOUT_S: Final = 60.0
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
#: MQTT 5 Receive Maximum sent on CONNECT: at most this many unacknowledged
#: QoS 1 commands are in our hands; the broker holds the rest of a flood.
RECEIVE_MAXIMUM: Final = 8
#: No MQTT 5 Maximum Packet Size is sent: mosquitto 2.0 counts a QoS 1 message it
#: holds back for being too big against the Receive Maximum for good, so a few
#: oversized commands would stop every later one. The broker's own
#: `max_packet_size` bounds what paho reads (README); the queue's bytes bound
#: drops the rest.
#: Commands waiting for the command loop, at most (3.1.1 has no Receive Maximum).
COMMAND_QUEUE_MAX: Final = 16
#: ...and their payload bytes at most: two of the largest commands. A command of
#: `SMALL_COMMAND_BYTES` or less is admitted whenever the count allows, so a
#: flood of big payloads never keeps out a credit or a cut.
COMMAND_QUEUE_BYTES: Final = 2 * MAX_COMMAND_BYTES
SMALL_COMMAND_BYTES: Final = 64 * 1024
#: Dropped or ignored commands logged one by one a minute; the rest summarised.
DROPS_LOGGED_PER_MIN: Final = 5
#: QoS 1 messages in flight at most: enough to fill a campus round trip at
#: thousands of messages a second; paho's own inflight limit is set above it.
MAX_WINDOW: Final = 256
#: Room for status and direct results beyond the delivery window in paho.
_INFLIGHT_HEADROOM: Final = 16
#: QoS 1 messages outside the delivery window at once: one status, one result.
_RESERVED_INFLIGHT: Final = 2
#: Lower-class (events, telemetry) messages in flight are capped to what the
#: broker acknowledges in this time, so a new result or money event waits at
#: most about this long behind them (the contract allows one second).
PRIORITY_BUDGET_S: Final = 0.5
#: ...but never below this, or a fresh connection (no rate measured) would crawl.
MIN_LOWER_WINDOW: Final = 16
#: Messages read ahead from the store, so the window never waits on a store
#: round trip (which may queue behind a commit's fsync); bounds the memory too.
PAGE: Final = 1024
#: Acknowledged messages are marked published in one store job per batch of at
#: most this many, or after this delay: one fsync per batch, not per message.
MARK_BATCH: Final = 512
MARK_DELAY_S: Final = 0.05
#: Without a wake-up, look at the outbox this often anyway (rows written by
#: code that does not wake the link, e.g. a result inserted by a tool).
IDLE_POLL_S: Final = 5.0
#: Fault counts are compared this often, so a change is published within it.
STATUS_POLL_S: Final = 1.0
#: After a failed store job (disk full, I/O error) the link tries again after
#: this long; the store's own probe reports the fault.
STORE_RETRY_S: Final = 1.0
#: The cap is enforced and the heartbeat beaten this often.
HOUSEKEEPING_S: Final = 5.0
#: Retention runs this often (and at start).
RETENTION_INTERVAL_S: Final = 3600.0
#: The supervisor gives the whole stop ~8 s and other components go first:
#: the link takes at most this much, draining for at most SHUTDOWN_DRAIN_S.
SHUTDOWN_BUDGET_S: Final = 3.0
SHUTDOWN_DRAIN_S: Final = 2.0
#: The offline status and the DISCONNECT after the drain, each at most this long.
FAREWELL_TIMEOUT_S: Final = 0.4

_MIB: Final = 1024 * 1024
# CONNACK reason codes (MQTT 5 numbering; paho maps 3.1.1 codes onto them) that
# retrying soon cannot fix: wrong protocol, client id, credentials, ACL, ban.
_CONFIG_REASONS: Final = frozenset({0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C})

_json = msgspec.json.Encoder()


class LinkState(enum.StrEnum):
    """Where the link is; `connected` is `state is CONNECTED`."""

    IDLE = "idle"  # not started
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKING_OFF = "backing_off"  # waiting before the next attempt
    STOPPING = "stopping"
    STOPPED = "stopped"


class CommandHandler(Protocol):
    """Applies the center's commands (the lead's command service)."""

    async def handle(self, payload: bytes, topic_kind: TopicKind) -> bytes | None:
        """Apply one command payload.

        Return a result to publish at once (not stored: a result with id
        null, or a duplicate's answer), or None when the result was stored in
        `commands` with `published` NULL for the outbox to send.
        """
        ...


#: PUBLISH properties larger than this are not decoded (paho's decoder copies the
#: rest of the buffer at every property: quadratic). Commands carry none.
_MAX_PUBLISH_PROPERTIES: Final = 64 * 1024


def _decode_publish(header: int, packet: bytes | bytearray,
                    protocol: MQTTProtocolVersion) -> _packet.PublishPacket:
    """paho 2.2's `decode_publish`, copying the payload once. paho's copies the whole
    packet three or four times (and once more per property): an 8 MiB command held
    the loop ~25 ms, in the code that must read even what is then ignored."""
    view = memoryview(packet)
    qos = (header & 0x06) >> 1
    if len(view) < 2:
        raise MalformedPacket("PUBLISH too short")
    slen = int.from_bytes(view[:2], "big")
    i = 2 + slen
    topic = bytes(view[2:i])
    if len(topic) != slen or (protocol != MQTTProtocolVersion.MQTTv5 and slen == 0):
        raise MalformedPacket("PUBLISH topic")
    mid = 0
    if qos > 0:
        if len(view) < i + 2:
            raise MalformedPacket("PUBLISH too short")
        mid = int.from_bytes(view[i:i + 2], "big")
        i += 2
    properties = None
    if protocol == MQTTProtocolVersion.MQTTv5:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        length, size = VariableByteIntegers.decode(bytes(view[i:i + 4]))  # type: ignore[no-untyped-call]
        end = i + size + length
        if length <= _MAX_PUBLISH_PROPERTIES:
            properties.unpack(bytes(view[i:end]))  # type: ignore[no-untyped-call]
        i = end
    return _packet.PublishPacket(
        dup=bool(header & 0x08), qos=qos, retain=bool(header & 0x01), topic=topic, mid=mid,
        properties=properties, payload=bytes(view[i:]))


_paho_decode_publish = _packet.decode_publish  # kept for the test that compares them
_packet.decode_publish = _decode_publish  # paho's client calls it through the module


class _Farewell(Exception):
    """Ends a connection's task group once the shutdown drain is over."""


class _Client(aiomqtt.Client):
    """aiomqtt.Client that keeps what the CONNACK said and acknowledges by hand.

    aiomqtt 2.5 exposes neither the CONNACK properties nor manual
    acknowledgment, so this overrides its `_on_connect` callback and reaches
    the paho client; both are pinned (pyproject.toml) for that reason.
    """

    receive_maximum: int = 65535
    session_present: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client.manual_ack_set(True)

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        self.session_present = bool(flags.session_present)
        maximum = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        if isinstance(maximum, int) and maximum > 0:
            self.receive_maximum = maximum
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def ack(self, message: aiomqtt.Message) -> None:
        """Send the PUBACK of a QoS 1 message received."""
        self._client.ack(message.mid, message.qos)

    async def publish_while_connected(self, *args: Any, **kwargs: Any) -> None:
        """`publish`, but failing as soon as the connection drops (aiomqtt's own waits
        for its PUBACK until the timeout, even on a connection paho has given up)."""
        sending = asyncio.ensure_future(self.publish(*args, **kwargs))
        try:
            await asyncio.wait([sending, self._disconnected], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not sending.done():
                sending.cancel()  # its PUBACK will not come on a dropped connection
        if not sending.done() or sending.cancelled():
            raise aiomqtt.MqttError("the connection dropped before the PUBACK")
        await sending  # its outcome: None, or its MqttError


def reconnect_backoff(rng: random.Random | None = None) -> Backoff:
    """The link's reconnect back-off: `BACKOFF_MIN_S` doubling to `BACKOFF_CAP_S`, each
    delay half to all of itself; `longest()` (a configuration error) `BACKOFF_CONFIG_S`."""
    return Backoff(BACKOFF_MIN_S, BACKOFF_CAP_S, jitter=HALF_TO_FULL, rng=rng,
                   longest_s=BACKOFF_CONFIG_S)


class _AckRate:
    """Acknowledgments per second, smoothed, for the lower-class window."""

    def __init__(self) -> None:
        self.rate = 0.0
        self._count = 0
        self._since = time.monotonic()

    def add(self, n: int = 1) -> None:
        self._count += n
        now = time.monotonic()
        span = now - self._since
        if span >= 0.1:
            sample = self._count / span
            self.rate = sample if self.rate == 0 else 0.5 * self.rate + 0.5 * sample
            self._count = 0
            self._since = now

    def lower_window(self, window: int) -> int:
        return max(MIN_LOWER_WINDOW, min(window, int(self.rate * PRIORITY_BUDGET_S)))


@dataclass(slots=True)
class _Counters:
    published: int = 0
    results: int = 0
    telemetry_direct: int = 0
    telemetry_queued: int = 0
    commands: int = 0
    connects: int = 0
    attempts: int = 0  # connection attempts, successful or not
    commands_qos0: int = 0  # ignored: arrived at QoS 0
    commands_dropped: int = 0  # acknowledged unread: the queue was full
    command_queue_peak: int = 0  # most commands queued at once
    command_queue_peak_bytes: int = 0  # most payload bytes queued at once


class CenterLink:
    """The center link, a supervisor component named "center"."""

    name = "center"
    heartbeat_s: float | None = 6 * HOUSEKEEPING_S

    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Clock,
        *,
        handler: CommandHandler,
        status: Callable[[], dict[str, Any]],
        telemetry: Callable[[], dict[str, Any]] | None,
    ) -> None:
        if config.center is None:
            raise ValueError("CenterLink needs a [center] section")
        self.center: CenterSection = config.center
        self.building = config.gateway.building
        self._store = store
        self._clock = clock
        self._handler = handler
        self._status = status
        self._telemetry = telemetry
        prefix = self.center.prefix
        self.root = f"{prefix}/{self.building}"
        self.topic_status = f"{self.root}/status"
        self.topic_events = f"{self.root}/events"
        self.topic_telemetry = f"{self.root}/telemetry"
        self.topic_cmd = f"{self.root}/cmd"
        self.topic_broadcast = f"{prefix}/all/cmd"
        self.topic_result = f"{self.root}/cmd/result"
        self.boot_id = str(uuid.uuid4())
        self.started = clock.wall()
        self.max_bytes = int(self.center.outbox_max_mb * _MIB)
        self.counters = _Counters()
        self._state = LinkState.IDLE
        self._client: _Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._ack_event = asyncio.Event()
        self._status_due = asyncio.Event()
        self._drained = asyncio.Event()
        self._stop = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stopping = False
        self._running = False
        self._conn_task: asyncio.Task[None] | None = None
        # Bounded by admission in `_receive` (count and bytes), never by blocking it.
        self._commands: asyncio.Queue[tuple[_Client, aiomqtt.Message, bytes]] = asyncio.Queue()
        self._queued_bytes = 0
        self._drop_log = BoundedLog("center_command_dropped", burst=DROPS_LOGGED_PER_MIN)
        # While the disk fails these retry every few seconds: one line, then a
        # summary a minute, then the recovery.
        self._read_log = FailureLog(log, "outbox_read_failed", recovered="outbox_read_recovered")
        self._mark_log = FailureLog(log, "outbox_mark_failed", recovered="outbox_mark_recovered")
        self._queue_log = FailureLog(log, "telemetry_not_queued", recovered="telemetry_queued_again")
        self._housekeeping_log = FailureLog(log, "outbox_housekeeping_failed",
                                            recovered="outbox_housekeeping_recovered")
        self._acked: list[OutMessage] = []
        self._marking: set[tuple[int, str | int]] = set()
        self._last_status_pending = 0
        self._last_changes: Any = None   # what, changed, publishes the status at once
        self._last_status_at = 0.0
        self._offline_since = time.monotonic()
        self._connected_at = 0.0
        self._flaps = 0   # connections in a row that did not last STABLE_SESSION_S
        self._last_error = ""
        store.on_commit(self._on_commit)

    # --- public ------------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def connected(self) -> bool:
        """Whether the broker has accepted the connection and it has not dropped."""
        return self._state is LinkState.CONNECTED

    def wake(self) -> None:
        """Something new is in the outbox: look now rather than at the next poll."""
        self._wake.set()

    def will(self) -> bytes:
        """The offline status document: the will, and the last word of a clean stop."""
        return encode_will(self.building, self.boot_id)

    def view(self) -> dict[str, Any]:
        """The link's own state, for `gatewayd status` and logs."""
        return {
            "configured": True,
            "broker": self.center.broker,
            "client_id": self.center.client_id,
            "state": self._state.value,
            "connected": self.connected,
            "boot_id": self.boot_id,
            "offline_s": None if self.connected else round(time.monotonic() - self._offline_since, 1),
            "last_error": self._last_error or None,
            "published": self.counters.published,
            "commands": self.counters.commands,
            "commands_dropped": {"qos0": self.counters.commands_qos0,
                                 "queue_full": self.counters.commands_dropped},
            "command_queue_peak": self.counters.command_queue_peak,
            "command_queue_peak_bytes": self.counters.command_queue_peak_bytes,
            "connect_attempts": self.counters.attempts,
        }

    # --- component ---------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.center.insecure_unsigned_commands:
            log.warning("center_insecure_unsigned_commands",
                        detail="unsigned commands are accepted (center.insecure_unsigned_commands)")

    async def run(self, heartbeat: Heartbeat) -> None:
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._stopped.clear()
        try:
            async with asyncio.TaskGroup() as tg:
                helpers = [
                    tg.create_task(self._mark_loop(), name="center-marks"),
                    tg.create_task(self._command_loop(), name="center-commands"),
                    tg.create_task(self._telemetry_loop(), name="center-telemetry"),
                    tg.create_task(self._housekeeping_loop(heartbeat), name="center-housekeeping"),
                ]
                self._conn_task = tg.create_task(self._connection_loop(), name="center-connection")
                # A cancelled connection task (stop while offline) is a normal end:
                # asyncio.wait does not re-raise it here.
                await asyncio.wait([self._conn_task])
                for task in helpers:
                    task.cancel()
        finally:
            self._drop_log.flush(force=True)  # what was suppressed is said before the stop
            self._running = False
            self._client = None
            self._set_state(LinkState.STOPPED if self._stopping else LinkState.IDLE)
            self._stopped.set()

    async def shutdown(self) -> None:
        """Drain, say offline, disconnect: at most SHUTDOWN_BUDGET_S."""
        self._stopping = True
        self._stop.set()
        if not self._running:
            self._set_state(LinkState.STOPPED)
            return
        if self._state is not LinkState.CONNECTED and self._conn_task is not None:
            self._conn_task.cancel()  # nothing to drain to: stop connecting or waiting
        try:
            async with asyncio.timeout(SHUTDOWN_BUDGET_S):
                await self._stopped.wait()
        except TimeoutError:
            log.warning("center_shutdown_timed_out", budget_s=SHUTDOWN_BUDGET_S)
            if self._conn_task is not None:
                self._conn_task.cancel()

    # --- connection ----------------------------------------------------------------

    def _set_state(self, state: LinkState) -> None:
        if state is not self._state:
            log.debug("center_state", state=state.value, previous=self._state.value)
            if self._state is LinkState.CONNECTED:
                self._offline_since = time.monotonic()
            self._state = state

    async def _connection_loop(self) -> None:
        backoff = reconnect_backoff()
        failures = 0
        while not self._stopping:
            self._set_state(LinkState.CONNECTING)
            longest = False
            try:
                await self._session(failures)
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
            was_connected = self._state is LinkState.CONNECTED
            self._client = None
            if self._stopping:
                return
            self._last_error = f"{type(error).__name__}: {error}"
            stable = was_connected and time.monotonic() - self._connected_at >= STABLE_SESSION_S
            if stable:
                failures = self._flaps = 0
                backoff.reset()
            else:
                failures += 1
            if was_connected:
                self._flaps += 0 if stable else 1
                (log.warning if self._flaps <= 1 else log.debug)(
                    "center_disconnected", error=self._last_error, flaps=self._flaps)
            delay = backoff.longest() if longest else backoff.next_delay()
            if failures == 1:
                log.warning("center_unreachable", broker=self.center.broker, error=self._last_error,
                            retry_s=round(delay, 1), config_error=longest)
            elif failures > 1:
                log.debug("center_unreachable", broker=self.center.broker, error=self._last_error,
                          retry_s=round(delay, 1), attempt=failures)
            self._set_state(LinkState.BACKING_OFF)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()

    async def _session(self, failures: int) -> None:
        client = await self._make_client()
        self.counters.attempts += 1
        async with client:
            self._client = client
            self._set_state(LinkState.CONNECTED)
            self.counters.connects += 1
            self._connected_at = time.monotonic()
            offline_s = round(time.monotonic() - self._offline_since, 1)
            (log.info if self._flaps == 0 else log.debug)(
                "center_connected", broker=self.center.broker, session_present=client.session_present,
                receive_maximum=client.receive_maximum, failed_attempts=failures, offline_s=offline_s)
            if not client.session_present and self.counters.connects > 1:
                # The broker forgot the session (restarted without persistence, or
                # it expired): commands sent meanwhile were not kept for us.
                log.warning("center_session_lost", broker=self.center.broker)
            # MQTT 5: at most Receive Maximum unacknowledged QoS 1 messages; one
            # status and one direct result may be in flight beside the window.
            window = max(1, min(MAX_WINDOW, client.receive_maximum - _RESERVED_INFLIGHT))
            try:
                async with asyncio.TaskGroup() as tg:
                    # First, so that a connection paho gives up (a broker gone silent:
                    # keep-alive) ends the session at once, even while the subscription
                    # or the first status waits for an answer that will not come
                    # (aiomqtt would wait for their timeouts).
                    tg.create_task(self._receive(client), name="center-receive")
                    codes = await client.subscribe([(self.topic_cmd, 1), (self.topic_broadcast, 1)],
                                                   timeout=SUBSCRIBE_TIMEOUT_S)
                    refused = [c for c in codes if (c.value if isinstance(c, ReasonCode) else c) >= 0x80]
                    if refused:
                        raise LinkConfigError(
                            f"the broker refused the command subscriptions ({refused[0]})")
                    await self._publish_status(client)
                    pump = tg.create_task(self._pump(client, window, tg), name="center-pump")
                    status = tg.create_task(self._status_loop(client), name="center-status")
                    tg.create_task(self._farewell(client, (pump, status)), name="center-farewell")
            except* _Farewell:
                pass
            client.timeout = FAREWELL_TIMEOUT_S  # bounds the DISCONNECT in __aexit__
        self._client = None

    async def _make_client(self) -> _Client:
        c = self.center
        password, tls = await asyncio.to_thread(self._read_secrets)
        if c.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = c.session_expiry_s
            props.ReceiveMaximum = RECEIVE_MAXIMUM
            kwargs: dict[str, Any] = {"protocol": aiomqtt.ProtocolVersion.V5, "clean_start": False,
                                      "properties": props}
        else:
            kwargs = {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": False}
        client = _Client(
            c.host, c.port,
            identifier=c.client_id,
            username=c.username,
            password=password,
            will=aiomqtt.Will(self.topic_status, self.will(), qos=1, retain=True),
            keepalive=KEEPALIVE_S,
            timeout=CONNECT_TIMEOUT_S,
            tls_context=tls,
            max_inflight_messages=MAX_WINDOW + _INFLIGHT_HEADROOM,
            # paho leaves Nagle on: a result or PUBACK would wait for the peer's
            # delayed ACK (~40 ms) behind the previous small packet.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            **kwargs,
        )
        # aiomqtt warns past this many pending calls; a full window is normal here.
        client.pending_calls_threshold = MAX_WINDOW + 2 * _INFLIGHT_HEADROOM
        return client

    def _read_secrets(self) -> tuple[str | None, ssl.SSLContext | None]:
        """Read the password file and build the TLS context (blocking: in a thread)."""
        c = self.center
        password = None
        if c.password_file is not None:
            try:
                password = c.password_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise LinkConfigError(f"cannot read center.password_file {c.password_file}: {e}") from e
            password = password.removesuffix("\n").removesuffix("\r")
        if c.scheme != "mqtts":
            return password, None
        try:
            tls = ssl.create_default_context(cafile=_path(c.ca_file))
            if c.cert_file is not None:
                tls.load_cert_chain(str(c.cert_file), _path(c.key_file))
        except (OSError, ssl.SSLError) as e:
            raise LinkConfigError(f"cannot set up TLS (ca_file, cert_file, key_file): {e}") from e
        return password, tls

    async def _receive(self, client: _Client) -> None:
        """Queue commands for the command loop, within the bounds; raises MqttError
        when the connection drops. Never waits: a full queue drops, it does not
        push back into aiomqtt's own (unbounded) queue."""
        async for message in client.messages:
            topic = message.topic.value
            if message.qos == 0:
                # center-link.md: ignored without a result. Nothing is parsed.
                self.counters.commands_qos0 += 1
                self._drop_log.note(reason="qos0", topic=topic, bytes=_payload_len(message.payload))
                continue
            payload = _payload_bytes(message.payload)
            size = len(payload)
            fits = self._commands.qsize() < COMMAND_QUEUE_MAX and (
                size <= SMALL_COMMAND_BYTES or self._queued_bytes + size <= COMMAND_QUEUE_BYTES)
            if not fits:
                # Acknowledged, or its slot of the Receive Maximum would stay taken
                # and the broker would stop sending us anything.
                self.counters.commands_dropped += 1
                self._drop_log.note(reason="queue_full", topic=topic, bytes=size,
                                    queued=self._commands.qsize(), queued_bytes=self._queued_bytes)
                client.ack(message)
                continue
            self._queued_bytes += size
            self._commands.put_nowait((client, message, payload))
            c = self.counters
            c.command_queue_peak = max(c.command_queue_peak, self._commands.qsize())
            c.command_queue_peak_bytes = max(c.command_queue_peak_bytes, self._queued_bytes)

    async def _farewell(self, client: _Client, stop_first: tuple[asyncio.Task[None], ...]) -> None:
        await self._stop.wait()
        self._set_state(LinkState.STOPPING)
        try:
            async with asyncio.timeout(SHUTDOWN_DRAIN_S):
                while True:
                    self._drained.clear()
                    self.wake()
                    await self._drained.wait()
                    left = await self._store.read(outbox.pending)
                    if left.messages == 0 and left.counts[Priority.TELEMETRY] == 0:
                        break
        except TimeoutError:
            log.warning("center_shutdown_undrained", detail="what is left stays for the next start")
        except StoreError as e:
            log.warning("center_shutdown_undrained", error=str(e))
        for task in stop_first:
            task.cancel()
        with contextlib.suppress(StoreError):  # unmarked ones are sent again next time
            await self._flush_marks()
        try:
            await client.publish(self.topic_status, self.will(), qos=1, retain=True,
                                 timeout=FAREWELL_TIMEOUT_S)
        except aiomqtt.MqttError as e:
            log.warning("center_offline_status_failed", error=str(e))
        log.info("center_stopped", published=self.counters.published, not_marked=len(self._acked))
        raise _Farewell

    # --- commands ------------------------------------------------------------------

    async def _command_loop(self) -> None:
        """Apply commands one at a time, in arrival order, whatever the connection does."""
        while True:
            client, message, payload = await self._commands.get()
            self._queued_bytes -= len(payload)
            if client is not self._client or self._stopping:
                # From a connection that is gone (the broker delivers it again,
                # unacknowledged) or arriving while stopping (likewise, next start).
                continue
            topic = message.topic.value
            kind: TopicKind
            if topic == self.topic_cmd:
                kind = "building"
            elif topic == self.topic_broadcast:
                kind = "broadcast"
            else:
                log.warning("center_unexpected_topic", topic=topic)
                client.ack(message)
                continue
            self.counters.commands += 1
            try:
                result = await self._handler.handle(payload, kind)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("command_handler_failed", topic=topic, bytes=len(payload))
                result = _internal_result(payload)
            if result is None:
                self.wake()  # stored for the outbox
            elif client is self._client:
                try:
                    await client.publish_while_connected(self.topic_result, result, qos=1,
                                                         timeout=PUBACK_TIMEOUT_S)
                    self.counters.results += 1
                except aiomqtt.MqttError as e:
                    # Unacknowledged, the command comes again on the next connection.
                    log.info("center_result_unsent", error=str(e))
                    continue
            if client is self._client:
                client.ack(message)

    # --- delivery ------------------------------------------------------------------

    async def _pump(self, client: _Client, window: int, tg: asyncio.TaskGroup) -> None:
        """Publish the outbox: a fetcher reads ahead into `buffer` (class order),
        the sender keeps up to `window` messages in flight from its front."""
        inflight: dict[tuple[int, str | int], OutMessage] = {}
        buffer: list[OutMessage] = []
        changed = asyncio.Event()  # the buffer grew or a message was acknowledged
        low = asyncio.Event()  # the buffer is under half full
        low.set()
        rate = _AckRate()
        lower = 0  # class 2 and 3 messages in flight

        async def publish(msg: OutMessage) -> None:
            nonlocal lower
            if msg.klass is Priority.TELEMETRY:
                await client.publish(self.topic_telemetry, msg.payload, qos=0, timeout=PUBACK_TIMEOUT_S)
            else:
                topic = self.topic_result if msg.klass is Priority.RESULT else self.topic_events
                await client.publish(topic, msg.payload, qos=1, timeout=PUBACK_TIMEOUT_S)
            del inflight[msg.ident]
            if msg.klass >= Priority.EVENT:
                lower -= 1
            self._marking.add(msg.ident)
            self._acked.append(msg)
            self.counters.published += 1
            rate.add()
            self._ack_event.set()
            changed.set()

        async def fetch() -> None:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_POLL_S):
                        await _first(self._wake, low)
                self._wake.clear()
                low.clear()
                want = max(PAGE - len(buffer), PAGE // 4)  # woken with a full buffer: look for higher classes
                exclude = [*inflight, *self._marking, *(m.ident for m in buffer)]
                try:
                    page = await self._store.read(partial(outbox.next_page, limit=want, exclude=exclude))
                except StoreError as e:
                    self._read_log.failed(error=str(e))
                    await asyncio.sleep(STORE_RETRY_S)
                    self.wake()
                    continue
                self._read_log.ok()
                if not page:
                    if not buffer and not inflight and not self._acked:
                        self._drained.set()
                    continue
                merged = buffer + page
                merged.sort(key=lambda m: m.klass)  # stable: each class stays oldest first
                del merged[PAGE:]  # the newest of the lowest class; read again later
                buffer[:] = merged
                changed.set()
                if len(page) == want and len(buffer) < PAGE // 2:
                    low.set()

        tg.create_task(fetch(), name="center-fetch")
        while True:
            changed.clear()
            if not buffer or len(inflight) >= window or (
                    buffer[0].klass >= Priority.EVENT and lower >= rate.lower_window(window)):
                await changed.wait()
                continue
            msg = buffer.pop(0)
            inflight[msg.ident] = msg
            if msg.klass >= Priority.EVENT:
                lower += 1
            tg.create_task(publish(msg), name="center-publish")
            if len(buffer) < PAGE // 2:
                low.set()

    async def _mark_loop(self) -> None:
        while True:
            await self._ack_event.wait()
            if len(self._acked) < MARK_BATCH:
                await asyncio.sleep(MARK_DELAY_S)
            self._ack_event.clear()
            try:
                await self._flush_marks()
            except StoreError as e:
                self._mark_log.failed(error=str(e), waiting=len(self._acked))
                await asyncio.sleep(STORE_RETRY_S)
                self._ack_event.set()
            else:
                self._mark_log.ok()

    async def _flush_marks(self) -> None:
        while self._acked:
            batch, self._acked = self._acked[:MARK_BATCH], self._acked[MARK_BATCH:]
            try:
                left = await self._store.run(partial(outbox.mark_published, messages=batch,
                                                     now=self._clock.wall()))
            except StoreError:
                self._acked[:0] = batch  # still acknowledged: mark them on the next try
                raise
            for msg in batch:
                self._marking.discard(msg.ident)
            if left.messages == 0 and self._last_status_pending > 0:
                self._status_due.set()  # tell the center the backlog is through
            if not self._acked:
                if left.total_bytes == 0:
                    self._drained.set()
                else:
                    self.wake()

    # --- status and telemetry -----------------------------------------------------

    async def _status_loop(self, client: _Client) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATUS_POLL_S):
                    await self._status_due.wait()
            due = (self._status_due.is_set() or _changes(self._fields()) != self._last_changes
                   or time.monotonic() - self._last_status_at >= self.center.telemetry_interval_s)
            if due:
                await self._publish_status(client)

    def _fields(self) -> dict[str, Any]:
        try:
            return dict(self._status())
        except Exception:
            log.exception("center_status_fields_failed")
            return {}

    async def _publish_status(self, client: _Client) -> None:
        self._status_due.clear()
        try:
            pending, last_seq = await self._store.read(_pending_and_last_seq)
            messages = pending.messages
        except StoreError as e:  # say online anyway, with the last figures known
            log.warning("center_status_read_failed", error=str(e))
            messages, last_seq = self._last_status_pending, self._store.next_seq - 1
        fields = self._fields()
        self._last_changes = _changes(fields)
        document = _json.encode(self._status_document(fields, messages, last_seq))
        self._last_status_at = time.monotonic()
        await client.publish(self.topic_status, document, qos=1, retain=True, timeout=PUBACK_TIMEOUT_S)
        self._last_status_pending = messages

    async def status_now(self) -> dict[str, Any]:
        """The status document as it would be published now (`state.get` without args)."""
        pending, last_seq = await self._store.read(_pending_and_last_seq)
        return self._status_document(self._fields(), pending.messages, last_seq)

    def _status_document(self, fields: dict[str, Any], pending: int,
                         last_seq: int) -> dict[str, Any]:
        faults = fields.get("faults") or {}
        status = Status(
            building=self.building,
            boot_id=self.boot_id,
            store_id=self._store.store_id,
            version=__version__,
            started=self._clock.stamp(self.started),
            clock_synced=bool(fields.get("clock_synced", False)),
            cards_version=int(fields.get("cards_version") or 0),
            last_seq=last_seq,
            pending=pending,
            accounts_unknown=int(fields.get("accounts_unknown", 0)),
            rooms=int(fields.get("rooms", 0)),
            points=int(fields.get("points", 0)),
            readers=int(fields.get("readers", 0)),
            faults=Faults(meters=int(faults.get("meters", 0)), readers=int(faults.get("readers", 0)),
                          valves=int(faults.get("valves", 0))),
        )
        document: dict[str, Any] = {"online": True, **msgspec.to_builtins(status)}
        # Fields a newer status() adds go out too: consumers ignore what they do not know.
        for key, value in fields.items():
            document.setdefault(key, value)
        return document

    async def _telemetry_loop(self) -> None:
        if self._telemetry is None:
            return
        interval = self.center.telemetry_interval_s
        next_at = time.monotonic() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            if next_at < time.monotonic():  # the loop was held up: do not burst to catch up
                next_at = time.monotonic() + interval
            try:
                fields = self._telemetry()
            except Exception:
                log.exception("center_telemetry_fields_failed")
                continue
            wall = self._clock.wall()
            payload = _json.encode({"ts": self._clock.stamp(wall), "building": self.building, **fields})
            await self._send_telemetry(payload, wall)

    async def _send_telemetry(self, payload: bytes, wall: float) -> None:
        client = self._client
        if client is not None and self.connected:
            try:
                queued = (await self._store.read(outbox.pending)).counts[Priority.TELEMETRY]
            except StoreError:
                queued = 0  # the store is failing: send it rather than lose it
            if queued == 0:  # nothing older waits: keep the class in order
                try:
                    await client.publish(self.topic_telemetry, payload, qos=0, timeout=PUBACK_TIMEOUT_S)
                    self.counters.telemetry_direct += 1
                    return
                except aiomqtt.MqttError:
                    pass  # queue it instead
        ts = self._clock.stamp(wall)

        def job(txn: Txn) -> outbox.CapOutcome:
            outbox.queue_telemetry(txn, payload, wall=wall)
            return outbox.enforce_cap(txn, self.max_bytes, ts=ts, wall=wall)

        try:
            self._report_cap(await self._store.run(job))
        except StoreError as e:
            self._queue_log.failed(error=str(e))
            return
        self._queue_log.ok()
        self.counters.telemetry_queued += 1
        self.wake()

    async def _housekeeping_loop(self, heartbeat: Heartbeat) -> None:
        next_retention = 0.0
        while True:
            wall = self._clock.wall()
            ts = self._clock.stamp(wall)
            try:
                outcome = await self._store.run(partial(outbox.enforce_cap, max_bytes=self.max_bytes,
                                                        ts=ts, wall=wall))
                self._report_cap(outcome)
                if time.monotonic() >= next_retention:
                    await self._prune(wall)
                    next_retention = time.monotonic() + RETENTION_INTERVAL_S
            except StoreError as e:
                self._housekeeping_log.failed(error=str(e))
            else:
                self._housekeeping_log.ok()
            self._drop_log.flush()
            heartbeat.beat()
            await asyncio.sleep(HOUSEKEEPING_S)

    async def _prune(self, wall: float) -> None:
        total = 0
        while True:
            n = await self._store.run(partial(outbox.prune, now=wall,
                                              keep_events_days=self.center.keep_events_days))
            total += n
            if n == 0:
                break
        if total:
            log.info("outbox_pruned", rows=total, keep_events_days=self.center.keep_events_days)

    def _report_cap(self, outcome: outbox.CapOutcome) -> None:
        if outcome.dropped_telemetry or outcome.dropped_events:
            log.warning("outbox_dropped", telemetry=outcome.dropped_telemetry, events=outcome.dropped_events,
                        outbox_mib=round(outcome.total_bytes / _MIB, 1),
                        cap_mib=self.center.outbox_max_mb)
        if outcome.over_cap:
            log.error("outbox_over_cap_money_only", outbox_mib=round(outcome.total_bytes / _MIB, 1),
                      cap_mib=self.center.outbox_max_mb)
        if outcome.alarm is not None:
            self._status_due.set()

    # --- store listener (writer thread) --------------------------------------------

    def _on_commit(self, events: list[Event]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed in between
            loop.call_soon_threadsafe(self._wake.set)


# --- helpers ------------------------------------------------------------------------


def _changes(fields: dict[str, Any]) -> tuple[Any, ...]:
    """The status fields whose change is published at once: the contract's fault
    counts, and what the center acts on (the cards version it loaded, whether
    command ages are checked)."""
    return (fields.get("faults"), fields.get("cards_version"), fields.get("clock_synced"))


def _pending_and_last_seq(txn: Txn) -> tuple[Pending, int]:
    return outbox.pending(txn), txn.last_seq()


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of `events` is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def _path(p: Path | None) -> str | None:
    return None if p is None else str(p)


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    return b"" if payload is None else str(payload).encode()


def _payload_len(payload: Any) -> int:
    return len(payload) if isinstance(payload, bytes | bytearray | str) else 0


def _internal_result(payload: bytes) -> bytes:
    """The `internal` result of a command whose handler failed, under its id if readable."""
    command_id = None
    with contextlib.suppress(Exception):
        if len(payload) > SMALL_COMMAND_BYTES:  # not parsed on the loop: answered under id null
            raise ValueError
        obj = msgspec.json.decode(payload)
        if isinstance(obj, dict) and isinstance(obj.get("id"), str) and 1 <= len(obj["id"]) <= 64:
            command_id = obj["id"]
    return encode_result_error(command_id, ErrorCode.INTERNAL, "the gateway failed to apply the command")
