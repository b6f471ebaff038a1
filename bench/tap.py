"""Benchmark: tap to valve open through the whole daemon, printed as figures (no pass/fail).

The real daemon (`python -m gatewayd.app.cli run`) serves two water points while
it polls `--meters` rooms (poll_interval_s = 1) in the background:

- the rooms: a simulated building in a separate process (bench/daemon_poll.py's
  simulator: 50 meters and their breaker boards per Modbus TCP endpoint);
- the valves: a relay board on another Modbus TCP endpoint in a third process,
  which stamps `time.monotonic()` when a write-coil request arrives (same
  machine, same monotonic clock as this process);
- serial: an RDM6300 on a pty. Latency = from the moment the write of the last
  byte of the frame to the pty returned, to the valve's coil write arriving
  at the simulator. Each sample is a card tapped at a closed point (measured),
  then tapped again to close it (not measured). Cards rotate and
  `tap_debounce_s` is 0.05, so no tap is lost to the debounce;
- PC/SC (`--pcsc-taps`): a private pcscd with the vpcd virtual reader; from a
  `VirtualCard` connecting to vpcd (the card placed) to the coil write.
  pcscd's presence polling of vpcd (about 400 ms) dominates; skipped with a
  message when pcscd and vpcd cannot be started (or another pcscd owns
  /run/pcscd).

Target (behaviour.md): tap to valve open under 50 ms on the gateway, not
counting the bus. These figures include the bus (one Modbus TCP request on
loopback) and the store commit (fsync) that precedes the valve.

    .venv/bin/python bench/tap.py [--taps 1000] [--meters 500] [--pcsc-taps 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import structlog  # noqa: E402
from daemon_poll import (  # noqa: E402
    BUILDING,
    VALVE_BASE,
    Daemon,
    SimProc,
    account,
    cpu_seconds,
    peak_rss_mb,
    room_id,
    rooms_config,
)

from gatewayd.rules.water import Card  # noqa: E402
from gatewayd.store.cards import Cards  # noqa: E402
from gatewayd.store.db import Store  # noqa: E402
from gatewayd.store.ledger import Ledger  # noqa: E402
from gatewayd.store.txn import Txn  # noqa: E402
from sim.serial_card import PtyPort, frame  # noqa: E402
from sim.vcard import VirtualCard  # noqa: E402

DEBOUNCE_S = 0.05
SERIAL_CARDS = [f"04A1B2C3{i:02X}" for i in range(16)]
PCSC_CARD_PREFIX = "04A1B2C3D4E5"
STUDENT = "stu-1"
# pcscd notices vpcd's card gone within one presence poll (~400 ms); the
# same card taps again only DEBOUNCE_S after that.
PCSC_LIFT_S = 0.9
# Safety nets against a hung bench, not measurements.
TAP_TIMEOUT_S = 10.0
PCSCD_SOCKET = Path("/run/pcscd/pcscd.comm")
PCSCD_PIDFILE = Path("/run/pcscd/pcscd.pid")
VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")


def summary(name: str, samples: Sequence[float]) -> str:
    v = sorted(x * 1000 for x in samples)
    if not v:
        return f"{name}: no samples"
    p99 = v[min(len(v) - 1, round(0.99 * (len(v) - 1)))]
    return (f"{name}: n={len(v)} p50={statistics.median(v):.2f} ms p99={p99:.2f} ms "
            f"max={v[-1]:.2f} ms")


def pcsc_unavailable() -> str | None:
    """Why PC/SC cannot be benched here, or None."""
    if shutil.which("pcscd") is None or not VPCD_DRIVER.exists():
        return "pcscd or vsmartcard-vpcd is not installed"
    if importlib.util.find_spec("smartcard") is None:
        return "pyscard is not installed (pip install '.[pcsc]')"
    if shutil.which("ss") is None:
        return "ss (iproute2) is needed to see vpcd listening"
    try:
        # pcscd ends its pid file with a NUL byte.
        pid = int(PCSCD_PIDFILE.read_text().strip("\x00 \n"))
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return f"another pcscd (pid {pid}) owns {PCSCD_SOCKET}; only one can run"


def write_config(workdir: Path, meter_ports: Sequence[int], meters: int, valve_port: int,
                 tty: Path, pcsc: bool) -> Path:
    lines = [
        "[gateway]", f'building = "{BUILDING}"', f'state_dir = "{workdir / "state"}"',
        "poll_interval_s = 1.0", f"tap_debounce_s = {DEBOUNCE_S}", 'clock_synced = "yes"', "",
        "[tariffs]", 'power = { price = "0.56", unit = "kWh" }',
        'shower = { price = "0.06", unit = "min" }', "",
        *rooms_config(meter_ports, meters, "eastron-sdm120"),
        "[[buses]]", 'name = "valves"', 'type = "tcp"', 'host = "127.0.0.1"',
        f"port = {valve_port}", "timeout_s = 1.0", "",
        "[[readers]]", 'id = "r-serial"', 'type = "serial"', f'port = "{tty}"', "",
        "[[points]]", 'id = "shower-serial"', 'service = "shower"', 'reader = "r-serial"',
        f'valve = {{ bus = "valves", unit = {VALVE_BASE}, profile = "relay-board", channel = 0 }}', "",
    ]
    if pcsc:
        lines += [
            "[[readers]]", 'id = "r-pcsc"', 'type = "pcsc"', 'name = "Virtual PCD"', "",
            "[[points]]", 'id = "shower-pcsc"', 'service = "shower"', 'reader = "r-pcsc"',
            f'valve = {{ bus = "valves", unit = {VALVE_BASE}, profile = "relay-board", '
            "channel = 1 }", "",
        ]
    path = workdir / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def seed(state_dir: Path, meters: int, pcsc_cards: Sequence[str]) -> None:
    store = Store.open(state_dir, BUILDING)
    try:
        def job(txn: Txn) -> None:
            for i in range(meters):
                Ledger.credit(txn, account(room_id(i)), 10**9)
            Ledger.credit(txn, STUDENT, 10**9)
            for uid in [*SERIAL_CARDS, *pcsc_cards]:
                Cards.put(txn, Card(uid, STUDENT, "student", "active", None))
        store.call(job)
    finally:
        store.close()


async def serial_taps(valves: SimProc, pty: PtyPort, taps: int) -> list[float]:
    # The reader opens its pty after READY, and pyserial flushes what came
    # before: tap until the valve answers once, then close it.
    uid = SERIAL_CARDS[0]
    async with asyncio.timeout(30):
        while True:
            before = time.monotonic()
            pty.write(frame(uid, "rdm6300"))
            with contextlib.suppress(TimeoutError):
                await valves.write_to(0, VALVE_BASE, 0, True, after=before, timeout=0.5)
                break
    await asyncio.sleep(DEBOUNCE_S * 2)
    before = time.monotonic()
    pty.write(frame(uid, "rdm6300"))
    await valves.write_to(0, VALVE_BASE, 0, False, after=before, timeout=TAP_TIMEOUT_S)

    samples: list[float] = []
    for i in range(taps):
        uid = SERIAL_CARDS[(i + 1) % len(SERIAL_CARDS)]
        data = frame(uid, "rdm6300")
        await asyncio.sleep(DEBOUNCE_S * 2)
        before = time.monotonic()
        pty.write(data)  # returns once the last byte is in the pty
        last_byte = time.monotonic()
        opened = await valves.write_to(0, VALVE_BASE, 0, True, after=before, timeout=TAP_TIMEOUT_S)
        samples.append(opened.t - last_byte)
        await asyncio.sleep(DEBOUNCE_S * 2)
        before = time.monotonic()
        pty.write(data)
        await valves.write_to(0, VALVE_BASE, 0, False, after=before, timeout=TAP_TIMEOUT_S)
    return samples


async def pcsc_taps(valves: SimProc, port: int, taps: int) -> list[float]:
    samples: list[float] = []
    for i in range(taps):
        uid = f"{PCSC_CARD_PREFIX}{i % 256:02X}"
        card = VirtualCard(uid, port=port)
        placed = time.monotonic()
        await card.place()
        try:
            opened = await valves.write_to(0, VALVE_BASE, 1, True, after=placed, timeout=TAP_TIMEOUT_S)
        finally:
            await card.remove()
        samples.append(opened.t - placed)
        await asyncio.sleep(PCSC_LIFT_S)
        before = time.monotonic()
        async with VirtualCard(uid, port=port):
            await valves.write_to(0, VALVE_BASE, 1, False, after=before, timeout=TAP_TIMEOUT_S)
        await asyncio.sleep(PCSC_LIFT_S)
    return samples


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--taps", type=int, default=1000, help="serial (RDM6300) samples")
    parser.add_argument("--meters", type=int, default=500, help="rooms polled in the background")
    parser.add_argument("--pcsc-taps", type=int, default=30, help="PC/SC samples (0: none)")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    why_no_pcsc = pcsc_unavailable() if args.pcsc_taps else "not asked for (--pcsc-taps 0)"
    pcsc_cards = [f"{PCSC_CARD_PREFIX}{i:02X}" for i in range(min(args.pcsc_taps, 256))]
    print(f"tap: {os.cpu_count()} CPUs; {args.meters} rooms polled every 1 s meanwhile")
    meters = await SimProc.start(args.meters) if args.meters else None
    valves = await SimProc.start(0, valves=2)
    daemon: Daemon | None = None
    pcscd = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-tap-") as tmp:
            workdir = Path(tmp)
            if why_no_pcsc is None:
                from tests.cardreader_fixtures import Pcscd, _free_port_pair

                pcscd = Pcscd(workdir, _free_port_pair())
                try:
                    pcscd.start()
                except RuntimeError as e:
                    why_no_pcsc, pcscd = f"pcscd did not start: {e}", None
            pty = PtyPort(workdir / "ttyRDM")
            try:
                config = write_config(workdir, meters.ports if meters else [], args.meters,
                                      valves.ports[0], pty.path, pcscd is not None)
                seed(workdir / "state", args.meters, pcsc_cards if pcscd else [])
                daemon = Daemon(config, workdir)
                await daemon.start()
                await asyncio.sleep(2.0)  # every bus connected, every room polled once
                cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
                serial = await serial_taps(valves, pty, args.taps)
                cpu1, t1 = cpu_seconds(daemon.pid), time.monotonic()
                print(summary("serial rdm6300, last byte on the pty -> valve coil write at the "
                              "simulator", serial))
                print(f"  daemon CPU meanwhile: {cpu1 - cpu0:.1f} s in {t1 - t0:.1f} s; "
                      f"peak RSS {peak_rss_mb(daemon.pid):.1f} MiB")
                if pcscd is not None:
                    pcsc = await pcsc_taps(valves, pcscd.port, min(args.pcsc_taps, 256))
                    print(summary("pcsc vpcd, card placed -> valve coil write at the simulator", pcsc))
                else:
                    print(f"pcsc: skipped: {why_no_pcsc}")
                code = await daemon.stop()
                daemon = None
                if code != 0:
                    print(f"daemon exited with {code}")
            except BaseException:
                if daemon is not None:
                    print(daemon.tail(6000), file=sys.stderr)
                raise
            finally:
                if daemon is not None:
                    await daemon.stop()
                pty.close()
                if pcscd is not None:
                    pcscd.stop()
    finally:
        await valves.stop()
        if meters is not None:
            await meters.stop()


if __name__ == "__main__":
    asyncio.run(main())
