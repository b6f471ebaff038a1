"""`gatewayd probe` on a DL/T 645-2007 line: a meter's raw data bytes and scaled values,
its relay commanded and read back, a scan for meter addresses.

Contract: as `probe_modbus`: each function takes a started `Dlt645Bus`, prints on
stdout and returns the exit code (0 done, 1 the meter did not answer, refused or did
not follow); a `DeviceError` it does not handle reaches the caller. A scan either
sends the wildcard read of the address (13 to AA..AA: on a line with one meter wired,
that meter answers with its address; several answer at once and garble each other),
or reads the address of each of a list.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from drivers.dlt645.bus import Dlt645Bus
from drivers.dlt645.credentials import Credentials
from drivers.dlt645.frames import (
    AddressAnswer,
    ErrorAnswer,
    ReadAddress,
    ReadAnswer,
    ReadRequest,
    bcd_value,
)
from drivers.errors import DeviceError, FrameError
from gatewayd.config.model import DeviceRef
from gatewayd.tools.probe_show import command, doubt, print_table, scan_summary, with_unit

__all__ = ["read_meter", "scan", "switch"]

EXIT_OK, EXIT_FAILURE = 0, 1
DI_ADDRESS = 0x04000401   # the meter's communication address: every meter answers it
# Credentials for reading a relay only (no command is sent).
READ_ONLY = Credentials(level=0, password=0, operator=0)


async def read_meter(bus: Dlt645Bus, name: str, ref: DeviceRef) -> int:
    """Every field of the profile: the data bytes as sent, the digits, scale and value."""
    rows: list[list[str]] = []
    doubts: list[str] = []
    for fname, spec in ref.profile.specs.items():
        answer = await bus.transact(name, ReadRequest(ref.address, spec.di), command=True)
        if isinstance(answer, ErrorAnswer):
            rows.append([fname, f"{spec.di:08X}", "-", f"refused (error {answer.error:02X})",
                         "-", "-"])
            continue
        assert isinstance(answer, ReadAnswer)
        raw = answer.value
        try:
            value = spec.value(raw)
            digits = f"{bcd_value(raw, spec.signed) / 10**spec.decimals:.{spec.decimals}f}"
        except FrameError as e:
            rows.append([fname, f"{spec.di:08X}", raw.hex(" ").upper(), f"bad: {e}", "-", "-"])
            continue
        rows.append([fname, f"{spec.di:08X}", raw.hex(" ").upper(), digits,
                     f"{spec.scale:g}", with_unit(fname, value)])
        if why := doubt(fname, value):
            doubts.append(f"{fname}: {with_unit(fname, value)} looks wrong ({why}): "
                          f"check its length, decimals and scale in {ref.profile.source}")
    print_table(("FIELD", "DI", "DATA (as sent, low byte first)", "READ", "SCALE", "VALUE"),
                rows)
    for line in doubts:
        print(line)
    return EXIT_OK


async def switch(bus: Dlt645Bus, name: str, ref: DeviceRef, *, credentials: Credentials | None,
                 tz: dt.tzinfo, on: bool | None) -> int:
    """Read the meter's relay; with `on`, close (on) or trip (off) it and read it back."""
    assert ref.profile.control is not None   # a relay profile has its [control]
    relay = bus.relay(name, ref.address, credentials or READ_ONLY, ref.profile.specs["state"],
                      tz=tz, control=ref.profile.control)
    return await command(relay, f"relay of meter {ref.address} (on: closed, the room supplied)",
                         on, action=f" ({'close' if on else 'trip'})",
                         not_followed="the relay did not follow")


async def scan(bus: Dlt645Bus, addresses: Sequence[str]) -> int:
    """Find the meters of `addresses`, or with none given the one meter on the line."""
    if not addresses:
        return await _wildcard(bus)
    found = []
    for address in addresses:
        try:
            answer = await bus.transact(f"meter {address}", ReadRequest(address, DI_ADDRESS))
        except DeviceError as e:
            if "LinkTimeout" in e.message:
                continue
            raise   # the port, not this meter: the scan cannot go on
        found.append(address)
        how = "answers" if not isinstance(answer, ErrorAnswer) else (
            f"answers (refuses to read its address: error {answer.error:02X})")
        print(f"meter {address}: {how}", flush=True)
    return scan_summary(found, "meter")


async def _wildcard(bus: Dlt645Bus) -> int:
    bad_before = bus.stats.bad_frames
    try:
        answer = await bus.transact("the line", ReadAddress())
    except DeviceError as e:
        if "LinkTimeout" not in e.message:
            raise
        if bus.stats.bad_frames > bad_before:
            print("several meters answered at once (their answers garbled each other): wire "
                  "one meter at a time, or give their addresses (--addresses)")
        else:
            print("no meter answered the wildcard read of the address (AA..AA)")
        return EXIT_FAILURE
    if not isinstance(answer, AddressAnswer):
        print(f"a meter refused the wildcard read of the address: {answer}")
        return EXIT_FAILURE
    print(f"meter {answer.address}: answers (the one meter on this line: with several wired, "
          "scan with --addresses)")
    return EXIT_OK
