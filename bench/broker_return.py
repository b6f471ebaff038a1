"""Benchmark: a silent broker, and a broker that comes back (issue 14 item 11), printed (no pass/fail).

The center link (in this process, on a real store) against a real mosquitto:

- silent: a TCP proxy between the link and mosquitto stops forwarding but keeps
  the sockets open (a broker host that hangs); printed: how long until the
  link says disconnected (sessions started from then on are `offline: true`).
  Goal: 20 s.
- outage: mosquitto is stopped for `--outage-s` while events are written, then
  started again on the same port; printed: from the broker listening again to
  the first backlog event reaching a subscriber, and the reconnect attempts.
  Goal: 5 s.
- campus: 200 gateways' back-off schedules (the link's own `reconnect_backoff`, no
  network) after the same outage: when each first reaches the returned
  broker, and the most that arrive within any 100 ms.

    .venv/bin/python bench/broker_return.py [--trials 2] [--outage-s 60]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402

from gatewayd.center import reconnect, session  # noqa: E402
from gatewayd.center.link import CenterLink  # noqa: E402
from gatewayd.center.reconnect import reconnect_backoff  # noqa: E402
from gatewayd.config.load import load_config  # noqa: E402
from gatewayd.contract.enums import TapReason  # noqa: E402
from gatewayd.contract.events import Tap  # noqa: E402
from gatewayd.services.clock import Clock  # noqa: E402
from gatewayd.services.component import Heartbeat  # noqa: E402
from gatewayd.store.db import Store  # noqa: E402
from tests.mqtt_fixtures import Broker, collecting, mosquitto  # noqa: E402
from tests.test_command_flood import SilentProxy  # noqa: E402

TAP = Tap(reader="r1", card="04A1B2C3", point=None, granted=False,
               reason=TapReason.UNKNOWN_CARD)
TS = "2026-11-25T10:00:00.000+08:00"


class _NoCommands:
    async def handle(self, payload: bytes, topic_kind: str) -> bytes | None:
        return None


@contextlib.asynccontextmanager
async def link_to(workdir: Path, port: int) -> AsyncIterator[tuple[CenterLink, Store]]:
    (workdir / "gw.toml").write_text(f"""
[gateway]
building = "b07"
state_dir = "{workdir / 'state'}"
clock_synced = "yes"
[center]
broker = "mqtt://127.0.0.1:{port}"
insecure_unsigned_commands = true
""")
    config = load_config(workdir / "gw.toml")
    store = Store.open(config.gateway.state_dir, "b07")
    link = CenterLink(config, store, Clock("UTC", "yes"), handler=_NoCommands(), status=dict,
                      telemetry=None)
    await link.start()
    task = asyncio.create_task(link.run(Heartbeat("center", None)))
    try:
        async with asyncio.timeout(30):
            while not link.connected:
                await asyncio.sleep(0.01)
        yield link, store
    finally:
        await link.shutdown()
        await task
        store.close()


async def silent_trial(workdir: Path, broker: Broker) -> float:
    async with SilentProxy(broker.port) as proxy, link_to(workdir, proxy.port) as (link, _):
        await asyncio.sleep(1.0)
        proxy.silent = True
        t0 = time.monotonic()
        while link.connected:
            await asyncio.sleep(0.01)
        return time.monotonic() - t0


async def outage_trial(workdir: Path, broker: Broker, outage_s: float) -> tuple[float, int, int]:
    async with (collecting(broker, ["ecard/v1/b07/events"]) as center,
                link_to(workdir, broker.port) as (link, store)):
        await asyncio.to_thread(broker.stop)
        while link.connected:
            await asyncio.sleep(0.01)
        await store.run(lambda txn: txn.event(TAP, ts=TS))
        a0 = link.counters.attempts
        await asyncio.sleep(outage_s)
        during = link.counters.attempts - a0
        await asyncio.to_thread(broker.start)  # returns once it listens
        back = time.monotonic()
        a1 = link.counters.attempts
        await center.wait_for(lambda seen: len(seen) >= 1, timeout=120)
        return time.monotonic() - back, during, link.counters.attempts - a1


def campus(outage_s: float, gateways: int = 200, seed: int = 1) -> tuple[list[float], int]:
    """Seconds after the broker's return at which each gateway first tries again, and the
    most first attempts within any 100 ms."""
    rng = random.Random(seed)
    firsts: list[float] = []
    for _ in range(gateways):
        backoff = reconnect_backoff(rng)  # seeded: the same figures each run
        t = rng.uniform(0.0, 0.05)  # each noticed the broker gone within the same 50 ms
        while t < outage_s:
            t += backoff.next_delay()
        firsts.append(t - outage_s)
    ordered = sorted(firsts)
    peak = max(sum(1 for x in ordered if a <= x < a + 0.1) for a in ordered)
    return firsts, peak


def fmt(values: Sequence[float]) -> str:
    return (f"n={len(values)} min={min(values):.2f} s p50={statistics.median(values):.2f} s "
            f"max={max(values):.2f} s")


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--outage-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    print(f"broker_return: keep-alive {session.KEEPALIVE_S} s, back-off "
          f"{reconnect.BACKOFF_MIN_S:g} s doubling to {reconnect.BACKOFF_CAP_S:g} s, jittered to "
          f"half to all of itself ({reconnect.BACKOFF_CONFIG_S:g} s after a config error)")
    silent: list[float] = []
    returns: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-broker-return-") as tmp:
        for i in range(args.trials):
            with mosquitto(Path(tmp) / f"mosquitto-{i}") as broker:
                (Path(tmp) / f"silent-{i}").mkdir()
                silent.append(await silent_trial(Path(tmp) / f"silent-{i}", broker))
                print(f"  silent broker noticed after {silent[-1]:.1f} s")
                (Path(tmp) / f"outage-{i}").mkdir()
                first, during, after = await outage_trial(Path(tmp) / f"outage-{i}", broker, args.outage_s)
                returns.append(first)
                print(f"  outage {args.outage_s:g} s: {during} attempts while down; first backlog event "
                      f"{first:.2f} s after the broker listened again ({after} attempt(s) after)")
    print(f"silent broker -> link disconnected: {fmt(silent)} (goal 20 s)")
    print(f"broker back -> first backlog event: {fmt(returns)} (goal 5 s)")
    firsts, peak = campus(args.outage_s)
    print(f"200 gateways after a {args.outage_s:g} s outage, first attempt after the return: {fmt(firsts)}; "
          f"at most {peak} within any 100 ms")


if __name__ == "__main__":
    asyncio.run(main())
