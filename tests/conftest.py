"""Shared test setup: the leak check every test gets, and the session's PC/SC peer.
Area fixtures live in tests/*_fixtures.py and are imported by the tests that use them.

The leak check follows pymodbus's `test/conftest.py` (`_check_system_health`):
after each test, no asyncio task the test started may still be pending on its
loop, and no thread it started may still be running. Shutdown must stop
everything it started; a leak is a bug in the product or in a fixture.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.cardreader_fixtures import pcscd, vpcd_idle

# Session-scoped: one private pcscd for every PC/SC test module (only one pcscd
# can own /run/pcscd/pcscd.comm), so it is registered here and not per module.
__all__ = ["no_leaked_tasks", "no_leaked_threads", "pcscd", "vpcd_idle"]

# How long a thread or task that is already finishing may take to end (a reader's
# worker seeing its stop flag, a cancelled task unwinding, a process pool's manager
# thread noticing its shutdown, asyncio's `asyncio-waitpid-N` thread returning after
# the child it watched was reaped). Spent only while something is still running.
LEAK_GRACE_S = 5.0

# Threads that may outlive the test that started them, by name, each with why.
# Empty: nothing in the product or the fixtures is meant to outlive its test.
LONG_LIVED_THREADS: dict[str, str] = {}


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail the test if it leaves a thread running that was not there before it.

    Set up before the test's event loop and torn down after pytest-asyncio has
    closed it, so the loop's default executor workers are already joined here.
    """
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + LEAK_GRACE_S
    leaked = [t for t in threading.enumerate()
              if t not in before and t.is_alive() and t.name not in LONG_LIVED_THREADS]
    for thread in leaked:
        thread.join(max(0.0, deadline - time.monotonic()))
    leaked = [t for t in leaked if t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"


@pytest.fixture(autouse=True)
async def no_leaked_tasks(no_leaked_threads: None) -> AsyncIterator[None]:
    """Fail the test if it leaves an asyncio task pending on its loop.

    Tasks of fixtures set up before this one (they are torn down after it) are
    not the test's; the task running this teardown is the harness's own.
    """
    loop = asyncio.get_running_loop()
    before = asyncio.all_tasks(loop)
    yield
    deadline = loop.time() + LEAK_GRACE_S
    while pending := _pending_tasks(loop, before):
        if loop.time() >= deadline:
            break
        await asyncio.sleep(0.01)
    report = f"tasks left pending: {pending}"
    # Cancelled so that they do not run on into the next test's report.
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=LEAK_GRACE_S)
    assert not pending, report


def _pending_tasks(loop: asyncio.AbstractEventLoop, before: set[asyncio.Task[object]]
                   ) -> list[asyncio.Task[object]]:
    current = asyncio.current_task(loop)
    return [t for t in asyncio.all_tasks(loop) if t is not current and t not in before and not t.done()]
