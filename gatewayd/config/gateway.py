"""The gateway's own tables: [gateway] (who it is, where it keeps state), [center] (the
MQTT link and its keys), [metrics] (the Prometheus endpoint) and [web] (the status page).

Contract of the module: each reader takes its table, records every problem on
it (each with its place in the file) and returns a usable section; file and
folder keys go through `files.Files`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import zoneinfo
from pathlib import Path

from gatewayd.config.files import Files
from gatewayd.config.model import (
    BROKER_RE,
    BUILDING_RE,
    LISTEN_RE,
    CenterSection,
    GatewaySection,
    Metrics,
    Web,
)
from gatewayd.config.validate import Problem, Table, show

__all__ = [
    "DEFAULT_PROFILES_DIR",
    "DEFAULT_STATE_DIR",
    "read_center",
    "read_gateway",
    "read_metrics",
    "read_web",
    "system_timezone",
]

DEFAULT_STATE_DIR = "/var/lib/gatewayd"
DEFAULT_PROFILES_DIR = "/etc/gatewayd/profiles"
_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")


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


def read_gateway(t: Table, files: Files) -> GatewaySection:
    """[gateway]."""
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
    state_dir = files.directory(t, "state_dir", DEFAULT_STATE_DIR)
    if state_dir is not None and files.check_files:
        files.check_state_dir(t, state_dir)
    poll = t.number("poll_interval_s", 1.0, minimum=0.1)
    debounce = t.number("tap_debounce_s", 1.5, above=0)
    profiles_dir = files.directory(t, "profiles_dir", DEFAULT_PROFILES_DIR)
    # The default folder may be missing (only shipped profiles); another one
    # named in the file is checked, so that a typo is not silent.
    if profiles_dir is not None and profiles_dir != Path(DEFAULT_PROFILES_DIR):
        files.check_profiles_dir(t, profiles_dir)
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


def read_center(t: Table, building: str, files: Files) -> CenterSection:
    """[center]; only read when the file has one (without it the gateway runs offline)."""
    broker, scheme, host, port = _broker(t)
    client_id = t.text("client_id", f"gw-{building}")
    if not 1 <= len(client_id) <= 128:
        t.problem("client_id", "expected 1 to 128 characters")
    prefix = t.text(
        "prefix",
        "ecard/v1",
        pattern=_PREFIX_RE,
        pattern_text="topic levels of letters, digits, '_' or '-' separated by '/'",
    )
    protocol = t.text("protocol", "5", choices=("5", "3.1.1"))
    username = t.text("username", "") or None
    password_file = files.file(t, "password_file")
    ca_file = files.file(t, "ca_file")
    cert_file = files.file(t, "cert_file")
    key_file = files.file(t, "key_file")
    if (cert_file is None) != (key_file is None):
        t.problem("cert_file" if cert_file is None else "key_file",
                  "cert_file and key_file go together")
    insecure = t.flag("insecure_unsigned_commands", False)
    pub = files.file(t, "command_public_key_file", required=not insecure)
    if pub is not None and files.check_files and pub.exists():
        _check_public_key(t, pub)
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


def _broker(t: Table) -> tuple[str, str, str, int]:
    """`broker` as written, and its scheme, host and port (the scheme's default port)."""
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
    return broker, scheme, host, port


def _check_public_key(t: Table, path: Path) -> None:
    """`command_public_key_file` must hold an Ed25519 public key, and never a private key."""
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


def read_metrics(t: Table) -> Metrics | None:
    """[metrics]: `listen`, "HOST:PORT"."""
    listen = _listen(t, "127.0.0.1:9108")
    return Metrics(*listen) if listen else None


def read_web(t: Table, metrics: Metrics | None, warnings: list[Problem]) -> Web | None:
    """[web]: `listen`, "HOST:PORT". Another host than loopback is allowed (a phone on the
    building's network) with a warning: the page has no login (docs/decisions.md)."""
    listen = _listen(t, "127.0.0.1:8080")
    if listen is None:
        return None
    if metrics is not None and listen == (metrics.host, metrics.port):
        t.problem("listen", f"{listen[0]}:{listen[1]} is [metrics] listen too: use another port")
        return None
    if not _loopback(listen[0]):
        warnings.append(Problem(t.at("listen"), (
            f"{listen[0]} is not loopback: anyone who reaches port {listen[1]} sees every "
            "room's balance, without a login; let only the staff network reach it")))
    return Web(*listen)


def _listen(t: Table, default: str) -> tuple[str, int] | None:
    """The table's `listen` ("HOST:PORT", IPv6 in brackets) as (host, port)."""
    listen = t.text("listen", default)
    t.done()
    m = LISTEN_RE.fullmatch(listen)
    if not m or not 1 <= int(m.group(2)) <= 65535:
        t.problem("listen", f'expected "HOST:PORT", got {show(listen)}')
        return None
    return m.group(1).strip("[]"), int(m.group(2))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any interface
