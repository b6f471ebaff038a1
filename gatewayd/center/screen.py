"""Flood control for the center's commands (behaviour.md "Faults": commands cannot starve the building).

Contract:
- `screen_command` is the expensive half of a command's checks (JSON parse,
  canonical re-serialisation, signature), as a pure function of the payload.
  It returns the rejection that `command_admission.accept_command` would give, or
  None when the payload passes every check up to the schema (then the
  caller parses it for real, as before). A payload that has no valid `sig`
  while one is required is refused with `bad_signature` after a scan of its
  top level only (`msgspec`, C speed, no objects built), never parsed.
- `CommandScreen` runs `screen_command` in one long-lived worker PROCESS
  (its own GIL): the daemon's loop pays only the hand-off of the bytes, so a
  bogus 8 MiB command never holds taps, cuts or polls. A worker that dies is
  started again; the payload it was screening is answered `internal`.
- `BoundedLog` keeps the log of a flood bounded: the first lines of a burst
  are logged, the rest are counted and summarised at most once a window.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import multiprocessing
import os
import signal
import time
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any, Final

import msgspec
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gatewayd.contract.command_admission import sig_field_problem, signature_problem
from gatewayd.contract.command_fields import CardFormat
from gatewayd.contract.command_types import MAX_COMMAND_BYTES, CommandRejection, TopicKind
from gatewayd.contract.commands import parse_command, usable_id
from gatewayd.contract.enums import ErrorCode
from gatewayd.services.component import Heartbeat

__all__ = ["BoundedLog", "CommandScreen", "screen_command"]

log = structlog.get_logger(__name__)

#: The worker is spawned (a fresh interpreter, no fork of a threaded daemon)
#: and imports this module; a slow SD card takes a second or two.
WORKER_START_S: Final = 10.0
#: The worker's niceness: a flood of bogus commands keeps it busy, and on a
#: machine short of cores the daemon's loop must still get the CPU first.
WORKER_NICE: Final = 10
#: Summaries of suppressed log lines are looked at this often.
LOG_FLUSH_S: Final = 5.0


class _Head(msgspec.Struct):
    """The two top-level fields the cheap scan looks at; everything else is skipped unbuilt."""

    id: Any = None
    sig: Any = None


_head = msgspec.json.Decoder(_Head)


def _cheap_refusal(payload: bytes, public_key: Ed25519PublicKey | None,
                   insecure_unsigned: bool) -> CommandRejection | None:
    """`bad_signature` for a payload whose top level shows no usable `sig`, else None
    (None also when the scan cannot tell: the full checks decide)."""
    try:
        head = _head.decode(payload)
    except Exception:  # not JSON, too deep, ...: the full parse gives the precise answer
        return None
    cid = usable_id(head.id)
    if cid is None:
        return None
    # The final verification needs the whole command parsed and re-serialised.
    message = sig_field_problem(head.sig, public_key, insecure_unsigned)
    return None if message is None else CommandRejection(cid, ErrorCode.BAD_SIGNATURE, message)


def screen_command(
    payload: bytes,
    *,
    topic_kind: TopicKind,
    building: str,
    public_key: bytes | None,
    insecure_unsigned: bool,
    max_bytes: int = MAX_COMMAND_BYTES,
    card_format: CardFormat = "hex",
) -> CommandRejection | None:
    """The rejection `accept_command` would give this payload before its age check, or None.

    Never raises. `public_key` is the raw 32 bytes of the center's key (a
    key object does not cross a process boundary).
    """
    try:
        key = None if public_key is None else Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        return CommandRejection(None, ErrorCode.INTERNAL, "the gateway's command key is unusable")
    if len(payload) <= max_bytes and (refused := _cheap_refusal(payload, key, insecure_unsigned)):
        return refused
    # `parse_command` never raises: whatever the payload, the outcome is a value.
    checked = parse_command(
        payload, topic_kind=topic_kind, building=building, max_bytes=max_bytes,
        signature=lambda raw, cid, canonical: signature_problem(
            raw, cid, key, insecure_unsigned, canonical),
        card_format=card_format)
    return checked if isinstance(checked, CommandRejection) else None


def _ready() -> bool:
    return True


def _background(parent: int) -> None:
    """In the worker: die with the daemon, and yield it the CPU (taps, cuts) when
    both want it."""
    _die_with(parent)
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)


def _die_with(parent: int) -> None:
    """Linux: SIGKILL this process when the daemon dies. A daemon killed (SIGKILL,
    the OOM killer) must not leave its worker behind holding the journal's pipe or
    the unit's cgroup."""
    PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:   # it died before the line above
        os._exit(0)


class CommandScreen:
    """The worker process that screens big commands; a supervisor component."""

    name = "command-screen"
    heartbeat_s: float | None = None  # event-driven: it only answers screenings

    def __init__(self, building: str, public_key: Ed25519PublicKey | None, *,
                 insecure_unsigned: bool, card_format: CardFormat = "hex") -> None:
        self.building = building
        self.public_key = None if public_key is None else public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.insecure_unsigned = insecure_unsigned
        self.card_format: CardFormat = card_format  # gateway.card_format
        self.screened = 0
        self.restarts = 0
        #: Flushed every LOG_FLUSH_S by `run`, so a burst's summary is logged once it ends.
        self.logs: list[BoundedLog] = []
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._stopping = False  # shutdown ends the worker: not a death worth an error

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_background, initargs=(os.getpid(),))
        return self._pool

    async def start(self) -> None:
        """Nothing before READY: the worker is not needed to enforce anything, and
        spawning it (an interpreter, a second or more on a Pi) must not delay READY
        nor the center link's first subscription. `run` warms it up."""

    async def warm_up(self) -> None:
        """Start the worker now, so the first big command does not wait for it."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(WORKER_START_S):
                await loop.run_in_executor(self._executor(), _ready)
        except (TimeoutError, BrokenProcessPool, OSError) as e:
            # Not a reason to stop: it is tried again at the first big command.
            log.warning("command_screen_not_started", error=f"{type(e).__name__}: {e}")
            self._discard()

    async def run(self, heartbeat: Heartbeat) -> None:
        await self.warm_up()
        while True:
            await asyncio.sleep(LOG_FLUSH_S)
            for bounded in self.logs:
                bounded.flush()

    async def shutdown(self) -> None:
        self._stopping = True
        for bounded in self.logs:
            bounded.flush(force=True)
        self._discard()

    def _discard(self) -> None:
        """Stop the worker at once (a screening under way is abandoned)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # The pool offers no way to end a running call: end its process.
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            with contextlib.suppress(Exception):
                process.terminate()

    async def screen(self, payload: bytes, topic_kind: TopicKind) -> CommandRejection | None:
        """`screen_command` of `payload`, computed in the worker process."""
        job = partial(screen_command, payload, topic_kind=topic_kind, building=self.building,
                      public_key=self.public_key, insecure_unsigned=self.insecure_unsigned,
                      card_format=self.card_format)
        loop = asyncio.get_running_loop()
        self.screened += 1
        try:
            return await loop.run_in_executor(self._executor(), job)
        except BrokenProcessPool as e:
            # Killed (out of memory, say): the next command gets a fresh worker.
            self.restarts += 1
            (log.debug if self._stopping else log.error)(
                "command_screen_worker_died", bytes=len(payload), error=str(e))
            self._discard()
            return CommandRejection(None, ErrorCode.INTERNAL,
                                    "the gateway failed to check the command")


class BoundedLog:
    """A WARNING per occurrence for the first `burst` in a window, then one summary a window
    (`{event}_summary`, with the count suppressed by the `group` field).

    `note()` on each occurrence; `flush()` now and then (a housekeeping tick)
    so the count of a burst that ended is still logged.
    """

    def __init__(self, event: str, *, burst: int = 5, window_s: float = 60.0,
                 group: str = "reason") -> None:
        self.event = event
        self.group = group
        self.burst = burst
        self.window_s = window_s
        self.total = 0
        self._window_start = -window_s
        self._in_window = 0
        self._suppressed = 0
        self._suppressed_fields: dict[str, int] = {}

    def note(self, **fields: Any) -> None:
        self.total += 1
        now = time.monotonic()
        if now - self._window_start >= self.window_s:
            self.flush(force=True)
            self._window_start = now
            self._in_window = 0
        self._in_window += 1
        if self._in_window <= self.burst:
            log.warning(self.event, **fields)
            return
        self._suppressed += 1
        key = str(fields.get(self.group))
        self._suppressed_fields[key] = self._suppressed_fields.get(key, 0) + 1

    def flush(self, *, force: bool = False) -> None:
        """Log the summary of what was suppressed, once its window is over (or `force`)."""
        if not self._suppressed:
            return
        if not force and time.monotonic() - self._window_start < self.window_s:
            return
        log.warning(f"{self.event}_summary", suppressed=self._suppressed,
                    **{f"by_{self.group}": dict(self._suppressed_fields)}, total=self.total,
                    window_s=self.window_s)
        self._suppressed = 0
        self._suppressed_fields = {}
