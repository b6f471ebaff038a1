"""What a reload would change: the running `Config` and the file's, compared (config.md,
`systemctl reload`).

`compare(running, new)` is pure. `restart` names each key that only a restart can
change (docs/configuration.md lists them): a file with any is refused whole. The
rest is by id: rooms, points, readers and buses added, removed and changed. A
changed room or point is `rewired` when a device of it (its reference, profile
included, and a DL/T 645 relay's password as read from its file) or the bus under
one changed, or a point's service: its devices are made anew. Others keep their
devices and take only their new settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from gatewayd.config.model import Config, DeviceRef, Point, Room

# [gateway] keys a running daemon is built on: the store, the clock, every poll
# loop's pace, the readers' debounce and the center's card spelling.
RESTART_GATEWAY_KEYS = ("building", "state_dir", "timezone", "clock_synced", "poll_interval_s",
                        "tap_debounce_s", "card_format")
# Sections whose every key needs a restart: the center link (broker, identity,
# credentials, command key) and the listeners.
RESTART_SECTIONS = ("center", "metrics", "web")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Delta:
    """Ids added, removed and changed in one kind of thing (rooms, points, ...)."""

    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()
    changed: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def counts(self) -> dict[str, int]:
        return {"added": len(self.added), "removed": len(self.removed),
                "changed": len(self.changed)}


def _delta(old: Mapping[str, T], new: Mapping[str, T]) -> Delta:
    return Delta(added=frozenset(new.keys() - old.keys()),
                 removed=frozenset(old.keys() - new.keys()),
                 changed=frozenset(k for k in old.keys() & new.keys() if old[k] != new[k]))


@dataclass(frozen=True, slots=True)
class Changes:
    """What applying the new file means; see the module docstring."""

    restart: tuple[str, ...]
    rooms: Delta
    points: Delta
    readers: Delta
    buses: Delta
    rewired_rooms: frozenset[str]
    rewired_points: frozenset[str]
    tariffs: bool
    curfews: bool
    water: bool
    refused_taps_per_min: bool

    @property
    def nothing(self) -> bool:
        return not (self.rooms or self.points or self.readers or self.buses or self.tariffs
                    or self.curfews or self.water or self.refused_taps_per_min)

    def counts(self) -> dict[str, dict[str, int]]:
        """The `config_reloaded` log line's counts, by kind."""
        return {"rooms": self.rooms.counts(), "points": self.points.counts(),
                "readers": self.readers.counts(), "buses": self.buses.counts()}


def _restart_keys(running: Config, new: Config) -> tuple[str, ...]:
    out: list[str] = []
    for key in RESTART_GATEWAY_KEYS:
        was, now = getattr(running.gateway, key), getattr(new.gateway, key)
        if was != now:
            out.append(f'gateway.{key}: "{was}" in the running daemon, "{now}" in the file')
    for section in RESTART_SECTIONS:
        if getattr(running, section, None) != getattr(new, section, None):
            out.append(f"[{section}]: changed")
    return tuple(out)


def _wiring(thing: Room | Point) -> tuple[object, ...]:
    """What a room or point's devices are made from (a point's service sets its billing)."""
    if isinstance(thing, Room):
        return (thing.meter, thing.breaker)
    return (thing.valve, thing.flow, thing.service)


def _by_id(running: Iterable[Room | Point], new: Iterable[Room | Point],
           moved: frozenset[str]) -> tuple[Delta, frozenset[str]]:
    """The delta of rooms (or points), and which changed ones are rewired."""
    old_by = {t.id: t for t in running}
    new_by = {t.id: t for t in new}

    def on_moved_bus(t: Room | Point) -> bool:
        return any(isinstance(r, DeviceRef) and r.bus in moved for r in _wiring(t))

    delta = _delta(old_by, new_by)
    changed = delta.changed | {i for i in old_by.keys() & new_by.keys() if on_moved_bus(new_by[i])}
    rewired = frozenset(i for i in changed
                        if _wiring(old_by[i]) != _wiring(new_by[i]) or on_moved_bus(new_by[i]))
    return Delta(delta.added, delta.removed, frozenset(changed)), rewired


def compare(running: Config, new: Config) -> Changes:
    """The changes from `running` to `new` (both loaded and valid)."""
    buses = _delta(running.buses, new.buses)
    rooms, rewired_rooms = _by_id(running.rooms, new.rooms, buses.changed)
    points, rewired_points = _by_id(running.points, new.points, buses.changed)
    return Changes(
        restart=_restart_keys(running, new),
        rooms=rooms,
        points=points,
        readers=_delta(running.readers, new.readers),
        buses=buses,
        rewired_rooms=rewired_rooms,
        rewired_points=rewired_points,
        tariffs=running.tariffs != new.tariffs,
        curfews=running.curfews != new.curfews,
        water=running.water != new.water,
        refused_taps_per_min=(running.gateway.refused_taps_per_min
                              != new.gateway.refused_taps_per_min),
    )
