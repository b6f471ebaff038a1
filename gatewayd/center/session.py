"""One MQTT session with the center's broker: the client, its secrets, its subscriptions.

Contract (center-link.md "Transport"):
- MQTT 5 by default (3.1.1 by config), with a persistent session
  (`clean_start` false and a `SessionExpiryInterval` of
  `center.session_expiry_s`; `clean_session` false with 3.1.1), so commands
  sent while the gateway is away wait for it. The will is the offline status
  document, retained, QoS 1.
- A broker that accepts and then goes silent is given up after two
  `KEEPALIVE_S` (paho pings after one of silence and gives up one more later
  without its answer), so the link says disconnected within ~13 s.
- With MQTT 5 the CONNECT says `RECEIVE_MAXIMUM`, so the broker itself holds
  back the QoS 1 commands we have not acknowledged; commands are acknowledged
  by hand (`LinkClient.ack`), only once applied.
- The password file and TLS files are read in a thread; one that cannot be
  used raises `LinkConfigError`, as does a refused command subscription.
- A session is used once: the reconnect policy (`reconnect.py`) makes the next.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any, Final

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt import _packet  # the PUBLISH decoder, replaced below (paho is pinned)
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers
from paho.mqtt.reasoncodes import ReasonCode

from gatewayd.center.topics import Topics
from gatewayd.config.model import CenterSection
from gatewayd.errors import LinkConfigError

__all__ = ["LinkClient", "delivery_window", "make_client", "subscribe_commands"]

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
#: The offline status and the DISCONNECT after the drain, each at most this long.
FAREWELL_TIMEOUT_S: Final = 0.4
#: MQTT 5 Receive Maximum sent on CONNECT: at most this many unacknowledged
#: QoS 1 commands are in our hands; the broker holds the rest of a flood.
RECEIVE_MAXIMUM: Final = 8
#: No MQTT 5 Maximum Packet Size is sent: mosquitto 2.0 counts a QoS 1 message it
#: holds back for being too big against the Receive Maximum for good, so a few
#: oversized commands would stop every later one. The broker's own
#: `max_packet_size` bounds what paho reads (README); the command queue's bytes
#: bound drops the rest.
#: QoS 1 messages in flight at most: enough to fill a campus round trip at
#: thousands of messages a second; paho's own inflight limit is set above it.
MAX_WINDOW: Final = 256
#: Room for status and direct results beyond the delivery window in paho.
_INFLIGHT_HEADROOM: Final = 16
#: QoS 1 messages outside the delivery window at once: one status, one result.
_RESERVED_INFLIGHT: Final = 2

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


class LinkClient(aiomqtt.Client):
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


async def make_client(center: CenterSection, will_topic: str, will: bytes) -> LinkClient:
    """A client for one session (not connected yet: `async with` it)."""
    password, tls = await asyncio.to_thread(_read_secrets, center)
    if center.protocol == "5":
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = center.session_expiry_s
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        kwargs: dict[str, Any] = {"protocol": aiomqtt.ProtocolVersion.V5, "clean_start": False,
                                  "properties": props}
    else:
        kwargs = {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": False}
    client = LinkClient(
        center.host, center.port,
        identifier=center.client_id,
        username=center.username,
        password=password,
        will=aiomqtt.Will(will_topic, will, qos=1, retain=True),
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


def _read_secrets(c: CenterSection) -> tuple[str | None, ssl.SSLContext | None]:
    """Read the password file and build the TLS context (blocking: in a thread)."""
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


def _path(p: Path | None) -> str | None:
    return None if p is None else str(p)


async def subscribe_commands(client: LinkClient, topics: Topics) -> None:
    """Subscribe to the building's and the broadcast command topics, QoS 1."""
    codes = await client.subscribe([(topics.cmd, 1), (topics.broadcast, 1)], timeout=SUBSCRIBE_TIMEOUT_S)
    refused = [c for c in codes if (c.value if isinstance(c, ReasonCode) else c) >= 0x80]
    if refused:
        raise LinkConfigError(f"the broker refused the command subscriptions ({refused[0]})")


def delivery_window(client: LinkClient) -> int:
    """QoS 1 messages the delivery pump may keep in flight on this session.

    MQTT 5: at most Receive Maximum unacknowledged QoS 1 messages; one status
    and one direct result may be in flight beside the window."""
    return max(1, min(MAX_WINDOW, client.receive_maximum - _RESERVED_INFLIGHT))
