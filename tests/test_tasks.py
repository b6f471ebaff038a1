"""Stopping tasks must not swallow the stopper's own cancellation (drivers/tasks.py)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from drivers.tasks import cancel_and_wait


async def _stubborn(release: asyncio.Event) -> None:
    """A task that takes a while to wind down once cancelled (a port closing)."""
    try:
        await asyncio.sleep(3600)
    finally:
        await release.wait()


async def test_the_callers_cancellation_reaches_the_caller() -> None:
    release = asyncio.Event()
    worker = asyncio.create_task(_stubborn(release))
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel_and_wait([worker]))
    await asyncio.sleep(0.01)
    stopper.cancel()          # e.g. the daemon's shutdown budget ran out
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    await asyncio.wait([worker])
    assert worker.cancelled()


async def test_the_old_pattern_would_have_swallowed_it() -> None:
    """What `cancel_and_wait` replaces: the stopper's cancellation is lost."""
    release = asyncio.Event()
    worker = asyncio.create_task(_stubborn(release))
    await asyncio.sleep(0)

    async def old_stop() -> str:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        return "carried on"

    stopper = asyncio.create_task(old_stop())
    await asyncio.sleep(0.01)
    stopper.cancel()
    release.set()
    assert await stopper == "carried on"


async def test_failures_of_the_tasks_are_returned_not_raised() -> None:
    async def broken() -> None:
        raise RuntimeError("worker bug")

    failed = asyncio.create_task(broken())
    await asyncio.sleep(0)
    sleeping = asyncio.create_task(asyncio.sleep(3600))
    errors = await cancel_and_wait([failed, sleeping])
    assert [repr(e) for e in errors] == ["RuntimeError('worker bug')"]
    assert sleeping.cancelled()
