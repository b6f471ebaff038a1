"""DL/T 645-2007 drivers: meters and their relays on an RS-485 line, one `Dlt645Bus` per line.

Layers, lowest first: `frames` (pure codec) -> `link` (the serial line, one request
at a time) -> `bus` (queue, priorities, retries, reopening, the round's schedule)
-> `devices` (Meter and Switch per field specs). `credentials` reads the relay
password line.
"""
