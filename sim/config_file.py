"""The daemon's config for a simulated building, as facilities staff would write it."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from sim.building import ML_PER_PULSE, PRICE_DRINKING, PRICE_POWER, PRICE_SHOWER, VALVE_UNIT
from sim.dlt645_floor import BAUDRATE, PROFILE, RELAY_PROFILE, password_line

if TYPE_CHECKING:
    from sim.building import SimulatedBuilding

# The rules of the demo's building: quick trips, recloses and reports, so that a
# compressed day shows them.
RULES = [
    "[power]",
    "max_power_w = 2000",
    "trip_after_s = 2",
    "reclose_after_s = 8",
    "lockout_trips = 3",
    "lockout_window_s = 120",
    "lockout_s = 120",
    "resistive_step_w = 300",
    "resistive_pf = 0.97",
    "low_balance_fen = 500",
    "report_fen = 100",
    "report_interval_s = 30",
    "",
    "[water]",
    "min_balance_fen = 50",
    "step_fen = 1",
    "max_session_s = 600",
    "idle_close_s = 5",
    "offline_limit_fen = 5000",
    "",
]


def write_config(sim: SimulatedBuilding, path: Path | None = None, *, speed: float = 1.0,
                 broker: str | None = None, metrics_port: int | None = None,
                 poll_interval_s: float = 0.5, center_public_key: Path | None = None) -> Path:
    """Write the daemon's config for `sim`; returns its path.

    Prices are the campus prices times `speed`: with the day running
    `speed` times faster than the wall clock, a shower or an evening of
    lights costs what it would in a real day. With `broker`, a `[center]`
    that verifies commands with `center_public_key`, or without one accepts
    unsigned commands (a lab setting, warned at every start).
    """
    assert sim.started, "start() first: the config names the ports"
    path = path or sim.workdir / "gateway.toml"
    # The config names it, and a profiles_dir named in a config must exist.
    (sim.workdir / "profiles").mkdir(exist_ok=True)
    k = Decimal(str(speed))
    lines = [
        "# Written by sim.building: a simulated building on 127.0.0.1.",
        f"# Prices are the campus prices x {speed:g} (the demo day runs {speed:g} times faster).",
        "[gateway]",
        f'building = "{sim.building}"',
        'site = "demo-campus"',
        f'state_dir = "{sim.state_dir}"',
        f"poll_interval_s = {poll_interval_s}",
        "tap_debounce_s = 1.0",
        f'profiles_dir = "{sim.workdir / "profiles"}"',
        'clock_synced = "yes"',
        "",
    ]
    if broker is not None:
        lines += [
            "[center]",
            f'broker = "{broker}"',
            f'command_public_key_file = "{center_public_key}"' if center_public_key else
            "insecure_unsigned_commands = true   # lab only: this center does not sign",
            "telemetry_interval_s = 10",
            "",
        ]
    lines += [
        "[tariffs]",
        f'power = {{ price = "{_price(PRICE_POWER * k)}", unit = "kWh" }}',
        f'shower = {{ price = "{_price(PRICE_SHOWER * k)}", unit = "L" }}',
        f'drinking = {{ price = "{_price(PRICE_DRINKING * k)}", unit = "L" }}',
        "",
        *RULES,
        *_devices(sim),
    ]
    if metrics_port is not None:
        lines += ["[metrics]", f'listen = "127.0.0.1:{metrics_port}"', ""]
    path.write_text("\n".join(lines))
    return path


def _devices(sim: SimulatedBuilding) -> list[str]:
    """Buses, rooms, readers and points: what the simulated wiring is."""
    lines: list[str] = []
    for floor in sim.floors:
        lines += ["[[buses]]", f'name = "floor{floor.number}"', 'type = "tcp"',
                  'host = "127.0.0.1"', f"port = {floor.port}", "timeout_s = 0.5", ""]
    for room in (r for floor in sim.floors for r in floor.rooms):
        bus = f"floor{room.floor}"
        lines += [
            "[[rooms]]",
            f'id = "{room.id}"',
            f'meter = {{ bus = "{bus}", unit = {room.unit}, profile = "eastron-sdm120" }}',
            f'breaker = {{ bus = "{bus}", unit = {room.breaker_unit}, profile = "relay-board", '
            f"channel = {room.breaker_channel} }}",
            "resistive_cutoff = true",
            "",
        ]
    lines += _dlt645_floor(sim)
    for point in sim.points.values():
        lines += ["[[readers]]", f'id = "{point.reader}"', 'type = "serial"',
                  f'port = "{point.pty.path}"', 'protocol = "rdm6300"', ""]
    for point in sim.points.values():
        bus = f"floor{point.floor}"
        lines += [
            "[[points]]",
            f'id = "{point.id}"',
            f'service = "{point.service}"',
            f'reader = "{point.reader}"',
            f'valve = {{ bus = "{bus}", unit = {VALVE_UNIT}, profile = "relay-board", '
            f"channel = {point.valve_channel} }}",
            f'flow = {{ bus = "{bus}", unit = {point.counter_unit}, profile = "pulse-counter", '
            f"channel = {point.counter_channel}, ml_per_pulse = {ML_PER_PULSE} }}",
            'kinds = ["student", "teacher", "family"]',
            "",
        ]
    return lines


def _dlt645_floor(sim: SimulatedBuilding) -> list[str]:
    """The DL/T 645 floor's bus and rooms; the relays' password_file beside the config."""
    floor = sim.dlt_floor
    if floor is None:
        return []
    password = sim.workdir / "meter.password"
    password.write_text(password_line() + "\n")
    password.chmod(0o640)   # a secret
    lines = ["[[buses]]", f'name = "{floor.bus}"', 'type = "rtu"', 'protocol = "dlt645"',
             f'port = "{floor.line.client_port}"', f"baudrate = {BAUDRATE}",
             f'parity = "{floor.parity}"', "timeout_s = 0.5", ""]
    for room in floor.rooms:
        lines += [
            "[[rooms]]",
            f'id = "{room.id}"',
            f'meter = {{ bus = "{floor.bus}", address = "{room.address}", profile = "{PROFILE}" }}',
            "[rooms.breaker]",
            f'bus = "{floor.bus}"',
            f'address = "{room.address}"',
            f'profile = "{RELAY_PROFILE}"',
            f'password_file = "{password}"',
            "",
        ]
    return lines


def _price(value: Decimal) -> str:
    """A plain decimal string (no exponent, no trailing zeros)."""
    text = format(value.normalize(), "f")
    return text if "." not in text else text.rstrip("0").rstrip(".") or "0"
