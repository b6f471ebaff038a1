"""Tools for staff and the center's developers: `gatewayd keygen`, `send`, `tail`.

- `keygen` makes the center's Ed25519 command key pair (PEM): the private key
  stays at the center (written 0600), the public one goes to every gateway
  (`center.command_public_key_file`).
- `send` builds, signs and publishes one command as the center would, waits
  for its result on `{root}/cmd/result` and prints it as JSON. Exit 0 when the
  result is ok, 1 when refused or the broker cannot be reached, 2 on bad
  arguments or key, 3 when no result came in time.
- `tail` prints what gateways publish (events, status, results; telemetry
  with `--telemetry`), one line per message, or the JSON with `--json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import aiomqtt

from drivers.retry import Backoff
from gatewayd.config.model import BROKER_RE, BUILDING_RE
from gatewayd.contract.command_types import MAX_EXPIRES_S
from gatewayd.contract.signing import generate_keypair, load_private_key, sign_command
from gatewayd.contract.wire import rfc3339
from gatewayd.errors import KeyFileError

__all__ = ["add_subcommands", "build_command", "describe", "parse_args_list"]

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
EXIT_TIMEOUT: Final = 3
DEFAULT_PREFIX: Final = "ecard/v1"
#: How long `send` waits for the result unless --timeout says otherwise: a
#: gateway answers in milliseconds; a large cards.load takes about a second.
DEFAULT_RESULT_TIMEOUT_S: Final = 10.0
#: Connecting to the broker, TLS included, should take well under this.
CONNECT_TIMEOUT_S: Final = 10.0
_NODELAY: Final = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def add_subcommands(subparsers: Any) -> None:
    """Register keygen, send and tail on the `gatewayd` argument parser."""
    keygen = subparsers.add_parser("keygen", help="make the center's Ed25519 command key pair")
    keygen.add_argument("--out-private", type=Path, default=Path("center.key"),
                        help="private key (PEM, written 0600; default ./center.key)")
    keygen.add_argument("--out-public", type=Path, default=Path("center.pub"),
                        help="public key for the gateways (PEM; default ./center.pub)")
    keygen.add_argument("--force", action="store_true", help="overwrite existing files")
    keygen.set_defaults(func=cmd_keygen)

    send = subparsers.add_parser("send", help="sign and send one command, print its result")
    send.add_argument("--key", type=Path, required=True, help="the center's private key (PEM)")
    _broker_args(send)
    send.add_argument("--building", required=True, type=_building,
                      help="the gateway that answers (its result topic)")
    send.add_argument("--to", default=None, help='"all" for a broadcast (default: --building)')
    send.add_argument("--id", dest="command_id", default=None, type=_command_id,
                      help="the command's id (default: a new UUID); send one twice to see a duplicate")
    send.add_argument("--expires-in", type=_expires_in, default=None, metavar="SECONDS",
                      help="valid this long after now (at most 7 days) instead of the gateway's "
                           "max_command_age_s: a gateway offline meanwhile applies it when it "
                           "returns (the result then comes later than --timeout)")
    send.add_argument("--timeout", type=_positive, default=DEFAULT_RESULT_TIMEOUT_S,
                      help=f"seconds to wait for the result (default {DEFAULT_RESULT_TIMEOUT_S:g})")
    send.add_argument("type", help="command type, e.g. ping, account.credit")
    send.add_argument("args", nargs="*", metavar="key=value",
                      help="arguments. account, card, room, price and the other fields the "
                           "contract types as text are taken as written (room=0102); other "
                           "values are JSON when they parse (42, true, [..], {..}), else text; "
                           "key:=JSON forces JSON")
    send.set_defaults(func=cmd_send)

    tail = subparsers.add_parser("tail", help="print what gateways publish to the center")
    _broker_args(tail)
    tail.add_argument("--building", default="+", type=_building_or_all,
                      help="one building (default: all)")
    tail.add_argument("--json", action="store_true", help="print each message as JSON")
    tail.add_argument("--telemetry", action="store_true", help="include telemetry")
    tail.add_argument("--count", type=int, default=0, help="stop after this many messages")
    tail.set_defaults(func=cmd_tail)


def _building(text: str) -> str:
    if not BUILDING_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a building id ([a-z0-9-]{{1,32}})")
    return text


def _building_or_all(text: str) -> str:
    return text if text == "+" else _building(text)


def _command_id(text: str) -> str:
    if not 1 <= len(text) <= 64:
        raise argparse.ArgumentTypeError("a command id is 1 to 64 characters")
    return text


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _expires_in(text: str) -> float:
    value = _positive(text)
    if value > MAX_EXPIRES_S:
        raise argparse.ArgumentTypeError(f"at most {MAX_EXPIRES_S} seconds (7 days), got {text!r}")
    return value


def _broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", required=True, help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"topic prefix (default {DEFAULT_PREFIX})")
    p.add_argument("--ca", type=Path, help="CA file (mqtts://)")
    p.add_argument("--cert", type=Path, help="client certificate (mqtts://)")
    p.add_argument("--key-file", type=Path, help="client certificate's key")
    p.add_argument("--username")
    p.add_argument("--password-file", type=Path)


# --- keygen ----------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    for path in (args.out_private, args.out_public):
        if path.exists() and not args.force:
            print(f"gatewayd keygen: {path} exists; use --force to overwrite", file=sys.stderr)
            return EXIT_USAGE
    pair = generate_keypair()
    try:
        _write(args.out_private, pair.private_pem, 0o600)
        _write(args.out_public, pair.public_pem, 0o644)
    except OSError as e:
        target = args.out_private if not args.out_private.exists() else args.out_public
        print(f"gatewayd keygen: cannot write {target}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    print(f"private key: {args.out_private} (keep it at the center; 0600)")
    print(f"public key:  {args.out_public} (center.command_public_key_file on every gateway)")
    return EXIT_OK


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write a file created with `mode` from the start (never briefly world-readable)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- send ------------------------------------------------------------------------


# Arguments the contract types as strings: taken as written, so that room 102,
# card 0042 or price 0.60 are not read as numbers.
STRING_ARGS = frozenset({"account", "card", "room", "service", "price", "unit", "kind",
                         "status", "expires"})


def parse_args_list(items: list[str]) -> dict[str, Any]:
    """`["amount_fen=500", "room=102"]` -> `{"amount_fen": 500, "room": "102"}`.

    Arguments the contract types as strings (STRING_ARGS) stay strings. Any
    other value that parses as JSON is taken as JSON (numbers, true/false/null,
    lists, objects, "quoted strings"); anything else is a string.
    `key:=JSON` always takes the value as JSON (e.g. `room:=102` for a number).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {item!r}")
        force_json = key.endswith(":")
        key = key.removesuffix(":")
        if not key:
            raise ValueError(f"expected key=value, got {item!r}")
        value: Any = raw
        if force_json or key not in STRING_ARGS:
            try:
                value = json.loads(raw)
            except ValueError:
                if force_json:
                    raise ValueError(f"{key}: not JSON: {raw!r}") from None
        out[key] = value
    return out


def build_command(type_: str, args: dict[str, Any], *, to: str, now: float | None = None,
                  expires_in_s: float | None = None) -> dict[str, Any]:
    """An unsigned command with a fresh id and the current time (local offset);
    with `expires_in_s`, valid that long (center-link.md `expires`)."""
    now = time.time() if now is None else now
    tz = datetime.now().astimezone().tzinfo
    assert tz is not None
    cmd = {"id": str(uuid.uuid4()), "to": to, "type": type_, "ts": rfc3339(now, tz), "args": args}
    if expires_in_s is not None:
        cmd["expires"] = rfc3339(now + expires_in_s, tz)
    return cmd


def cmd_send(args: argparse.Namespace) -> int:
    try:
        key = load_private_key(args.key)
        command_args = parse_args_list(args.args)
        connect = _connect_args(args)
    except (KeyFileError, ValueError) as e:
        print(f"gatewayd send: {e}", file=sys.stderr)
        return EXIT_USAGE
    to = args.to or args.building
    unsigned = build_command(args.type, command_args, to=to, expires_in_s=args.expires_in)
    if args.command_id is not None:
        unsigned["id"] = args.command_id
    command = sign_command(unsigned, key)
    root = f"{args.prefix}/{args.building}"
    topic = f"{args.prefix}/all/cmd" if to == "all" else f"{root}/cmd"
    try:
        result = asyncio.run(_send(connect, command, topic, f"{root}/cmd/result", args.timeout))
    except aiomqtt.MqttError as e:
        print(f"gatewayd send: {args.broker}: {e}", file=sys.stderr)
        return EXIT_REFUSED
    if result is None:
        print(f"gatewayd send: no result for {command['id']} within {args.timeout:g} s", file=sys.stderr)
        return EXIT_TIMEOUT
    print(json.dumps(result, ensure_ascii=False))
    return EXIT_OK if result.get("ok") is True else EXIT_REFUSED


async def _send(connect: dict[str, Any], command: dict[str, Any], topic: str, result_topic: str,
                timeout_s: float) -> dict[str, Any] | None:
    async with aiomqtt.Client(**connect) as client:
        await client.subscribe(result_topic, qos=1)  # before publishing: the answer is fast
        await client.publish(topic, json.dumps(command, ensure_ascii=False).encode(), qos=1)
        try:
            async with asyncio.timeout(timeout_s):
                async for message in client.messages:
                    try:
                        result = json.loads(_bytes(message.payload))
                    except ValueError:
                        continue
                    if isinstance(result, dict) and result.get("id") == command["id"]:
                        return result
        except TimeoutError:
            return None
    return None


# --- tail ------------------------------------------------------------------------


def cmd_tail(args: argparse.Namespace) -> int:
    try:
        connect = _connect_args(args)
    except ValueError as e:
        print(f"gatewayd tail: {e}", file=sys.stderr)
        return EXIT_USAGE
    suffixes = ["events", "status", "cmd/result"] + (["telemetry"] if args.telemetry else [])
    topics = [f"{args.prefix}/{args.building}/{s}" for s in suffixes]
    try:
        asyncio.run(_tail_on(connect, topics, as_json=args.json, count=args.count))
    except KeyboardInterrupt:
        pass
    except aiomqtt.MqttError as e:
        print(f"gatewayd tail: {args.broker}: {e}", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK


#: `tail` reconnects after losing the broker, waiting this long at first and at most
#: between tries.
TAIL_RECONNECT_MIN_S: Final = 1.0
TAIL_RECONNECT_MAX_S: Final = 30.0


async def _tail_on(connect: dict[str, Any], topics: list[str], *, as_json: bool,
                   count: int) -> None:
    """`_tail` through broker restarts: a first connection that fails is an error;
    a lost one is retried with back-off, saying so on stderr."""
    progress = _TailProgress()
    # Not reset when a reconnection succeeds: a broker that keeps dropping `tail` is
    # retried ever more slowly, up to the cap.
    backoff = Backoff(TAIL_RECONNECT_MIN_S, TAIL_RECONNECT_MAX_S, jitter=0.0)
    while True:
        try:
            await _tail(connect, topics, as_json=as_json, count=count, progress=progress)
            return
        except aiomqtt.MqttError as e:
            if not progress.connected:
                raise
            delay = backoff.next_delay()
            print(f"gatewayd tail: disconnected ({e}); reconnecting in {delay:.0f} s",
                  file=sys.stderr, flush=True)
            await asyncio.sleep(delay)


@dataclass
class _TailProgress:
    """What `tail` has done so far, across reconnections."""

    connected: bool = False   # once: a later failure is a lost connection, retried
    seen: int = 0             # messages printed (for --count)


async def _tail(connect: dict[str, Any], topics: list[str], *, as_json: bool, count: int,
                progress: _TailProgress) -> None:
    async with aiomqtt.Client(**connect) as client:
        await client.subscribe([(t, 1) for t in topics])
        progress.connected = True
        print(f"listening on {', '.join(topics)}", file=sys.stderr, flush=True)
        async for message in client.messages:
            payload = _bytes(message.payload)
            if as_json:
                try:
                    body: Any = json.loads(payload)
                except ValueError:
                    body = payload.decode(errors="replace")
                line = json.dumps({"topic": message.topic.value, "retained": message.retain, "payload": body},
                                  ensure_ascii=False)
            else:
                line = describe(message.topic.value, payload, retained=message.retain)
            print(line, flush=True)
            progress.seen += 1
            if count and progress.seen >= count:
                return


def describe(topic: str, payload: bytes, *, retained: bool = False) -> str:
    """One human-readable line for a message a gateway published."""
    parts = topic.split("/")
    kind = "/".join(parts[-2:]) if topic.endswith("/cmd/result") else parts[-1]
    building = parts[-3] if kind == "cmd/result" else parts[-2] if len(parts) >= 2 else "?"
    try:
        doc = json.loads(payload)
    except ValueError:
        return f"{building} {kind} (not JSON: {payload[:60]!r})"
    if not isinstance(doc, dict):
        return f"{building} {kind} {json.dumps(doc)[:80]}"
    head = f"{building} {kind}"
    if kind == "events":
        skip = {"id", "seq", "ts", "building", "type"}
        rest = " ".join(f"{k}={_short(v)}" for k, v in doc.items() if k not in skip)
        return f"{doc.get('ts', '')} {head} #{doc.get('seq')} {doc.get('type')} {rest}".strip()
    if kind == "status":
        if not doc.get("online"):
            return f"{head} OFFLINE boot={doc.get('boot_id')}" + (" (retained)" if retained else "")
        faults = doc.get("faults") or {}
        fault_text = ",".join(f"{k}={v}" for k, v in faults.items() if v) or "none"
        return (f"{head} online v{doc.get('version')} last_seq={doc.get('last_seq')} "
                f"pending={doc.get('pending')} faults={fault_text} clock_synced={doc.get('clock_synced')}"
                + (" (retained)" if retained else ""))
    if kind == "cmd/result":
        if doc.get("ok"):
            return f"{head} {doc.get('id')} ok {json.dumps(doc.get('result'), ensure_ascii=False)}" + (
                " (duplicate)" if doc.get("duplicate") else "")
        error = doc.get("error") or {}
        return f"{head} {doc.get('id')} REFUSED {error.get('code')}: {error.get('message')}"
    if kind == "telemetry":
        return (f"{doc.get('ts', '')} {head} rooms={len(doc.get('rooms') or [])} "
                f"points={len(doc.get('points') or [])}")
    return f"{head} {json.dumps(doc, ensure_ascii=False)[:120]}"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


# --- shared ------------------------------------------------------------------------


def _connect_args(args: argparse.Namespace) -> dict[str, Any]:
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


def _bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return str(payload).encode() if payload is not None else b""
