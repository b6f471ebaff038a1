"""How long a big `cards.load` holds the event loop that serves taps.

    .venv/bin/python bench/cards_load.py [--cards N] [--trials K]

A signed full `cards.load` of N cards (90,000 is about 8 MB, near the
command size limit) goes through the command handler with a real store; a
task that sleeps 5 ms in a loop measures how late the loop wakes it (the
delay a tap arriving meanwhile would see). Printed: payload size, time to
apply, and the worst loop lag, with the command parsed on the loop and (as
the daemon does for commands over 64 KiB) in a worker thread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatewayd.app.logs import setup as setup_logging
from gatewayd.center import apply as command_service
from gatewayd.config.load import load_config
from gatewayd.contract.signing import sign_command
from gatewayd.services.alarms import Alarms
from gatewayd.services.clock import Clock
from gatewayd.services.power.service import PowerService
from gatewayd.services.water.service import WaterService
from gatewayd.store.cards import Cards
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger

TICK_S = 0.005


async def trial(tmp: Path, cards: int, inline_limit: int) -> tuple[int, float, float]:
    command_service.INLINE_PARSE_BYTES = inline_limit
    key = Ed25519PrivateKey.generate()
    (tmp / "center.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    state = tmp / f"state-{uuid.uuid4().hex[:8]}"
    (tmp / "gw.toml").write_text(
        f'[gateway]\nbuilding = "b07"\nstate_dir = "{state}"\nclock_synced = "yes"\n'
        '[center]\nbroker = "mqtt://127.0.0.1:1"\ncommand_public_key_file = "center.pub"\n')
    config = load_config(tmp / "gw.toml")
    store = Store.open(config.gateway.state_dir, "b07")
    try:
        clock = Clock("UTC", "yes")
        ledger, mirror, alarms = Ledger(), Cards(), Alarms()
        power = PowerService(config, store, ledger=ledger, alarms=alarms, clock=clock, devices={})
        water = WaterService(config, store, ledger=ledger, cards=mirror, alarms=alarms, clock=clock,
                             devices={}, readers={}, center_online=lambda: True)
        handler = command_service.CommandService(
            config, store, clock, ledger=ledger, cards=mirror, power=power, water=water,
            public_key=key.public_key())
        command = sign_command({
            "id": str(uuid.uuid4()), "to": "b07", "type": "cards.load", "ts": clock.stamp(),
            "args": {"version": 1, "full": True, "cards": [
                {"card": f"{i:010X}", "account": f"stu-{i:06d}", "kind": "student",
                 "status": "active"} for i in range(cards)]},
        }, key)
        payload = json.dumps(command).encode()
        lags: list[float] = []
        done = asyncio.Event()

        async def monitor() -> None:
            while not done.is_set():
                t = time.perf_counter()
                await asyncio.sleep(TICK_S)
                lags.append(time.perf_counter() - t - TICK_S)

        watcher = asyncio.create_task(monitor())
        await asyncio.sleep(0.1)
        t0 = time.perf_counter()
        refused = await handler.handle(payload, "building")
        took = time.perf_counter() - t0
        done.set()
        await watcher
        if refused is not None or len(mirror.cards) != cards:
            raise SystemExit(f"the load was not applied: {refused!r}")
        return len(payload), took, max(lags)
    finally:
        store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cards", type=int, default=90_000)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    setup_logging("warning")
    tmp = Path(tempfile.mkdtemp(prefix="bench-cards-"))
    try:
        for label, limit in (("on the loop", 1 << 40), ("worker thread", 64 * 1024)):
            results = [await trial(tmp, args.cards, limit) for _ in range(args.trials)]
            size = results[0][0]
            print(f"cards.load of {args.cards:,} cards ({size / 1e6:.1f} MB), parsed {label}: "
                  f"applied in {min(r[1] for r in results) * 1000:,.0f}-"
                  f"{max(r[1] for r in results) * 1000:,.0f} ms, worst loop lag "
                  f"{max(r[2] for r in results) * 1000:,.0f} ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
