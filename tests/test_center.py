"""The center link against a real mosquitto: what the center sees on the broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gatewayd import __version__
from gatewayd.center.link import CenterLink
from gatewayd.center.reconnect import LinkState
from gatewayd.center.topics import TopicKind
from gatewayd.config.load import load_config
from gatewayd.config.model import Config
from gatewayd.contract.enums import TapReason
from gatewayd.contract.events import PowerUsage, Tap
from gatewayd.services.clock import Clock
from gatewayd.services.component import Heartbeat
from gatewayd.store import outbox
from gatewayd.store.db import Store
from gatewayd.store.txn import Txn
from tests.mqtt_fixtures import (
    WAIT_S,
    Broker,
    Seen,
    client_tls,
    collecting,
    mosquitto,
    needs_mosquitto,
    retained,
)

pytestmark = needs_mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with mosquitto(tmp_path / "mosquitto") as b:
        yield b


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[Broker]:
    with mosquitto(tmp_path / "mosquitto-tls", tls=True) as b:
        yield b

ROOT = "ecard/v1/b07"
TS = "2026-11-25T10:00:00.000+08:00"
TAP = Tap(reader="r1", card="04A1B2C3", point=None, granted=False,
               reason=TapReason.UNKNOWN_CARD)
USAGE = PowerUsage(room="301", account="a", wh=10, amount_fen=1, meter_wh_from=0,
                        meter_wh_to=10, balance_fen=100)
STATUS_FIELDS = {"clock_synced": True, "cards_version": 3, "accounts_unknown": 0, "rooms": 2,
                 "points": 1, "readers": 1, "faults": {"meters": 0, "readers": 0, "valves": 0}}


def write_config(tmp_path: Path, broker_url: str, **center: Any) -> Config:
    lines = ["[gateway]", 'building = "b07"', f'state_dir = "{tmp_path / "state"}"', 'clock_synced = "yes"',
             "[center]", f'broker = "{broker_url}"', "insecure_unsigned_commands = true"]
    for key, value in center.items():
        lines.append(f"{key} = {json.dumps(str(value) if isinstance(value, Path) else value)}")
    path = tmp_path / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(path)


class StubHandler:
    """Answers every command: ids starting "now-" at once, others through the outbox
    (stored in `commands`), "boom" by raising."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.seen: list[tuple[dict[str, Any], TopicKind]] = []

    async def handle(self, payload: bytes, topic_kind: TopicKind) -> bytes | None:
        cmd = json.loads(payload)
        self.seen.append((cmd, topic_kind))
        result = json.dumps({"id": cmd["id"], "ok": True, "result": {"kind": topic_kind}}).encode()
        if cmd.get("type") == "boom":
            raise RuntimeError("handler bug")
        if cmd["id"].startswith("now-"):
            return result
        await self.store.run(lambda txn: txn.execute(
            "INSERT INTO commands (id, received, result) VALUES (?, ?, ?)", (cmd["id"], time.time(), result)))
        return None


@dataclass
class Gateway:
    config: Config
    store: Store
    link: CenterLink
    handler: StubHandler
    status: dict[str, Any] = field(default_factory=lambda: json.loads(json.dumps(STATUS_FIELDS)))
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.link.run(Heartbeat("center", None)), name="link-under-test")

    async def stop(self) -> None:
        await self.link.shutdown()
        assert self.task is not None
        await self.task

    async def add(self, kinds: str) -> list[int]:
        def job(txn: Txn) -> list[int]:
            return [txn.event(TAP if k == "t" else USAGE, ts=TS).seq
                    for k in kinds]
        return await self.store.run(job)

    async def unpublished(self) -> list[int]:
        return await self.store.read(lambda t: [r[0] for r in t.execute(
            "SELECT seq FROM events WHERE published IS NULL ORDER BY seq")])

    async def wait_connected(self) -> None:
        async with asyncio.timeout(WAIT_S):
            while not self.link.connected:
                await asyncio.sleep(0.01)

    async def wait_online(self, broker: Broker, tls: ssl.SSLContext | None = None) -> None:
        """Until the center sees this gateway's online status: it has subscribed by then."""
        async with asyncio.timeout(WAIT_S):
            while True:
                status = (await retained(broker, f"{ROOT}/status", tls)).json()
                if status["online"] and status["boot_id"] == self.link.boot_id:
                    return
                await asyncio.sleep(0.01)

    async def wait_drained(self) -> None:
        async with asyncio.timeout(WAIT_S):
            while (await self.store.read(outbox.pending)).total_bytes:
                await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, broker_url: str, *, start: bool = True,
                  telemetry: bool = False, **center: Any) -> AsyncIterator[Gateway]:
    config = write_config(tmp_path, broker_url, **center)
    store = Store.open(config.gateway.state_dir, "b07")
    handler = StubHandler(store)
    holder: dict[str, Gateway] = {}
    link = CenterLink(config, store, Clock("UTC", "yes"), handler=handler,
                      status=lambda: holder["gw"].status,
                      telemetry=(lambda: {"rooms": [{"room": "301"}], "points": []}) if telemetry else None)
    gw = Gateway(config, store, link, handler)
    holder["gw"] = gw
    await link.start()
    if start:
        gw.start()
    try:
        yield gw
    finally:
        if gw.task is not None and not gw.task.done():
            await gw.stop()
        store.close()


def events_of(seen: list[Seen]) -> list[dict[str, Any]]:
    return [s.json() for s in seen if s.topic == f"{ROOT}/events"]


def statuses(seen: list[Seen]) -> list[dict[str, Any]]:
    return [s.json() for s in seen if s.topic == f"{ROOT}/status"]


# --- status ------------------------------------------------------------------------


async def test_status_is_retained_with_online_true_on_connect(tmp_path: Path, broker: Broker) -> None:
    async with collecting(broker, [f"{ROOT}/status"]) as center, gateway(tmp_path, broker.url) as gw:
        await gw.add("tm")
        await center.wait_for(lambda seen: any(s["online"] for s in statuses(seen)))
        doc = (await retained(broker, f"{ROOT}/status"))
        assert doc.retain and doc.qos == 1
        status = doc.json()
        assert status["online"] is True
        assert status["building"] == "b07"
        assert status["boot_id"] == gw.link.boot_id
        # The store the events come from (center-link.md "Status"), right after boot_id.
        assert status["store_id"] == gw.store.store_id and len(status["store_id"]) == 36
        assert list(status)[:4] == ["online", "building", "boot_id", "store_id"]
        assert status["version"] == __version__
        assert status["cards_version"] == 3 and status["faults"] == STATUS_FIELDS["faults"]
        assert isinstance(status["started"], str) and isinstance(status["pending"], int)
        assert status["last_seq"] in (0, 2)  # the events may have been written before or after


async def test_status_follows_fault_changes_and_pending_reaching_zero(tmp_path: Path, broker: Broker) -> None:
    async with gateway(tmp_path, broker.url, start=False) as gw:
        await gw.add("t" * 2000)  # a backlog: the first status says pending > 0
        async with collecting(broker, [f"{ROOT}/status"]) as center:
            gw.start()
            seen = await center.wait_for(lambda seen: any(s["pending"] == 0 for s in statuses(seen)))
            docs = statuses(seen)
            assert docs[0]["pending"] > 0 and docs[0]["last_seq"] == 2000
            assert docs[-1]["pending"] == 0 and docs[-1]["last_seq"] == 2000
            gw.status["faults"] = {"meters": 1, "readers": 0, "valves": 0}
            seen = await center.wait_for(lambda seen: statuses(seen)[-1]["faults"]["meters"] == 1)
            # A cards.load applied: the center sees its version without waiting for
            # the periodic status (telemetry_interval_s, 60 s here).
            gw.status["cards_version"] = 4
            await center.wait_for(lambda seen: statuses(seen)[-1]["cards_version"] == 4)
            gw.status["cards_version"] = None   # nothing loaded yet: 0, an integer
            await center.wait_for(lambda seen: statuses(seen)[-1]["cards_version"] == 0)


# --- delivery ------------------------------------------------------------------------


async def test_events_in_class_order_qos1_and_marked_after_delivery(tmp_path: Path, broker: Broker) -> None:
    async with (collecting(broker, [f"{ROOT}/events"]) as center,
                gateway(tmp_path, broker.url, start=False) as gw):
        seqs = await gw.add("tmttmmt" * 50)
        gw.start()
        seen = await center.wait_for(lambda seen: len(events_of(seen)) >= len(seqs))
        got = events_of(seen)
        assert all(s.qos == 1 for s in seen)
        money = [e["seq"] for e in got if e["type"] == "power.usage"]
        other = [e["seq"] for e in got if e["type"] == "tap"]
        # Each class in seq order; the backlog of money ahead of the other events.
        assert money == sorted(money) and other == sorted(other)
        assert sorted(e["seq"] for e in got) == seqs
        assert got.index(next(e for e in got if e["seq"] == money[-1])) < len(money) + 32
        await gw.wait_drained()
        assert await gw.unpublished() == []


async def test_nothing_is_marked_published_without_a_puback(tmp_path: Path) -> None:
    async with FakeBroker() as fake, gateway(tmp_path, f"mqtt://127.0.0.1:{fake.port}", start=False,
                                             protocol="3.1.1") as gw:
        seqs = await gw.add("m" * 40)
        gw.start()
        await fake.wait_for(lambda: len(fake.events()) >= 20)
        # The broker has them all in hand but acknowledged none: all still pending.
        assert await gw.unpublished() == seqs
        ack = [mid for mid, topic, _ in fake.publishes if topic.endswith("/events")][:5]
        first = [json.loads(p)["seq"] for _, t, p in fake.publishes if t.endswith("/events")][:5]
        await fake.puback(ack)
        async with asyncio.timeout(WAIT_S):
            while len(await gw.unpublished()) != len(seqs) - 5:
                await asyncio.sleep(0.01)
        assert sorted(set(seqs) - set(await gw.unpublished())) == sorted(first)


async def test_broker_outage_every_event_arrives_once_with_consecutive_seq(
        tmp_path: Path, broker: Broker) -> None:
    async with (collecting(broker, [f"{ROOT}/events"]) as center,
                gateway(tmp_path, broker.url) as gw):
        await gw.add("tm" * 20)
        await center.wait_for(lambda seen: len(events_of(seen)) >= 40)
        await gw.wait_drained()
        await center.settle()  # a duplicate after the restart is then the gateway's
        broker.stop()
        async with asyncio.timeout(WAIT_S):
            while gw.link.connected:
                await asyncio.sleep(0.01)
        for _ in range(20):  # events keep coming while the center is away
            await gw.add("tmt" * 10)
        assert len(await gw.unpublished()) == 600
        broker.start()
        seen = await center.wait_for(lambda seen: len(events_of(seen)) >= 640)
        await gw.wait_drained()
        got = events_of(seen)
        ids = [e["id"] for e in got]
        assert len(ids) == len(set(ids)) == 640
        assert sorted(e["seq"] for e in got) == list(range(1, 641))
        assert gw.link.state is LinkState.CONNECTED


async def test_telemetry_is_queued_while_offline_and_sent_after_the_events(
        tmp_path: Path, broker: Broker) -> None:
    # The telemetry is this test's stand-in ({"room": "301"} only).
    async with (collecting(broker, [f"{ROOT}/events", f"{ROOT}/telemetry"],
                           unchecked=("/telemetry",)) as center,
                gateway(tmp_path, broker.url, start=False, telemetry=True, telemetry_interval_s=0.05) as gw):
        broker.stop()
        gw.start()
        await gw.add("t" * 10)
        async with asyncio.timeout(WAIT_S):
            while (await gw.store.read(outbox.pending)).counts[3] < 3:
                await asyncio.sleep(0.01)
        broker.start()
        seen = await center.wait_for(lambda seen: len(events_of(seen)) == 10
                                     and len(center.on("/telemetry")) >= 3)
        topics = [s.topic.rsplit("/", 1)[1] for s in seen]
        assert topics.index("telemetry") > max(i for i, t in enumerate(topics) if t == "events")
        doc = center.on("/telemetry")[0]
        assert doc.qos == 0
        assert set(doc.json()) == {"ts", "building", "rooms", "points"} and doc.json()["building"] == "b07"


# --- will and shutdown ------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import asyncio, sys
    from gatewayd.center.link import CenterLink
    from gatewayd.services.clock import Clock
    from gatewayd.config.load import load_config
    from gatewayd.store.db import Store
    from gatewayd.services.component import Heartbeat

    class Handler:
        async def handle(self, payload, topic_kind):
            return None

    async def main():
        config = load_config(sys.argv[1])
        store = Store.open(config.gateway.state_dir, config.gateway.building)
        link = CenterLink(config, store, Clock("UTC", "yes"), handler=Handler(),
                          status=lambda: {}, telemetry=None)
        print("BOOT", link.boot_id, flush=True)
        await link.start()
        await link.run(Heartbeat("center", None))

    asyncio.run(main())
""")


async def test_will_says_offline_when_the_gateway_dies(tmp_path: Path, broker: Broker) -> None:
    config = write_config(tmp_path, broker.url)
    async with collecting(broker, [f"{ROOT}/status"]) as center:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(config.path)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
        try:
            assert child.stdout is not None
            line = b""
            while not line.startswith(b"BOOT "):  # the store logs to stdout first
                line = await asyncio.to_thread(child.stdout.readline)
                assert line, "the child exited"
            boot_id = line.decode().split()[1]
            await center.wait_for(lambda seen: any(s["online"] and s["boot_id"] == boot_id
                                                   for s in statuses(seen)))
            os.kill(child.pid, signal.SIGKILL)
            seen = await center.wait_for(lambda seen: not statuses(seen)[-1]["online"])
            assert statuses(seen)[-1] == {"online": False, "building": "b07", "boot_id": boot_id}
            assert (await retained(broker, f"{ROOT}/status")).json()["online"] is False
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
            child.wait()


async def test_shutdown_drains_then_publishes_offline_status(tmp_path: Path, broker: Broker) -> None:
    async with (collecting(broker, [f"{ROOT}/status", f"{ROOT}/events"]) as center,
                gateway(tmp_path, broker.url) as gw):
        await gw.wait_connected()
        await gw.add("tm" * 100)  # written just before the stop (as water does on SIGTERM)
        await gw.stop()
        assert gw.link.state is LinkState.STOPPED
        seen = await center.wait_for(lambda seen: bool(statuses(seen)) and not statuses(seen)[-1]["online"])
        assert len(events_of(seen)) == 200
        assert statuses(seen)[-1] == {"online": False, "building": "b07", "boot_id": gw.link.boot_id}
        assert await gw.unpublished() == []
        assert (await retained(broker, f"{ROOT}/status")).json()["online"] is False


async def test_shutdown_while_the_broker_is_down_returns(tmp_path: Path, broker: Broker) -> None:
    broker.stop()
    async with gateway(tmp_path, broker.url) as gw:
        async with asyncio.timeout(WAIT_S):
            while gw.link.state is not LinkState.BACKING_OFF:
                await asyncio.sleep(0.01)
        await gw.add("m")
        await gw.stop()
        assert gw.link.view()["state"] == "stopped"
        assert len(await gw.unpublished()) == 1  # kept for the next start


# --- commands ----------------------------------------------------------------------------


def command(cid: str, type_: str = "ping", to: str = "b07") -> bytes:
    return json.dumps({"id": cid, "to": to, "type": type_, "ts": TS, "args": {}}).encode()


async def test_command_round_trip(tmp_path: Path, broker: Broker) -> None:
    # The results are the stub handler's ({"kind": ...}).
    async with (collecting(broker, [f"{ROOT}/cmd/result"], unchecked=("/cmd/result",)) as center,
                gateway(tmp_path, broker.url) as gw):
        await gw.wait_online(broker)
        await center.publish(f"{ROOT}/cmd", command("c-stored"))
        await center.publish(f"{ROOT}/cmd", command("now-direct"))
        await center.publish("ecard/v1/all/cmd", command("c-broadcast", to="all"))
        await center.publish(f"{ROOT}/cmd", command("c-boom", "boom"))
        await center.publish(f"{ROOT}/cmd", command("c-after"))
        seen = await center.wait_for(lambda seen: len(seen) >= 5)
        results = {s.json()["id"]: s.json() for s in seen}
        assert all(s.qos == 1 for s in seen)
        assert results["c-stored"] == {"id": "c-stored", "ok": True, "result": {"kind": "building"}}
        assert results["now-direct"]["ok"] is True
        assert results["c-broadcast"]["result"] == {"kind": "broadcast"}
        assert results["c-boom"]["ok"] is False and results["c-boom"]["error"]["code"] == "internal"
        assert results["c-after"]["ok"] is True  # a failing handler did not stop the link
        assert [c["id"] for c, _ in gw.handler.seen] == [
            "c-stored", "now-direct", "c-broadcast", "c-boom", "c-after"]
        await gw.wait_drained()


async def test_commands_sent_while_offline_arrive_on_return(tmp_path: Path, broker: Broker) -> None:
    async with collecting(broker, [f"{ROOT}/cmd/result"], unchecked=("/cmd/result",)) as center:  # a stub's
        async with gateway(tmp_path, broker.url) as gw:
            await gw.wait_online(broker)
        # The gateway is away; its persistent session holds what the center sends.
        await center.publish(f"{ROOT}/cmd", command("while-away"))
        async with gateway(tmp_path, broker.url) as gw:
            seen = await center.wait_for(lambda seen: len(seen) >= 1)
            assert seen[0].json()["id"] == "while-away"


# --- transports ----------------------------------------------------------------------------


async def test_tls_with_client_certificate(tmp_path: Path, tls_broker: Broker) -> None:
    certs = tls_broker.certs
    assert certs is not None
    tls = client_tls(certs)
    async with (collecting(tls_broker, [f"{ROOT}/events"], tls=tls) as center,
                gateway(tmp_path, tls_broker.url, ca_file=certs.ca, cert_file=certs.client_cert,
                        key_file=certs.client_key) as gw):
        await gw.add("tm")
        seen = await center.wait_for(lambda seen: len(seen) >= 2)
        assert [e["seq"] for e in events_of(seen)] == [2, 1]
        assert (await retained(tls_broker, f"{ROOT}/status", tls)).json()["online"] is True


async def test_tls_client_without_certificate_is_refused(tls_broker: Broker) -> None:
    certs = tls_broker.certs
    assert certs is not None
    # TLS 1.3 reports the missing certificate after the handshake: a refusal may
    # show as a reset or as no CONNACK at all (TESTBED.md).
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", tls_broker.port, timeout=3,
                                  tls_context=client_tls(certs, with_cert=False)):
            pass


async def test_link_without_certificate_stays_offline(tmp_path: Path, tls_broker: Broker) -> None:
    certs = tls_broker.certs
    assert certs is not None
    async with gateway(tmp_path, tls_broker.url, ca_file=certs.ca) as gw:
        await gw.add("m")
        async with asyncio.timeout(WAIT_S):
            while gw.link.state is not LinkState.BACKING_OFF:
                await asyncio.sleep(0.01)
        assert gw.link.view()["last_error"]
        assert len(await gw.unpublished()) == 1


async def test_mqtt_311(tmp_path: Path, broker: Broker) -> None:
    # The results are the stub handler's ({"kind": ...}).
    async with (collecting(broker, [f"{ROOT}/events", f"{ROOT}/cmd/result"],
                           unchecked=("/cmd/result",)) as center,
                gateway(tmp_path, broker.url, protocol="3.1.1") as gw):
        await gw.wait_online(broker)
        await gw.add("mt")
        await center.publish(f"{ROOT}/cmd", command("c311"))
        seen = await center.wait_for(lambda seen: len(seen) >= 3)
        assert [e["seq"] for e in events_of(seen)] == [1, 2]
        assert center.on("/cmd/result")[0].json()["id"] == "c311"
        assert (await retained(broker, f"{ROOT}/status")).json()["online"] is True


# --- a broker that never acknowledges --------------------------------------------------------


class FakeBroker:
    """Just enough MQTT 3.1.1 to accept a client and hold the PUBACKs of its events."""

    def __init__(self) -> None:
        self.port = 0
        self.publishes: list[tuple[int, str, bytes]] = []
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> FakeBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        if self._writer is not None:
            self._writer.close()
        await self._server.wait_closed()

    def events(self) -> list[bytes]:
        return [p for _, t, p in self.publishes if t.endswith("/events")]

    async def wait_for(self, predicate: Any) -> None:
        async with asyncio.timeout(WAIT_S):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def puback(self, mids: list[int]) -> None:
        assert self._writer is not None
        for mid in mids:
            self._writer.write(b"\x40\x02" + struct.pack("!H", mid))
        await self._writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = (await reader.readexactly(1))[0]
                length, shift = 0, 0
                while True:
                    b = (await reader.readexactly(1))[0]
                    length |= (b & 0x7F) << shift
                    shift += 7
                    if not b & 0x80:
                        break
                body = await reader.readexactly(length)
                kind = head >> 4
                if kind == 1:  # CONNECT
                    writer.write(b"\x20\x02\x00\x00")
                elif kind == 8:  # SUBSCRIBE: grant QoS 1 to each filter
                    mid = body[:2]
                    n = 0
                    i = 2
                    while i < len(body):
                        i += 2 + struct.unpack("!H", body[i:i + 2])[0] + 1
                        n += 1
                    writer.write(bytes([0x90, 2 + n]) + mid + b"\x01" * n)
                elif kind == 3:  # PUBLISH
                    qos = (head >> 1) & 3
                    tlen = struct.unpack("!H", body[:2])[0]
                    topic = body[2:2 + tlen].decode()
                    rest = body[2 + tlen:]
                    pid: int = struct.unpack("!H", rest[:2])[0] if qos else 0
                    self.publishes.append((pid, topic, rest[2:] if qos else rest))
                    self._changed.set()
                    if qos and not topic.endswith("/events"):  # only events are held
                        writer.write(b"\x40\x02" + struct.pack("!H", pid))
                elif kind == 12:  # PINGREQ
                    writer.write(b"\xd0\x00")
                elif kind == 14:  # DISCONNECT
                    break
                await writer.drain()
