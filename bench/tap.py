"""Benchmark: tap to valve open through the whole daemon, printed as figures (no pass/fail).

The real daemon (`python -m gatewayd.app.cli run`) serves two water points while
it polls `--meters` rooms (poll_interval_s = 1) in the background:

- the rooms: a simulated building in a separate process (bench/building_sim.py:
  50 meters and their breaker boards per Modbus TCP endpoint);
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
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import structlog  # noqa: E402
from building import (  # noqa: E402
    RICH_FEN,
    STUDENT,
    VALVE_BASE,
    gateway_config,
    rich_rooms,
    rooms_config,
    seed_store,
    serial_shower_config,
    valves_bus_config,
    write_config,
)
from building_sim import SimProc  # noqa: E402
from daemon_process import Daemon  # noqa: E402
from figures import summary  # noqa: E402
from proc_stats import cpu_seconds, peak_rss_mb  # noqa: E402
from serial_taps import DEBOUNCE_S, SERIAL_CARDS, TAP_TIMEOUT_S, serial_taps  # noqa: E402

from sim.serial_card import PtyPort  # noqa: E402
from sim.vcard import VirtualCard  # noqa: E402
from tests.cardreader_fixtures import Pcscd, _free_port_pair, pcscd_unavailable  # noqa: E402

PCSC_CARD_PREFIX = "04A1B2C3D4E5"
# pcscd notices vpcd's card gone within one presence poll (~400 ms); the
# same card taps again only DEBOUNCE_S after that.
PCSC_LIFT_S = 0.9
# Every bus connected, every room polled once.
SETTLE_S = 2.0


def daemon_config(workdir: Path, meter_ports: Sequence[int], meters: int, valve_port: int,
                  tty: Path, pcsc: bool) -> Path:
    lines = [
        *gateway_config(workdir, "poll_interval_s = 1.0", f"tap_debounce_s = {DEBOUNCE_S}"),
        "[tariffs]", 'power = { price = "0.56", unit = "kWh" }',
        'shower = { price = "0.06", unit = "min" }', "",
        *rooms_config(meter_ports, meters, "eastron-sdm120"),
        *valves_bus_config(valve_port),
        *serial_shower_config("r-serial", "shower-serial", tty, 0),
    ]
    if pcsc:
        lines += [
            "[[readers]]", 'id = "r-pcsc"', 'type = "pcsc"', 'name = "Virtual PCD"', "",
            "[[points]]", 'id = "shower-pcsc"', 'service = "shower"', 'reader = "r-pcsc"',
            f'valve = {{ bus = "valves", unit = {VALVE_BASE}, profile = "relay-board", '
            "channel = 1 }", "",
        ]
    return write_config(workdir, lines)


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


def start_pcscd(workdir: Path, pcsc_taps: int) -> tuple[Pcscd | None, str | None]:
    """A private pcscd with vpcd, or None and why not."""
    why = pcscd_unavailable() if pcsc_taps else "not asked for (--pcsc-taps 0)"
    if why is not None:
        return None, why
    pcscd = Pcscd(workdir, _free_port_pair())
    try:
        pcscd.start()
    except RuntimeError as e:
        return None, f"pcscd did not start: {e}"
    return pcscd, None


async def measure(args: argparse.Namespace, daemon: Daemon, valves: SimProc, pty: PtyPort,
                  pcscd: Pcscd | None, why_no_pcsc: str | None) -> None:
    """Print the serial taps, with the daemon's CPU meanwhile, then the PC/SC ones."""
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


async def run_daemon(args: argparse.Namespace, workdir: Path, meters: SimProc | None,
                     valves: SimProc) -> None:
    """Start pcscd (if it can run) and the daemon, tap, and stop them."""
    pcscd, why_no_pcsc = start_pcscd(workdir, args.pcsc_taps)
    pcsc_cards = [f"{PCSC_CARD_PREFIX}{i:02X}" for i in range(min(args.pcsc_taps, 256))]
    pty = PtyPort(workdir / "ttyRDM")
    try:
        config = daemon_config(workdir, meters.ports if meters else [], args.meters,
                               valves.ports[0], pty.path, pcscd is not None)
        seed_store(workdir / "state", {**rich_rooms(args.meters), STUDENT: RICH_FEN},
                   [*SERIAL_CARDS, *(pcsc_cards if pcscd else [])])
        daemon = Daemon(config, workdir)
        async with daemon.running():
            await asyncio.sleep(SETTLE_S)
            await measure(args, daemon, valves, pty, pcscd, why_no_pcsc)
    finally:
        pty.close()
        if pcscd is not None:
            pcscd.stop()


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--taps", type=int, default=1000, help="serial (RDM6300) samples")
    parser.add_argument("--meters", type=int, default=500, help="rooms polled in the background")
    parser.add_argument("--pcsc-taps", type=int, default=30, help="PC/SC samples (0: none)")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(f"tap: {os.cpu_count()} CPUs; {args.meters} rooms polled every 1 s meanwhile")
    meters = await SimProc.start(args.meters) if args.meters else None
    valves = await SimProc.start(0, valves=2)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-tap-") as tmp:
            await run_daemon(args, Path(tmp), meters, valves)
    finally:
        await valves.stop()
        if meters is not None:
            await meters.stop()


if __name__ == "__main__":
    asyncio.run(main())
