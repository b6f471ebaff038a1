"""Campaign `command_flood` (issue 14 item 5): a command flood cannot starve the building.

The real daemon with a signing key, a real mosquitto, a simulated building. Each
iteration floods the command topics with big payloads a center would never send
(unsigned cards.load-shaped JSON up to 8 MiB at QoS 0 and QoS 1, a well-formed but
wrong signature, bytes that are not JSON, deep nesting), while the center sends
signed `account.credit`s and a card opens and closes a shower. Invariants:

- every signed command sent during or after the flood is answered exactly once,
  `ok`, and applied exactly once (one `account.credited` naming it);
- nothing unsigned is applied, no QoS 0 command is answered, no flood payload
  is answered `ok`;
- every tap during the flood opens its valve, and the next closes it;
- the daemon's RSS stays within a bound of its start, and so does its worker's;
- what was dropped is counted, and logged in bounded lines; no traceback.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import random
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatewayd.center.apply import REFUSALS_LOGGED_PER_MIN
from gatewayd.center.command_queue import DROPS_LOGGED_PER_MIN
from gatewayd.contract.signing import sign_command
from gatewayd.contract.wire import rfc3339
from gatewayd.rules.water import Card
from sim.serial_card import PtyPort
from tests.mqtt_fixtures import Collector, mosquitto
from tests.soak.harness import (
    BUILDING,
    Checks,
    Daemon,
    Layout,
    Row,
    coil,
    hold_card,
    read_store,
    rss_of,
    seed,
    start_building,
    until,
)

ROOT_TOPIC = f"ecard/v1/{BUILDING}"
#: One round's flood: the first and last at QoS 0, the others at QoS 1.
FLOOD_ROUND = ("unsigned", "unsigned", "unsigned", "bogus-sig", "garbage", "deep", "unsigned", "unsigned")
MIB = 1024 * 1024
#: RSS the daemon may add over its start under the flood: its command queue
#: (16 MiB), a payload read and copied by paho, one handed to the worker, and the
#: allocator keeping some of it. The worker parses one payload at a time.
DAEMON_RSS_SLACK_KB = 200 * 1024
WORKER_RSS_MAX_KB = 500 * 1024
# Safety nets, not measurements.
ANSWER_TIMEOUT_S = 120.0
VALVE_TIMEOUT_S = 10.0


def flood_payload(rng: random.Random, kind: str, size: int, key: Ed25519PrivateKey) -> tuple[str, bytes]:
    """One flooding command of about `size` bytes, and its id."""
    cid = f"flood-{uuid.uuid4().hex[:12]}"
    if kind == "garbage":
        return cid, bytes(rng.getrandbits(8) for _ in range(256)) * (size // 256)
    if kind == "deep":
        return cid, (b'{"id":"' + cid.encode() + b'","x":' + b"[" * (size // 2 - 20) +
                     b"]" * (size // 2 - 20) + b"}")
    card = '{"card":"04A1B2C3","account":"acct-000000","kind":"student","status":"active"},'
    cards = "[" + (card * max(1, size // len(card)))[:-1] + "]"
    cmd = {"id": cid, "to": BUILDING, "type": "cards.load", "ts": rfc3339(time.time(), datetime.UTC)}
    if kind == "bogus-sig":
        cmd = sign_command(cmd, key)  # a real signature, of another command than this one
    text = json.dumps(cmd)[:-1] + ', "args": {"version": 99, "full": true, "cards": ' + cards + "}}"
    return cid, text.encode()


async def command_flood(iterations: int) -> Row:
    t0 = time.monotonic()
    rng = random.Random(20261203)
    checks = Checks()
    notes: list[str] = []
    key = Ed25519PrivateKey.generate()
    faults = 0
    flood_ids: dict[str, int] = {}       # id -> QoS it was sent at
    signed: list[str] = []
    taps = 0
    from tests.soak.campaigns import workdir  # the campaigns' scratch directories

    async with workdir("command-flood") as tmp:
        (tmp / "center.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        with mosquitto(tmp / "mosquitto") as broker:
            layout = Layout(tmp, rooms=4, points=1, poll_s=0.5, shower_unit="min", shower_price="0.06",
                            water_rules={"min_balance_fen": 1},
                            center={"broker": broker.url,
                                    "command_public_key_file": str(tmp / "center.pub")})
            sim = await start_building(layout)
            port = PtyPort(layout.tty(0))
            uid = "04A1B2C3D5"
            seed(layout.state_dir, {"stu-1": 10_000_000}, [Card(uid, "stu-1", "student", "active", None)])
            daemon = Daemon(layout.config(sim), tmp)
            center = Collector(broker, [f"{ROOT_TOPIC}/cmd/result"], client_id="center-soak")
            await center.start()
            try:
                await daemon.start()
                await daemon.ready()
                assert daemon.proc is not None
                await asyncio.sleep(2.0)  # the link up, the worker started
                rss0 = rss_of(daemon.proc.pid)
                peak = rss0
                for it in range(iterations):
                    label = f"round {it + 1}"
                    # A shower opened before the flood, closed during it (each tap past the
                    # reader's debounce: the same card again within it is the same tap).
                    await asyncio.sleep(0.5)
                    await hold_card(port, uid)
                    taps += 1
                    opened = await until(lambda: coil(sim, *layout.valve(0)), VALVE_TIMEOUT_S, 0.02)
                    checks.check(bool(opened), f"{label}: the tap before the flood did not open the valve")
                    # The flood, all at once (several QoS 1 in flight: the queue fills);
                    # meanwhile the shower is closed and the center sends a signed credit.
                    sends = []
                    for n, kind in enumerate(FLOOD_ROUND):
                        size = rng.randint(1 * MIB, 8 * MIB - 4096) if kind != "garbage" else MIB
                        qos = 0 if n in (0, len(FLOOD_ROUND) - 1) else 1
                        cid, payload = flood_payload(rng, kind, size, key)
                        flood_ids[cid] = qos
                        sends.append(center.publish(f"{ROOT_TOPIC}/cmd", payload, qos=qos))
                        faults += 1
                    flood = asyncio.gather(*sends)
                    await asyncio.sleep(0.5)  # past the reader's debounce
                    await hold_card(port, uid)
                    taps += 1
                    closed = await until(lambda: not coil(sim, *layout.valve(0)), VALVE_TIMEOUT_S, 0.02)
                    checks.check(bool(closed), f"{label}: the tap during the flood did not close the valve")
                    cid = f"credit-{it}-{uuid.uuid4().hex[:8]}"
                    signed.append(cid)
                    cmd = {"id": cid, "to": BUILDING, "type": "account.credit",
                           "ts": rfc3339(time.time(), datetime.UTC),
                           "args": {"account": "stu-1", "amount_fen": 1 + it}}
                    await center.publish(f"{ROOT_TOPIC}/cmd", json.dumps(sign_command(cmd, key)).encode())
                    await flood
                    rss = rss_of(daemon.proc.pid)
                    peak = max(peak, rss)
                    checks.check(rss <= rss0 + DAEMON_RSS_SLACK_KB,
                                 f"{label}: daemon RSS {rss // 1024} MiB, started at {rss0 // 1024} MiB")
                    worker = [rss_of(c) for c in _children(daemon.proc.pid)]
                    checks.check(all(w <= WORKER_RSS_MAX_KB for w in worker),
                                 f"{label}: a child of the daemon at {max(worker) // 1024} MiB")
                # After the flood: one more signed command, then everything answered.
                cid = f"after-{uuid.uuid4().hex[:8]}"
                signed.append(cid)
                cmd = {"id": cid, "to": BUILDING, "type": "account.credit",
                       "ts": rfc3339(time.time(), datetime.UTC),
                       "args": {"account": "stu-1", "amount_fen": 1}}
                await center.publish(f"{ROOT_TOPIC}/cmd", json.dumps(sign_command(cmd, key)).encode())

                def results() -> dict[str, list[dict[str, Any]]]:
                    out: dict[str, list[dict[str, Any]]] = {}
                    for s in center.on("/cmd/result"):
                        doc = s.json()
                        out.setdefault(str(doc.get("id")), []).append(doc)
                    return out

                await until(lambda: all(c in results() for c in signed), ANSWER_TIMEOUT_S, 0.2)
                await asyncio.sleep(1.0)  # anything answered twice would be in by now
                got = results()
                snap = read_store(layout.db)
                applied = Counter(e["command"] for e in snap.of("account.credited"))
                for c in signed:
                    rs = got.get(c, [])
                    checks.check(len(rs) == 1 and rs[0].get("ok") is True,
                                 f"signed command {c}: results {rs}")
                    checks.check(applied[c] == 1, f"signed command {c} applied {applied[c]} times")
                for c, qos in flood_ids.items():
                    rs = got.get(c, [])
                    checks.check(applied[c] == 0, f"flood command {c} applied")
                    checks.check(all(r.get("ok") is False for r in rs), f"flood command {c} answered ok")
                    checks.check(qos == 1 or not rs, f"QoS 0 flood command {c} answered: {rs}")
                checks.check(len(snap.of("account.credited")) == 1 + len(signed),
                             "account.credited events other than the seed's and the signed commands'")
                checks.check(not coil(sim, *layout.valve(0)), "the valve left open")
                code = await daemon.stop()
                checks.check(code == 0, f"SIGTERM: exit code {code}")
                records = daemon.log_records()
                events = Counter(str(r.get("event")) for r in records)
                minutes = (time.monotonic() - t0) / 60 + 1
                for event, per_min in (("center_command_dropped", DROPS_LOGGED_PER_MIN),
                                       ("command_refused", REFUSALS_LOGGED_PER_MIN)):
                    checks.check(events[event] <= per_min * (minutes + 1),
                                 f"{events[event]} {event} lines in {minutes:.1f} minutes")
                checks.extend(1, daemon.log_problems())
                # Every QoS 1 flood payload answered (a refusal: under its id, or null) or
                # dropped unread and counted; every QoS 0 one counted as ignored.
                dropped: Counter[str] = Counter()
                for r in records:
                    if r.get("event") == "center_command_dropped":
                        dropped[str(r.get("reason"))] += 1
                    elif r.get("event") == "center_command_dropped_summary":
                        dropped.update(r.get("by_reason") or {})
                refused = sum(1 for c in flood_ids if c in got)
                q1 = sum(1 for q in flood_ids.values() if q == 1)
                checks.check(refused + len(got.get("None", [])) + dropped["queue_full"] == q1,
                             f"{q1} QoS 1 flood payloads, {refused} refused under their id, "
                             f"{len(got.get('None', []))} under id null, {dropped['queue_full']} dropped")
                checks.check(dropped["qos0"] == len(flood_ids) - q1,
                             f"{len(flood_ids) - q1} QoS 0 flood payloads, {dropped['qos0']} counted")
                notes.append(
                    f"{faults} flood payloads ({len(flood_ids) - q1} at QoS 0, ignored), {refused} answered "
                    f"under their id, {len(got.get('None', []))} under id null, {dropped['queue_full']} "
                    f"dropped unread; {len(signed)} signed credits answered; "
                    f"{taps} taps; daemon RSS {rss0 // 1024} -> peak sampled {peak // 1024} MiB; log "
                    f"lines: {events['center_command_dropped']} drops, "
                    f"{events['center_command_dropped_summary']} drop summaries, "
                    f"{events['command_refused']} refusals")
            finally:
                await center.stop()
                await daemon.close()
                port.close()
                await sim.stop()
    return Row("command_flood", iterations, faults, checks.count, checks.violations, notes,
               time.monotonic() - t0)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return out
