"""How fast the center link drains a backlog, and how long a command takes.

    .venv/bin/python bench/outbox.py [--events N] [--pings N] [--dir PATH]
    .venv/bin/python bench/outbox.py --events N --write-trials T

With `--write-trials T`, only the backlog write of step 1 is timed, T times,
each into a fresh store: its wall and CPU seconds, then the medians. The
machine's noise moves single runs by more than a small change does.

1. Backlog: N events (1 in 3 money) are written to a fresh store while no
   broker runs, in store jobs of 1,000 events. Then a mosquitto started here
   comes up and a CenterLink drains the backlog to it: events per second
   (connect to `pending: 0`, every event marked published after its PUBACK),
   and the process's resident memory before and at its peak while draining.
   `mosquitto_sub` (another process) counts what reached a subscriber.
   Run twice: against mosquitto's defaults (Receive Maximum 20, which the
   link honours) and with `max_inflight_messages 0` (no limit: the link's
   own window of 256).
2. Command round trip: pings signed with Ed25519, sent one after another by a
   center-side client through the same mosquitto; a minimal handler runs the
   gateway's real admission (`accept_command`: JSON, schema, signature,
   age) and answers at once. Time from publish to the result received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt

from gatewayd.center.link import CenterLink
from gatewayd.center.topics import TopicKind
from gatewayd.config.load import load_config
from gatewayd.contract.command_admission import accept_command
from gatewayd.contract.command_types import CommandRejection
from gatewayd.contract.enums import EndReason, TapReason, WaterUse
from gatewayd.contract.events import PowerUsage, Tap, WaterSession
from gatewayd.contract.signing import generate_keypair, load_private_key, load_public_key, sign_command
from gatewayd.contract.wire import encode_result_ok, rfc3339
from gatewayd.services.clock import Clock
from gatewayd.services.component import Heartbeat
from gatewayd.store import outbox
from gatewayd.store.db import Store
from gatewayd.store.txn import Txn

TS = "2026-11-25T10:05:00.000+08:00"
SESSION = WaterSession(
    session="s", point="shower-1", service=WaterUse.SHOWER, card="04A1B2C3",
    account="s2023001", started="2026-11-25T10:00:00.000+08:00",
    ended="2026-11-25T10:05:00.000+08:00", volume_ml=5200, seconds=300,
    amount_fen=16, end_reason=EndReason.TAP, offline=True)
TAP = Tap(reader="r-shower-1", card="04A1B2C3", point="shower-1", granted=True,
               reason=TapReason.START)
USAGE = PowerUsage(room="301", account="room-b07-301", wh=180, amount_fen=10,
                        meter_wh_from=1834387, meter_wh_to=1834567, balance_fen=4210)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Mosquitto:
    def __init__(self, d: Path, extra: list[str]) -> None:
        self.port = free_port()
        self.conf = d / f"mosquitto-{self.port}.conf"
        # An unbounded queue per subscriber: by default mosquitto drops what a
        # slow subscriber has not taken beyond 1,000 messages.
        self.conf.write_text("\n".join([f"listener {self.port} 127.0.0.1", "allow_anonymous true",
                                        "persistence false", "max_queued_messages 0", *extra]) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Mosquitto:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(500):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.01)
        raise RuntimeError("mosquitto did not start")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait()


def write_config(d: Path, port: int, **center: Any) -> Path:
    lines = ["[gateway]", 'building = "b07"', f'state_dir = "{d / "state"}"', 'clock_synced = "yes"',
             "[center]", f'broker = "mqtt://127.0.0.1:{port}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in center.items()]
    path = d / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Silent:
    async def handle(self, payload: bytes, topic_kind: TopicKind) -> bytes | None:
        return None


def backlog(store: Store, n: int) -> float:
    def job(count: int) -> Any:
        def run(txn: Txn) -> None:
            for i in range(count):
                k = i % 3
                if k == 0:
                    txn.event(SESSION, ts=TS)
                elif k == 1:
                    txn.event(TAP, ts=TS)
                else:
                    txn.event(USAGE, ts=TS)
        return run

    t0 = time.perf_counter()
    futures = [store.submit(job(min(1000, n - i))) for i in range(0, n, 1000)]
    for f in futures:
        f.result()
    return time.perf_counter() - t0


async def drain(d: Path, n: int, extra: list[str], label: str) -> None:
    with Mosquitto(d, extra) as broker:
        config = load_config(write_config(d, broker.port, insecure_unsigned_commands=True))
        shutil.rmtree(config.gateway.state_dir, ignore_errors=True)
        store = Store.open(config.gateway.state_dir, "b07")
        try:
            secs = backlog(store, n)
            size = store.call(outbox.pending).total_bytes
            print(f"[{label}] backlog: {n} events ({size / 1e6:.1f} MB of payload) written offline "
                  f"in {secs:.2f} s")
            sub = subprocess.Popen(["mosquitto_sub", "-p", str(broker.port), "-t", "ecard/v1/b07/events",
                                    "-q", "1", "-C", str(n)], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL)
            await asyncio.sleep(0.3)  # let the subscriber subscribe
            link = CenterLink(config, store, Clock("UTC", "yes"), handler=Silent(), status=dict,
                              telemetry=None)
            await link.start()
            base = rss_mb()
            peak = base
            task = asyncio.create_task(link.run(Heartbeat("center", None)))
            while not link.connected:
                await asyncio.sleep(0.005)
            t0 = time.perf_counter()
            while (await store.read(outbox.pending)).messages:
                peak = max(peak, rss_mb())
                await asyncio.sleep(0.05)
            dt = time.perf_counter() - t0
            await link.shutdown()
            await task
            try:
                out, _ = await asyncio.to_thread(sub.communicate, None, 60)
            except subprocess.TimeoutExpired:
                sub.kill()
                out, _ = sub.communicate()
            got = len(out.splitlines())
            print(f"[{label}] drained {n} events in {dt:.2f} s: {n / dt:,.0f} events/s; "
                  f"subscriber received {got}; RSS {base:.0f} MB before, peak {peak:.0f} MB while draining")
        finally:
            store.close()


async def pings(d: Path, n: int, extra: list[str], label: str) -> None:
    keys = generate_keypair()
    (d / "center.key").write_bytes(keys.private_pem)
    (d / "center.pub").write_bytes(keys.public_pem)
    private = load_private_key(d / "center.key")
    public = load_public_key(d / "center.pub")
    clock = Clock("UTC", "yes")

    class PingHandler:
        async def handle(self, payload: bytes, topic_kind: TopicKind) -> bytes | None:
            parsed = accept_command(payload, topic_kind=topic_kind, building="b07", public_key=public,
                                    now=time.time(), clock_synced=True)
            if isinstance(parsed, CommandRejection):
                return parsed.encode()
            return encode_result_ok(parsed.id)

    with Mosquitto(d, extra) as broker:
        config = load_config(write_config(d, broker.port, command_public_key_file=str(d / "center.pub")))
        shutil.rmtree(config.gateway.state_dir, ignore_errors=True)
        store = Store.open(config.gateway.state_dir, "b07")
        link = CenterLink(config, store, clock, handler=PingHandler(), status=dict, telemetry=None)
        await link.start()
        task = asyncio.create_task(link.run(Heartbeat("center", None)))
        try:
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="bench-center",
                                      socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]) as center:
                await center.subscribe("ecard/v1/b07/cmd/result", qos=1)
                await center.subscribe("ecard/v1/b07/status", qos=1)
                async for m in center.messages:  # the gateway is subscribed once it says online
                    if m.topic.matches("ecard/v1/b07/status") and json.loads(bytes(m.payload))["online"]:
                        break
                times: list[float] = []
                for _ in range(n):
                    cmd = sign_command({"id": str(uuid.uuid4()), "to": "b07", "type": "ping",
                                        "ts": rfc3339(time.time(), clock.tz), "args": None}, private)
                    t0 = time.perf_counter()
                    await center.publish("ecard/v1/b07/cmd", json.dumps(cmd).encode(), qos=1)
                    async for m in center.messages:
                        if m.topic.matches("ecard/v1/b07/cmd/result"):
                            result = json.loads(bytes(m.payload))
                            if result["id"] == cmd["id"]:
                                assert result["ok"], result
                                break
                    times.append((time.perf_counter() - t0) * 1e3)
            times.sort()
            p50 = statistics.median(times)
            p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
            print(f"[{label}] command round trip over {n} signed pings: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
                  f"max {times[-1]:.2f} ms")
        finally:
            await link.shutdown()
            await task
            store.close()


def write_trials(base: Path, n: int, trials: int) -> None:
    walls: list[float] = []
    cpus: list[float] = []
    for trial in range(trials):
        state = base / f"write-{trial}"
        shutil.rmtree(state, ignore_errors=True)
        store = Store.open(state, "b07")
        try:
            cpu0 = time.process_time()
            walls.append(backlog(store, n))
            cpus.append(time.process_time() - cpu0)
        finally:
            store.close()
        print(f"backlog write {trial + 1}: {n} events in {walls[-1]:.3f} s ({cpus[-1]:.3f} CPU s)")
    print(f"backlog write: median {statistics.median(walls):.3f} s, "
          f"{statistics.median(cpus):.3f} CPU s over {trials} runs")


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--pings", type=int, default=500)
    p.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir under /var/tmp)")
    p.add_argument("--write-trials", type=int, default=0, metavar="T",
                   help="time only the backlog write, T times (see above)")
    args = p.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="gatewayd-bench-outbox-", dir="/var/tmp"))
    try:
        if args.write_trials:
            write_trials(base, args.events, args.write_trials)
            return
        await drain(base, args.events, [], "mosquitto defaults, receive maximum 20")
        await drain(base, args.events, ["max_inflight_messages 0"], "no broker inflight limit")
        await pings(base, args.pings, [], "mosquitto defaults (Nagle on its sockets)")
        await pings(base, args.pings, ["set_tcp_nodelay true"], "mosquitto set_tcp_nodelay true")
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    print(f"cpu: {os.cpu_count()} cores")


if __name__ == "__main__":
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main())
