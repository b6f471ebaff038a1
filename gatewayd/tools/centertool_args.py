"""The command line `gatewayd send` and `tail` share: exit codes, the broker's arguments.

Contract: `broker_args` adds the --broker, --prefix and TLS/credential options
to a subcommand; `connect_args` turns them into `aiomqtt.Client` keyword
arguments, or raises `ValueError` saying which option is wrong (the tools then
exit with EXIT_USAGE).
"""

from __future__ import annotations

import argparse
import socket
import ssl
import uuid
from pathlib import Path
from typing import Any, Final

from gatewayd.config.model import BROKER_RE, BUILDING_RE

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
EXIT_TIMEOUT: Final = 3
#: The broker could not be reached or refused the connection: nothing was sent.
EXIT_UNREACHABLE: Final = 4
DEFAULT_PREFIX: Final = "ecard/v1"
#: Connecting to the broker, TLS included, should take well under this.
CONNECT_TIMEOUT_S: Final = 10.0
_NODELAY: Final = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def building_id(text: str) -> str:
    """An argument type: a building id as the config spells it."""
    if not BUILDING_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a building id ([a-z0-9-]{{1,32}})")
    return text


def broker_args(p: argparse.ArgumentParser) -> None:
    """Add the options that say how to reach the broker."""
    p.add_argument("--broker", required=True, help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"topic prefix (default {DEFAULT_PREFIX})")
    p.add_argument("--ca", type=Path, help="CA file (mqtts://)")
    p.add_argument("--cert", type=Path, help="client certificate (mqtts://)")
    p.add_argument("--key-file", type=Path, help="client certificate's key")
    p.add_argument("--username")
    p.add_argument("--password-file", type=Path)


def connect_args(args: argparse.Namespace) -> dict[str, Any]:
    """`aiomqtt.Client` keyword arguments from `broker_args`' options; `ValueError` if wrong."""
    m = BROKER_RE.fullmatch(args.broker)
    if not m:
        raise ValueError(f'--broker: expected "mqtt://HOST[:PORT]" or "mqtts://HOST[:PORT]", '
                         f"got {args.broker!r}")
    scheme, host = m.group(1), m.group(2).strip("[]")
    port = int(m.group(3)) if m.group(3) else (8883 if scheme == "mqtts" else 1883)
    out: dict[str, Any] = {"hostname": host, "port": port, "timeout": CONNECT_TIMEOUT_S,
                           "socket_options": _NODELAY, "identifier": f"gatewayd-tool-{uuid.uuid4().hex[:12]}"}
    if scheme == "mqtts":
        try:
            ctx = ssl.create_default_context(cafile=str(args.ca) if args.ca else None)
            if args.cert:
                ctx.load_cert_chain(str(args.cert), str(args.key_file) if args.key_file else None)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"TLS files: {e}") from e
        out["tls_context"] = ctx
    elif args.ca or args.cert:
        raise ValueError("--ca/--cert need an mqtts:// broker")
    if args.username:
        out["username"] = args.username
    if args.password_file:
        try:
            out["password"] = args.password_file.read_text().removesuffix("\n").removesuffix("\r")
        except OSError as e:
            raise ValueError(f"--password-file: {e.strerror}") from e
    return out


def payload_bytes(payload: Any) -> bytes:
    """A received message's payload as bytes."""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return str(payload).encode() if payload is not None else b""
