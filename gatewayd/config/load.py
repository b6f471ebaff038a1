"""The building's configuration (../shared/spec/config.md, version 1).

`load_config(path)` reads one TOML file into frozen objects or raises
`ConfigError` carrying every problem found, each with its place in the file
(`rooms[3].meter.bus: no bus named "rs485-c"`). Profiles named by devices are
loaded and checked here too, so a config that loads is one the daemon can run.
Things worth saying that do not stop it (a curfew exception naming a room not
in this file) are `warnings`, on the `Config` or the `ConfigError`.

Relative paths (`state_dir`, `profiles_dir`, `*_file`) are taken from the
config file's folder, never from the working directory.
"""

from __future__ import annotations

import os
import re
import tomllib
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from typing import Literal, TypeVar

from drivers.errors import ProfileError
from drivers.profile import SHIPPED_DIR, Profile, load_profile
from gatewayd.config.validate import Problem, Table, show
from gatewayd.errors import ConfigError

BUILDING_RE = re.compile(r"[a-z0-9-]{1,32}")
# Bus names stay inside this file: keep them plain.
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
ID_TEXT = "1 to 32 letters, digits, '_', '.' or '-', starting with a letter or digit"
# Room, reader and point ids and accounts travel in MQTT payloads (JSON, UTF-8)
# and the center names them in commands: any text a command can carry
# (commands.MAX_NAME_CHARS), without control characters or spaces at the ends,
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
DEFAULT_CONFIG_PATH = Path("/etc/gatewayd/gateway.toml")
DEFAULT_STATE_DIR = "/var/lib/gatewayd"
DEFAULT_PROFILES_DIR = "/etc/gatewayd/profiles"


def is_secret(key: str) -> bool:
    """A file key that names a secret: `password_file` (wherever it appears, e.g. a
    DL/T 645 breaker's), `key_file` (the TLS client key). Not public keys."""
    return key.endswith(("password_file", "private_key_file")) or key == "key_file"


def is_trust_anchor(key: str) -> bool:
    """A file key whose content decides whom the gateway trusts: the center's
    public key and the CA. Anyone may read it; only its owner may write it."""
    return key in ("command_public_key_file", "ca_file")


def warning_lines(warnings: Sequence[Problem]) -> list[str]:
    """Warnings as printed on stderr: `warning: place: message`."""
    return [f"warning: {w}" for w in warnings]


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
    """A device on a bus: `bus`, Modbus `unit`, `profile` (loaded), channel."""

    bus: str
    unit: int
    profile: Profile
    channel: int = 0
    invert: bool = False
    ml_per_pulse: Decimal = Decimal(0)


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


def system_timezone() -> str:
    """The system's IANA zone name (from /etc/timezone or /etc/localtime), else UTC."""
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz and "/" in tz:
        return tz
    try:
        text = Path("/etc/timezone").read_text().strip()
        if text:
            return text
    except OSError:
        pass
    try:
        target = os.readlink("/etc/localtime")
        if "zoneinfo/" in target:
            return target.split("zoneinfo/", 1)[1]
    except OSError:
        pass
    return "UTC"


def load_config(path: Path | str, *, check_files: bool = True) -> Config:
    """Read and validate a config file; raise ConfigError with every problem.

    `check_files` also checks that named files (keys, certificates) can be read
    and that `state_dir` can be created or written.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(path, [Problem("", f"cannot read the file: {e.strerror or e}")]) from e
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(path, [Problem("", f"not UTF-8 text: {e}")]) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, [Problem("", f"invalid TOML: {e}")]) from e
    problems: list[Problem] = []
    loader = _Loader(path, data, problems, check_files)
    config = loader.load()
    if problems or config is None:
        raise ConfigError(path, problems, loader.warnings)
    return config


class _Loader:
    def __init__(
        self, path: Path, data: dict[str, object], problems: list[Problem], check_files: bool
    ) -> None:
        self.path = path
        # Relative paths in the file are relative to the file, wherever it was run from.
        self.base = path.absolute().parent
        self.root = Table(dict(data), "", problems)
        self.problems = problems
        self.warnings: list[Problem] = []
        self.check_files = check_files
        self.profiles: dict[str, Profile] = {}
        self.bad_profiles: dict[str, str] = {}
        self.profile_dirs: list[Path] = []
        self.room_ids: set[str] = set()
        self.switch_users: list[tuple[str, str, DeviceRef]] = []
        self.meter_users: list[tuple[str, str, DeviceRef]] = []
        self.counter_users: list[tuple[str, str, DeviceRef]] = []
        # Every device use in file order, with its kind: one address is one device.
        self.device_uses: list[tuple[str, str, str, DeviceRef]] = []
        # Serial ports: one owner each (a bus or a reader), by place and owner.
        self.serial_ports: dict[str, str] = {}

    # -- sections ---------------------------------------------------------

    def load(self) -> Config | None:
        root = self.root
        gateway = self.gateway(root.table("gateway", required=True))
        self.profile_dirs = [gateway.profiles_dir, SHIPPED_DIR]
        center_t = root.table("center")
        center = self.center(center_t, gateway.building) if center_t else None
        tariffs = self.tariffs(root.table("tariffs"))
        power_t = root.table("power")
        power = self.power_rules(power_t, POWER_DEFAULTS) if power_t else POWER_DEFAULTS
        curfew_tables = list(power_t.tables("curfew")) if power_t else []
        if power_t:
            power_t.done()
        water = self.water(root.table("water"))
        buses = self.buses(root)
        rooms = self.rooms(root, gateway.building, power, buses)
        curfews = tuple(self.curfew(t, self.room_ids) for t in curfew_tables)
        readers = self.readers(root)
        points = self.points(root, readers, buses, tariffs)
        self.check_switches()
        metrics_t = root.table("metrics")
        metrics = self.metrics(metrics_t) if metrics_t else None
        root.done()
        if self.problems:
            return None
        return Config(
            path=self.path,
            gateway=gateway,
            center=center,
            tariffs=tariffs,
            power=power,
            curfews=curfews,
            water=water,
            buses=buses,
            rooms=rooms,
            readers=readers,
            points=points,
            metrics=metrics,
            profiles=dict(self.profiles),
            warnings=tuple(self.warnings),
        )

    def gateway(self, t: Table | None) -> GatewaySection:
        if t is None:
            t = Table({}, "gateway", self.problems)
        building = t.text(
            "building",
            "x",
            required=True,
            pattern=BUILDING_RE,
            pattern_text="1 to 32 of a-z, 0-9 and '-'",
        )
        if building == "all":
            # {prefix}/all/cmd is the broadcast topic: a building named "all"
            # could not tell its own commands from every building's.
            t.problem("building", '"all" is reserved: {prefix}/all/cmd is the broadcast topic')
        site = t.text("site", "")
        tz = t.text("timezone", "")
        if tz:
            try:
                zoneinfo.ZoneInfo(tz)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                t.problem("timezone", f"unknown time zone {show(tz)} (expected e.g. \"Asia/Shanghai\")")
                tz = "UTC"
        else:
            tz = system_timezone()
        state_dir = self.directory(t, "state_dir", DEFAULT_STATE_DIR)
        if state_dir is not None and self.check_files:
            self.check_state_dir(t, state_dir)
        poll = t.number("poll_interval_s", 1.0, minimum=0.1)
        debounce = t.number("tap_debounce_s", 1.5, above=0)
        profiles_dir = self.directory(t, "profiles_dir", DEFAULT_PROFILES_DIR)
        # The default folder may be missing (only shipped profiles); another one
        # named in the file is checked, so that a typo is not silent.
        if profiles_dir is not None and profiles_dir != Path(DEFAULT_PROFILES_DIR):
            self.check_profiles_dir(t, profiles_dir)
        synced = t.text("clock_synced", "auto", choices=("auto", "yes", "no"))
        card_format = t.text("card_format", "hex", choices=("hex", "dec10"))
        refused = t.integer("refused_taps_per_min", 30, minimum=1)
        t.done()
        return GatewaySection(
            building=building,
            site=site,
            timezone=tz,
            state_dir=state_dir or Path(DEFAULT_STATE_DIR),
            poll_interval_s=poll,
            tap_debounce_s=debounce,
            profiles_dir=profiles_dir or Path(DEFAULT_PROFILES_DIR),
            clock_synced=synced,  # type: ignore[arg-type]
            card_format=card_format,  # type: ignore[arg-type]
            refused_taps_per_min=refused,
        )

    def path_text(self, t: Table, key: str, *, required: bool = False) -> str | None:
        """A path as written, or None when absent, empty or not usable (then a problem)."""
        before = len(self.problems)
        value = t.text(key, "", required=required)
        if len(self.problems) > before or not value:
            return None
        if "\0" in value:
            t.problem(key, "expected a path without NUL characters")
            return None
        return value

    def resolve(self, value: str) -> Path:
        """A path from the file: relative ones are taken from the file's folder."""
        return self.base / value  # an absolute `value` replaces the base

    def directory(self, t: Table, key: str, default: str) -> Path | None:
        """A folder key: `default` when absent, None when wrong (a problem recorded)."""
        if not t.has(key):
            t.text(key)  # mark the key as read
            return Path(default)
        if t.data[key] == "":
            t.text(key)
            t.problem(key, 'expected a path, got ""')
            return None
        value = self.path_text(t, key)
        return self.resolve(value) if value is not None else None

    def check_state_dir(self, t: Table, state_dir: Path) -> None:
        try:
            if state_dir.exists():
                if not state_dir.is_dir():
                    t.problem("state_dir", f"{state_dir} exists and is not a directory")
                elif not os.access(state_dir, os.W_OK | os.X_OK):
                    t.problem("state_dir", f"{state_dir} is not writable by this user")
                return
            parent = state_dir.parent
            while not parent.exists() and parent != parent.parent:
                parent = parent.parent
        except OSError as e:  # a name too long, a loop of links
            t.problem("state_dir", f"cannot use {state_dir}: {e.strerror or e}")
            return
        if not os.access(parent, os.W_OK | os.X_OK):
            t.problem("state_dir", f"{state_dir} does not exist and {parent} is not writable")

    def check_profiles_dir(self, t: Table, profiles_dir: Path) -> None:
        try:
            exists, is_dir = profiles_dir.exists(), profiles_dir.is_dir()
        except OSError as e:
            t.problem("profiles_dir", f"cannot use {profiles_dir}: {e.strerror or e}")
            return
        if not exists:
            # A warning, not an error: the contract's own example names the
            # default folder, which a site without profiles of its own lacks.
            self.warnings.append(Problem(
                t.at("profiles_dir"),
                f"no such directory {show(str(profiles_dir))} (only the shipped profiles are used)"))
        elif not is_dir:
            t.problem("profiles_dir", f"{show(str(profiles_dir))} is not a directory")

    def file(self, t: Table, key: str, *, required: bool = False) -> Path | None:
        """A file key; with `check_files`, the file must be readable, and a secret
        (`is_secret(key)`) readable by every user is warned about."""
        value = self.path_text(t, key, required=required)
        if value is None:
            return None
        path = self.resolve(value)
        if self.check_files:
            try:
                with path.open("rb") as f:
                    mode = os.fstat(f.fileno()).st_mode
            except OSError as e:
                t.problem(key, f"cannot read {path}: {e.strerror or e}")
            else:
                if is_secret(key) and mode & 0o004:
                    self.warnings.append(Problem(t.at(key), (
                        f"{path} is a secret readable by every user on this machine "
                        f"(mode {mode & 0o7777:04o}): chmod 0640 with the group gatewayd runs "
                        "as (chown root:gatewayd), or 0600 owned by that user")))
                if is_trust_anchor(key) and mode & 0o022:
                    # Whoever can replace the center's public key can sign commands
                    # that move money and cut power.
                    self.warnings.append(Problem(t.at(key), (
                        f"{path} can be written by users other than its owner "
                        f"(mode {mode & 0o7777:04o}): whoever replaces it can forge the center's "
                        "commands; chmod 0644, owned by root")))
        return path

    def center(self, t: Table, building: str) -> CenterSection:
        broker = t.text("broker", "", required=True)
        scheme, host, port = "mqtt", "", 1883
        if broker:
            m = BROKER_RE.fullmatch(broker)
            if not m:
                t.problem(
                    "broker", f'expected "mqtt://HOST[:PORT]" or "mqtts://HOST[:PORT]", got {show(broker)}'
                )
            else:
                scheme, host = m.group(1), m.group(2).strip("[]")
                port = int(m.group(3)) if m.group(3) else (8883 if scheme == "mqtts" else 1883)
                if not 1 <= port <= 65535:
                    t.problem("broker", f"port {port} is out of range")
        client_id = t.text("client_id", f"gw-{building}")
        if not 1 <= len(client_id) <= 128:
            t.problem("client_id", "expected 1 to 128 characters")
        prefix = t.text(
            "prefix",
            "ecard/v1",
            pattern=re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*"),
            pattern_text="topic levels of letters, digits, '_' or '-' separated by '/'",
        )
        protocol = t.text("protocol", "5", choices=("5", "3.1.1"))
        username = t.text("username", "") or None
        password_file = self.file(t, "password_file")
        ca_file = self.file(t, "ca_file")
        cert_file = self.file(t, "cert_file")
        key_file = self.file(t, "key_file")
        if (cert_file is None) != (key_file is None):
            t.problem("cert_file" if cert_file is None else "key_file",
                      "cert_file and key_file go together")
        insecure = t.flag("insecure_unsigned_commands", False)
        pub = self.file(t, "command_public_key_file", required=not insecure)
        if pub is not None and self.check_files and pub.exists():
            self.check_public_key(t, pub)
        if scheme == "mqtt" and (ca_file or cert_file):
            t.problem("broker", "ca_file/cert_file are set but the broker is mqtt:// (use mqtts://)")
        center = CenterSection(
            broker=broker,
            scheme=scheme,  # type: ignore[arg-type]
            host=host,
            port=port,
            client_id=client_id,
            prefix=prefix,
            protocol=protocol,  # type: ignore[arg-type]
            username=username,
            password_file=password_file,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            command_public_key_file=pub,
            max_command_age_s=t.number("max_command_age_s", 300.0, above=0),
            insecure_unsigned_commands=insecure,
            telemetry_interval_s=t.number("telemetry_interval_s", 60.0, above=0),
            keep_events_days=t.number("keep_events_days", 7.0, above=0),
            outbox_max_mb=t.number("outbox_max_mb", 256.0, above=0),
            session_expiry_s=t.integer("session_expiry_s", 7 * 86400, minimum=7 * 86400),
        )
        t.done()
        return center

    def check_public_key(self, t: Table, path: Path) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        from gatewayd.contract.signing import PRIVATE_KEY_REFUSED, private_key_kind

        try:
            data = path.read_bytes()
        except OSError as e:
            t.problem("command_public_key_file", f"cannot read {path}: {e.strerror or e}")
            return
        # Before the cryptography library sees it: its message would be about PEM.
        if private_key_kind(data):
            t.problem("command_public_key_file", f"{path} {PRIVATE_KEY_REFUSED}")
            return
        try:
            key = load_pem_public_key(data)
        except (OSError, ValueError) as e:
            t.problem("command_public_key_file", f"{path} is not a PEM public key: {e}")
            return
        if not isinstance(key, Ed25519PublicKey):
            t.problem("command_public_key_file", f"{path} is not an Ed25519 public key")

    def tariffs(self, t: Table | None) -> Tariffs:
        defaults = {
            "power": Tariff(Decimal("0.56"), "kWh"),
            "shower": Tariff(Decimal("0.03"), "L"),
            "drinking": Tariff(Decimal("0.01"), "L"),
        }
        units = {"power": ("kWh",), "shower": ("L", "min"), "drinking": ("L", "min")}
        if t is None:
            return Tariffs(**defaults)
        out = dict(defaults)
        for service in ("power", "shower", "drinking"):
            sub = t.table(service)
            if sub is None:
                continue
            price = sub.decimal("price", defaults[service].price)
            unit = sub.text("unit", defaults[service].unit, choices=units[service])
            sub.done()
            out[service] = Tariff(price, unit)  # type: ignore[arg-type]
        t.done()
        return Tariffs(**out)

    def power_rules(self, t: Table, base: PowerRules) -> PowerRules:
        return PowerRules(
            max_power_w=t.integer("max_power_w", base.max_power_w, minimum=100),
            trip_after_s=t.number("trip_after_s", base.trip_after_s, above=0),
            reclose_after_s=t.number("reclose_after_s", base.reclose_after_s, above=0),
            lockout_trips=t.integer("lockout_trips", base.lockout_trips, minimum=1),
            lockout_window_s=t.number("lockout_window_s", base.lockout_window_s, above=0),
            lockout_s=t.number("lockout_s", base.lockout_s, above=0),
            resistive_step_w=t.integer("resistive_step_w", base.resistive_step_w, minimum=1),
            resistive_pf=t.number("resistive_pf", base.resistive_pf, above=0, maximum=1),
            low_balance_fen=t.integer("low_balance_fen", base.low_balance_fen, minimum=0),
            report_fen=t.integer("report_fen", base.report_fen, minimum=1),
            report_interval_s=t.number("report_interval_s", base.report_interval_s, above=0),
            meter_offline_cut_s=t.number("meter_offline_cut_s", base.meter_offline_cut_s, minimum=0),
        )

    def curfew(self, t: Table, room_ids: set[str]) -> Curfew:
        days = t.str_list("days", choices=DAYS, default=DAYS)
        start = t.text("from", "", required=True, pattern=HHMM_RE, pattern_text='"HH:MM"')
        end = t.text("to", "", required=True, pattern=HHMM_RE, pattern_text='"HH:MM"')
        # The contract's own example excepts rooms a building may not have: a
        # room not in this file is a warning, not an error (docs/decisions.md).
        excepted = t.str_list("except")
        for i, room in enumerate(excepted):
            if room not in room_ids:
                self.warnings.append(Problem(
                    t.at(f"except[{i}]"), f"no room {show(room)} in this file (ignored)"
                ))
        if t.has("days") and not days and isinstance(t.data["days"], list):
            self.warnings.append(Problem(t.at("days"), "no days: this curfew never applies"))
        if start and start == end:
            t.problem("to", "a curfew window must not start and end at the same time")
        t.done()
        return Curfew(
            days=frozenset(days),
            start=_hhmm(start),
            end=_hhmm(end),
            except_rooms=frozenset(r for r in excepted if r in room_ids),
        )

    def water(self, t: Table | None) -> WaterRules:
        if t is None:
            return WaterRules()
        w = WaterRules(
            min_balance_fen=t.integer("min_balance_fen", 50, minimum=0),
            step_fen=t.integer("step_fen", 1, minimum=1),
            max_session_s=t.number("max_session_s", 1800.0, above=0),
            idle_close_s=t.number("idle_close_s", 90.0, above=0),
            offline_limit_fen=t.integer("offline_limit_fen", 2000, minimum=0),
        )
        t.done()
        return w

    def buses(self, root: Table) -> dict[str, Bus]:
        buses: dict[str, Bus] = {}
        for t in root.tables("buses"):
            name = t.text("name", "", required=True, pattern=ID_RE, pattern_text=ID_TEXT)
            kind = t.text("type", "", required=True, choices=("rtu", "tcp"))
            timeout = t.number("timeout_s", 0.3 if kind == "rtu" else 1.0, above=0)
            retries = t.integer("retries", 1, minimum=0, maximum=10)
            gap = t.number("gap_s", 0.0, minimum=0, maximum=10)
            if kind == "rtu":
                bus = Bus(
                    name=name,
                    type="rtu",
                    timeout_s=timeout,
                    retries=retries,
                    gap_s=gap,
                    port=self.serial_port(t, f"bus {show(name)}"),
                    baudrate=t.integer("baudrate", 9600, minimum=300, maximum=921600),
                    parity=t.text("parity", "N", choices=("N", "E", "O")),  # type: ignore[arg-type]
                    stopbits=t.integer("stopbits", 1, minimum=1, maximum=2),
                )
            elif kind == "tcp":
                bus = Bus(
                    name=name,
                    type="tcp",
                    timeout_s=timeout,
                    retries=retries,
                    gap_s=gap,
                    host=t.text("host", "", required=True),
                    tcp_port=t.integer("port", 502, minimum=1, maximum=65535),
                )
            else:
                t.done(allowed_extra=("port", "host", "baudrate", "parity", "stopbits"))
                continue
            if name in buses:
                t.problem("name", f"bus {show(name)} is defined twice")
            elif name:
                buses[name] = bus
            t.done()
        return buses

    def profile(self, t: Table, name: str, kind: str) -> Profile | None:
        """Load a profile once; its problems are reported at its first use only."""
        if name in self.bad_profiles:
            t.problem("profile", self.bad_profiles[name])
            return None
        profile = self.profiles.get(name)
        if profile is None:
            try:
                profile = load_profile(name, self.profile_dirs)
            except ProfileError as e:
                missing = [p for p in e.problems if p.file == f"{name}.toml" and not p.place]
                if missing:
                    # Not found: say so at every place that names it.
                    self.bad_profiles[name] = missing[0].message
                    t.problem("profile", missing[0].message)
                    return None
                self.bad_profiles[name] = f"profile {show(name)} has errors (reported above)"
                for p in e.problems:
                    self.problems.append(Problem(t.at("profile"), str(p)))
                return None
            self.profiles[name] = profile
        if profile.kind != kind:
            t.problem("profile", f"profile {show(name)} is a {profile.kind}, expected a {kind}")
            return None
        return profile

    def device(
        self,
        parent: Table,
        key: str,
        kind: str,
        buses: Mapping[str, Bus],
        *,
        required: bool = True,
        channel: bool = False,
        flow: bool = False,
    ) -> DeviceRef | None:
        t = parent.table(key, required=required)
        if t is None:
            return None
        before = len(self.problems)
        bus_name = t.text("bus", "", required=True)
        bus = buses.get(bus_name)
        if bus_name and bus is None:
            t.problem("bus", f"no bus named {show(bus_name)}")
        max_unit = 247 if bus is None or bus.type == "rtu" else 255
        unit = t.integer("unit", 1, required=True, minimum=0 if bus and bus.type == "tcp" else 1,
                     maximum=max_unit)
        profile_name = t.text("profile", "", required=True)
        profile = self.profile(t, profile_name, kind) if profile_name else None
        ch = t.integer("channel", 0, minimum=0, maximum=1999) if channel else 0
        invert = t.flag("invert", False) if kind == "switch" else False
        ml = Decimal(0)
        if flow:
            before = len(self.problems)
            ml = t.decimal("ml_per_pulse", required=True, allow_number=True)
            if ml <= 0 and t.has("ml_per_pulse") and len(self.problems) == before:
                t.problem("ml_per_pulse", "expected a positive number of mL per pulse")
        t.done()
        if len(self.problems) > before or profile is None:
            # A value reported wrong was replaced by a fallback (unit 1, channel 0):
            # a device made of it would be found "already used" by another, an
            # error that is not there. It takes no part in the shared-use checks.
            return None
        return DeviceRef(bus_name, unit, profile, ch, invert, ml)

    def rooms(
        self, root: Table, building: str, power: PowerRules, buses: Mapping[str, Bus]
    ) -> tuple[Room, ...]:
        rooms: list[Room] = []
        accounts: dict[str, str] = {}
        seen = self.room_ids
        for t in root.tables("rooms"):
            rid = t.text("id", "", required=True, pattern=NAME_RE, pattern_text=NAME_TEXT)
            # "" is an id that already failed: not a duplicate of the last one that did.
            if rid and rid in seen:
                t.problem("id", f"room {show(rid)} is defined twice")
            elif rid:
                seen.add(rid)
            account = t.text(
                "account", f"room-{building}-{rid}", pattern=ACCOUNT_RE, pattern_text=ACCOUNT_TEXT
            )
            # behaviour.md: "a room's electricity uses the room's own account".
            if rid and account and (owner := _claim(accounts, account, rid)):
                t.problem("account", f"account {show(account)} is already used by room "
                          f"{show(owner)}: each room has its own account")
            meter = self.device(t, "meter", "meter", buses)
            if meter:
                self.use(self.meter_users, t.at("meter"), f"room {show(rid)}", "meter", meter)
            breaker = self.device(t, "breaker", "switch", buses, channel=True)
            if breaker:
                self.use(self.switch_users, t.at("breaker"), f"room {show(rid)}", "switch", breaker)
            rules = self.power_rules(t, power)
            resistive = t.flag("resistive_cutoff", False)
            if resistive and meter is not None and "pf" not in meter.profile.fields:
                t.problem(
                    "resistive_cutoff",
                    f"meter profile {show(meter.profile.name)} has no pf field, "
                    "which the resistive-load cutoff needs",
                )
            t.done()
            if rid and meter and breaker:
                rooms.append(Room(rid, account, meter, breaker, rules, resistive))
        return tuple(rooms)

    def readers(self, root: Table) -> dict[str, Reader]:
        readers: dict[str, Reader] = {}
        for t in root.tables("readers"):
            rid = t.text("id", "", required=True, pattern=NAME_RE, pattern_text=NAME_TEXT)
            kind = t.text("type", "", required=True, choices=("serial", "pcsc"))
            if kind == "serial":
                reader = Reader(
                    id=rid,
                    type="serial",
                    port=self.serial_port(t, f"reader {show(rid)}"),
                    baudrate=t.integer("baudrate", 9600, minimum=300, maximum=921600),
                    protocol=t.text(  # type: ignore[arg-type]
                        "protocol", "rdm6300", choices=("rdm6300", "ascii-line")
                    ),
                )
            elif kind == "pcsc":
                reader = Reader(id=rid, type="pcsc", name=t.text("name", "", required=True))
            else:
                t.done(allowed_extra=("port", "baudrate", "protocol", "name"))
                continue
            if rid in readers:
                t.problem("id", f"reader {show(rid)} is defined twice")
            elif rid:
                readers[rid] = reader
            t.done()
        return readers

    def points(
        self,
        root: Table,
        readers: Mapping[str, Reader],
        buses: Mapping[str, Bus],
        tariffs: Tariffs,
    ) -> tuple[Point, ...]:
        points: list[Point] = []
        seen: set[str] = set()
        reader_owner: dict[str, str] = {}
        for t in root.tables("points"):
            pid = t.text("id", "", required=True, pattern=NAME_RE, pattern_text=NAME_TEXT)
            if pid and pid in seen:  # "" already failed: see rooms()
                t.problem("id", f"point {show(pid)} is defined twice")
            elif pid:
                seen.add(pid)
            service = t.text("service", "", required=True, choices=SERVICES)
            reader = t.text("reader", "", required=True)
            if reader and reader not in readers:
                t.problem("reader", f"no reader with id {show(reader)}")
            elif reader in reader_owner:
                t.problem("reader", f"reader {show(reader)} is already used by point "
                          f"{show(reader_owner[reader])}")
            elif reader:
                reader_owner[reader] = pid
            valve = self.device(t, "valve", "switch", buses, channel=True)
            if valve:
                self.use(self.switch_users, t.at("valve"), f"point {show(pid)}", "switch", valve)
            flow = self.device(t, "flow", "counter", buses, required=False, channel=True, flow=True)
            if flow:
                self.use(self.counter_users, t.at("flow"), f"point {show(pid)}", "counter", flow)
            kinds = t.str_list("kinds", choices=CARD_KINDS, default=("student", "teacher", "family"))
            if service in SERVICES:
                tariff: Tariff = getattr(tariffs, service)
                if tariff.unit == "L" and not t.has("flow"):
                    t.problem(
                        "flow",
                        f'required: tariffs.{service} is priced per "L", which needs a flow meter '
                        '(or price this service per "min")',
                    )
            t.done()
            if pid and valve and service and reader in readers:
                points.append(Point(pid, service, reader, valve, flow, frozenset(kinds)))  # type: ignore[arg-type]
        return tuple(points)

    def serial_port(self, t: Table, who: str) -> str:
        """A serial port: one bus or reader owns it (two would interleave their bytes)."""
        port = t.text("port", "", required=True)
        if port and (owner := _claim(self.serial_ports, port, who)):
            t.problem("port", f"port {show(port)} is already used by {owner}")
        return port

    def use(self, users: list[tuple[str, str, DeviceRef]], place: str, who: str, kind: str,
            ref: DeviceRef) -> None:
        users.append((place, who, ref))
        self.device_uses.append((place, who, kind, ref))

    def check_switches(self) -> None:
        """Two rooms may not share a breaker coil; two points may not share a valve.

        Added to the contract, for the same reason: two rooms may not share a
        meter, nor two points a flow counter channel, since each would be
        charged for the other's use; and two different devices may not share
        one bus address (`check_addresses`).
        """
        self.check_addresses()
        self._check_shared(self.switch_users, "state", "switch")
        self._check_shared(self.counter_users, "count", "flow counter")
        meters: dict[tuple[str, int], str] = {}
        for place, who, ref in self.meter_users:
            if owner := _claim(meters, (ref.bus, ref.unit), who):
                self.problems.append(
                    Problem(place, f"the same meter (bus {show(ref.bus)}, unit {ref.unit}) "
                            f"is already used by {owner}")
                )

    def check_addresses(self) -> None:
        """One bus address (bus, unit) is one physical device.

        A relay board may also be the counter board (relays and pulse inputs on
        one module: the contract's own example has a valve and a flow counter at
        unit 40), so a switch and a counter may share an address. A meter shares
        its address with nothing else, and one device is read with one profile
        per kind: anything else is two devices answering to one address, whose
        answers would be taken for each other's. Meters sharing an address are
        reported by the meter check (`check_switches`), not again here.
        """
        at: dict[tuple[str, int], dict[str, tuple[str, str]]] = {}
        for place, who, kind, ref in self.device_uses:
            seen = at.setdefault((ref.bus, ref.unit), {})
            address = f"bus {show(ref.bus)}, unit {ref.unit}"
            if kind in seen:
                owner, profile = seen[kind]
                if kind != "meter" and profile != ref.profile.name:
                    self.problems.append(Problem(place, (
                        f"{address} is already {owner}'s {kind} with profile {show(profile)}: "
                        f"one device cannot also be a {kind} with profile "
                        f"{show(ref.profile.name)}")))
                continue
            clash = [k for k in seen if {k, kind} != {"switch", "counter"}]
            if clash:
                owner, profile = seen[clash[0]]
                self.problems.append(Problem(place, (
                    f"{address} is already {owner}'s {clash[0]} (profile {show(profile)}): "
                    f"a {kind} (profile {show(ref.profile.name)}) cannot have the same address; "
                    "two devices on one bus need two units")))
                continue
            seen[kind] = (who, ref.profile.name)

    def _check_shared(
        self, users: list[tuple[str, str, DeviceRef]], field: str, what: str
    ) -> None:
        owners: dict[tuple[str, int, str, int], str] = {}
        for place, who, ref in users:
            spec = ref.profile.fields.get(field)
            if spec is None:
                continue
            key = (ref.bus, ref.unit, spec.table, spec.at_channel(ref.channel))
            if key in owners:
                self.problems.append(
                    Problem(place, f"the same {what} (bus {show(ref.bus)}, unit {ref.unit}, "
                            f"channel {ref.channel}) is already used by {owners[key]}")
                )
            else:
                owners[key] = who

    def metrics(self, t: Table) -> Metrics | None:
        listen = t.text("listen", "127.0.0.1:9108")
        t.done()
        m = LISTEN_RE.fullmatch(listen)
        if not m or not 1 <= int(m.group(2)) <= 65535:
            t.problem("listen", f'expected "HOST:PORT", got {show(listen)}')
            return None
        return Metrics(m.group(1).strip("[]"), int(m.group(2)))


K = TypeVar("K")


def _claim(owners: dict[K, str], key: K, who: str) -> str | None:
    """Record `who` as the user of `key`: None, or the other user that has it already."""
    owner = owners.setdefault(key, who)
    return owner if owner != who else None


def _hhmm(text: str) -> dtime:
    if not text:
        return dtime(0, 0)
    hours, minutes = text.split(":")
    return dtime(int(hours), int(minutes))
