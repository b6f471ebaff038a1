"""Hardware and wire formats: Modbus devices, card readers, device profiles.

Nothing here knows about money, rules or the center. The daemon (`gatewayd`)
talks to drivers through the small protocols in `drivers.protocols`.
"""
