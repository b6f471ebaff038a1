"""The campus center as the demo needs it: counts what the gateway publishes,
sends top-ups on its command topic, signed when it holds the center's key."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatewayd.contract.signing import sign_command


class CenterStub:
    """The campus center's side of the MQTT link, for the demo: sends commands
    (signed with `key`; without one unsigned, for a gateway that runs
    `insecure_unsigned_commands`), counts the events and results the gateway
    publishes."""

    def __init__(self, broker: str, building: str, prefix: str = "ecard/v1",
                 on_message: Callable[[str, dict[str, Any]], None] | None = None,
                 key: Ed25519PrivateKey | None = None) -> None:
        url = urlsplit(broker)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (8883 if url.scheme == "mqtts" else 1883)
        self.tls = url.scheme == "mqtts"
        self.building = building
        self.root = f"{prefix}/{building}"
        self.on_message = on_message
        self.key = key
        self.events = 0
        self.last_seq = 0
        self.results: dict[str, dict[str, Any]] = {}
        self.gateway_online: bool | None = None
        self.connected = False
        self._outgoing: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="center-stub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def credit(self, account: str, amount_fen: int) -> str:
        """Queue an `account.credit` command; returns its id."""
        command_id = f"demo-{uuid.uuid4()}"
        cmd = {"id": command_id, "to": self.building, "type": "account.credit",
               "ts": datetime.now(UTC).astimezone().isoformat(timespec="milliseconds"),
               "args": {"account": account, "amount_fen": amount_fen}}
        if self.key is not None:
            cmd = sign_command(cmd, self.key)
        self._outgoing.put_nowait((f"{self.root}/cmd", json.dumps(cmd).encode()))
        return command_id

    async def _run(self) -> None:
        import ssl

        import aiomqtt

        delay = 0.5
        while True:
            try:
                async with aiomqtt.Client(
                    self.host, self.port, identifier=f"demo-center-{uuid.uuid4().hex[:8]}",
                    tls_context=ssl.create_default_context() if self.tls else None,
                ) as client:
                    self.connected = True
                    delay = 0.5
                    for topic in ("events", "cmd/result", "status"):
                        await client.subscribe(f"{self.root}/{topic}", qos=1)
                    sender = asyncio.get_running_loop().create_task(self._send(client))
                    try:
                        async for message in client.messages:
                            self._received(str(message.topic), message.payload)
                    finally:
                        sender.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await sender
            except aiomqtt.MqttError:
                self.connected = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _send(self, client: Any) -> None:
        while True:
            topic, payload = await self._outgoing.get()
            await client.publish(topic, payload, qos=1)

    def _received(self, topic: str, payload: Any) -> None:
        try:
            doc = json.loads(bytes(payload))
        except (TypeError, ValueError):
            return
        if not isinstance(doc, dict):
            return
        kind = topic.removeprefix(self.root + "/")
        if kind == "events":
            self.events += 1
            self.last_seq = max(self.last_seq, int(doc.get("seq", 0) or 0))
        elif kind == "cmd/result" and isinstance(doc.get("id"), str):
            self.results[doc["id"]] = doc
        elif kind == "status":
            self.gateway_online = bool(doc.get("online"))
        if self.on_message is not None:
            self.on_message(kind, doc)


# --- the scripted day -------------------------------------------------------------
