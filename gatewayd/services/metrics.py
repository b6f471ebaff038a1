"""The optional Prometheus endpoint (`[metrics] listen = "127.0.0.1:9108"`).

Contract:
- `GET /metrics` answers the Prometheus text format, computed at the scrape
  on the daemon's event loop from the live objects (buses, rooms, points,
  alarms) and the store's outbox counts: nothing is sampled in between, so
  a scrape costs nothing when nobody scrapes.
- Counters of what happened (cuts by reason, events by type, fen charged)
  are counted from the store's commits since this start; the present state
  (rooms cut now, by reason) is a gauge that survives restarts.
- Monitoring never stops the gateway: a port that cannot be bound is logged
  (`metrics_listen_failed`) and retried; a failing scrape answers 500
  (`http_listener.HttpListener` serves it).

Wiring (daemon.py, after the components exist):

    if config.metrics is not None:
        components.append(MetricsEndpoint(config, store, hardware.buses, power=power,
                                          water=water, alarms=alarms, center=...))

where `center` is a callable returning the link's view (`CenterLink.view`,
a mapping with `connected`), or None without a center link.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import msgspec
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gatewayd import __version__
from gatewayd.config.model import Config
from gatewayd.contract.enums import CutReason
from gatewayd.services.alarms import Alarms
from gatewayd.services.hardware import AnyBus, bus_view
from gatewayd.services.http_listener import HttpListener, ListeningComponent, Response
from gatewayd.services.power.service import PowerService
from gatewayd.services.water.service import WaterService
from gatewayd.store import outbox
from gatewayd.store.db import Store
from gatewayd.store.txn import Event

log = structlog.get_logger(__name__)

CLASS_NAMES = ("result", "money", "event", "telemetry")

CenterView = Callable[[], Mapping[str, Any] | None]

_decode = msgspec.json.Decoder()


class MetricsEndpoint(ListeningComponent):
    """The `metrics` component: an HTTP listener on `config.metrics`."""

    name = "metrics"

    def __init__(
        self,
        config: Config,
        store: Store,
        buses: Mapping[str, AnyBus],
        *,
        power: PowerService,
        water: WaterService,
        alarms: Alarms,
        center: CenterView | None = None,
    ) -> None:
        if config.metrics is None:
            raise ValueError("no [metrics] section in the config")
        self.host = config.metrics.host
        self.port = config.metrics.port
        self.building = config.gateway.building
        self.store = store
        self.buses = buses
        self.power = power
        self.water = water
        self.alarms = alarms
        self.center = center
        self.listener = HttpListener("metrics", self.host, self.port,
                                     {b"/metrics": self._metrics, b"/": self._index})
        self._pending: outbox.Pending | None = None
        # Counted in the store's writer thread, read at scrapes on the loop.
        self._lock = threading.Lock()
        self._events: Counter[str] = Counter()
        self._cuts: Counter[str] = Counter()
        self._charged: Counter[str] = Counter()
        self._taps: Counter[str] = Counter()
        store.on_commit(self._committed)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    # --- counting -----------------------------------------------------------------

    def _committed(self, events: list[Event]) -> None:
        """Store listener (writer thread): count what the commit recorded."""
        with self._lock:
            for ev in events:
                self._events[ev.type] += 1
                if ev.type not in ("breaker.cut", "water.session", "power.usage", "tap"):
                    continue
                try:
                    doc = _decode.decode(ev.payload)
                except msgspec.DecodeError:
                    continue
                if ev.type == "breaker.cut":
                    self._cuts[str(doc.get("reason"))] += 1
                elif ev.type == "water.session":
                    self._charged[str(doc.get("service"))] += int(doc.get("amount_fen") or 0)
                elif ev.type == "power.usage":
                    self._charged["power"] += int(doc.get("amount_fen") or 0)
                else:
                    # A folded event (reader flood) stands for `count` refusals.
                    self._taps["granted" if doc.get("granted") else "refused"] += int(
                        doc.get("count") or 1)

    def counted(self) -> tuple[Counter[str], Counter[str], Counter[str], Counter[str]]:
        with self._lock:
            return (Counter(self._events), Counter(self._cuts), Counter(self._charged),
                    Counter(self._taps))

    # --- HTTP -----------------------------------------------------------------------

    async def _metrics(self) -> Response:
        return Response(await self.scrape(), content_type=CONTENT_TYPE_LATEST)

    async def _index(self) -> Response:
        return Response(b"gatewayd: metrics at /metrics\n")

    async def scrape(self) -> bytes:
        """The exposition, as of now."""
        self._pending = await self.store.read(outbox.pending)
        data: bytes = generate_latest(self.registry)
        return data


class _Collector:
    """Reads the live objects at each scrape (on the loop, with the store counts fresh)."""

    def __init__(self, m: MetricsEndpoint) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        m = self.m
        info = GaugeMetricFamily("gatewayd_info", "This gatewayd", labels=["version", "building"])
        info.add_metric([__version__, m.building], 1)
        yield info
        yield from self._buses()
        yield from self._rooms_and_points()
        yield from self._outbox()
        events, cuts, charged, taps = m.counted()
        f = CounterMetricFamily("gatewayd_breaker_cuts", "Rooms cut since start, by reason",
                                labels=["reason"])
        # Every reason of the contract from 0, so that an alert on one sees 0, not absent.
        for reason in sorted({r.value for r in CutReason} | set(cuts)):
            f.add_metric([reason], cuts[reason])
        yield f
        f = CounterMetricFamily("gatewayd_events", "Events recorded since start, by type",
                                labels=["type"])
        for type_, n in sorted(events.items()):
            f.add_metric([type_], n)
        yield f
        f = CounterMetricFamily("gatewayd_charged_fen", "Fen charged since start, by service "
                                "(power as reported in power.usage, water per ended session)",
                                labels=["service"])
        for service, n in sorted(charged.items()):
            f.add_metric([service], n)
        yield f
        f = CounterMetricFamily("gatewayd_taps", "Card taps recorded since start", labels=["result"])
        for result in ("granted", "refused"):
            f.add_metric([result], taps[result])
        yield f
        alarms = GaugeMetricFamily("gatewayd_alarms_active", "Active alarms, by code",
                                   labels=["code"])
        for code, n in sorted(m.alarms.counts().items()):
            alarms.add_metric([code], n)
        yield alarms
        view = (m.center() if m.center is not None else None) or {}
        yield GaugeMetricFamily("gatewayd_center_configured", "1 with a [center] link",
                                value=int(bool(view) and bool(view.get("configured", True))))
        yield GaugeMetricFamily("gatewayd_center_connected",
                                "1 while the broker has accepted the gateway's connection",
                                value=int(bool(view.get("connected"))))
        f = CounterMetricFamily("gatewayd_center_commands_dropped", "Commands not applied and not "
                                "answered: arrived at QoS 0, or the bounded command queue was full",
                                labels=["reason"])
        for reason, n in sorted((view.get("commands_dropped") or {"qos0": 0, "queue_full": 0}).items()):
            f.add_metric([reason], n)
        yield f
        yield GaugeMetricFamily("gatewayd_last_seq", "The last event seq assigned",
                                value=m.store.next_seq - 1)

    def _buses(self) -> Iterator[Metric]:
        m = self.m
        now = time.monotonic()
        cycle = GaugeMetricFamily(
            "gatewayd_bus_poll_cycle_seconds",
            "Age of the oldest reading among the bus' online meters: how long one round "
            "of polls takes (absent for a bus without online meters)", labels=["bus"])
        connected = GaugeMetricFamily("gatewayd_bus_connected",
                                      "1 while a connection (or the serial port) is open",
                                      labels=["bus"])
        offline = GaugeMetricFamily("gatewayd_devices_offline", "Devices offline now",
                                    labels=["bus"])
        online = GaugeMetricFamily("gatewayd_device_online", "1 while the device answers",
                                   labels=["bus", "device"])
        errors = CounterMetricFamily("gatewayd_device_errors",
                                     "Failed operations of the device (after the bus' retries)",
                                     labels=["bus", "device"])
        stats = {k: CounterMetricFamily(f"gatewayd_bus_{k}", help_, labels=["bus"]) for k, help_ in (
            ("requests", "Requests sent, retries included"),
            ("failures", "Requests failed (timeout, exception, garbage, link down)"),
            ("timeouts", "Requests unanswered"),
            ("reconnects", "Connections (or serial ports) reopened after a loss"),
            ("noise_faults", "Serial line: the line did not fall quiet before a request (noise)"),
            ("dropped_bytes", "Serial line: bytes with no request waiting (late answers, noise), "
                              "dropped"),
            ("bad_frames", "DL/T 645: frames with a bad checksum, dropped"),
            ("foreign_frames", "DL/T 645: frames from another address or not answering the "
                               "request, dropped"),
        )}
        round_s = GaugeMetricFamily(
            "gatewayd_bus_round_seconds", "DL/T 645: how long the last round took (every meter "
            "of the bus read once; absent before the first round)", labels=["bus"])
        for view in (bus_view(name, bus) for name, bus in sorted(m.buses.items())):
            name = view.name
            connected.add_metric([name], int(view.connected))
            for key, value in view.counters.items():
                stats[key].add_metric([name], value)
            if view.round_s is not None:
                round_s.add_metric([name], view.round_s)
            ages = []
            down = 0
            for device, h in sorted(view.health.items()):
                online.add_metric([name, device], int(h.online))
                errors.add_metric([name, device], h.failures_total)
                down += not h.online
                if h.online and device.startswith("meter:") and h.last_ok_mono is not None:
                    ages.append(now - h.last_ok_mono)
            offline.add_metric([name], down)
            if ages:
                cycle.add_metric([name], max(ages))
        yield from (cycle, round_s, connected, offline, online, errors, *stats.values())

    def _rooms_and_points(self) -> Iterator[Metric]:
        m = self.m
        cut: Counter[str] = Counter(str(rt.state.cut_reason) for rt in m.power.rooms.values()
                                    if rt.state.cut_reason is not None)
        f = GaugeMetricFamily("gatewayd_rooms_cut", "Rooms cut now, by reason", labels=["reason"])
        for reason in sorted({r.value for r in CutReason} | set(cut)):
            f.add_metric([reason], cut[reason])
        yield f
        yield GaugeMetricFamily("gatewayd_rooms", "Rooms configured", value=len(m.power.rooms))
        open_ = Counter(pt.cfg.service for pt in m.water.points.values() if pt.session is not None)
        f = GaugeMetricFamily("gatewayd_water_sessions_open", "Water sessions open now",
                              labels=["service"])
        for service in ("shower", "drinking"):
            f.add_metric([service], open_[service])
        yield f
        faults = sum(1 for pt in m.water.points.values() if pt.fault is not None)
        yield GaugeMetricFamily("gatewayd_valves_faulted", "Valves that did not obey", value=faults)

    def _outbox(self) -> Iterator[Metric]:
        pending = self.m._pending
        if pending is None:
            return
        depth = GaugeMetricFamily("gatewayd_outbox_pending", "Messages waiting for the center, "
                                  "by delivery class", labels=["class"])
        size = GaugeMetricFamily("gatewayd_outbox_pending_bytes", "Payload bytes waiting for "
                                 "the center, by delivery class", labels=["class"])
        for i, klass in enumerate(CLASS_NAMES):
            depth.add_metric([klass], pending.counts[i])
            size.add_metric([klass], pending.bytes[i])
        yield depth
        yield size
