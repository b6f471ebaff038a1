"""A simulated building on real pymodbus 3.16 servers: meters, relay boards, pulse counters.

For tests, benchmarks and demos. The parts: `sim.modbus_units` (a meter's and a
counter's state and registers), `sim.modbus_endpoint` (one pymodbus server
holding several units; switch followers; faults), `sim.modbus_rtu` (one RTU line
on a pseudo-terminal pair). This module spreads a building over TCP endpoints.

Coupling, as wired in a real building: `SimBuilding.couple(room, relay,
channel)` puts a room's meter behind a breaker: while the coil is off the
meter reads 0 W and its energy stands still, though the load stays plugged in
(it draws again when the supply returns). `SimBuilding.couple_flow(counter,
channel, relay, relay_channel)` puts a flow counter behind a valve: its count
rises only while the valve's coil is on. Uncoupled meters and counters behave
as before (always supplied, always flowing).

TCP: `SimBuilding.tcp(...)` starts one endpoint per `per_endpoint` meters on
127.0.0.1. RTU: `sim.modbus_rtu.SimRtu`.

Run as a subprocess: `python -m sim.modbus --meters 500 --port 0`;
it prints one JSON line (`{"ports": [...]}` or `{"rtu": PATH}`) when ready and
runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import random
import signal
import sys
import time
from collections.abc import Sequence

from sim.modbus_endpoint import SimEndpoint
from sim.modbus_rtu import SimRtu
from sim.modbus_units import SimCounter, SimMeter


class SimBuilding:
    """Meters spread over TCP endpoints (units 1..per_endpoint each), plus relays and counters.

    Room `i` is meter unit `i % per_endpoint + 1` on endpoint `i // per_endpoint`.
    Relay boards and counters live on the first endpoint at units 201.. and 231..
    """

    RELAY_BASE = 201
    COUNTER_BASE = 231

    def __init__(self, meters: int, *, per_endpoint: int = 50, relays: int = 1,
                 counters: int = 1) -> None:
        if not 1 <= per_endpoint <= 200:
            raise ValueError("per_endpoint must be 1..200")
        self.per_endpoint = per_endpoint
        self.endpoints: list[SimEndpoint] = []
        n_endpoints = max(1, -(-meters // per_endpoint))
        for e in range(n_endpoints):
            units = range(1, min(per_endpoint, meters - e * per_endpoint) + 1)
            first = e == 0
            self.endpoints.append(SimEndpoint(
                meters=list(units),
                relays=[self.RELAY_BASE + i for i in range(relays)] if first else [],
                counters=[self.COUNTER_BASE + i for i in range(counters)] if first else [],
            ))
        self.ports: list[int] = []

    @classmethod
    async def tcp(cls, meters: int, *, per_endpoint: int = 50, relays: int = 1,
                  counters: int = 1, host: str = "127.0.0.1", port: int = 0) -> SimBuilding:
        """Start a building; endpoint k listens on `port + k` (free ports when `port` is 0)."""
        sim = cls(meters, per_endpoint=per_endpoint, relays=relays, counters=counters)
        try:
            for k, endpoint in enumerate(sim.endpoints):
                sim.ports.append(await endpoint.start_tcp(host, port + k if port else 0))
        except BaseException:
            await sim.stop()
            raise
        return sim

    async def stop(self) -> None:
        """Stop every endpoint."""
        for endpoint in self.endpoints:
            await endpoint.stop()

    def locate(self, room: int) -> tuple[SimEndpoint, int]:
        """(endpoint, unit) of room index `room`'s meter."""
        return self.endpoints[room // self.per_endpoint], room % self.per_endpoint + 1

    def meter(self, room: int) -> SimMeter:
        """The simulated meter of room index `room`."""
        endpoint, unit = self.locate(room)
        return endpoint.meters[unit]

    def set_load(self, room: int, watts: float, pf: float = 1.0) -> None:
        """Set the power drawn in room `room` from now on (energy so far is kept)."""
        m = self.meter(room)
        m.advance(time.monotonic())
        m.power_w, m.pf = watts, pf

    def set_flow(self, counter: int, channel: int, pulses_per_s: float) -> None:
        """Set the flow seen by channel `channel` of counter index `counter`."""
        c = self.endpoints[0].counters[self.COUNTER_BASE + counter]
        c.advance(time.monotonic())
        c.flow[channel] = pulses_per_s

    def couple(self, room: int, relay: int, channel: int) -> None:
        """Wire room index `room`'s supply through channel `channel` of relay board
        index `relay` (unit RELAY_BASE + relay): the meter draws only while that coil
        is on. Coils start off: switch them on (`set_coil`) before the gateway starts,
        as an electrician would."""
        self.endpoints[0].follow(self.RELAY_BASE + relay, channel, self.meter(room).set_supplied)

    def couple_flow(self, counter: int, channel: int, relay: int, relay_channel: int) -> None:
        """Put channel `channel` of counter index `counter` behind the valve on channel
        `relay_channel` of relay board index `relay`: water flows only while it is open."""
        c = self.endpoints[0].counters[self.COUNTER_BASE + counter]
        self.endpoints[0].follow(self.RELAY_BASE + relay, relay_channel,
                                 functools.partial(_set_open, c, channel))


def _set_open(counter: SimCounter, channel: int, on: bool, now: float) -> None:
    counter.set_open(channel, on, now)



def _random_loads(sim_meters: Sequence[SimMeter], seed: int) -> None:
    rng = random.Random(seed)
    for m in sim_meters:
        m.power_w = rng.uniform(20.0, 1500.0)
        m.pf = rng.uniform(0.85, 1.0)
        m.energy_kwh = rng.uniform(0.0, 5000.0)


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.rtu:
        endpoint = SimEndpoint(meters=range(1, args.meters + 1))
        _random_loads(list(endpoint.meters.values()), args.seed)
        rtu = SimRtu(endpoint, baudrate=args.baud or None)
        await rtu.start()
        print(json.dumps({"rtu": rtu.client_port, "baud": args.baud}), flush=True)
        await stop.wait()
        await rtu.stop()
        return
    sim = await SimBuilding.tcp(args.meters, per_endpoint=args.per_endpoint, port=args.port)
    for ep in sim.endpoints:
        _random_loads(list(ep.meters.values()), args.seed)
    print(json.dumps({"ports": sim.ports, "per_endpoint": args.per_endpoint}), flush=True)
    await stop.wait()
    await sim.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry: run a simulated building until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--meters", type=int, default=10)
    parser.add_argument("--per-endpoint", type=int, default=50)
    parser.add_argument("--port", type=int, default=0, help="first TCP port (0: free ports)")
    parser.add_argument("--rtu", action="store_true", help="serve one RTU line on a pty")
    parser.add_argument("--baud", type=int, default=0, help="charge wire time at this baud rate")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
