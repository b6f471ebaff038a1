"""Commands from the center, from the broker to the command handler, one at a time.

Contract (center-link.md "Commands"):
- Commands arriving at QoS 0 are ignored without a result, before any
  parsing, and counted. The others are queued within `COMMAND_QUEUE_MAX`
  messages and `COMMAND_QUEUE_BYTES` (a small command always fits while the
  count allows): one that does not fit is acknowledged unread, counted and
  logged within a budget, and gets no result. Admission never waits: a full
  queue drops, it does not push back into aiomqtt's own (unbounded) queue.
- Commands on `{root}/cmd` and `{prefix}/all/cmd` (QoS 1) go one at a time,
  in arrival order, to the `CommandHandler`. They are acknowledged to the
  broker only after the handler returned (and its immediate result, if any,
  was acknowledged): a command the gateway did not finish is delivered again
  after a crash or reconnect, and the handler's duplicate check answers it.
  A handler that raises is logged and the command answered `internal`; it
  never stops the link.
- A command from a session that is gone, or arriving while the link stops,
  is left unacknowledged: the broker delivers it again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Final, Protocol

import aiomqtt
import msgspec
import structlog

from gatewayd.center.screen import BoundedLog
from gatewayd.center.session import PUBACK_TIMEOUT_S, LinkClient
from gatewayd.center.topics import TopicKind, Topics
from gatewayd.contract.command_types import MAX_COMMAND_BYTES
from gatewayd.contract.enums import ErrorCode
from gatewayd.contract.wire import encode_result_error

__all__ = ["CommandHandler", "CommandQueue"]

log = structlog.get_logger(__name__)

#: Commands waiting for the command loop, at most (3.1.1 has no Receive Maximum).
COMMAND_QUEUE_MAX: Final = 16
#: ...and their payload bytes at most: two of the largest commands. A command of
#: `SMALL_COMMAND_BYTES` or less is admitted whenever the count allows, so a
#: flood of big payloads never keeps out a credit or a cut.
COMMAND_QUEUE_BYTES: Final = 2 * MAX_COMMAND_BYTES
SMALL_COMMAND_BYTES: Final = 64 * 1024
#: Dropped or ignored commands logged one by one a minute; the rest summarised.
DROPS_LOGGED_PER_MIN: Final = 5


class CommandHandler(Protocol):
    """Applies the center's commands (the lead's command service)."""

    async def handle(self, payload: bytes, topic_kind: TopicKind) -> bytes | None:
        """Apply one command payload.

        Return a result to publish at once (not stored: a result with id
        null, or a duplicate's answer), or None when the result was stored in
        `commands` with `published` NULL for the outbox to send.
        """
        ...


class CommandQueue:
    """The bounded queue between the sessions' receivers and the one command loop."""

    def __init__(self, handler: CommandHandler, topics: Topics, drop_log: BoundedLog, *,
                 current: Callable[[], LinkClient | None], stopping: Callable[[], bool],
                 stored: Callable[[], None]) -> None:
        self._handler = handler
        self._topics = topics
        self._drop_log = drop_log
        self._current = current  # the session's client now, if any
        self._stopping = stopping
        self._stored = stored  # a result went to the outbox
        # Bounded by admission in `receive` (count and bytes), never by blocking it.
        self._queue: asyncio.Queue[tuple[LinkClient, aiomqtt.Message, bytes]] = asyncio.Queue()
        self._queued_bytes = 0
        self.commands = 0  # handed to the handler
        self.results = 0  # results published at once
        self.ignored_qos0 = 0  # arrived at QoS 0
        self.dropped = 0  # acknowledged unread: the queue was full
        self.peak = 0  # most commands queued at once
        self.peak_bytes = 0  # most payload bytes queued at once

    async def receive(self, client: LinkClient) -> None:
        """Queue a session's commands within the bounds; raises MqttError when
        the connection drops."""
        async for message in client.messages:
            topic = message.topic.value
            if message.qos == 0:
                # center-link.md: ignored without a result. Nothing is parsed.
                self.ignored_qos0 += 1
                self._drop_log.note(reason="qos0", topic=topic, bytes=_payload_len(message.payload))
                continue
            payload = _payload_bytes(message.payload)
            size = len(payload)
            fits = self._queue.qsize() < COMMAND_QUEUE_MAX and (
                size <= SMALL_COMMAND_BYTES or self._queued_bytes + size <= COMMAND_QUEUE_BYTES)
            if not fits:
                # Acknowledged, or its slot of the Receive Maximum would stay taken
                # and the broker would stop sending us anything.
                self.dropped += 1
                self._drop_log.note(reason="queue_full", topic=topic, bytes=size,
                                    queued=self._queue.qsize(), queued_bytes=self._queued_bytes)
                client.ack(message)
                continue
            self._queued_bytes += size
            self._queue.put_nowait((client, message, payload))
            self.peak = max(self.peak, self._queue.qsize())
            self.peak_bytes = max(self.peak_bytes, self._queued_bytes)

    async def run(self) -> None:
        """Apply commands one at a time, in arrival order, whatever the connection does."""
        while True:
            client, message, payload = await self._queue.get()
            self._queued_bytes -= len(payload)
            if client is not self._current() or self._stopping():
                # From a connection that is gone (the broker delivers it again,
                # unacknowledged) or arriving while stopping (likewise, next start).
                continue
            topic = message.topic.value
            kind = self._topics.kind(topic)
            if kind is None:
                log.warning("center_unexpected_topic", topic=topic)
                client.ack(message)
                continue
            self.commands += 1
            result = await self._apply(payload, kind, topic)
            if result is None:
                self._stored()
            elif client is self._current():
                try:
                    await client.publish_while_connected(self._topics.result, result, qos=1,
                                                         timeout=PUBACK_TIMEOUT_S)
                    self.results += 1
                except aiomqtt.MqttError as e:
                    # Unacknowledged, the command comes again on the next connection.
                    log.info("center_result_unsent", error=str(e))
                    continue
            if client is self._current():
                client.ack(message)

    async def _apply(self, payload: bytes, kind: TopicKind, topic: str) -> bytes | None:
        try:
            return await self._handler.handle(payload, kind)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("command_handler_failed", topic=topic, bytes=len(payload))
            return _internal_result(payload)


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
