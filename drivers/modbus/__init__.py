"""Modbus RTU/TCP drivers: one `ModbusBus` owner per configured bus.

Layers, lowest first: `frames` (pure codecs: `pdu`, `reply`, `adu`) -> `link`
(one TCP connection or serial line) -> `bus` (queue, priorities, retries,
reconnects; its fault policy in `faults`) -> `devices` (Meter, Switch, Counter
per profile). `plan` is a pure helper; each device's health is `drivers.health`.
"""

from drivers.modbus.bus import BusStats, ModbusBus
from drivers.modbus.devices import ModbusCounter, ModbusMeter, ModbusSwitch

__all__ = [
    "BusStats",
    "ModbusBus",
    "ModbusCounter",
    "ModbusMeter",
    "ModbusSwitch",
]
