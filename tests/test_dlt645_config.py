"""check-config for DL/T 645 buses, devices and profiles (config.md "Meters and relays
on DL/T 645-2007"): the defaults of a DL/T 645 bus, and a message for every new error,
naming the room and key."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from gatewayd.config.load import load_config
from gatewayd.errors import ConfigError

HEAD = """
[gateway]
building = "b07"
state_dir = "{state}"

[[buses]]
name = "dlt"
type = "rtu"
protocol = "dlt645"
port = "/dev/ttyUSB2"

[[buses]]
name = "rs485-a"
type = "rtu"
port = "/dev/ttyUSB0"
"""

ROOM = """
[[rooms]]
id = "{id}"
meter = {{ bus = "dlt", address = "{address}", profile = "dlt645-2007" }}
breaker = {{ bus = "dlt", address = "{address}", profile = "dlt645-2007-relay", password_file = "pw" }}
"""


def config(tmp_path: Path, *rooms: str, head: str = HEAD, mode: int = 0o640) -> Path:
    password = tmp_path / "pw"
    password.write_text("02:123456:00000001\n")
    password.chmod(mode)
    path = tmp_path / "gateway.toml"
    path.write_text(textwrap.dedent(head).replace("{state}", str(tmp_path / "state"))
                    + "".join(rooms))
    return path


def room(rid: str, address: str) -> str:
    return ROOM.format(id=rid, address=address)


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    # `place: message`; where each is (its line, its room) is tested on its own.
    return [f"{p.place}: {p.message}" if p.place else p.message for p in info.value.problems]


def test_a_dlt645_floor_loads_with_the_standards_defaults(tmp_path: Path) -> None:
    cfg = load_config(config(tmp_path, room("401", "000000001234"), room("402", "000000005678")))
    bus = cfg.buses["dlt"]
    assert (bus.protocol, bus.baudrate, bus.parity, bus.stopbits, bus.gap_s, bus.timeout_s) == (
        "dlt645", 2400, "E", 1, 0.0, 0.5)
    assert (cfg.buses["rs485-a"].protocol, cfg.buses["rs485-a"].baudrate) == ("modbus", 9600)
    r = cfg.rooms[0]
    assert (r.meter.address, r.meter.at, r.breaker.at) == ("000000001234",) * 3
    assert r.breaker.password_file == tmp_path / "pw"
    assert r.meter.password_file is None
    assert r.breaker.profile.control == (0x1A, 0x1C)
    assert not cfg.warnings


def test_a_password_file_every_user_may_read_is_warned_about(tmp_path: Path) -> None:
    cfg = load_config(config(tmp_path, room("401", "000000001234"), mode=0o644))
    (warning,) = cfg.warnings
    assert warning.place == "rooms[0].breaker.password_file"
    assert "is a secret readable by every user" in warning.message and "chmod 0640" in warning.message


def test_dlt645_only_on_rtu(tmp_path: Path) -> None:
    head = HEAD.replace('type = "rtu"\nprotocol = "dlt645"\nport = "/dev/ttyUSB2"',
                        'type = "tcp"\nprotocol = "dlt645"\nhost = "10.0.0.2"')
    assert problems(config(tmp_path, head=head)) == [
        'buses[0].protocol: a DL/T 645 bus is a serial line: type = "rtu"']
    head = HEAD.replace('protocol = "dlt645"', 'protocol = "dl645"')
    assert problems(config(tmp_path, head=head)) == [
        'buses[0].protocol: expected one of modbus, dlt645, got "dl645"']


def test_addresses_are_12_digits_and_unique_on_their_bus(tmp_path: Path) -> None:
    found = problems(config(tmp_path, room("401", "1234"), room("402", "000000005678"),
                            room("403", "000000005678")))
    assert found == [
        'rooms[0].meter.address: expected the meter\'s 12-digit address ("000000001234"), '
        'got "1234"',
        'rooms[0].breaker.address: expected the meter\'s 12-digit address ("000000001234"), '
        'got "1234"',
        'rooms[2].breaker: bus "dlt", address "000000005678" is already room "402"\'s '
        "relay: a meter has one relay",
        'rooms[2].meter: the same meter (bus "dlt", address "000000005678") is already '
        'used by room "402"',
    ]


def test_unit_and_address_belong_to_their_protocols(tmp_path: Path) -> None:
    dlt_with_unit = """
[[rooms]]
id = "401"
meter = { bus = "dlt", unit = 3, address = "000000001234", profile = "dlt645-2007" }
[rooms.breaker]
bus = "dlt"
address = "000000001234"
profile = "dlt645-2007-relay"
password_file = "pw"
channel = 1
"""
    modbus_with_address = """
[[rooms]]
id = "301"
meter = { bus = "rs485-a", unit = 1, address = "000000001234", profile = "eastron-sdm120" }
breaker = { bus = "rs485-a", unit = 31, profile = "relay-board", password_file = "pw" }
"""
    assert problems(config(tmp_path, dlt_with_unit, modbus_with_address)) == [
        'rooms[0].meter.unit: a device on DL/T 645 bus "dlt" has an address, not a unit, '
        "channel or invert",
        'rooms[0].breaker.channel: a device on DL/T 645 bus "dlt" has an address, not a '
        "unit, channel or invert",
        'rooms[1].meter.address: only a device on a DL/T 645 bus (protocol = "dlt645") has one; '
        "a Modbus device has a unit",
        'rooms[1].breaker.password_file: only a device on a DL/T 645 bus (protocol = "dlt645") '
        "has one; a Modbus device has a unit",
    ]


def test_a_relay_needs_its_password_file_and_a_meter_has_none(tmp_path: Path) -> None:
    text = """
[[rooms]]
id = "401"
meter = { bus = "dlt", address = "000000001234", profile = "dlt645-2007", password_file = "pw" }
breaker = { bus = "dlt", address = "000000001234", profile = "dlt645-2007-relay" }

[[rooms]]
id = "402"
meter = { bus = "dlt", address = "000000005678", profile = "dlt645-2007" }
[rooms.breaker]
bus = "dlt"
address = "000000005678"
profile = "dlt645-2007-relay"
password_file = "missing.pw"
"""
    found = problems(config(tmp_path, text))
    assert found[:2] == [
        "rooms[0].meter.password_file: only a relay has one (the password of its control)",
        "rooms[0].breaker.password_file: required",
    ]
    assert found[2].startswith("rooms[1].breaker.password_file: cannot read ")
    assert found[2].endswith("missing.pw: No such file or directory") and len(found) == 3


def test_profiles_speak_their_bus_protocol(tmp_path: Path) -> None:
    text = """
[[rooms]]
id = "401"
meter = { bus = "dlt", address = "000000001234", profile = "eastron-sdm120" }
breaker = { bus = "dlt", address = "000000001234", profile = "relay-board", password_file = "pw" }

[[rooms]]
id = "301"
meter = { bus = "rs485-a", unit = 1, profile = "dlt645-2007" }
breaker = { bus = "rs485-a", unit = 31, profile = "dlt645-2007-relay" }
"""
    assert problems(config(tmp_path, text)) == [
        'rooms[0].meter.profile: profile "eastron-sdm120" speaks Modbus, bus "dlt" '
        "speaks DL/T 645",
        'rooms[0].breaker.profile: profile "relay-board" speaks Modbus, bus "dlt" '
        "speaks DL/T 645",
        'rooms[1].meter.profile: profile "dlt645-2007" speaks DL/T 645-2007, bus "rs485-a" '
        "speaks Modbus",
        'rooms[1].breaker.profile: profile "dlt645-2007-relay" speaks DL/T 645-2007, '
        'bus "rs485-a" speaks Modbus',
    ]


def test_a_meter_and_another_meters_relay_may_not_share_an_address(tmp_path: Path) -> None:
    text = room("401", "000000001234") + """
[[rooms]]
id = "402"
meter = { bus = "dlt", address = "000000005678", profile = "dlt645-2007" }
breaker = { bus = "dlt", address = "000000001234", profile = "dlt645-2007-relay", password_file = "pw" }
"""
    assert problems(config(tmp_path, text)) == [
        'rooms[1].breaker: bus "dlt", address "000000001234" is already room "401"\'s '
        "relay: a meter has one relay"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_password_file_is_an_error(tmp_path: Path) -> None:
    path = config(tmp_path, room("401", "000000001234"), mode=0o000)
    (problem,) = problems(path)
    assert problem.startswith("rooms[0].breaker.password_file: cannot read ")
    assert problem.endswith("Permission denied")


def test_a_password_file_must_hold_a_password_line(tmp_path: Path) -> None:
    path = config(tmp_path, room("401", "000000001234"))
    (tmp_path / "pw").write_text("02:12345:00000001\n")
    (problem,) = problems(path)
    assert problem == f"rooms[0].breaker.password_file: {tmp_path / 'pw'}: the password is 6 hex digits"
    assert "12345" not in problem.replace(str(tmp_path), "")
