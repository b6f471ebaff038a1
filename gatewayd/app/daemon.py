"""`gatewayd run`: build the components from the config and supervise them."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from drivers.cardreader.factory import open_reader
from drivers.protocols import CardReader
from drivers.retry import FailureLog
from gatewayd.app.reload import Reloader
from gatewayd.app.sdnotify import Notifier
from gatewayd.app.supervisor import Supervisor
from gatewayd.center.apply import CommandService
from gatewayd.center.link import CenterLink
from gatewayd.config.model import Config, GatewaySection, Reader
from gatewayd.contract.enums import AlarmCode
from gatewayd.contract.events import breaker_device, meter_device, valve_device
from gatewayd.contract.signing import load_public_key
from gatewayd.errors import StoreError
from gatewayd.services.alarms import Alarms
from gatewayd.services.clock import Clock
from gatewayd.services.component import Component, Heartbeat
from gatewayd.services.hardware import Hardware
from gatewayd.services.power.service import PowerService
from gatewayd.services.snapshot import Snapshot
from gatewayd.services.water.service import WaterService
from gatewayd.store import meta
from gatewayd.store.cards import Cards
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger
from gatewayd.store.txn import Txn

log = structlog.get_logger(__name__)

# The store writer must answer a probe this often, or the watchdog starves.
STORE_PROBE_S = 5.0


def alarm_settle_s(config: Config) -> float:
    """How long after start alarms on record from before are cleared unless raised
    again: time for every device to be polled and, if dead, found offline."""
    return min(max(30.0, 20 * config.gateway.poll_interval_s), 300.0)


def _touch(txn: Txn) -> None:
    """A write that commits (and so fsyncs): proves the disk still takes writes."""
    meta.put(txn, "probe", "1")


class StoreProbe:
    """Proves the store's writer thread still commits (a tiny job every few seconds),
    and that the database is still at its path: one removed or replaced under the
    daemon raises `store_failing` and is put back from the open database."""

    name = "store"
    heartbeat_s: float | None = 4 * STORE_PROBE_S

    def __init__(self, store: Store, alarms: Alarms | None = None, *,
                 settle_after_s: float | None = None) -> None:
        self.store = store
        self.alarms = alarms
        self.settle_after_s = settle_after_s
        self.restores = 0
        # A full disk fails every probe: the first at ERROR, then a summary a minute.
        self._failing = FailureLog(log, "store_probe_failed", recovered="store_probe_recovered",
                                   level=logging.ERROR)

    async def start(self) -> None:
        await self.store.read(meta.probe)

    async def run(self, heartbeat: Heartbeat) -> None:
        loop = asyncio.get_running_loop()
        settle_at = None if self.settle_after_s is None else loop.time() + self.settle_after_s
        while True:
            if settle_at is not None and loop.time() >= settle_at and self.alarms is not None:
                settle_at = None
                await self.alarms.settle()
            failing = await self._check_file()
            if failing is None:
                try:
                    await self.store.run(_touch)
                except StoreError as e:
                    # The writer answered; the disk did not. A restart cannot free a
                    # disk, so this still counts as alive. The alarm lives in memory
                    # only (it cannot be stored): logs, metrics and status show it.
                    self._failing.failed(error=str(e))
                    failing = str(e)
                    if self.alarms is not None:
                        self.alarms.raise_(AlarmCode.STORE_FAILING, "store", failing)
                else:
                    self._failing.ok()
            if failing is None and self.alarms is not None:
                await self.alarms.report(AlarmCode.STORE_FAILING, "store", "", False)
            heartbeat.beat()
            await asyncio.sleep(STORE_PROBE_S)

    async def _check_file(self) -> str | None:
        """None when the database is at its path (or was just put back); else why not."""
        try:
            problem = await self.store.file_problem()
        except StoreError as e:
            return str(e)
        if problem is None:
            return None
        path = str(self.store.path)
        log.error("store_file_lost", path=path, problem=problem)
        if self.alarms is not None:
            # Recorded in the open database before the copy: the copy keeps it.
            await self.alarms.report(AlarmCode.STORE_FAILING, "store",
                                     f"{problem}; restoring it from the open database", True)
        began = time.monotonic()
        try:
            done = await self.store.restore()
        except StoreError as e:
            log.error("store_restore_failed", path=path, error=str(e))
            return f"{problem}; restoring it failed: {e}"
        self.restores += 1
        # took_ms: how long the writer (and so every tap and charge) waited.
        log.warning("store_restored", path=path, store_id=self.store.store_id,
                    next_seq=self.store.next_seq, done=done,
                    took_ms=round((time.monotonic() - began) * 1000, 1))
        return None

    async def shutdown(self) -> None:
        return None


async def apply_saved_tariffs(store: Store, power: PowerService, water: WaterService) -> None:
    """Prices set by the center (tariff.set) outlive restarts and win over the file's."""
    for service, price, unit in await store.read(meta.saved_tariffs):
        log.info("tariff_from_center", service=service, price=str(price), unit=unit)
        if service == "power":
            power.set_tariff(price, unit)
        else:
            water.set_tariff(service, price, unit)


def _public_key(config: Config) -> Ed25519PublicKey | None:
    center = config.center
    assert center is not None
    # center.insecure_unsigned_commands is warned about by the link at every start.
    if center.command_public_key_file is None:
        return None
    return load_public_key(center.command_public_key_file)


def make_reader(r: Reader, gateway: GatewaySection) -> CardReader:
    """The driver of the reader `r`, making card ids in the building's card_format."""
    common: dict[str, Any] = {"debounce_s": gateway.tap_debounce_s,
                              "card_format": gateway.card_format, "uid_order": r.uid_order}
    if r.type == "serial":
        if r.protocol == "ascii-line":  # the only reader whose lines have a format
            common["line_format"] = r.line_format
        return open_reader(r.id, "serial", port=r.port, baudrate=r.baudrate, protocol=r.protocol,
                           **common)
    return open_reader(r.id, "pcsc", name=r.name, **common)


def _power_service(config: Config, store: Store, hardware: Hardware, *, ledger: Ledger,
                   alarms: Alarms, clock: Clock) -> PowerService:
    """The power service over each room's meter and breaker, told of meter health."""
    power = PowerService(
        config, store, ledger=ledger, alarms=alarms, clock=clock,
        devices={
            r.id: (hardware.meter(meter_device(r.id), r.meter),
                   hardware.switch(breaker_device(r.id), r.breaker))
            for r in config.rooms
        },
        breaker_banks=hardware.switch_banks([breaker_device(r.id) for r in config.rooms]),
    )
    hardware.on_health(power.meter_health_changed)
    return power


def _monitoring(config: Config, store: Store, hardware: Hardware,
                snapshot: Snapshot) -> list[Component]:
    """The endpoints asked for. [metrics] and [web] are read at start only: their modules
    (prometheus_client is most of a megabyte) are loaded only by a daemon that serves them."""
    endpoints: list[Component] = []
    if config.metrics is not None:
        from gatewayd.services.metrics import MetricsEndpoint

        endpoints.append(MetricsEndpoint(config, store, hardware.buses, power=snapshot.power,
                                         water=snapshot.water, alarms=snapshot.alarms,
                                         center=snapshot.center))
    if config.web is not None:
        from gatewayd.services.status_page import StatusPage

        endpoints.append(StatusPage(config, snapshot))
    return endpoints


async def serve(config: Config, store: Store, notifier: Notifier | None = None) -> None:
    """Run the daemon until SIGTERM/SIGINT."""
    clock = Clock(config.gateway.timezone, config.gateway.clock_synced)
    ledger = Ledger()
    await store.read(ledger.load)
    alarms = Alarms(store, clock)
    await alarms.load()
    hardware = Hardware(config)
    power = _power_service(config, store, hardware, ledger=ledger, alarms=alarms, clock=clock)
    cards = Cards()
    await store.read(cards.load)
    link: CenterLink | None = None  # made below; sessions ask it whether the center is reachable
    water = WaterService(
        config, store, ledger=ledger, cards=cards, alarms=alarms, clock=clock,
        devices={
            p.id: (hardware.switch(valve_device(p.id), p.valve),
                   hardware.counter(f"flow:{p.id}", p.flow) if p.flow else None)
            for p in config.points
        },
        readers={r.id: make_reader(r, config.gateway)
                 for r in config.readers.values()},
        center_online=lambda: link is not None and link.connected,
    )
    await apply_saved_tariffs(store, power, water)
    snapshot = Snapshot(config, store, clock, ledger=ledger, cards=cards, alarms=alarms,
                        power=power, water=water, buses=hardware.buses)
    if config.center is not None:
        commands = CommandService(
            config, store, clock, ledger=ledger, cards=cards, power=power, water=water,
            public_key=_public_key(config))
        link = CenterLink(config, store, clock, handler=commands,
                          status=snapshot.status_fields, telemetry=snapshot.telemetry)
        commands.status = link.status_now
        snapshot.center = link.view
    # Shutdown order is the spec's: water first (stop taps, close valves, end
    # sessions), then power, then the center link (publish, say offline, disconnect).
    components: list[Component] = [water, power, snapshot]
    if link is not None:
        # The command screen stops after the link (which may be waiting on it).
        components += [link, commands.screen]
    components.append(StoreProbe(store, alarms, settle_after_s=alarm_settle_s(config)))
    components += _monitoring(config, store, hardware, snapshot)
    notifier = notifier or Notifier()
    snapshot.notify = notifier.status
    reloader = Reloader(config, hardware, power, water, make_reader=make_reader,
                        after=lambda: apply_saved_tariffs(store, power, water),
                        followers=[snapshot, *([commands] if link is not None else [])])
    supervisor = Supervisor(components, notifier, on_reload=reloader.reload)
    log.info("starting", building=config.gateway.building, summary=config.summary())
    await hardware.start()
    try:
        await supervisor.run()
    finally:
        await hardware.close()
