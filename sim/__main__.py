"""`python -m sim --dir DIR [--rooms N] [--dlt-rooms N] [--script]`: serve a simulated building
(see sim.building), write DIR/gateway.toml, seed the store, print one JSON line and
run until SIGTERM; with `--script` the day plays against it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sim.building import SimulatedBuilding
from sim.center import CenterStub
from sim.day import DayClock, DayScript


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    workdir: Path = args.dir
    sim = SimulatedBuilding(workdir, rooms=args.rooms, dlt_rooms=args.dlt_rooms, building=args.building,
                            state_dir=args.state_dir)
    await sim.start()
    try:
        clock = DayClock(args.speed)
        center = CenterStub(args.broker, sim.building) if args.broker else None
        script = DayScript(sim, clock, lambda at, text: print(f"[{at}] {text}", flush=True), center)
        config = sim.write_config(speed=args.speed, broker=args.broker)
        if not (sim.state_dir / "gatewayd.db").exists():
            seeded = await asyncio.to_thread(sim.seed_store)
            (workdir / "seed.json").write_text(json.dumps(seeded, indent=1))
        script.start_loads()
        print(json.dumps({"config": str(config), "state_dir": str(sim.state_dir),
                          "ports": [f.port for f in sim.floors]}), flush=True)
        if args.script:
            if center is not None:
                await center.start()
            clock.t0 = time.monotonic()
            task = loop.create_task(script.run())
            await stop.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if center is not None:
                await center.stop()
        else:
            await stop.wait()
    finally:
        await sim.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry: serve a simulated building until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m sim",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", required=True, help="where the config, ptys and state go")
    parser.add_argument("--rooms", type=int, default=12, help="rooms on the Modbus floors")
    parser.add_argument("--dlt-rooms", type=int, default=4, help="rooms on the DL/T 645 floor")
    parser.add_argument("--building", default="demo")
    parser.add_argument("--state-dir", help="the daemon's state_dir (default DIR/state)")
    parser.add_argument("--speed", type=float, default=60.0, help="day time per wall-clock second")
    parser.add_argument("--broker", help="mqtt://HOST:PORT of the center's broker")
    parser.add_argument("--script", action="store_true",
                        help="play the demo day (start the daemon first)")
    args = parser.parse_args(argv)
    args.dir = Path(args.dir).resolve()
    args.state_dir = Path(args.state_dir).resolve() if args.state_dir else None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))
    sys.stdout.flush()


main()
