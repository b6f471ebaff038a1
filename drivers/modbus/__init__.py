"""Modbus RTU/TCP drivers: one `ModbusBus` owner per configured bus.

Layers, lowest first: `frames` (pure codecs: `pdu`, `reply`, `adu`) -> `link`
(one TCP connection or serial line) -> `bus` (queue, priorities, retries,
reconnects; its fault policy in `faults`) -> `devices` (Meter, Switch, Counter
per profile). `plan` and `health` are pure helpers.
"""

from drivers.modbus.bus import BusStats, ModbusBus
from drivers.modbus.devices import ModbusCounter, ModbusMeter, ModbusSwitch
from drivers.modbus.health import DeviceHealth, HealthSink

__all__ = [
    "BusStats",
    "DeviceHealth",
    "HealthSink",
    "ModbusBus",
    "ModbusCounter",
    "ModbusMeter",
    "ModbusSwitch",
]
