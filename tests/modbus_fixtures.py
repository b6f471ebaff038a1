"""Fixtures: the simulated building on real pymodbus servers (TCP on free ports, RTU on ptys).

Load them in a test module with `pytest_plugins = ("tests.modbus_fixtures",)` (an
import would make ruff flag every fixture argument as a redefinition).
Every fixture stops what it started and fails the test if it leaked tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sim.modbus import SimBuilding
from sim.modbus_endpoint import SimEndpoint
from sim.modbus_rtu import SimRtu


def _tasks() -> set[asyncio.Task[object]]:
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current and not t.done()}


async def _assert_no_new_tasks(before: set[asyncio.Task[object]]) -> None:
    for _ in range(5):  # let cancelled tasks and closing transports finish
        await asyncio.sleep(0)
    leaked = _tasks() - before
    assert not leaked, f"leaked tasks: {[(t.get_name(), t.get_coro()) for t in leaked]}"


@pytest.fixture
async def sim_building() -> AsyncIterator[SimBuilding]:
    """Four meters on two TCP endpoints (2 per endpoint), one relay board (unit 201) and
    one pulse counter (unit 231) on the first endpoint."""
    before = _tasks()
    sim = await SimBuilding.tcp(4, per_endpoint=2)
    try:
        yield sim
    finally:
        await sim.stop()
    await _assert_no_new_tasks(before)


@pytest.fixture
async def sim_rtu() -> AsyncIterator[SimRtu]:
    """One RTU line on a pty pair: meters 1-2, relay board 31, counter 40 (no byte time)."""
    before = _tasks()
    rtu = SimRtu(SimEndpoint(meters=[1, 2], relays=[31], counters=[40]))
    await rtu.start()
    try:
        yield rtu
    finally:
        await rtu.stop()
    await _assert_no_new_tasks(before)
