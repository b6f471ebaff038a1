"""The supervisor: runs the daemon's components in one TaskGroup.

Contract:
- `start()` of every component runs first, all at once (valves are closed
  there); only then is READY=1 sent. Each bounds its device I/O by
  START_IO_S, so no component waits on another's dead devices and READY
  comes within 10 s of start however many devices are dead.
- Each component's `run()` is a named task. A component that raises is
  logged and restarted with capped back-off; it never takes the others down.
- WATCHDOG=1 is sent only while every component reports progress in time
  (`Heartbeat.beat()`); a stuck loop stops the feeding and systemd restarts us.
- SIGTERM/SIGINT: STOPPING=1, then `shutdown()` of each component in order
  (stop taps, close valves, flush the outbox, say offline), bounded by
  STOP_GRACE_S in all, then the tasks are cancelled and run() returns.
- SIGHUP (`systemctl reload`): RELOADING=1, `on_reload()`, READY=1 with its
  status. One reload at a time; SIGHUPs during one make one more after it; one
  during start runs once READY is sent; none starts once a stop is asked, and
  a stop waits for the one under way (RELOAD_ON_STOP_S at most). Without
  `on_reload` a SIGHUP is logged and ignored: it never kills the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from drivers.retry import HALF_TO_FULL, Backoff
from drivers.tasks import cancel_and_wait
from gatewayd.app.sdnotify import Notifier, watchdog_interval_s
from gatewayd.services.component import Component, Heartbeat

log = structlog.get_logger(__name__)

# systemd's TimeoutStopSec is 15 s; the spec promises a stop within 10 s.
STOP_GRACE_S = 8.0
# A SIGTERM during start-up lets the starts under way go on this long (they are
# closing valves); then they are cancelled and the stop proceeds (STOP_GRACE_S).
START_ON_STOP_S = 1.5
# Restart back-off for a component that crashed.
RESTART_MIN_S = 1.0
RESTART_MAX_S = 60.0
# Without a systemd watchdog, still check heartbeats this often (for logs).
DEFAULT_WATCHDOG_CHECK_S = 5.0
# A stop lets a reload under way finish this long (it may be ending a shower
# whose point was removed); then the stop goes on, STOP_GRACE_S in all after it.
RELOAD_ON_STOP_S = 2.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Supervisor:
    def __init__(self, components: Sequence[Component], notifier: Notifier | None = None, *,
                 on_reload: Callable[[], Awaitable[str]] | None = None) -> None:
        self.components = list(components)
        self.notifier = notifier or Notifier()
        self.on_reload = on_reload   # returns the STATUS= line after it
        self._reload = asyncio.Event()
        self._reloading = asyncio.Lock()
        self.heartbeats = {c.name: Heartbeat(c.name, c.heartbeat_s) for c in self.components}
        self._stop = asyncio.Event()
        self._stopping = False
        self.crashes: dict[str, int] = {c.name: 0 for c in self.components}

    def request_stop(self, why: str = "") -> None:
        if not self._stop.is_set():
            log.info("stop_requested", reason=why)
        self._stop.set()

    def request_reload(self) -> None:
        if self.on_reload is None or self._stop.is_set():
            log.warning("reload_ignored", reason="stopping" if self._stop.is_set()
                        else "this daemon cannot reload")
            return
        log.info("reload_requested")
        self._reload.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.request_stop, signal.Signals(sig).name)
        hup = signal.getsignal(signal.SIGHUP)   # the daemon ignores it until now
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            started = await self._start_components()
            if self._stop.is_set():
                # SIGTERM while starting: no READY; what has started stops.
                await self._stop_components(started, during="start")
                return
            tasks: list[asyncio.Task[None]] = []
            async with asyncio.TaskGroup() as tg:
                for c in self.components:
                    tasks.append(tg.create_task(self._keep_running(c), name=c.name))
                tasks.append(tg.create_task(self._watchdog(), name="watchdog"))
                tasks.append(tg.create_task(self._reloads(), name="reload"))
                self.notifier.ready(f"running {len(self.components)} components")
                log.info("ready", components=[c.name for c in self.components])
                await self._stop.wait()
                await self._reload_over()
                await self._stop_components(self.components, during="run")
                for t in tasks:
                    t.cancel()
        finally:
            for sig in (*STOP_SIGNALS, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if hup is not None:
                signal.signal(signal.SIGHUP, hup)   # not the default action: that kills
        log.info("stopped")

    async def _reloads(self) -> None:
        """Each reload asked for: RELOADING=1, `on_reload()`, READY=1."""
        while True:
            await self._reload.wait()
            self._reload.clear()
            if self.on_reload is None or self._stop.is_set():
                continue
            async with self._reloading:
                self.notifier.reloading("reloading the configuration")
                try:
                    status = await self.on_reload()
                except Exception:   # a bug in applying it: the daemon runs on
                    log.exception("config_reload_failed")
                    status = "reload failed: see the journal"
                self.notifier.ready(status)

    async def _reload_over(self) -> None:
        """Let a reload under way finish (RELOAD_ON_STOP_S at most) before the stop."""
        if not self._reloading.locked():
            return
        try:
            async with asyncio.timeout(RELOAD_ON_STOP_S):
                async with self._reloading:
                    pass
        except TimeoutError:
            log.warning("reload_unfinished_at_stop", waited_s=RELOAD_ON_STOP_S)

    async def _start_components(self) -> list[Component]:
        """Run every `start()` at once; return those that began (all, unless a
        stop came first). A stop request lets the starts under way go on for
        START_ON_STOP_S at most (they are closing valves, as the stop would),
        then cancels them, so that SIGTERM during a slow start (dead relay
        boards) is still a stop within 10 s. A start that fails refuses the
        daemon (the others are cancelled)."""
        if self._stop.is_set():
            return []
        began = time.monotonic()
        starts: dict[asyncio.Future[Any], Component] = {
            asyncio.ensure_future(c.start()): c for c in self.components}
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        try:
            pending: set[asyncio.Future[Any]] = set(starts)
            while pending and not stop.done():
                done, pending = await asyncio.wait(
                    pending | {stop}, return_when=asyncio.FIRST_COMPLETED)
                pending.discard(stop)
                for task in done - {stop}:
                    task.result()  # a start that failed refuses the daemon
            if pending:
                _, pending = await asyncio.wait(pending, timeout=START_ON_STOP_S)
                if pending:
                    log.warning("start_interrupted",
                                components=sorted(starts[t].name for t in pending))
        finally:
            stop.cancel()
            await cancel_and_wait(starts)  # a failure among them, if any, was raised above
        if not self._stop.is_set():
            log.info("components_started", seconds=round(time.monotonic() - began, 2))
        return list(self.components)

    async def _stop_components(self, components: Sequence[Component], *, during: str) -> None:
        """STOPPING=1, then `shutdown()` of each of `components`, in order."""
        self._stopping = True
        self.notifier.stopping("stopping")
        log.info("stopping", during=during, components=[c.name for c in components])
        await self._shutdown_components(components)

    async def _shutdown_components(self, components: Sequence[Component]) -> None:
        deadline = time.monotonic() + STOP_GRACE_S
        for c in components:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("shutdown_out_of_time", component=c.name)
                break
            try:
                async with asyncio.timeout(left):
                    await c.shutdown()
            except TimeoutError:
                log.warning("shutdown_timed_out", component=c.name)
            except Exception:
                log.exception("shutdown_failed", component=c.name)

    async def _keep_running(self, c: Component) -> None:
        # Each restart waits half to all of a delay doubling to the cap, so components
        # failing together (a lost disk) do not restart in step.
        backoff = Backoff(RESTART_MIN_S, RESTART_MAX_S, jitter=HALF_TO_FULL)
        hb = self.heartbeats[c.name]
        while True:
            started = time.monotonic()
            try:
                await c.run(hb)
                if self._stopping:
                    return
                log.error("component_returned", component=c.name)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.crashes[c.name] += 1
                log.exception("component_crashed", component=c.name, crashes=self.crashes[c.name])
            if time.monotonic() - started > 10 * RESTART_MAX_S:
                backoff.reset()  # it ran a long while: a fresh fault
            await asyncio.sleep(backoff.next_delay())
            hb.beat()  # a restarted loop gets a fresh allowance

    async def _watchdog(self) -> None:
        interval = watchdog_interval_s()
        check = interval if interval is not None else DEFAULT_WATCHDOG_CHECK_S
        stale_before: set[str] = set()
        while True:
            if self._stop.is_set():
                # Stopping: loops end on purpose; keep feeding, systemd bounds the stop.
                if interval is not None:
                    self.notifier.watchdog()
                await asyncio.sleep(check)
                continue
            now = time.monotonic()
            stale = {n for n, hb in self.heartbeats.items() if hb.stale(now)}
            for name in stale - stale_before:
                log.error("loop_stalled", component=name,
                          silent_s=round(now - self.heartbeats[name].last, 1))
            for name in stale_before - stale:
                log.info("loop_recovered", component=name)
            stale_before = stale
            if not stale and interval is not None:
                self.notifier.watchdog()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(check):
                    await self._stop.wait()
