"""Fixtures: a real mosquitto on a free port (plain, or TLS with client certificates)
and a subscriber that collects what the center would see, and checks each message
the gateway published against the published JSON Schemas (tests/contract_check.py).

Load the fixtures with `pytest_plugins = ("tests.mqtt_fixtures",)`, or, in a module
that also imports the helpers (which would defeat pytest's assertion rewriting of a
plugin), declare its own two-line fixtures around `mosquitto()`. Each broker runs
from its own config in the test's tmp dir and is stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests import contract_check

# A broker that does not listen within this long failed to start.
BROKER_START_S = 10.0
# Generous guard for waits on messages; tests fail on it, they do not time anything.
WAIT_S = 20.0

needs_mosquitto = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto not installed")


def free_port() -> int:
    """A free port below the kernel's ephemeral range (32768 up): a broker stopped
    for an outage and started again on it must not find it taken meanwhile by a
    client's source port (on loopback a client reconnecting to a dead port can
    even be given that very port, and connect to itself)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32768)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        found: int = s.getsockname()[1]
        return found


@dataclass
class Certs:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (CN=gw-b07)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def make(cls, d: Path, client_cn: str = "gw-b07") -> Certs:
        d.mkdir(parents=True, exist_ok=True)

        def run(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca")
        for name, cn, ext in (("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1"),
                              ("client", client_cn, "extendedKeyUsage=clientAuth")):
            run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
            (d / f"{name}.ext").write_text(ext + "\n")
            run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
            os.chmod(d / f"{name}.key", 0o600)
        return cls(ca=d / "ca.pem", server_cert=d / "server.pem", server_key=d / "server.key",
                   client_cert=d / "client.pem", client_key=d / "client.key")


@dataclass
class Broker:
    """A mosquitto of our own. `stop()`/`start()` keep the port and the persisted sessions."""

    dir: Path
    port: int
    certs: Certs | None = None
    proc: subprocess.Popen[bytes] | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.certs else 'mqtt'}://127.0.0.1:{self.port}"

    def config(self) -> Path:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.dir}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            # Our own clients publish hundreds in flight; let them.
            "max_inflight_messages 0",
            "max_queued_messages 0",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to "mosquitto" and cannot read 0600 keys
        if self.certs:
            lines += [
                f"cafile {self.certs.ca}",
                f"certfile {self.certs.server_cert}",
                f"keyfile {self.certs.server_key}",
                "require_certificate true",
                "use_identity_as_username true",
            ]
        lines += self.extra
        path = self.dir / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> None:
        assert self.proc is None
        log = open(self.dir / "mosquitto.log", "ab")  # noqa: SIM115 (kept open for the process)
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.config())], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + BROKER_START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {(self.dir / 'mosquitto.log').read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.02)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is not None:   # it died (its log says why): nothing to stop
            self.proc = None
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def mosquitto(d: Path, *, tls: bool = False) -> Iterator[Broker]:
    """Run a mosquitto from its own config in `d` on a free port; stop it by PID.

    Plain and anonymous, or (`tls`) mqtts:// requiring a client certificate
    signed by a CA made here (`Broker.certs`). Sessions persist in `d`.
    """
    d.mkdir(parents=True, exist_ok=True)
    b = Broker(d, free_port(), certs=Certs.make(d / "certs") if tls else None)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A plain mosquitto on a free port (anonymous, persistent sessions)."""
    with mosquitto(tmp_path / "mosquitto") as b:
        yield b


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[Broker]:
    """A mosquitto requiring a client certificate signed by its test CA (mqtts://)."""
    with mosquitto(tmp_path / "mosquitto-tls", tls=True) as b:
        yield b


@dataclass(frozen=True)
class Seen:
    """One message as a subscriber at the center received it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool

    def json(self) -> Any:
        import json

        return json.loads(self.payload)


class Collector:
    """A center-side client: subscribes (QoS 1, persistent session), records every
    message, reconnects when the broker comes back, and can publish.

    Every message on a topic the gateway publishes (status, events, telemetry,
    results) is validated against docs/schemas/; `stop()` fails the test if one
    did not match. `unchecked` names the topic suffixes (`"/cmd/result"`) where a
    test's stub, not the gateway's contract code, writes the payloads.
    """

    def __init__(self, broker: Broker, topics: list[str], *, client_id: str = "center-test",
                 tls: ssl.SSLContext | None = None, unchecked: tuple[str, ...] = ()) -> None:
        self.broker = broker
        self.topics = topics
        self.client_id = client_id
        self.tls = tls
        self.unchecked = unchecked
        self.seen: list[Seen] = []
        #: What did not match the published schemas, one line each.
        self.contract_problems: list[str] = []
        self._changed = asyncio.Condition()
        self._client: aiomqtt.Client | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="collector")
        async with asyncio.timeout(WAIT_S):
            await self._ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        assert self.contract_problems == [], "\n".join(
            ["published messages that do not match docs/schemas/:", *self.contract_problems[:10]])

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.broker.port, identifier=self.client_id, clean_session=False,
                    tls_context=self.tls, max_queued_incoming_messages=0,
                ) as client:
                    self._client = client
                    await client.subscribe([(t, 1) for t in self.topics])
                    self._ready.set()
                    async for m in client.messages:
                        payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                        self._check(m.topic.value, payload)
                        async with self._changed:
                            self.seen.append(Seen(m.topic.value, payload, m.qos, m.retain))
                            self._changed.notify_all()
            except aiomqtt.MqttError:
                self._client = None
                self._ready.clear()
                await asyncio.sleep(0.05)

    def _check(self, topic: str, payload: bytes) -> None:
        try:
            stub = topic.endswith(self.unchecked) if self.unchecked else False
            wrong = None if stub else contract_check.problem(topic, payload)
        except Exception as e:  # a broken schema must fail the test, not kill the subscriber
            wrong = f"{topic}: {e!r}"
        if wrong is not None:
            self.contract_problems.append(wrong)

    async def wait_for(self, predicate: Callable[[list[Seen]], bool], timeout: float = WAIT_S) -> list[Seen]:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self.seen))
        return self.seen

    async def wait_ready(self) -> None:
        async with asyncio.timeout(WAIT_S):
            await self._ready.wait()

    async def settle(self) -> None:
        """Make sure the broker has this client's PUBACKs for what it has seen.

        paho hands a message over before it sends the PUBACK. A broker stopped
        in between keeps the message for this persistent session and delivers
        it again when it comes back: MQTT's at-least-once, on the broker's leg,
        not the gateway's. A QoS 1 publish answered by the broker goes after
        those PUBACKs on the same connection, so the broker has them.
        """
        await self.publish(f"test/{self.client_id}/settle", b"", qos=1)

    def on(self, suffix: str) -> list[Seen]:
        return [s for s in self.seen if s.topic.endswith(suffix)]

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        await self.wait_ready()
        assert self._client is not None
        await self._client.publish(topic, payload, qos=qos)


@contextlib.asynccontextmanager
async def collecting(broker: Broker, topics: list[str], **kw: Any) -> AsyncIterator[Collector]:
    c = Collector(broker, topics, **kw)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


async def retained(broker: Broker, topic: str, tls: ssl.SSLContext | None = None) -> Seen:
    """The retained message a client subscribing now gets on `topic` (fails if none comes)."""
    async with aiomqtt.Client("127.0.0.1", broker.port, tls_context=tls) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(WAIT_S):
            async for m in client.messages:
                payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                return Seen(m.topic.value, payload, m.qos, m.retain)
    raise AssertionError("no retained message")


def client_tls(certs: Certs, *, with_cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    if with_cert:
        ctx.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return ctx
