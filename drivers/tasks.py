"""Stopping asyncio tasks without swallowing the caller's own cancellation.

`t.cancel(); with suppress(CancelledError): await t` has a flaw: if the task
that is stopping `t` is itself cancelled while it waits, the suppress eats
that cancellation too, and the caller carries on as if nothing happened (a
shutdown that cannot be interrupted, a supervisor that never learns it was
told to stop). `cancel_and_wait` waits with `asyncio.wait`, which lets the
caller's cancellation through, and reports what the tasks themselves raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> list[BaseException]:
    """Cancel `tasks` and wait until all are done.

    Returns the exceptions the tasks ended with other than their cancellation
    (a task that failed before it was cancelled), for the caller to raise or
    log. Raises `CancelledError` only if the caller itself is cancelled.
    """
    pending = list(tasks)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending)
    return [e for t in pending if not t.cancelled() and (e := t.exception()) is not None]
