"""What `gatewayd probe` is pointed at: a device of the config file, or one given by options.

Contract: `Site.load(path, named=...)` reads the config file (none when the default
file does not exist). A probe that names a room, point, reader or bus needs the file
valid (`ConfigError` otherwise); one given by options only takes from it what it can
(the state directory that tells whether the daemon runs, the site's profiles, the card
format). `Site.device`, `Site.bus` and `Site.reader` build the target from the
options, raising `ProbeUsage` with what is missing or wrong.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from drivers.cardreader.cardid import CardFormat
from drivers.cardreader.pcsc_reader import PcscCardReader
from drivers.cardreader.serial_reader import SerialCardReader
from drivers.errors import ProfileError
from drivers.profile import SHIPPED_DIR, Profile, load_profile
from gatewayd.config.files import Files
from gatewayd.config.gateway import DEFAULT_STATE_DIR, system_timezone
from gatewayd.config.load import DEFAULT_CONFIG_PATH, load_config
from gatewayd.config.model import Bus, Config, DeviceRef
from gatewayd.config.validate import show, suggestion
from gatewayd.errors import ConfigError, ProbeUsage
from gatewayd.tools.probe_owner import Owner
from gatewayd.tools.probe_reader import SeenIds
from gatewayd.tools.profiles import site_dir

__all__ = ["Site", "parse_addresses", "parse_units"]

T = TypeVar("T")
MAX_ADDRESSES = 1000   # units or DL/T 645 addresses in one scan (~0.5 s each when silent)


@dataclass(frozen=True, slots=True)
class Site:
    """The building as far as a probe needs it."""

    config: Config | None
    owner: Owner
    profiles_dir: Path
    card_format: CardFormat = "hex"
    debounce_s: float = 1.5
    timezone: str = "UTC"

    @classmethod
    def load(cls, path: Path, *, named: bool) -> Site:
        if path == DEFAULT_CONFIG_PATH and not path.exists():
            return cls(None, Owner.of(None), site_dir(path)[0], timezone=system_timezone())
        try:
            config = load_config(path, check_files=False)
        except ConfigError:
            if named or not path.exists():
                raise
            print(f"note: {path} has problems (gatewayd check-config {path}): only its "
                  "state_dir and profiles_dir are used", file=sys.stderr)
            return cls(None, Owner.of(_state_dir(path), endpoints=None), site_dir(path)[0],
                       timezone=system_timezone())
        ports = {b.port for b in config.buses.values() if b.type == "rtu"}
        ports |= {r.port for r in config.readers.values() if r.type == "serial"}
        endpoints = {(b.host, b.tcp_port) for b in config.buses.values() if b.type == "tcp"}
        g = config.gateway
        return cls(config, Owner.of(g.state_dir, frozenset(ports), frozenset(endpoints)),
                   g.profiles_dir, g.card_format, g.tap_debounce_s, g.timezone)

    def _config(self, option: str) -> Config:
        if self.config is None:
            raise ProbeUsage(f"{option} names a thing of the config file: give it with -c FILE")
        return self.config

    def profile(self, name: str, kind: str, bus: Bus) -> Profile:
        try:
            profile = load_profile(name, [self.profiles_dir, SHIPPED_DIR])
        except ProfileError as e:
            raise ProbeUsage(f"--profile: {e}") from None
        protocol = "dlt645-2007" if bus.protocol == "dlt645" else "modbus"
        if profile.kind != kind or profile.protocol != protocol:
            raise ProbeUsage(f"--profile: {show(name)} is a {profile.protocol} {profile.kind}, "
                             f"not a {protocol} {kind}")
        return profile

    def bus(self, args: argparse.Namespace, *, default_timeout: float | None = None,
            retries: int | None = None) -> Bus:
        """The bus of `--bus`, `--port` or `--host`, with `--timeout` if given."""
        if args.bus:
            buses = self._config("--bus").buses
            if args.bus not in buses:
                raise ProbeUsage(f"--bus: no bus {show(args.bus)} in the config file"
                                 f"{suggestion(args.bus, buses)}")
            bus = buses[args.bus]
        elif args.port or args.host:
            bus = _bus_of_options(args)
        else:
            raise ProbeUsage("name the bus: --bus NAME (from the config file), --port DEVICE "
                             "or --host HOST[:PORT]")
        timeout = args.timeout or default_timeout or bus.timeout_s
        return replace(bus, timeout_s=timeout,
                       retries=bus.retries if retries is None else retries)

    def device(self, args: argparse.Namespace) -> tuple[str, Bus, DeviceRef]:
        """The meter or switch the options name, its bus, and how to call it."""
        if args.room or getattr(args, "point", None):
            name, ref = self._named_device(args)
            return name, self._config("--room").buses[ref.bus], ref
        bus = self.bus(args)
        kind = "meter" if args.probe == "meter" else "switch"
        dlt = bus.protocol == "dlt645"
        if dlt and not args.address:
            raise ProbeUsage("--address: the meter's 12-digit address (DL/T 645)")
        if not dlt and args.unit is None:
            raise ProbeUsage("--unit: the device's Modbus unit id")
        default = ("dlt645-2007" if kind == "meter" else "dlt645-2007-relay") if dlt else (
            None if kind == "meter" else "relay-board")
        if not (args.profile or default):
            raise ProbeUsage("--profile: the meter's profile (gatewayd profiles lists them)")
        profile = self.profile(args.profile or default or "", kind, bus)
        ref = DeviceRef(bus.name, 0 if dlt else args.unit, profile,
                        getattr(args, "channel", 0), getattr(args, "invert", False),
                        address=args.address or "",
                        password_file=getattr(args, "password_file", None))
        return kind, bus, ref

    def _named_device(self, args: argparse.Namespace) -> tuple[str, DeviceRef]:
        config = self._config("--room" if args.room else "--point")
        if args.room:
            rooms = {r.id: r for r in config.rooms}
            room = _lookup("room", args.room, rooms)
            return ((f"meter of room {room.id}", room.meter) if args.probe == "meter" else
                    (f"breaker of room {room.id}", room.breaker))
        points = {p.id: p for p in config.points}
        point = _lookup("point", args.point, points)
        return f"valve of point {point.id}", point.valve

    def reader(self, args: argparse.Namespace) -> tuple[SerialCardReader | PcscCardReader,
                                                        SeenIds]:
        """The reader of `--reader` or `--port`, its port claimed (`ProbeRefused`)."""
        card_format: CardFormat = args.card_format or self.card_format
        if args.reader:
            readers = self._config("--reader").readers
            r = _lookup("reader", args.reader, readers)
            ids = SeenIds(card_format, r.uid_order)
            if r.type == "pcsc":
                self.owner.check_running(f"PC/SC reader {show(r.name)}")
                return PcscCardReader(r.id, r.name, ids=ids, debounce_s=self.debounce_s), ids
            port, baudrate, protocol, line_format = r.port, r.baudrate, r.protocol, r.line_format
        elif args.port:
            ids = SeenIds(card_format, args.uid_order)
            port, baudrate, protocol, line_format = (args.port, args.baudrate, args.protocol,
                                                     args.line_format)
        else:
            raise ProbeUsage("name the reader: --reader ID (from the config file) or --port")
        self.owner.check_port(port)
        return SerialCardReader(args.reader or port, port, baudrate=baudrate, protocol=protocol,
                                line_format=line_format, ids=ids,
                                debounce_s=self.debounce_s), ids


def _lookup(what: str, name: str, known: Mapping[str, T]) -> T:
    """`known[name]`, or `ProbeUsage` saying the file has no such thing."""
    if name not in known:
        raise ProbeUsage(f"no {what} {show(name)} in the config file{suggestion(name, known)}")
    return known[name]


def _bus_of_options(args: argparse.Namespace) -> Bus:
    dlt = args.dlt645
    if args.port:
        return Bus(args.port, "rtu", timeout_s=0.5 if dlt else 0.3, retries=1,
                   protocol="dlt645" if dlt else "modbus", port=args.port,
                   baudrate=args.baudrate or (2400 if dlt else 9600),
                   parity=args.parity or ("E" if dlt else "N"), stopbits=args.stopbits or 1)
    if dlt:
        raise ProbeUsage("--dlt645: a DL/T 645 line is a serial port (--port)")
    host, colon, port = args.host.rpartition(":")
    if not colon or not port.isdigit():
        host, port = args.host, "502"
    return Bus(f"{host}:{port}", "tcp", timeout_s=1.0, retries=1, host=host.strip("[]"),
               tcp_port=int(port))


def _state_dir(config: Path) -> Path:
    """`gateway.state_dir` of a file with problems, read as lightly as it can be."""
    try:
        gateway = tomllib.loads(config.read_text(encoding="utf-8")).get("gateway", {})
        value = gateway.get("state_dir", DEFAULT_STATE_DIR)
        return Files(config, False, []).resolve(value if isinstance(value, str) else "")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
        return Path(DEFAULT_STATE_DIR)


def parse_units(text: str) -> list[int]:
    """`1-40,200` -> [1, ..., 40, 200] (Modbus unit ids 0 to 255)."""
    return sorted(set(_ranges(text, "--units", _digits(1, 3), 255)))


def parse_addresses(text: str) -> list[str]:
    """`000000001230-000000001239,000000005678` -> the 12-digit addresses, in order."""
    if not text:
        return []
    return [f"{a:012d}" for a in dict.fromkeys(_ranges(text, "--addresses", _digits(12, 12),
                                                        10**12 - 1))]


def _digits(shortest: int, longest: int) -> Callable[[str], int]:
    """A parser of `shortest` to `longest` decimal digits; -1 for anything else."""
    def parse(text: str) -> int:
        ok = shortest <= len(text) <= longest and text.isdigit() and text.isascii()
        return int(text) if ok else -1
    return parse


def _ranges(text: str, option: str, number: Callable[[str], int], high: int) -> list[int]:
    """`A,B-C,...` as the numbers they span, each 0 to `high`."""
    out: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        a = number(first.strip())
        b = number(last.strip()) if last else a
        if not 0 <= a <= b <= high:
            raise ProbeUsage(f"{option}: {part.strip()!r} is not a number or FIRST-LAST "
                             f"within 0 to {high}")
        out.extend(range(a, b + 1))
        if len(out) > MAX_ADDRESSES:
            raise ProbeUsage(f"{option}: more than {MAX_ADDRESSES} to ask")
    return out
