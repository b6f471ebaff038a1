"""`gatewayd tail`: print what gateways publish to the center, one line a message.

Contract: subscribes to the events, status and command results of one building
or all (telemetry with --telemetry) and prints each message as a line
(`describe`, words and numbers, no Python values) or as JSON (--json), until
--count messages or Ctrl-C. A broker that cannot be reached, at the first
connection or later, is retried with back-off (1 s doubling to 30 s), saying
so on stderr: `tail` can be started before the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from dataclasses import dataclass
from typing import Any, Final

import aiomqtt

from drivers.retry import Backoff
from gatewayd.tools.centertool_args import (
    EXIT_OK,
    EXIT_USAGE,
    broker_args,
    building_id,
    connect_args,
    payload_bytes,
)


def add_parser(subparsers: Any) -> None:
    """Register `tail` on the `gatewayd` argument parser."""
    tail = subparsers.add_parser("tail", help="print what gateways publish to the center")
    broker_args(tail)
    tail.add_argument("--building", default="+", type=_building_or_all,
                      help="one building (default: all)")
    tail.add_argument("--json", action="store_true", help="print each message as JSON")
    tail.add_argument("--telemetry", action="store_true", help="include telemetry")
    tail.add_argument("--count", type=int, default=0, help="stop after this many messages")
    tail.set_defaults(func=cmd_tail)


def _building_or_all(text: str) -> str:
    return text if text == "+" else building_id(text)


def cmd_tail(args: argparse.Namespace) -> int:
    try:
        connect = connect_args(args)
    except ValueError as e:
        print(f"gatewayd tail: {e}", file=sys.stderr)
        return EXIT_USAGE
    suffixes = ["events", "status", "cmd/result"] + (["telemetry"] if args.telemetry else [])
    topics = [f"{args.prefix}/{args.building}/{s}" for s in suffixes]
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how `tail` ends
        asyncio.run(_tail_on(connect, topics, as_json=args.json, count=args.count))
    return EXIT_OK


#: `tail` reconnects after losing the broker, waiting this long at first and at most
#: between tries.
TAIL_RECONNECT_MIN_S: Final = 1.0
TAIL_RECONNECT_MAX_S: Final = 30.0


async def _tail_on(connect: dict[str, Any], topics: list[str], *, as_json: bool,
                   count: int) -> None:
    """`_tail` through broker restarts and a broker not up yet: every failed or
    lost connection is retried with back-off, saying so on stderr."""
    progress = _TailProgress()
    # Not reset when a reconnection succeeds: a broker that keeps dropping `tail` is
    # retried ever more slowly, up to the cap.
    backoff = Backoff(TAIL_RECONNECT_MIN_S, TAIL_RECONNECT_MAX_S, jitter=0.0)
    while True:
        try:
            await _tail(connect, topics, as_json=as_json, count=count, progress=progress)
            return
        except aiomqtt.MqttError as e:
            what = "disconnected" if progress.connected else "cannot connect"
            progress.connected = False
            delay = backoff.next_delay()
            print(f"gatewayd tail: {what} ({e}); trying again in {delay:.0f} s",
                  file=sys.stderr, flush=True)
            await asyncio.sleep(delay)


@dataclass
class _TailProgress:
    """What `tail` has done so far, across reconnections."""

    connected: bool = False   # now: a failure is a lost connection, else a failed attempt
    seen: int = 0             # messages printed (for --count)


async def _tail(connect: dict[str, Any], topics: list[str], *, as_json: bool, count: int,
                progress: _TailProgress) -> None:
    async with aiomqtt.Client(**connect) as client:
        await client.subscribe([(t, 1) for t in topics])
        progress.connected = True
        print(f"listening on {', '.join(topics)}", file=sys.stderr, flush=True)
        async for message in client.messages:
            payload = payload_bytes(message.payload)
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
        return f"{building} {kind} (not JSON: {payload[:60].decode(errors='replace')})"
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
        return (f"{head} online v{doc.get('version')} last_seq={_short(doc.get('last_seq'))} "
                f"pending={_short(doc.get('pending'))} faults={fault_text} "
                f"clock {'synced' if doc.get('clock_synced') else 'NOT synced'}"
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
    """A value in words, at most 40 characters: yes/no, "-" for none, lists as a, b."""
    text = _words(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _words(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(_words(v) for v in value) or "none"
    if isinstance(value, dict):
        return ",".join(f"{k}:{_words(v)}" for k, v in value.items()) or "none"
    return str(value)
