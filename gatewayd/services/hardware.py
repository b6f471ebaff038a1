"""The building's devices, made from the config: one bus owner per bus.

The rest of the daemon sees only the protocols of `drivers.protocols`.
Health changes of every device arrive at one sink, named by device
(`meter:301`, `breaker:301`, `valve:shower-1`, `flow:shower-1`).
"""

from __future__ import annotations

from collections.abc import Sequence

from drivers.modbus.bus import ModbusBus
from drivers.modbus.devices import ModbusSwitch
from drivers.health import HealthSink
from drivers.protocols import Counter, Meter, Switch, SwitchBank
from gatewayd.config.model import Bus, Config, DeviceRef


class Hardware:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._sinks: list[HealthSink] = []
        self._switches: dict[str, tuple[str, ModbusSwitch]] = {}
        self.buses = {name: self._bus(b) for name, b in config.buses.items()}

    def _bus(self, b: Bus) -> ModbusBus:
        if b.type == "tcp":
            return ModbusBus.tcp(b.name, b.host, b.tcp_port, timeout_s=b.timeout_s,
                                 retries=b.retries, gap_s=b.gap_s, on_health=self._health)
        return ModbusBus.rtu(b.name, b.port, baudrate=b.baudrate, parity=b.parity,
                             stopbits=b.stopbits, timeout_s=b.timeout_s, retries=b.retries,
                             gap_s=b.gap_s, on_health=self._health)

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

    def meter(self, name: str, ref: DeviceRef) -> Meter:
        return self.buses[ref.bus].meter(name, ref.unit, ref.profile)

    def switch(self, name: str, ref: DeviceRef) -> Switch:
        sw = self.buses[ref.bus].switch(name, ref.unit, ref.profile, ref.channel, ref.invert)
        self._switches[name] = (ref.bus, sw)
        return sw

    def switch_banks(self, names: Sequence[str]) -> list[SwitchBank]:
        """The switches `names` (made by `switch`) grouped by relay board: one
        bank per bus, unit and profile, read in the fewest requests."""
        groups: dict[tuple[str, int, str], list[ModbusSwitch]] = {}
        for name in names:
            bus, sw = self._switches[name]
            groups.setdefault((bus, sw.unit, sw.profile.name), []).append(sw)
        return [self.buses[bus].switch_bank(f"relays:{bus}:{unit}", switches)
                for (bus, unit, _), switches in groups.items()]

    def counter(self, name: str, ref: DeviceRef) -> Counter:
        return self.buses[ref.bus].counter(name, ref.unit, ref.profile, ref.channel)
