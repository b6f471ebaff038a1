"""The building's devices, made from the config: one bus owner per bus.

The rest of the daemon sees only the protocols of `drivers.protocols`.
Health changes of every device arrive at one sink, named by device
(`meter:301`, `breaker:301`, `valve:shower-1`, `flow:shower-1`).
A Modbus bus is a `ModbusBus`, a DL/T 645 bus a `Dlt645Bus`: its relays
carry the credentials of their `password_file` and command deadlines on the
building's clock (`gateway.timezone`, the meters' clock).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from drivers.dlt645.bus import Dlt645Bus
from drivers.dlt645.credentials import Credentials, read_credentials
from drivers.health import DeviceHealth, HealthSink
from drivers.modbus.bus import ModbusBus
from drivers.modbus.devices import ModbusSwitch
from drivers.protocols import Counter, Meter, Switch, SwitchBank
from gatewayd.config.model import Bus, Config, DeviceRef


@dataclass(frozen=True, slots=True)
class BusView:
    """What metrics and `gatewayd status` show of one bus, whatever its protocol."""

    name: str
    protocol: str
    connected: bool
    health: dict[str, DeviceHealth]
    counters: dict[str, int]
    round_s: float | None   # DL/T 645: the last round (every meter read once)
    rounds: int


AnyBus = ModbusBus | Dlt645Bus


def bus_view(name: str, bus: AnyBus) -> BusView:
    """`bus` as metrics and the status view show it."""
    if isinstance(bus, Dlt645Bus):
        s = bus.stats
        return BusView(name, "dlt645", bus.connected, bus.health, {
            "requests": s.requests, "failures": s.failures, "timeouts": s.timeouts,
            "reconnects": s.reopens, "noise_faults": s.noise_faults,
            "dropped_bytes": s.dropped_bytes, "bad_frames": s.bad_frames,
            "foreign_frames": s.foreign_frames}, s.round_s, s.rounds)
    m = bus.stats
    return BusView(name, "modbus", bus.connected, bus.health, {
        "requests": m.requests, "failures": m.failures, "timeouts": m.timeouts,
        "reconnects": m.reconnects, "noise_faults": m.noise_faults,
        "dropped_bytes": m.dropped_bytes}, None, 0)


def make_bus(b: Bus, on_health: HealthSink | None = None) -> AnyBus:
    """The driver of one configured bus (not started)."""
    if b.protocol == "dlt645":
        return Dlt645Bus(b.name, b.port, baudrate=b.baudrate, parity=b.parity,
                         stopbits=b.stopbits, timeout_s=b.timeout_s, retries=b.retries,
                         gap_s=b.gap_s, on_health=on_health)
    if b.type == "tcp":
        return ModbusBus.tcp(b.name, b.host, b.tcp_port, timeout_s=b.timeout_s,
                             retries=b.retries, gap_s=b.gap_s, on_health=on_health)
    return ModbusBus.rtu(b.name, b.port, baudrate=b.baudrate, parity=b.parity,
                         stopbits=b.stopbits, timeout_s=b.timeout_s, retries=b.retries,
                         gap_s=b.gap_s, on_health=on_health)


class Hardware:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._sinks: list[HealthSink] = []
        self._switches: dict[str, tuple[ModbusBus, ModbusSwitch]] = {}
        self._owner: dict[str, AnyBus] = {}      # device name -> the bus it was made on
        self._retired: list[AnyBus] = []         # replaced on reload, closed once let go
        self._credentials: dict[str, Credentials] = {}
        self._tz = ZoneInfo(config.gateway.timezone)
        self.buses: dict[str, AnyBus] = {
            name: self._bus(b) for name, b in config.buses.items()}

    def _bus(self, b: Bus) -> AnyBus:
        return make_bus(b, self._health)

    def on_health(self, sink: HealthSink) -> None:
        self._sinks.append(sink)

    def _health(self, device: str, online: bool, detail: str) -> None:
        for sink in self._sinks:
            sink(device, online, detail)

    async def start(self) -> None:
        for bus in self.buses.values():
            await bus.start()

    async def close(self) -> None:
        for bus in self.buses.values():
            await bus.close()

    async def add_buses(self, config: Config, names: Iterable[str]) -> None:
        """A reload's new and changed buses (`names`), started; a changed one's old
        owner is kept until `close_retired` (its devices are being let go)."""
        self.config = config
        self._credentials.clear()   # password files are read again for relays made from now
        for name in sorted(names):
            old = self.buses.get(name)
            if old is not None:
                self._retired.append(old)
            self.buses[name] = bus = self._bus(config.buses[name])
            await bus.start()

    async def close_retired(self, removed: Iterable[str]) -> None:
        """Close the buses a reload replaced, and those it removed (`removed`)."""
        for name in removed:
            self._retired.append(self.buses.pop(name))
        retired, self._retired = self._retired, []
        for bus in retired:
            await bus.close()

    def forget(self, name: str) -> None:
        """Device `name` is gone (or made anew): its bus stops tracking it."""
        bus = self._owner.pop(name, None)
        self._switches.pop(name, None)
        if bus is not None:
            bus.forget(name)

    def _made(self, name: str, ref: DeviceRef) -> AnyBus:
        bus = self._owner[name] = self.buses[ref.bus]
        return bus

    def meter(self, name: str, ref: DeviceRef) -> Meter:
        bus = self._made(name, ref)
        if isinstance(bus, Dlt645Bus):
            return bus.meter(name, ref.address, ref.profile.specs)
        return bus.meter(name, ref.unit, ref.profile)

    def switch(self, name: str, ref: DeviceRef) -> Switch:
        bus = self._made(name, ref)
        if isinstance(bus, Dlt645Bus):
            assert ref.password_file is not None and ref.profile.control is not None  # config
            return bus.relay(name, ref.address, self._credentials_of(ref), ref.profile.specs["state"],
                             tz=self._tz, control=ref.profile.control)
        sw = bus.switch(name, ref.unit, ref.profile, ref.channel, ref.invert)
        self._switches[name] = (bus, sw)
        return sw

    def _credentials_of(self, ref: DeviceRef) -> Credentials:
        """The relay password: as the config loaded it, else read once per file (a
        floor's meters often share one)."""
        if ref.credentials is not None:
            return ref.credentials
        assert ref.password_file is not None
        key = str(ref.password_file)
        if key not in self._credentials:
            self._credentials[key] = read_credentials(ref.password_file)
        return self._credentials[key]

    def switch_banks(self, names: Sequence[str]) -> list[SwitchBank]:
        """The Modbus switches `names` (made by `switch`) grouped by relay board: one
        bank per bus, unit and profile, read in the fewest requests. A DL/T 645
        relay is in none: its slow bus reads meters, and the relay is read at start
        and after each command."""
        groups: dict[tuple[str, int, str], list[ModbusSwitch]] = {}
        boards: dict[str, ModbusBus] = {}
        for name in names:
            if name not in self._switches:
                continue
            bus, sw = self._switches[name]
            boards[bus.name] = bus
            groups.setdefault((bus.name, sw.unit, sw.profile.name), []).append(sw)
        return [boards[bus].switch_bank(f"relays:{bus}:{unit}", switches)
                for (bus, unit, _), switches in groups.items()]

    def counter(self, name: str, ref: DeviceRef) -> Counter:
        bus = self._made(name, ref)
        assert isinstance(bus, ModbusBus)   # config: no DL/T 645 counter profile exists
        return bus.counter(name, ref.unit, ref.profile, ref.channel)
