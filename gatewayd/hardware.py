"""The building's devices, made from the config: one bus owner per bus.

The rest of the daemon sees only the protocols of `drivers.devices`.
Health changes of every device arrive at one sink, named by device
(`meter:301`, `breaker:301`, `valve:shower-1`, `flow:shower-1`).
"""

from __future__ import annotations

from drivers.devices import Counter, Meter, Switch
from drivers.modbus.bus import ModbusBus
from drivers.modbus.health import HealthSink
from gatewayd.config import Bus, Config, DeviceRef


class Hardware:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._sinks: list[HealthSink] = []
        self.buses = {name: self._bus(b) for name, b in config.buses.items()}

    def _bus(self, b: Bus) -> ModbusBus:
        if b.type == "tcp":
            return ModbusBus.tcp(b.name, b.host, b.tcp_port, timeout_s=b.timeout_s,
                                 retries=b.retries, on_health=self._health)
        return ModbusBus.rtu(b.name, b.port, baudrate=b.baudrate, parity=b.parity,
                             stopbits=b.stopbits, timeout_s=b.timeout_s, retries=b.retries,
                             on_health=self._health)

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
        return self.buses[ref.bus].switch(name, ref.unit, ref.profile, ref.channel, ref.invert)

    def counter(self, name: str, ref: DeviceRef) -> Counter:
        return self.buses[ref.bus].counter(name, ref.unit, ref.profile, ref.channel)
