"""The gateway's status document on the center link (center-link.md "Status").

Contract:
- The document is the contract's `Status`, encoded by `encode_status`
  (`"online":true` first), retained, QoS 1. Its fields come from the
  `fields` callable (the live services' counts; a missing or null count is
  0) and from the store (`pending`, `last_seq`).
- It is published on connect, when a fault count, the cards version or the
  clock's sync changes (looked at every `STATUS_POLL_S`), when `pending`
  reaches 0 after a status said it was not, when something else makes it
  `due()`, and at least every `telemetry_interval_s`.
- A store that cannot be read does not keep the gateway from saying it is
  online: the last figures known are sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec
import structlog

from gatewayd import __version__
from gatewayd.center.session import PUBACK_TIMEOUT_S, LinkClient
from gatewayd.contract.wire import Faults, Status, encode_status
from gatewayd.errors import StoreError
from gatewayd.services.clock import Clock
from gatewayd.store import outbox
from gatewayd.store.db import Store
from gatewayd.store.outbox import Pending
from gatewayd.store.txn import Txn

__all__ = ["StatusReporter"]

log = structlog.get_logger(__name__)

#: Fault counts are compared this often, so a change is published within it.
STATUS_POLL_S: Final = 1.0


class StatusReporter:
    """Publishes the status document of one boot of the gateway."""

    def __init__(self, store: Store, clock: Clock, *, building: str, boot_id: str, topic: str,
                 interval_s: float, fields: Callable[[], Mapping[str, Any]]) -> None:
        self._store = store
        self._clock = clock
        self._building = building
        self._boot_id = boot_id
        self._topic = topic
        self._interval_s = interval_s
        self._fields_of = fields
        self.started = clock.wall()
        self._due = asyncio.Event()
        self._last_pending = 0
        self._last_changes: Any = None   # what, changed, publishes the status at once
        self._last_at = 0.0

    def due(self) -> None:
        """Publish the status at the next look, whatever changed."""
        self._due.set()

    def backlog_through(self) -> None:
        """The outbox holds no result or event: tell the center if it was told otherwise."""
        if self._last_pending > 0:
            self._due.set()

    async def run(self, client: LinkClient) -> None:
        """Publish on `client` whenever the status is due (after the first, on connect)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATUS_POLL_S):
                    await self._due.wait()
            due = (self._due.is_set() or _changes(self._fields()) != self._last_changes
                   or time.monotonic() - self._last_at >= self._interval_s)
            if due:
                await self.publish(client)

    async def publish(self, client: LinkClient) -> None:
        self._due.clear()
        try:
            pending, last_seq = await self._store.read(_pending_and_last_seq)
            messages = pending.messages
        except StoreError as e:  # say online anyway, with the last figures known
            log.warning("center_status_read_failed", error=str(e))
            messages, last_seq = self._last_pending, self._store.next_seq - 1
        fields = self._fields()
        self._last_changes = _changes(fields)
        document = encode_status(self._status(fields, messages, last_seq))
        self._last_at = time.monotonic()
        await client.publish(self._topic, document, qos=1, retain=True, timeout=PUBACK_TIMEOUT_S)
        self._last_pending = messages

    async def now(self) -> dict[str, Any]:
        """The status document as it would be published now (`state.get` without args)."""
        pending, last_seq = await self._store.read(_pending_and_last_seq)
        document: dict[str, Any] = msgspec.json.decode(
            encode_status(self._status(self._fields(), pending.messages, last_seq)))
        return document

    def _fields(self) -> dict[str, Any]:
        try:
            return dict(self._fields_of())
        except Exception:
            log.exception("center_status_fields_failed")
            return {}

    def _status(self, fields: Mapping[str, Any], pending: int, last_seq: int) -> Status:
        faults = fields.get("faults") or {}
        return Status(
            building=self._building,
            boot_id=self._boot_id,
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


def _changes(fields: Mapping[str, Any]) -> tuple[Any, ...]:
    """The status fields whose change is published at once: the contract's fault
    counts, and what the center acts on (the cards version it loaded, whether
    command ages are checked)."""
    return (fields.get("faults"), fields.get("cards_version"), fields.get("clock_synced"))


def _pending_and_last_seq(txn: Txn) -> tuple[Pending, int]:
    return outbox.pending(txn), txn.last_seq()
