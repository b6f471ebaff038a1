"""DL/T 645-2007 drivers: meters and their relays on an RS-485 line, one `Dlt645Bus` per line.

Layers, lowest first: `frames` (pure codec) -> `link` (the serial line, one request
at a time) -> `bus` (queue, priorities, retries, reopening, the round's schedule)
-> `devices` (Meter and Switch per field specs). `credentials` reads the relay
password line.
"""

from drivers.dlt645.bus import Dlt645Bus, Dlt645Stats
from drivers.dlt645.credentials import Credentials, parse_credentials, read_credentials
from drivers.dlt645.devices import Dlt645Meter, Dlt645Relay, FieldSpec

__all__ = [
    "Credentials",
    "Dlt645Bus",
    "Dlt645Meter",
    "Dlt645Relay",
    "Dlt645Stats",
    "FieldSpec",
    "parse_credentials",
    "read_credentials",
]
