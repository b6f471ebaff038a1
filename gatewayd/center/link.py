"""The center link: the gateway's MQTT link to the campus center (center-link.md).

Contract:
- `CenterLink` is a supervisor component named "center" and the facade the
  daemon and the tools use: `start`/`run`/`shutdown`, `wake` (something new
  is in the outbox), `connected`/`state`, `view` (for `gatewayd status` and
  the metrics), `status_now` (for `state.get`), `will`.
- One MQTT session at a time (`session.py`), tried, backed off and tracked by
  the reconnect policy (`reconnect.py`). On each session: the command
  receiver (`command_queue.py`), the status (`status.py`) and the delivery
  pump (`pump.py`). For the link's whole life: the command loop, the marking
  of acknowledged messages, telemetry (`telemetry.py`) and housekeeping
  (`retention.py`), each task named.
- `shutdown()` drains the outbox while `SHUTDOWN_DRAIN_S` allows, publishes
  the offline status (the will's document) retained, and disconnects, all
  within `SHUTDOWN_BUDGET_S`. What was not published stays for next time.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiomqtt
import structlog

from gatewayd.center.command_queue import DROPS_LOGGED_PER_MIN, CommandHandler, CommandQueue
from gatewayd.center.pump import DeliveryPump
from gatewayd.center.reconnect import LinkState, ReconnectLogic
from gatewayd.center.retention import HOUSEKEEPING_S, Retention
from gatewayd.center.screen import BoundedLog
from gatewayd.center.session import (
    FAREWELL_TIMEOUT_S,
    LinkClient,
    delivery_window,
    make_client,
    subscribe_commands,
)
from gatewayd.center.status import StatusReporter
from gatewayd.center.telemetry import Readings, TelemetrySender
from gatewayd.center.topics import Topics
from gatewayd.config.model import CenterSection, Config
from gatewayd.contract.wire import encode_will
from gatewayd.errors import StoreError
from gatewayd.services.clock import Clock
from gatewayd.services.component import Heartbeat
from gatewayd.store.db import Store
from gatewayd.store.txn import Event

__all__ = ["CenterLink", "LinkCounters"]

log = structlog.get_logger(__name__)

#: The supervisor gives the whole stop ~8 s and other components go first:
#: the link takes at most this much, draining for at most SHUTDOWN_DRAIN_S.
SHUTDOWN_BUDGET_S: Final = 3.0
SHUTDOWN_DRAIN_S: Final = 2.0


class _Farewell(Exception):
    """Ends a connection's task group once the shutdown drain is over."""


@dataclass(frozen=True, slots=True)
class LinkCounters:
    """What the link has done since it was made."""

    published: int
    results: int
    telemetry_direct: int
    telemetry_queued: int
    commands: int
    connects: int
    attempts: int  # connection attempts, successful or not
    commands_qos0: int  # ignored: arrived at QoS 0
    commands_dropped: int  # acknowledged unread: the queue was full
    command_queue_peak: int  # most commands queued at once
    command_queue_peak_bytes: int  # most payload bytes queued at once


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
        status: Callable[[], Mapping[str, Any]],
        telemetry: Callable[[], Readings] | None,
    ) -> None:
        if config.center is None:
            raise ValueError("CenterLink needs a [center] section")
        self.center: CenterSection = config.center
        self.building = config.gateway.building
        self.topics = Topics.of(self.center.prefix, self.building)
        self.boot_id = str(uuid.uuid4())
        self._client: LinkClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False
        self._conn_task: asyncio.Task[None] | None = None
        self._reconnect = ReconnectLogic(self.center.broker)
        self._status = StatusReporter(store, clock, building=self.building, boot_id=self.boot_id,
                                      topic=self.topics.status,
                                      interval_s=self.center.telemetry_interval_s, fields=status)
        self._pump = DeliveryPump(store, clock, self.topics, on_empty=self._status.backlog_through)
        self._retention = Retention(store, clock, self.center, on_alarm=self._status.due)
        self._drop_log = BoundedLog("center_command_dropped", burst=DROPS_LOGGED_PER_MIN)
        self._commands = CommandQueue(handler, self.topics, self._drop_log, current=lambda: self._client,
                                      stopping=self._stop.is_set, stored=self.wake)
        self._telemetry = None if telemetry is None else TelemetrySender(
            store, clock, self._retention, building=self.building, topic=self.topics.telemetry,
            interval_s=self.center.telemetry_interval_s, readings=telemetry,
            online=lambda: self._client if self.connected else None, queued=self.wake)
        store.on_commit(self._on_commit)

    # --- public ------------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        return self._reconnect.state

    @property
    def connected(self) -> bool:
        """Whether the broker has accepted the connection and it has not dropped."""
        return self._reconnect.state is LinkState.CONNECTED

    @property
    def counters(self) -> LinkCounters:
        c, t = self._commands, self._telemetry
        return LinkCounters(
            published=self._pump.published, results=c.results,
            telemetry_direct=0 if t is None else t.direct, telemetry_queued=0 if t is None else t.queued,
            commands=c.commands, connects=self._reconnect.connects, attempts=self._reconnect.attempts,
            commands_qos0=c.ignored_qos0, commands_dropped=c.dropped,
            command_queue_peak=c.peak, command_queue_peak_bytes=c.peak_bytes)

    def wake(self) -> None:
        """Something new is in the outbox: look now rather than at the next poll."""
        self._pump.wake()

    def will(self) -> bytes:
        """The offline status document: the will, and the last word of a clean stop."""
        return encode_will(self.building, self.boot_id)

    async def status_now(self) -> dict[str, Any]:
        """The status document as it would be published now (`state.get` without args)."""
        return await self._status.now()

    def view(self) -> dict[str, Any]:
        """The link's own state, for `gatewayd status` and logs."""
        c = self.counters
        return {
            "configured": True,
            "broker": self.center.broker,
            "client_id": self.center.client_id,
            "state": self.state.value,
            "connected": self.connected,
            "boot_id": self.boot_id,
            "offline_s": None if self.connected else self._reconnect.offline_s(),
            "last_error": self._reconnect.last_error or None,
            "published": c.published,
            "commands": c.commands,
            "commands_dropped": {"qos0": c.commands_qos0, "queue_full": c.commands_dropped},
            "command_queue_peak": c.command_queue_peak,
            "command_queue_peak_bytes": c.command_queue_peak_bytes,
            "connect_attempts": c.attempts,
        }

    # --- component ---------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.center.insecure_unsigned_commands:
            log.warning("center_insecure_unsigned_commands",
                        detail="center.insecure_unsigned_commands = true: unsigned commands are "
                        "accepted. Lab use only: anyone who can publish on the broker can move "
                        "money and cut power.")

    async def run(self, heartbeat: Heartbeat) -> None:
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._stopped.clear()
        try:
            async with asyncio.TaskGroup() as tg:
                helpers = [
                    tg.create_task(self._pump.mark_loop(), name="center-marks"),
                    tg.create_task(self._commands.run(), name="center-commands"),
                ]
                if self._telemetry is not None:
                    helpers.append(tg.create_task(self._telemetry.run(), name="center-telemetry"))

                def tick() -> None:
                    self._drop_log.flush()
                    heartbeat.beat()

                helpers.append(tg.create_task(self._retention.run(tick), name="center-housekeeping"))
                self._conn_task = tg.create_task(self._reconnect.run(self._session, self._stop),
                                                 name="center-connection")
                # A cancelled connection task (stop while offline) is a normal end:
                # asyncio.wait does not re-raise it here.
                await asyncio.wait([self._conn_task])
                for task in helpers:
                    task.cancel()
        finally:
            self._drop_log.flush(force=True)  # what was suppressed is said before the stop
            self._running = False
            self._client = None
            self._reconnect.set_state(LinkState.STOPPED if self._stop.is_set() else LinkState.IDLE)
            self._stopped.set()

    async def shutdown(self) -> None:
        """Drain, say offline, disconnect: at most SHUTDOWN_BUDGET_S."""
        self._stop.set()
        if not self._running:
            self._reconnect.set_state(LinkState.STOPPED)
            return
        if not self.connected and self._conn_task is not None:
            self._conn_task.cancel()  # nothing to drain to: stop connecting or waiting
        try:
            async with asyncio.timeout(SHUTDOWN_BUDGET_S):
                await self._stopped.wait()
        except TimeoutError:
            log.warning("center_shutdown_timed_out", budget_s=SHUTDOWN_BUDGET_S)
            if self._conn_task is not None:
                self._conn_task.cancel()

    # --- one session -------------------------------------------------------------

    async def _session(self) -> None:
        """Connect, subscribe, say online, deliver and take commands until the farewell."""
        client = await make_client(self.center, self.topics.status, self.will())
        self._reconnect.attempting()
        try:
            async with client:
                self._client = client
                self._reconnect.on_connected(session_present=client.session_present,
                                             receive_maximum=client.receive_maximum)
                if not client.session_present and self._reconnect.connects > 1:
                    # The broker forgot the session (restarted without persistence, or
                    # it expired): commands sent meanwhile were not kept for us.
                    log.warning("center_session_lost", broker=self.center.broker)
                try:
                    async with asyncio.TaskGroup() as tg:
                        # First, so that a connection paho gives up (a broker gone silent:
                        # keep-alive) ends the session at once, even while the subscription
                        # or the first status waits for an answer that will not come
                        # (aiomqtt would wait for their timeouts).
                        tg.create_task(self._commands.receive(client), name="center-receive")
                        await subscribe_commands(client, self.topics)
                        await self._status.publish(client)
                        pump = tg.create_task(self._pump.run(client, delivery_window(client), tg),
                                              name="center-pump")
                        status = tg.create_task(self._status.run(client), name="center-status")
                        tg.create_task(self._farewell(client, (pump, status)), name="center-farewell")
                except* _Farewell:
                    pass
                client.timeout = FAREWELL_TIMEOUT_S  # bounds the DISCONNECT in __aexit__
        finally:
            self._client = None

    async def _farewell(self, client: LinkClient, stop_first: tuple[asyncio.Task[None], ...]) -> None:
        await self._stop.wait()
        self._reconnect.set_state(LinkState.STOPPING)
        try:
            async with asyncio.timeout(SHUTDOWN_DRAIN_S):
                await self._pump.drain()
        except TimeoutError:
            log.warning("center_shutdown_undrained", detail="what is left stays for the next start")
        except StoreError as e:
            log.warning("center_shutdown_undrained", error=str(e))
        for task in stop_first:
            task.cancel()
        with contextlib.suppress(StoreError):  # unmarked ones are sent again next time
            await self._pump.flush_marks()
        try:
            await client.publish(self.topics.status, self.will(), qos=1, retain=True,
                                 timeout=FAREWELL_TIMEOUT_S)
        except aiomqtt.MqttError as e:
            log.warning("center_offline_status_failed", error=str(e))
        log.info("center_stopped", published=self._pump.published, not_marked=self._pump.not_marked)
        raise _Farewell

    # --- store listener (writer thread) ------------------------------------------

    def _on_commit(self, events: list[Event]) -> None:
        """The store's listener (writer thread): new rows, look at the outbox."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed in between
            loop.call_soon_threadsafe(self._pump.wake)
