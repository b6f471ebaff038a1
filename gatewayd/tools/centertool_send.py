"""`gatewayd send`: sign and publish one command as the center would, print its result.

Contract: builds the command (`build_command`, arguments by `parse_args_list`),
signs it with the center's private key, publishes it on the gateway's (or
every gateway's) command topic, waits for the result with its id on
`{root}/cmd/result` and prints it as JSON. Exit 0 when the result is ok, 1 when
refused, 2 on bad arguments or key, 3 when no result came in time, 4 when the
broker cannot be reached (nothing was sent). `--help` lists every command type
with its arguments, read from the contract (`centertool_types`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import aiomqtt

from gatewayd.contract.command_types import MAX_EXPIRES_S
from gatewayd.contract.signing import load_private_key, sign_command
from gatewayd.contract.wire import rfc3339
from gatewayd.errors import CanonicalFormError, KeyFileError
from gatewayd.tools.centertool_args import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    broker_args,
    building_id,
    connect_args,
    payload_bytes,
)
from gatewayd.tools.centertool_types import command_usage, text_args

#: How long `send` waits for the result unless --timeout says otherwise: a
#: gateway answers in milliseconds; a large cards.load takes about a second.
DEFAULT_RESULT_TIMEOUT_S: Final = 10.0

EXIT_CODES: Final = (
    f"exit codes: {EXIT_OK} ok; {EXIT_REFUSED} refused by the gateway; {EXIT_USAGE} bad arguments\n"
    f"or key; {EXIT_TIMEOUT} no result in time (or the connection lost after sending: the\n"
    f"command may have been applied); {EXIT_UNREACHABLE} the broker cannot be reached (nothing sent)")


def add_parser(subparsers: Any) -> None:
    """Register `send` on the `gatewayd` argument parser."""
    send = subparsers.add_parser(
        "send", help="sign and send one command, print its result",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"command types and their arguments:\n{command_usage()}\n\n{EXIT_CODES}")
    send.add_argument("--key", type=Path, required=True, help="the center's private key (PEM)")
    broker_args(send)
    send.add_argument("--building", required=True, type=building_id,
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
    send.add_argument("type", help="command type (listed below)")
    send.add_argument("args", nargs="*", metavar="key=value",
                      help="arguments (below). Those the contract types as text (TEXT, DECIMAL, "
                           "a date, a choice) are taken as written (room=0102); other "
                           "values are JSON when they parse (42, true, [..], {..}), else text; "
                           "key:=JSON forces JSON")
    send.set_defaults(func=cmd_send)


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


def parse_args_list(items: list[str]) -> dict[str, Any]:
    """`["amount_fen=500", "room=102"]` -> `{"amount_fen": 500, "room": "102"}`.

    Arguments the contract types as text (`text_args()`) stay strings, so that
    room 102, card 0042 or price 0.60 are not read as numbers. Any
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
        if force_json or key not in text_args():
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
        connect = connect_args(args)
    except (KeyFileError, ValueError) as e:
        print(f"gatewayd send: {e}", file=sys.stderr)
        return EXIT_USAGE
    to = args.to or args.building
    unsigned = build_command(args.type, command_args, to=to, expires_in_s=args.expires_in)
    if args.command_id is not None:
        unsigned["id"] = args.command_id
    try:
        command = sign_command(unsigned, key)
    except CanonicalFormError as e:  # 1500.0: a command carries integers only
        print(f"gatewayd send: cannot sign: {e}", file=sys.stderr)
        return EXIT_USAGE
    root = f"{args.prefix}/{args.building}"
    topic = f"{args.prefix}/all/cmd" if to == "all" else f"{root}/cmd"
    try:
        result = asyncio.run(_send(connect, command, topic, f"{root}/cmd/result", args.timeout))
    except _Unreachable as e:
        print(f"gatewayd send: cannot reach the broker {args.broker}: {e}; nothing was sent",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    except aiomqtt.MqttError as e:  # lost after the command went out: it may have been applied
        print(f"gatewayd send: {args.broker}: {e}; the command may have been applied", file=sys.stderr)
        return EXIT_TIMEOUT
    if result is None:
        print(f"gatewayd send: no result for {command['id']} within {args.timeout:g} s", file=sys.stderr)
        return EXIT_TIMEOUT
    print(json.dumps(result, ensure_ascii=False))
    return EXIT_OK if result.get("ok") is True else EXIT_REFUSED


class _Unreachable(Exception):
    """The broker could not be connected to: the command never left."""


async def _send(connect: dict[str, Any], command: dict[str, Any], topic: str, result_topic: str,
                timeout_s: float) -> dict[str, Any] | None:
    connected = False
    try:
        async with aiomqtt.Client(**connect) as client:
            connected = True
            return await _exchange(client, command, topic, result_topic, timeout_s)
    except aiomqtt.MqttError as e:
        if not connected:
            raise _Unreachable(str(e)) from e
        raise


async def _exchange(client: aiomqtt.Client, command: dict[str, Any], topic: str, result_topic: str,
                    timeout_s: float) -> dict[str, Any] | None:
    """Subscribe to the results, publish the command, wait for its result."""
    await client.subscribe(result_topic, qos=1)  # before publishing: the answer is fast
    await client.publish(topic, json.dumps(command, ensure_ascii=False).encode(), qos=1)
    try:
        async with asyncio.timeout(timeout_s):
            async for message in client.messages:
                try:
                    result = json.loads(payload_bytes(message.payload))
                except ValueError:
                    continue
                if isinstance(result, dict) and result.get("id") == command["id"]:
                    return result
    except TimeoutError:
        return None
    return None
