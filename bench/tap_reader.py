"""Tap latency of the card reader drivers, printed as figures (no pass/fail).

Serial: a `SerialCardReader` reads a pty; for each tap the whole RDM6300 (or
ascii-line) frame is written to the pty's master side and the time from the
write returning (the last byte is out) to the sink call is measured. Debounce
is 0 so every frame is a tap.

PC/SC (`--pcsc N`): a private pcscd with vpcd is started (nothing else may own
/run/pcscd), and the time from a virtual card connecting to vpcd (the card
placed) to the sink call is measured N times. pcscd's presence polling
(about 400 ms for vpcd) dominates; a real reader with interrupt-driven
card detection (CCID) does better.

    .venv/bin/python bench/tap_reader.py [--taps 1000] [--protocol rdm6300] [--pcsc 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.cardreader.pcsc_reader import PcscCardReader  # noqa: E402
from drivers.cardreader.serial_reader import SerialCardReader  # noqa: E402
from drivers.protocols import CardTap  # noqa: E402
from sim.serial_card import PtyPort, SerialCardProtocol, frame  # noqa: E402
from sim.vcard import VirtualCard  # noqa: E402


def summary(name: str, samples_s: list[float]) -> str:
    ms = sorted(x * 1000 for x in samples_s)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return f"{name}: n={len(ms)} p50={statistics.median(ms):.3f} ms p99={p99:.3f} ms max={ms[-1]:.3f} ms"


async def bench_serial(taps: int, protocol: SerialCardProtocol) -> list[float]:
    arrived: asyncio.Queue[float] = asyncio.Queue()
    online = asyncio.Event()

    def sink(tap: CardTap) -> None:
        arrived.put_nowait(time.perf_counter())

    def status(up: bool, detail: str) -> None:
        if up:
            online.set()

    with tempfile.TemporaryDirectory() as tmp:
        port = PtyPort(Path(tmp) / "ttyBENCH")
        reader = SerialCardReader("bench", str(port.path), protocol=protocol, debounce_s=0.0)
        task = asyncio.create_task(reader.run(sink, status))
        await online.wait()
        samples: list[float] = []
        try:
            for i in range(taps):
                data = frame(f"{i:010X}", protocol)
                port.write(data)
                written = time.perf_counter()
                samples.append(await arrived.get() - written)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            port.close()
    return samples


async def bench_pcsc(taps: int) -> list[float]:
    from tests.cardreader_fixtures import Pcscd, _free_port_pair, _running_pcscd

    if _running_pcscd() is not None:
        raise SystemExit("another pcscd owns /run/pcscd: stop it to bench PC/SC")
    arrived: asyncio.Queue[float] = asyncio.Queue()
    online = asyncio.Event()

    def sink(tap: CardTap) -> None:
        arrived.put_nowait(time.perf_counter())

    def status(up: bool, detail: str) -> None:
        if up:
            online.set()

    with tempfile.TemporaryDirectory() as tmp:
        daemon = Pcscd(Path(tmp), _free_port_pair())
        daemon.start()
        try:
            reader = PcscCardReader("bench", daemon.reader, debounce_s=0.0)
            task = asyncio.create_task(reader.run(sink, status))
            await online.wait()
            samples: list[float] = []
            try:
                for i in range(taps):
                    card = VirtualCard(f"{i:08X}", port=daemon.port)
                    placed = time.perf_counter()
                    await card.place()
                    samples.append(await arrived.get() - placed)
                    await card.remove()
                    while reader.card_on_reader is not None:
                        await asyncio.sleep(0.01)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            daemon.stop()
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taps", type=int, default=1000)
    parser.add_argument("--protocol", choices=["rdm6300", "ascii-line"], default="rdm6300")
    parser.add_argument("--pcsc", type=int, default=0, metavar="N", help="also N PC/SC taps")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(summary(f"serial {args.protocol} last byte -> sink", await bench_serial(args.taps, args.protocol)))
    if args.pcsc:
        print(summary("pcsc card placed -> sink", await bench_pcsc(args.pcsc)))


if __name__ == "__main__":
    asyncio.run(main())
