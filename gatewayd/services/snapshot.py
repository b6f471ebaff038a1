"""What the gateway is doing now, for the status document, telemetry and `gatewayd status`.

`Snapshot` assembles status fields and telemetry from the live services.
As a component it also writes `state_dir/status.json` every few seconds
(atomically, mode 0600), which `gatewayd status` and the demo read: staff
get a view of the running daemon without touching its database or sockets.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import structlog

from drivers.retry import FailureLog
from gatewayd import __version__
from gatewayd.config.model import Config
from gatewayd.contract.wire import PointReading, RoomReading
from gatewayd.errors import StoreError
from gatewayd.services.alarms import Alarms
from gatewayd.services.clock import Clock
from gatewayd.services.component import Heartbeat
from gatewayd.services.hardware import AnyBus, bus_view
from gatewayd.services.power.room import RoomRuntime
from gatewayd.services.power.service import PowerService
from gatewayd.services.water.point import PointRuntime
from gatewayd.services.water.service import WaterService
from gatewayd.store import outbox
from gatewayd.store.cards import Cards
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger
from gatewayd.store.schema import CLASS_TELEMETRY

log = structlog.get_logger(__name__)

STATUS_FILE = "status.json"
# Often enough for a person watching; cheap for 300 rooms.
WRITE_EVERY_S = 2.0


class Snapshot:
    name = "snapshot"
    heartbeat_s: float | None = 30.0

    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Clock,
        *,
        ledger: Ledger,
        cards: Cards,
        alarms: Alarms,
        power: PowerService,
        water: WaterService,
        buses: Mapping[str, AnyBus] | None = None,
    ) -> None:
        self.config = config
        self.buses = buses or {}
        self.store = store
        self.clock = clock
        self.ledger = ledger
        self.cards = cards
        self.alarms = alarms
        self.power = power
        self.water = water
        self.started = time.time()
        self.center: Callable[[], dict[str, Any]] | None = None  # the link's own view
        self.notify: Callable[[str], None] | None = None   # systemd STATUS= (one line)
        self._notified = ""
        self.path = config.gateway.state_dir / STATUS_FILE

    # --- documents ------------------------------------------------------------------

    def status_fields(self) -> dict[str, Any]:
        counts = self.alarms.counts()
        return {
            "clock_synced": self.clock.synced(),
            "cards_version": self.cards.version or 0,
            "accounts_unknown": self.accounts_unknown(),
            "rooms": len(self.power.rooms),
            "points": len(self.water.points),
            "readers": len(self.water.readers),
            "faults": {
                "meters": counts["meter_offline"],
                "readers": counts["reader_offline"],
                "valves": counts["valve_fault"],
            },
        }

    def accounts_unknown(self) -> int:
        """Room accounts the center has not credited or synced yet."""
        return sum(1 for r in self.config.rooms if not self.ledger.is_known(r.account))

    def telemetry(self) -> dict[str, tuple[RoomReading, ...] | tuple[PointReading, ...]]:
        """The rooms' and points' readings for the center's telemetry (the contract's types)."""
        return {"rooms": tuple(self._room_reading(rt) for rt in self.power.rooms.values()),
                "points": tuple(self._point_reading(pt) for pt in self.water.points.values())}

    def _room_reading(self, rt: RoomRuntime) -> RoomReading:
        d = self.power.describe(rt)
        reading = RoomReading(
            room=d["room"], online=d["online"], power_w=d["power_w"], energy_wh=d["energy_wh"],
            voltage_v=d["voltage_v"], current_a=d["current_a"], pf=d["pf"], breaker=d["breaker"],
            balance_fen=d["balance_fen"])
        if not reading.online:
            # No reading is not the last reading: an offline meter's values are
            # null in telemetry (`state.get` still shows the last ones read).
            reading = msgspec.structs.replace(reading, power_w=None, energy_wh=None, voltage_v=None,
                                              current_a=None, pf=None)
        return reading

    def _point_reading(self, pt: PointRuntime) -> PointReading:
        d = self.water.describe(pt)
        return PointReading(point=d["point"], state=d["state"], card=d["card"], volume_ml=d["volume_ml"])

    def view(self) -> dict[str, Any]:
        """Everything `gatewayd status` shows."""
        return {
            "building": self.config.gateway.building,
            "pid": os.getpid(),
            "version": __version__,
            "started": self.clock.stamp(self.started),
            "updated": self.clock.stamp(),
            "updated_epoch": time.time(),
            "status": self.status_fields(),
            "center": self.center() if self.center else {"configured": False},
            "alarms": [{"code": c, "device": d, "detail": t}
                       for (c, d), t in sorted(self.alarms.active.items())],
            "rooms": [self.power.describe(rt) for rt in self.power.rooms.values()],
            "points": [self.water.describe(pt) for pt in self.water.points.values()],
            "store": {"next_seq": self.store.next_seq, "store_id": self.store.store_id},
            "taps": self.water.taps,
            "buses": self.bus_lines(),
        }

    def bus_lines(self) -> list[dict[str, Any]]:
        """Each bus: protocol, port open, devices offline and (DL/T 645) the round time."""
        out = []
        for name, bus in sorted(self.buses.items()):
            v = bus_view(name, bus)
            out.append({"bus": name, "protocol": v.protocol, "connected": v.connected,
                        "devices": len(v.health),
                        "meters": sum(1 for d in v.health if d.startswith("meter:")),
                        "offline": sum(1 for h in v.health.values() if not h.online),
                        "round_s": None if v.round_s is None else round(v.round_s, 2),
                        "rounds": v.rounds})
        return out

    # --- component --------------------------------------------------------------------

    async def start(self) -> None:
        return None

    async def full_view(self) -> dict[str, Any]:
        """`view()` and what waits in the outbox: results and events (`pending`),
        telemetry (read from the store, hence not in `view`)."""
        view = self.view()
        try:
            p = await self.store.read(outbox.pending)
        except StoreError:
            view["outbox"] = {}
        else:
            view["outbox"] = {"pending": p.messages, "telemetry": p.counts[CLASS_TELEMETRY],
                              "bytes": p.total_bytes}
        return view

    async def run(self, heartbeat: Heartbeat) -> None:
        # A state_dir that refuses the file (disk full, read-only) is said once,
        # then a line a minute, not every WRITE_EVERY_S.
        failures = FailureLog(log, "status_file_failed", recovered="status_file_written",
                              path=str(self.path))
        while True:
            try:
                view = await self.full_view()
                self._tell_systemd(view)
                await asyncio.to_thread(write_atomic, self.path, view)
            except OSError as e:
                failures.failed(error=e.strerror or str(e))   # the path is in the context
            else:
                failures.ok()
            heartbeat.beat()
            await asyncio.sleep(WRITE_EVERY_S)

    def _tell_systemd(self, view: dict[str, Any]) -> None:
        """One line for `systemctl status`: center, outbox, faults, sessions."""
        if self.notify is None:
            return
        center = view["center"]
        faults = view["status"]["faults"]
        sessions = sum(1 for p in view["points"] if p["state"] == "open")
        line = (
            ("center not configured" if not center.get("configured")
             else "center connected" if center.get("connected") else "center NOT connected")
            + f", {view['outbox'].get('pending', '?')} pending; faults: {faults['meters']} meters, "
            f"{faults['readers']} readers, {faults['valves']} valves; {sessions} sessions open"
        )
        if line != self._notified:
            self._notified = line
            self.notify(line)

    async def shutdown(self) -> None:
        view = await self.full_view()
        view["stopped"] = True
        if view["center"].get("configured"):
            # Written before the link says goodbye: it is about to disconnect.
            view["center"]["connected"] = False
        try:
            await asyncio.to_thread(write_atomic, self.path, view)
        except OSError as e:
            log.warning("status_file_failed", path=str(self.path), error=e.strerror or str(e))


def write_atomic(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, default=str)
    os.replace(tmp, path)


def read_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data
