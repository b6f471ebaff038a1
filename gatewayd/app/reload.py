"""`systemctl reload gatewayd` (SIGHUP): the config file read again and applied live.

Contract (docs/configuration.md "Applying a change"; docs/decisions.md "Reload"):
- The file is read and checked off the loop by the loader `check-config` uses.
  An invalid file changes nothing: one `config_reload_invalid` error line gives
  every problem.
- A file that changes what only a restart can (`config.changes.RESTART_*`: the
  building, `state_dir`, the clock, the poll pace, the center link, the
  listeners) is refused whole: one `config_reload_refused` error line names
  those keys, and nothing changes.
- Otherwise: new and changed buses are started (unchanged ones keep running, with
  their devices: a running shower keeps its valve and flow meter), the devices of
  added and rewired rooms and points are made, power and water take the new file
  (`reconfigure`: no running session ends and no breaker is switched unless the
  new file calls for it), tariffs set by the center are applied again over the
  file's (as at start), and buses no longer used are closed.
  `config_reloaded` gives the counts of what was added, removed and changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import structlog

from drivers.protocols import CardReader
from gatewayd.config.changes import Changes, compare
from gatewayd.config.load import load_config
from gatewayd.config.model import Config, GatewaySection, Reader
from gatewayd.contract.events import breaker_device, flow_device, meter_device, valve_device
from gatewayd.errors import ConfigError
from gatewayd.services.hardware import Hardware
from gatewayd.services.power.service import PowerService
from gatewayd.services.water.service import WaterService

log = structlog.get_logger(__name__)


class FollowsConfig(Protocol):
    """A part that reads the config as it runs (the snapshot, the command service)."""

    config: Config


class Reloader:
    """Applies the config file again on request (`reload`, the supervisor's SIGHUP)."""

    def __init__(self, config: Config, hardware: Hardware, power: PowerService,
                 water: WaterService, *, make_reader: Callable[[Reader, GatewaySection], CardReader],
                 after: Callable[[], Awaitable[None]],
                 followers: Sequence[FollowsConfig] = ()) -> None:
        self.config = config
        self.hardware = hardware
        self.power = power
        self.water = water
        self.make_reader = make_reader
        self.after = after   # what start does after the services are built (center tariffs)
        self.followers = list(followers)

    async def reload(self) -> str:
        """Read, check and apply the file; the status line for systemd."""
        path = self.config.path
        try:
            new = await asyncio.to_thread(load_config, path)
        except ConfigError as e:
            log.error("config_reload_invalid", file=str(path), problems=len(e.problems),
                      detail=" | ".join(str(p) for p in e.problems),
                      result="nothing changed: the daemon runs on the file it had")
            n = len(e.problems)
            return (f"reload refused: {n} problem{'s' if n != 1 else ''} in {path}; "
                    "running as before")
        for warning in new.warnings:
            log.warning("config_warning", file=str(path), warning=str(warning))
        changes = compare(self.config, new)
        if changes.restart:
            log.error("config_reload_refused", file=str(path), keys=len(changes.restart),
                      detail=" | ".join(changes.restart),
                      result="nothing changed: these keys need systemctl restart gatewayd")
            return "reload refused: the file changes keys that need a restart; running as before"
        await self._apply(new, changes)
        self.config = new
        log.info("config_reloaded", file=str(path), **changes.counts(), tariffs=changes.tariffs,
                 curfews=changes.curfews, water=changes.water, summary=new.summary())
        return f"reloaded: {new.summary()}"

    async def _apply(self, new: Config, changes: Changes) -> None:
        hw = self.hardware
        await hw.add_buses(new, changes.buses.added | changes.buses.changed)
        # Every device is made before a service changes: a failure here leaves them as they were.
        rooms = {r.id: r for r in new.rooms}
        for rid in changes.rooms.removed | changes.rewired_rooms:
            hw.forget(meter_device(rid))
            hw.forget(breaker_device(rid))
        room_devices = {rid: (hw.meter(meter_device(rid), rooms[rid].meter),
                              hw.switch(breaker_device(rid), rooms[rid].breaker))
                        for rid in sorted(changes.rooms.added | changes.rewired_rooms)}
        banks = hw.switch_banks([breaker_device(r.id) for r in new.rooms])
        points = {p.id: p for p in new.points}
        for pid in changes.points.removed | changes.rewired_points:
            hw.forget(valve_device(pid))
            hw.forget(flow_device(pid))
        point_devices = {
            pid: (hw.switch(valve_device(pid), p.valve),
                  hw.counter(flow_device(pid), p.flow) if p.flow else None)
            for pid in sorted(changes.points.added | changes.rewired_points)
            for p in (points[pid],)}
        readers = {rid: self.make_reader(new.readers[rid], new.gateway)
                   for rid in sorted(changes.readers.added | changes.readers.changed)}
        await self.power.reconfigure(new, changes, devices=room_devices, breaker_banks=banks)
        await self.water.reconfigure(new, changes, devices=point_devices, readers=readers)
        if changes.tariffs:
            await self.after()
        for follower in self.followers:
            follower.config = new
        await hw.close_retired(changes.buses.removed)
