"""Benchmark: taps, cuts, loop lag and memory of the real daemon under a command flood (no pass/fail).

Issue 14 item 5: a publisher without the center's key sends ~8 MiB JSON
commands on `{root}/cmd`, twice a second at QoS 0 and twice a second at
QoS 1, for `--seconds`; `--flood unsigned` (no `sig`) or `--flood bogus-sig`
(a well-formed signature that does not verify: the worst case, since only a
full parse and re-serialisation can tell). Meanwhile, as in bench/tap.py and
bench/daemon_poll.py, a serial RDM6300 reader is tapped (tap to valve coil
write at the simulator) and rooms are loaded over their limit (the condition
met, `trip_after_s` after the load rose, to the breaker's coil write). The
same is measured first without the flood.

Printed per phase: tap p50/p99/max, cut latency, the longest gap between the
daemon's WATCHDOG=1 (sent every 0.5 s: a gap beyond that is loop lag), the
daemon's CPU, its peak RSS (VmHWM) and that of its children (the command
screen worker, multiprocessing's resource tracker), the commands dropped as
the daemon's metrics count them; after the flood, how soon a signed `ping`
and `account.credit` are answered.

The real daemon (`python -m gatewayd.app.cli run`), a real mosquitto, the
simulators and the flood publisher are separate processes.

    .venv/bin/python bench/command_flood.py [--seconds 45] [--flood unsigned|bogus-sig|both]
        [--meters 50] [--mib 8]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import aiomqtt  # noqa: E402
import structlog  # noqa: E402
from building import (  # noqa: E402
    BUILDING,
    RICH_FEN,
    STUDENT,
    gateway_config,
    locate,
    rich_rooms,
    rooms_config,
    seed_store,
    serial_shower_config,
    valves_bus_config,
    write_config,
)
from building_sim import SimProc  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cuts import MAX_POWER_W, TRIP_AFTER_S, cut_trials  # noqa: E402
from daemon_process import WatchedDaemon  # noqa: E402
from figures import percentiles  # noqa: E402
from proc_stats import children, cpu_seconds, peak_rss_mb, rss_mb  # noqa: E402
from serial_taps import DEBOUNCE_S, SERIAL_CARDS, serial_taps  # noqa: E402

from gatewayd.contract.signing import sign_command  # noqa: E402
from gatewayd.services.clock import Clock  # noqa: E402
from sim.serial_card import PtyPort  # noqa: E402
from tests.mqtt_fixtures import Broker, free_port  # noqa: E402

ROOT_TOPIC = f"ecard/v1/{BUILDING}"
# The daemon's watchdog: WATCHDOG=1 every half of this.
WATCHDOG_USEC = 1_000_000
# Safety nets against a hung bench, not measurements.
ANSWER_TIMEOUT_S = 120.0


# --- the flood publisher (a child process) ----------------------------------------------------


def flood_payload(mib: float, signed_look: bool) -> bytes:
    """A `cards.load`-shaped command of about `mib` MiB: a list of small objects, the
    shape that costs a JSON parser the most; with a well-formed wrong `sig` or none."""
    card = '{"card":"04A1B2C3","account":"acct-000000","kind":"student","status":"active"},'
    n = (int(mib * 1024 * 1024) - 4096) // len(card)  # just under the 8 MiB a command may have
    cards = "[" + (card * n)[:-1] + "]"
    head = {"id": "ID_PLACEHOLDER_0000000000000000", "to": BUILDING, "type": "cards.load",
            "ts": "2026-11-25T10:00:00+08:00"}
    if signed_look:
        head["sig"] = base64.b64encode(os.urandom(64)).decode()
    text = json.dumps(head)[:-1] + ', "args": {"version": 1, "full": true, "cards": ' + cards + "}}"
    return text.encode()


async def flood_child(port: int, mode: str, mib: float, rate: float) -> None:
    """Publish until stdin closes: `rate` a second at QoS 0 and `rate` at QoS 1."""
    payload = bytearray(flood_payload(mib, mode == "bogus-sig"))
    at = payload.index(b"ID_PLACEHOLDER_0000000000000000")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    done = asyncio.ensure_future(reader.read())
    sent = 0
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"flood-{os.getpid()}", timeout=60) as client:
        print(json.dumps({"ready": True, "bytes": len(payload)}), flush=True)
        next_at = time.monotonic()
        while not done.done():
            for qos in (0, 1):
                payload[at:at + 31] = f"flood-{sent:025d}".encode()
                await client.publish(f"{ROOT_TOPIC}/cmd", bytes(payload), qos=qos)
                sent += 1
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    print(json.dumps({"sent": sent}), flush=True)


class Flood:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, port: int, mode: str, mib: float, rate: float) -> Flood:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), "--flood-child", "--port", str(port),
            "--flood", mode, "--mib", str(mib), "--rate", str(rate),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT)
        assert proc.stdout is not None
        json.loads(await proc.stdout.readline())
        return cls(proc)

    async def stop(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        line = await self.proc.stdout.readline()
        await self.proc.wait()
        return int(json.loads(line)["sent"]) if line else -1


# --- the daemon's memory and metrics ---------------------------------------------------------


def memory(pid: int) -> str:
    kids = ", ".join(f"pid {c}: peak {rss_mb(c, 'VmHWM:'):.0f} MiB, now {rss_mb(c):.0f} MiB"
                     for c in children(pid))
    return (f"daemon peak RSS {peak_rss_mb(pid):.1f} MiB, now {rss_mb(pid):.1f} MiB; "
            f"children: {kids or 'none'}")


def dropped_counts(metrics_port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("gatewayd_center_commands_dropped_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


# --- setup --------------------------------------------------------------------------------------


def daemon_config(workdir: Path, meter_ports: Sequence[int], meters: int, valve_port: int, tty: Path,
                  broker_port: int, metrics_port: int) -> Path:
    return write_config(workdir, [
        *gateway_config(workdir, "poll_interval_s = 1.0", f"tap_debounce_s = {DEBOUNCE_S}"),
        "[center]", f'broker = "mqtt://127.0.0.1:{broker_port}"',
        f'command_public_key_file = "{workdir / "center.pub"}"', "",
        "[metrics]", f'listen = "127.0.0.1:{metrics_port}"', "",
        "[tariffs]", 'power = { price = "0.56", unit = "kWh" }',
        'shower = { price = "0.06", unit = "min" }', "",
        "[power]", f"max_power_w = {MAX_POWER_W}", f"trip_after_s = {TRIP_AFTER_S}",
        "reclose_after_s = 600", "",
        *rooms_config(meter_ports, meters, "eastron-sdm120-import"),
        *valves_bus_config(valve_port),
        *serial_shower_config("r-serial", "shower-serial", tty, 0),
    ])


def summary(samples: Sequence[float]) -> str:
    return percentiles(samples, digits=1)


class Center:
    """The center's side: signs commands, publishes them at QoS 1, times their results."""

    def __init__(self, port: int, key: Ed25519PrivateKey) -> None:
        self.port = port
        self.key = key
        self.results: dict[str, float] = {}
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Center:
        self._client = aiomqtt.Client("127.0.0.1", self.port, identifier="bench-center", timeout=60)
        await self._client.__aenter__()
        await self._client.subscribe(f"{ROOT_TOPIC}/cmd/result", qos=1)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None and self._client is not None
        self._task.cancel()
        await self._client.__aexit__(None, None, None)

    async def _read(self) -> None:
        assert self._client is not None
        async for m in self._client.messages:
            doc = json.loads(m.payload if isinstance(m.payload, bytes) else str(m.payload))
            if isinstance(doc.get("id"), str):
                self.results[doc["id"]] = time.monotonic()
                self._changed.set()

    async def round_trip(self, type_: str, args: dict[str, Any] | None = None) -> float:
        assert self._client is not None
        cid = str(uuid.uuid4())
        cmd: dict[str, Any] = {"id": cid, "to": BUILDING, "type": type_,
                               "ts": Clock("UTC", "yes").stamp(time.time())}
        if args is not None:
            cmd["args"] = args
        sent = time.monotonic()
        await self._client.publish(f"{ROOT_TOPIC}/cmd", json.dumps(sign_command(cmd, self.key)), qos=1)
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            while cid not in self.results:
                self._changed.clear()
                await self._changed.wait()
        return self.results[cid] - sent


# --- the phases -----------------------------------------------------------------------------------


@dataclass
class Rig:
    """What every phase drives: the daemon, the simulators, the serial reader's pty, the center."""

    args: argparse.Namespace
    daemon: WatchedDaemon
    meters: SimProc
    valves: SimProc
    pty: PtyPort
    broker_port: int
    metrics_port: int
    center: Center


async def phase(name: str, rig: Rig, rooms: list[int], flood_mode: str | None) -> None:
    args, daemon = rig.args, rig.daemon
    flood = await Flood.start(rig.broker_port, flood_mode, args.mib, args.rate) if flood_mode else None
    t0, cpu0 = time.monotonic(), cpu_seconds(daemon.pid)
    before = dropped_counts(rig.metrics_port)
    taps, (_, overload) = await asyncio.gather(
        serial_taps(rig.valves, rig.pty, int(args.seconds * 3)),
        cut_trials(rig.meters, [], rooms))
    while time.monotonic() - t0 < args.seconds:
        await asyncio.sleep(0.5)
    t1, cpu1 = time.monotonic(), cpu_seconds(daemon.pid)
    sent = await flood.stop() if flood else 0
    print(f"\n== {name} ({t1 - t0:.0f} s)")
    if flood:
        print(f"  flood: {sent} commands of {args.mib:g} MiB ({flood_mode}), half at QoS 0, "
              f"half at QoS 1")
    print(f"  tap to valve            {summary(taps)}")
    print(f"  overload cut            condition met -> breaker write "
          f"{summary([t.cut - t.met for t in overload])}")
    print(f"                          timer start + trip_after_s -> write "
          f"{summary([t.cut - t.timer for t in overload])}")
    print(f"  longest watchdog gap    {daemon.longest_gap(t0, t1) * 1000:.0f} ms "
          f"(sent every {WATCHDOG_USEC / 2e6 * 1000:.0f} ms)")
    print(f"  daemon CPU              {cpu1 - cpu0:.1f} s in {t1 - t0:.0f} s")
    print(f"  memory                  {memory(daemon.pid)}")
    if flood:
        await after_flood(rig, before)


async def after_flood(rig: Rig, before: dict[str, float]) -> None:
    """How soon signed commands are answered after the flood, and what it dropped."""
    answered = [await rig.center.round_trip("ping"),
                await rig.center.round_trip("account.credit", {"account": STUDENT, "amount_fen": 100})]
    after = dropped_counts(rig.metrics_port)
    print(f"  after the flood: signed ping answered in {answered[0] * 1000:.0f} ms, "
          f"account.credit in {answered[1] * 1000:.0f} ms")
    print("  dropped unread (metrics): " + ", ".join(
        f"{k} {after.get(k, 0) - before.get(k, 0):.0f}" for k in sorted(after)))
    print(f"  memory after answering  {memory(rig.daemon.pid)}")


def phase_modes(args: argparse.Namespace) -> list[str | None]:
    """None (no flood) first, then each flood asked for."""
    return [None, *(["unsigned", "bogus-sig"] if args.flood == "both" else [args.flood])]


async def run_daemon(args: argparse.Namespace, workdir: Path, key: Ed25519PrivateKey, meters: SimProc,
                     valves: SimProc, broker_port: int, cut_rooms: list[int]) -> None:
    """Start the daemon, run every phase against it, and stop it."""
    pty = PtyPort(workdir / "ttyRDM")
    metrics_port = free_port()
    try:
        config = daemon_config(workdir, meters.ports, args.meters, valves.ports[0], pty.path,
                               broker_port, metrics_port)
        seed_store(workdir / "state", {**rich_rooms(args.meters), STUDENT: RICH_FEN}, SERIAL_CARDS)
        daemon = WatchedDaemon(config, workdir, WATCHDOG_USEC)
        async with daemon.running():
            await asyncio.sleep(3.0)  # every bus connected, every room read, the link up
            print(f"  at start: {memory(daemon.pid)}")
            async with Center(broker_port, key) as center:
                print(f"  signed ping round trip before any flood: "
                      f"{await center.round_trip('ping') * 1000:.1f} ms")
                rig = Rig(args, daemon, meters, valves, pty, broker_port, metrics_port, center)
                for k, mode in enumerate(phase_modes(args)):
                    rooms = cut_rooms[k * args.cuts:(k + 1) * args.cuts]
                    await phase("no flood" if mode is None else f"flood: {mode}", rig, rooms, mode)
    finally:
        pty.close()


async def run_broker(args: argparse.Namespace, meters: SimProc, valves: SimProc,
                     cut_rooms: list[int]) -> None:
    """The center's key and a private mosquitto in a scratch directory, then the daemon."""
    key = Ed25519PrivateKey.generate()
    with tempfile.TemporaryDirectory(prefix="bench-command-flood-") as tmp:
        workdir = Path(tmp)
        (workdir / "center.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        (workdir / "mosquitto").mkdir()
        # set_tcp_nodelay as README recommends: a command round trip is not 40 ms of Nagle.
        broker = Broker(workdir / "mosquitto", free_port(), extra=["set_tcp_nodelay true"])
        broker.start()
        try:
            await run_daemon(args, workdir, key, meters, valves, broker.port, cut_rooms)
        finally:
            broker.stop()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=45.0, help="per phase")
    parser.add_argument("--flood", default="both", choices=["unsigned", "bogus-sig", "both"])
    parser.add_argument("--mib", type=float, default=8.0, help="size of each flooding command")
    parser.add_argument("--rate", type=float, default=2.0, help="commands a second at each QoS")
    parser.add_argument("--meters", type=int, default=50, help="rooms polled every 1 s")
    parser.add_argument("--cuts", type=int, default=4, help="overload cuts per phase")
    parser.add_argument("--flood-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


async def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.flood_child:
        await flood_child(args.port, args.flood, args.mib, args.rate)
        return
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(f"command_flood: {os.cpu_count()} CPUs; {args.meters} rooms polled every 1 s; "
          f"{args.seconds:g} s a phase")
    cut_rooms = list(range(min(args.meters, args.cuts * len(phase_modes(args)))))
    meters = await SimProc.start(args.meters)
    valves = await SimProc.start(0, valves=1)
    try:
        for i in cut_rooms:
            e, unit = locate(i)
            await meters.call("load", ep=e, unit=unit, w=0, kwh=0.0)
        await meters.call("watch", meters=[list(locate(i)) for i in cut_rooms])
        await run_broker(args, meters, valves, cut_rooms)
    finally:
        await valves.stop()
        await meters.stop()


if __name__ == "__main__":
    asyncio.run(main())
