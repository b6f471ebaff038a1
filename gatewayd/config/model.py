"""What a loaded configuration is: frozen, typed objects (docs/configuration.md, version 1).

Contract of the module: data only. `load.load_config` builds a `Config` from
the TOML file and checks it once; everything downstream reads these objects,
never the file. The patterns say what the file's ids and names look like.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from typing import Literal

from drivers.cardreader.cardid import LineFormat, UidOrder
from drivers.dlt645.credentials import Credentials
from drivers.profile import Profile
from gatewayd.config.validate import Problem

BUILDING_RE = re.compile(r"[a-z0-9-]{1,32}")
# Bus names stay inside this file: keep them plain.
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
ID_TEXT = "1 to 32 letters, digits, '_', '.' or '-', starting with a letter or digit"
# Room, reader and point ids and accounts travel in MQTT payloads (JSON, UTF-8)
# and the center names them in commands: any text a command can carry
# (command_types.MAX_NAME_CHARS), without control characters or spaces at the ends,
# so "A栋-301" is a room id.
NAME_RE = re.compile(r"[^\x00-\x1f\x7f-\x9f\s](?:[^\x00-\x1f\x7f-\x9f]{0,126}[^\x00-\x1f\x7f-\x9f\s])?")
NAME_TEXT = "1 to 128 characters, without control characters or spaces at either end"
ACCOUNT_RE = NAME_RE
ACCOUNT_TEXT = NAME_TEXT
HHMM_RE = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")
BROKER_RE = re.compile(r"(mqtts?)://([^:/\s]+|\[[0-9a-fA-F:]+\])(?::([0-9]{1,5}))?/?")
LISTEN_RE = re.compile(r"([^:\s]+|\[[0-9a-fA-F:]+\]):([0-9]{1,5})")

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CARD_KINDS = ("teacher", "student", "merchant", "family", "temporary")
SERVICES = ("shower", "drinking")


@dataclass(frozen=True, slots=True)
class GatewaySection:
    building: str
    site: str
    timezone: str
    state_dir: Path
    poll_interval_s: float
    tap_debounce_s: float
    profiles_dir: Path
    clock_synced: Literal["auto", "yes", "no"]
    card_format: Literal["hex", "dec10"] = "hex"
    refused_taps_per_min: int = 30


@dataclass(frozen=True, slots=True)
class CenterSection:
    broker: str
    scheme: Literal["mqtt", "mqtts"]
    host: str
    port: int
    client_id: str
    prefix: str
    protocol: Literal["5", "3.1.1"]
    username: str | None
    password_file: Path | None
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    command_public_key_file: Path | None
    max_command_age_s: float
    insecure_unsigned_commands: bool
    telemetry_interval_s: float
    keep_events_days: float
    outbox_max_mb: float
    session_expiry_s: int


@dataclass(frozen=True, slots=True)
class Tariff:
    price: Decimal  # yuan per unit
    unit: Literal["kWh", "L", "min"]


@dataclass(frozen=True, slots=True)
class Tariffs:
    power: Tariff
    shower: Tariff
    drinking: Tariff

    def of(self, service: str) -> Tariff:
        """The tariff of a service by its name ("power", "shower", "drinking"); KeyError otherwise."""
        return {"power": self.power, "shower": self.shower, "drinking": self.drinking}[service]


@dataclass(frozen=True, slots=True)
class PowerRules:
    """The electricity rules of one room ([power] defaults, overridden per room)."""

    max_power_w: int
    trip_after_s: float
    reclose_after_s: float
    lockout_trips: int
    lockout_window_s: float
    lockout_s: float
    resistive_step_w: int
    resistive_pf: float
    low_balance_fen: int
    report_fen: int
    report_interval_s: float
    meter_offline_cut_s: float = 0.0  # 0: never cut a room for an offline meter


POWER_DEFAULTS = PowerRules(
    max_power_w=1500,
    trip_after_s=3.0,
    reclose_after_s=60.0,
    lockout_trips=3,
    lockout_window_s=600.0,
    lockout_s=1800.0,
    resistive_step_w=300,
    resistive_pf=0.97,
    low_balance_fen=500,
    report_fen=100,
    report_interval_s=900.0,
)


@dataclass(frozen=True, slots=True)
class Curfew:
    days: frozenset[str]
    start: dtime
    end: dtime  # end <= start means the window crosses midnight
    except_rooms: frozenset[str]


@dataclass(frozen=True, slots=True)
class WaterRules:
    min_balance_fen: int = 50
    step_fen: int = 1
    max_session_s: float = 1800.0
    idle_close_s: float = 90.0
    offline_limit_fen: int = 2000


@dataclass(frozen=True, slots=True)
class Bus:
    name: str
    type: Literal["rtu", "tcp"]
    timeout_s: float
    retries: int
    gap_s: float = 0.0  # least quiet time after an answer or timeout (RTU: at least 3.5 chars)
    protocol: Literal["modbus", "dlt645"] = "modbus"  # dlt645: DL/T 645-2007, on rtu only
    # rtu
    port: str = ""
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1
    # tcp
    host: str = ""
    tcp_port: int = 502


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """A device on a bus: `bus`, Modbus `unit` or DL/T 645 `address`, `profile`
    (loaded), channel; a DL/T 645 relay's `password_file` and what it held when the
    file was loaded (`credentials`: a new password in the same file is a changed
    device on reload; its repr never shows the password)."""

    bus: str
    unit: int
    profile: Profile
    channel: int = 0
    invert: bool = False
    ml_per_pulse: Decimal = Decimal(0)
    address: str = ""  # DL/T 645: the meter's 12 digits (then `unit` is 0)
    password_file: Path | None = None
    credentials: Credentials | None = field(default=None, repr=False)

    @property
    def at(self) -> int | str:
        """Where it answers on its bus: the DL/T 645 address, or the Modbus unit."""
        return self.address or self.unit

    @property
    def where(self) -> str:
        """`at` as messages name it: `unit 3`, `address "000000001234"`."""
        return f'address "{self.address}"' if self.address else f"unit {self.unit}"


@dataclass(frozen=True, slots=True)
class Room:
    id: str
    account: str
    meter: DeviceRef
    breaker: DeviceRef
    rules: PowerRules
    resistive_cutoff: bool


@dataclass(frozen=True, slots=True)
class Reader:
    id: str
    type: Literal["serial", "pcsc"]
    port: str = ""
    baudrate: int = 9600
    protocol: Literal["rdm6300", "ascii-line"] = "rdm6300"
    name: str = ""
    uid_order: UidOrder = "as_read"
    line_format: LineFormat = "hex"  # ascii-line only


@dataclass(frozen=True, slots=True)
class Point:
    id: str
    service: Literal["shower", "drinking"]
    reader: str
    valve: DeviceRef
    flow: DeviceRef | None
    kinds: frozenset[str]


@dataclass(frozen=True, slots=True)
class Metrics:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Web:
    """[web]: the read-only status page's listen address."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    gateway: GatewaySection
    center: CenterSection | None
    tariffs: Tariffs
    power: PowerRules
    curfews: tuple[Curfew, ...]
    water: WaterRules
    buses: Mapping[str, Bus]
    rooms: tuple[Room, ...]
    readers: Mapping[str, Reader]
    points: tuple[Point, ...]
    metrics: Metrics | None
    web: Web | None = None
    profiles: Mapping[str, Profile] = field(default_factory=dict)
    warnings: tuple[Problem, ...] = ()

    def summary(self) -> str:
        center = f"center {self.center.broker}" if self.center else "offline only (no [center])"
        def count(n: int, one: str, many: str) -> str:
            return f"{n} {one if n == 1 else many}"

        return (
            f"building {self.gateway.building}: {count(len(self.rooms), 'room', 'rooms')}, "
            f"{count(len(self.points), 'water point', 'water points')}, "
            f"{count(len(self.readers), 'reader', 'readers')}, "
            f"{count(len(self.buses), 'bus', 'buses')}, {center}"
        )
