"""The hardware the file names: [[buses]], the devices on them (a room's meter and breaker,
a point's valve and flow counter) with their profiles, and the serial ports.

Contract of the module: `Wiring` reads each bus and device table, recording
every problem at its place, and keeps one owner per thing that cannot be
shared: a serial port (a bus or a reader), a bus address (one physical
device), a breaker or valve coil, a meter, a flow counter channel; `check()`
reports what two users claim. Per-bus keys are read in `_bus`, per-device
keys in `Wiring.device`.

A bus speaks one protocol: Modbus (devices at a `unit`) or, on RTU, DL/T
645-2007 (devices at their 12-digit `address`; a relay with its
`password_file`, a secret). A device's profile speaks its bus's protocol.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Literal

from drivers.dlt645.credentials import Credentials, read_credentials
from drivers.errors import ProfileError
from drivers.profile import SHIPPED_DIR, Profile, load_profile
from gatewayd.config.files import Files
from gatewayd.config.model import ID_RE, ID_TEXT, Bus, DeviceRef
from gatewayd.config.validate import Problem, Table, claim, show

__all__ = ["DeviceKind", "Wiring"]

DeviceKind = Literal["meter", "switch", "counter"]
# Which profiles each bus protocol takes (`Profile.protocol`), and how messages name them.
PROFILE_PROTOCOL = {"modbus": "modbus", "dlt645": "dlt645-2007"}
PROTOCOL_NAME = {"modbus": "Modbus", "dlt645": "DL/T 645", "dlt645-2007": "DL/T 645-2007"}
ADDRESS_RE = re.compile(r"[0-9]{12}")


class Wiring:
    """Every bus, device and serial port of one config file, and who uses each."""

    def __init__(self, problems: list[Problem], profiles_dir: Path, files: Files) -> None:
        self.problems = problems
        self.files = files  # resolves and checks a DL/T relay's password_file
        self.profile_dirs = [profiles_dir, SHIPPED_DIR]
        self.profiles: dict[str, Profile] = {}
        self.bad_profiles: dict[str, str] = {}
        # Serial ports: one owner each (a bus or a reader), by place and owner.
        self.serial_ports: dict[str, str] = {}
        self.users: dict[DeviceKind, list[tuple[str, str, DeviceRef]]] = {
            "meter": [], "switch": [], "counter": []}
        # Every device use in file order, with its kind: one address is one device.
        self.device_uses: list[tuple[str, str, DeviceKind, DeviceRef]] = []

    def buses(self, root: Table) -> dict[str, Bus]:
        """[[buses]], by name."""
        buses: dict[str, Bus] = {}
        for t in root.tables("buses"):
            name = t.text("name", "", required=True, pattern=ID_RE, pattern_text=ID_TEXT)
            bus = self._bus(t, name)
            if bus is None:
                t.done(allowed_extra=("port", "host", "baudrate", "parity", "stopbits",
                                      "protocol"))
                continue
            if t.unique("name", name, buses, "bus"):
                buses[name] = bus
            t.done()
        return buses

    def _bus(self, t: Table, name: str) -> Bus | None:
        """One bus's keys; None when its `type` is wrong (a problem recorded)."""
        kind = t.text("type", "", required=True, choices=("rtu", "tcp"))
        protocol = t.text("protocol", "modbus", choices=("modbus", "dlt645"))
        if protocol == "dlt645" and kind == "tcp":
            t.problem("protocol", 'a DL/T 645 bus is a serial line: type = "rtu"')
        dlt = protocol == "dlt645"
        # DL/T 645 (config.md): 2400 baud 8E1, and the driver's 0.5 s for a slow line.
        timeout = t.number("timeout_s", 0.5 if dlt else 0.3 if kind == "rtu" else 1.0, above=0)
        retries = t.integer("retries", 1, minimum=0, maximum=10)
        gap = t.number("gap_s", 0.0, minimum=0, maximum=10)
        bus = Bus(name=name, type="tcp" if kind == "tcp" else "rtu", timeout_s=timeout,
                  retries=retries, gap_s=gap, protocol="dlt645" if dlt else "modbus")
        if kind == "rtu":
            return replace(
                bus,
                port=self.serial_port(t, f"bus {show(name)}"),
                baudrate=t.integer("baudrate", 2400 if dlt else 9600, minimum=300, maximum=921600),
                parity=t.text("parity", "E" if dlt else "N",  # type: ignore[arg-type]
                              choices=("N", "E", "O")),
                stopbits=t.integer("stopbits", 1, minimum=1, maximum=2),
            )
        if kind == "tcp":
            return replace(
                bus,
                host=t.text("host", "", required=True),
                tcp_port=t.integer("port", 502, minimum=1, maximum=65535),
            )
        return None

    def serial_port(self, t: Table, who: str) -> str:
        """A serial port: one bus or reader owns it (two would interleave their bytes)."""
        port = t.text("port", "", required=True)
        if port and (owner := claim(self.serial_ports, port, who)):
            t.problem("port", f"port {show(port)} is already used by {owner}")
        return port

    def profile(self, t: Table, name: str, kind: str, bus: Bus | None = None) -> Profile | None:
        """Load a profile once; its problems are reported at its first use only. On
        `bus`, the profile must speak the bus's protocol."""
        if name in self.bad_profiles:
            t.problem("profile", self.bad_profiles[name])
            return None
        profile = self.profiles.get(name)
        if profile is None:
            try:
                profile = load_profile(name, self.profile_dirs)
            except ProfileError as e:
                missing = [p for p in e.problems if p.file == f"{name}.toml" and not p.place]
                if missing:
                    # Not found: say so at every place that names it.
                    self.bad_profiles[name] = missing[0].message
                    t.problem("profile", missing[0].message)
                    return None
                self.bad_profiles[name] = f"profile {show(name)} has errors (reported above)"
                for p in e.problems:
                    self.problems.append(Problem(t.at("profile"), str(p)))
                return None
            self.profiles[name] = profile
        if profile.kind != kind:
            t.problem("profile", f"profile {show(name)} is a {profile.kind}, expected a {kind}")
            return None
        if bus is not None and profile.protocol != PROFILE_PROTOCOL[bus.protocol]:
            t.problem("profile", f"profile {show(name)} speaks {PROTOCOL_NAME[profile.protocol]}, "
                      f"bus {show(bus.name)} speaks {PROTOCOL_NAME[bus.protocol]}")
            return None
        return profile

    def device(
        self,
        parent: Table,
        key: str,
        kind: str,
        buses: Mapping[str, Bus],
        *,
        required: bool = True,
        channel: bool = False,
        flow: bool = False,
    ) -> DeviceRef | None:
        """The device table `key` of `parent`; None when absent or wrong (problems recorded)."""
        t = parent.table(key, required=required)
        if t is None:
            return None
        before = len(self.problems)
        bus_name = t.text("bus", "", required=True)
        bus = buses.get(bus_name)
        if bus_name and bus is None:
            t.problem("bus", f"no bus named {show(bus_name)}")
        dlt = bus is not None and bus.protocol == "dlt645"
        unit, address, password_file, credentials = (0, *self._dlt645_keys(t, kind)) if dlt else (
            self._unit(t, bus), "", None, None)
        profile_name = t.text("profile", "", required=True)
        profile = self.profile(t, profile_name, kind, bus) if profile_name else None
        # A DL/T 645 relay is one per meter: no channels, and its profile says what is on.
        ch = t.integer("channel", 0, minimum=0, maximum=1999) if channel and not dlt else 0
        invert = t.flag("invert", False) if kind == "switch" and not dlt else False
        ml = Decimal(0)
        if flow:
            before = len(self.problems)
            ml = t.decimal("ml_per_pulse", required=True, allow_number=True)
            if ml <= 0 and t.has("ml_per_pulse") and len(self.problems) == before:
                t.problem("ml_per_pulse", "expected a positive number of mL per pulse")
        if dlt and kind != "switch" and t.has("password_file"):
            t.problem("password_file", "only a relay has one (the password of its control)")
        wrong = [k for k in (("unit", "channel", "invert") if dlt else ("address", "password_file"))
                 if t.has(k)]
        for k in wrong:
            t.problem(k, f"a device on DL/T 645 bus {show(bus_name)} has an address, not a unit, "
                      "channel or invert" if dlt else
                      'only a device on a DL/T 645 bus (protocol = "dlt645") has one; a Modbus '
                      "device has a unit")
        t.done(allowed_extra=[*wrong, "password_file"] if dlt else wrong)
        if len(self.problems) > before or profile is None:
            # A value reported wrong was replaced by a fallback (unit 1, channel 0):
            # a device made of it would be found "already used" by another, an
            # error that is not there. It takes no part in the shared-use checks.
            return None
        return DeviceRef(bus_name, unit, profile, ch, invert, ml, address, password_file,
                         credentials)

    def _unit(self, t: Table, bus: Bus | None) -> int:
        """A Modbus device's unit."""
        max_unit = 247 if bus is None or bus.type == "rtu" else 255
        return t.integer("unit", 1, required=True, minimum=0 if bus and bus.type == "tcp" else 1,
                         maximum=max_unit)

    def _dlt645_keys(self, t: Table, kind: str) -> tuple[str, Path | None, Credentials | None]:
        """A DL/T 645 device's address and, for a relay, its password_file (required) and
        the credentials it holds (when files are checked)."""
        address = t.text("address", "", required=True, pattern=ADDRESS_RE,
                         pattern_text="the meter's 12-digit address (\"000000001234\")")
        if kind != "switch":
            return address, None, None   # a password_file here is reported by `device`
        before = len(self.problems)
        path = self.files.file(t, "password_file", required=True)
        credentials = None
        if path is not None and self.files.check_files and len(self.problems) == before:
            try:
                credentials = read_credentials(path)   # its messages never show the password
            except (OSError, ValueError) as e:
                t.problem("password_file", str(e))
        return address, path, credentials

    def use(self, place: str, who: str, kind: DeviceKind, ref: DeviceRef) -> None:
        """Record that `who` (at `place`) uses the device `ref` as a `kind`."""
        self.users[kind].append((place, who, ref))
        self.device_uses.append((place, who, kind, ref))

    def check(self) -> None:
        """Two rooms may not share a breaker coil; two points may not share a valve.

        Added to the contract, for the same reason: two rooms may not share a
        meter, nor two points a flow counter channel, since each would be
        charged for the other's use; and two different devices may not share
        one bus address (`_check_addresses`).
        """
        self._check_addresses()
        self._check_shared(self.users["switch"], "state", "switch")
        self._check_shared(self.users["counter"], "count", "flow counter")
        meters: dict[tuple[str, int | str], str] = {}
        for place, who, ref in self.users["meter"]:
            if owner := claim(meters, (ref.bus, ref.at), who):
                self.problems.append(
                    Problem(place, f"the same meter (bus {show(ref.bus)}, {ref.where}) "
                            f"is already used by {owner}")
                )

    def _check_addresses(self) -> None:
        """One bus address (bus, unit) is one physical device.

        A relay board may also be the counter board (relays and pulse inputs on
        one module: the contract's own example has a valve and a flow counter at
        unit 40), so a switch and a counter may share an address. A meter shares
        its address with nothing else, and one device is read with one profile
        per kind: anything else is two devices answering to one address, whose
        answers would be taken for each other's. Meters sharing an address are
        reported by the meter check (`check`), not again here.

        On a DL/T 645 bus the address is the meter's: the meter and its own
        relay share it, and nothing else does (one relay per meter).
        """
        at: dict[tuple[str, int | str], dict[str, tuple[str, str]]] = {}
        for place, who, kind, ref in self.device_uses:
            seen = at.setdefault((ref.bus, ref.at), {})
            address = f"bus {show(ref.bus)}, {ref.where}"
            shared = {"meter", "switch"} if ref.address else {"switch", "counter"}
            if kind in seen:
                owner, profile = seen[kind]
                if kind == "switch" and ref.address:
                    self.problems.append(Problem(place, (
                        f"{address} is already {owner}'s relay: a meter has one relay")))
                elif kind != "meter" and profile != ref.profile.name:
                    self.problems.append(Problem(place, (
                        f"{address} is already {owner}'s {kind} with profile {show(profile)}: "
                        f"one device cannot also be a {kind} with profile "
                        f"{show(ref.profile.name)}")))
                continue
            clash = [k for k in seen if {k, kind} != shared]
            if clash:
                owner, profile = seen[clash[0]]
                self.problems.append(Problem(place, (
                    f"{address} is already {owner}'s {clash[0]} (profile {show(profile)}): "
                    f"a {kind} (profile {show(ref.profile.name)}) cannot have the same address; "
                    f"two devices on one bus need two {'addresses' if ref.address else 'units'}")))
                continue
            seen[kind] = (who, ref.profile.name)

    def _check_shared(
        self, users: list[tuple[str, str, DeviceRef]], field: str, what: str
    ) -> None:
        owners: dict[tuple[str, int, str, int], str] = {}
        for place, who, ref in users:
            spec = ref.profile.fields.get(field)
            if spec is None:
                continue
            key = (ref.bus, ref.unit, spec.table, spec.at_channel(ref.channel))
            if key in owners:
                self.problems.append(
                    Problem(place, f"the same {what} (bus {show(ref.bus)}, unit {ref.unit}, "
                            f"channel {ref.channel}) is already used by {owners[key]}")
                )
            else:
                owners[key] = who
