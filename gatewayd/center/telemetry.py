"""Telemetry on the center link (center-link.md "Telemetry").

Contract:
- Every `telemetry_interval_s` the `readings` callable gives the rooms'
  and points' readings (`RoomReading`, `PointReading`, under "rooms" and
  "points"); the document is the contract's `Telemetry`, encoded by
  `encode_telemetry`, QoS 0. A loop held up does not burst to catch up.
- It is published at once when the link is connected and no older
  telemetry is queued; else it is queued in the store under the outbox cap
  and the delivery pump sends it after the events, in order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiomqtt
import structlog

from drivers.retry import FailureLog
from gatewayd.center.retention import Retention
from gatewayd.center.session import PUBACK_TIMEOUT_S, LinkClient
from gatewayd.contract.enums import Priority
from gatewayd.contract.wire import Telemetry, encode_telemetry
from gatewayd.errors import StoreError
from gatewayd.services.clock import Clock
from gatewayd.store import outbox, retention
from gatewayd.store.db import Store
from gatewayd.store.txn import Txn

__all__ = ["Readings", "TelemetrySender"]

log = structlog.get_logger(__name__)

#: What the readings callable returns: "rooms" (`RoomReading`s) and "points" (`PointReading`s).
Readings = Mapping[str, Sequence[Any]]


class TelemetrySender:
    """Sends the periodic telemetry, or queues it while the center is away."""

    def __init__(self, store: Store, clock: Clock, retention: Retention, *, building: str,
                 topic: str, interval_s: float, readings: Callable[[], Readings],
                 online: Callable[[], LinkClient | None], queued: Callable[[], None]) -> None:
        self._store = store
        self._clock = clock
        self._retention = retention
        self._building = building
        self._topic = topic
        self._interval_s = interval_s
        self._readings = readings
        self._online = online  # the client while the link is connected, else None
        self._queued = queued  # telemetry went to the outbox
        self.direct = 0
        self.queued = 0
        self._queue_log = FailureLog(log, "telemetry_not_queued", recovered="telemetry_queued_again")

    async def run(self) -> None:
        interval = self._interval_s
        next_at = time.monotonic() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            if next_at < time.monotonic():  # the loop was held up: do not burst to catch up
                next_at = time.monotonic() + interval
            try:
                readings = self._readings()
                wall = self._clock.wall()
                payload = encode_telemetry(Telemetry(
                    ts=self._clock.stamp(wall), building=self._building,
                    rooms=tuple(readings["rooms"]), points=tuple(readings["points"])))
            except Exception:
                log.exception("center_telemetry_fields_failed")
                continue
            await self._send(payload, wall)

    async def _send(self, payload: bytes, wall: float) -> None:
        client = self._online()
        if client is not None:
            try:
                queued = (await self._store.read(outbox.pending)).counts[Priority.TELEMETRY]
            except StoreError:
                queued = 0  # the store is failing: send it rather than lose it
            if queued == 0:  # nothing older waits: keep the class in order
                try:
                    await client.publish(self._topic, payload, qos=0, timeout=PUBACK_TIMEOUT_S)
                    self.direct += 1
                    return
                except aiomqtt.MqttError:
                    pass  # queue it instead
        ts = self._clock.stamp(wall)
        max_bytes = self._retention.max_bytes

        def job(txn: Txn) -> retention.CapOutcome:
            outbox.queue_telemetry(txn, payload, wall=wall)
            return retention.enforce_cap(txn, max_bytes, ts=ts, wall=wall)

        try:
            self._retention.report_cap(await self._store.run(job))
        except StoreError as e:
            self._queue_log.failed(error=str(e))
            return
        self._queue_log.ok()
        self.queued += 1
        self._queued()
