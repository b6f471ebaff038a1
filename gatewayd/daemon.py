"""`gatewayd run`: build the components from the config and supervise them."""

from __future__ import annotations

import asyncio

import structlog

from gatewayd.config import Config
from gatewayd.sdnotify import Notifier
from gatewayd.store import Store
from gatewayd.supervisor import Heartbeat, Supervisor

log = structlog.get_logger(__name__)

# The store writer must answer a probe this often, or the watchdog starves.
STORE_PROBE_S = 5.0


class StoreProbe:
    """Proves the store's writer thread still commits: a tiny job every few seconds."""

    name = "store"
    heartbeat_s: float | None = 4 * STORE_PROBE_S

    def __init__(self, store: Store) -> None:
        self.store = store

    async def start(self) -> None:
        await self.store.read(lambda txn: txn.execute("SELECT 1").fetchone())

    async def run(self, heartbeat: Heartbeat) -> None:
        while True:
            await self.store.read(lambda txn: txn.execute("SELECT 1").fetchone())
            heartbeat.beat()
            await asyncio.sleep(STORE_PROBE_S)

    async def shutdown(self) -> None:
        return None


async def serve(config: Config, store: Store, notifier: Notifier | None = None) -> None:
    """Run the daemon until SIGTERM/SIGINT."""
    components = [StoreProbe(store)]
    supervisor = Supervisor(components, notifier)
    log.info("starting", building=config.gateway.building, summary=config.summary())
    await supervisor.run()
