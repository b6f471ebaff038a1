"""The real daemon (`python -m gatewayd.app.cli run`) as a subprocess of a bench: started
to READY through a private NOTIFY_SOCKET, stopped by SIGTERM, its log kept for a failure.

It starts as an installed daemon does: from compiled bytecode (pip compiles it at
install), so start to READY does not count compiling the sources. The bytecode is
kept in a cache of its own (`PYTHONPYCACHEPREFIX`), filled once before the first
start even where the environment says not to write bytecode (PYTHONDONTWRITEBYTECODE).

`WatchedDaemon` also asks for a systemd watchdog and keeps every WATCHDOG=1
arrival, so a bench can print the longest gap between them (loop lag).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Safety nets against a hung bench, not measurements.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
PYCACHE = Path(tempfile.gettempdir()) / "gatewayd-bench-pycache"
_COMPILED: set[str] = set()   # bytecode caches filled by this process


def installed_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a daemon that starts from compiled bytecode, as an installed one does.
    The first call for a cache compiles into it everything `run` imports before READY."""
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cache = env.setdefault("PYTHONPYCACHEPREFIX", str(PYCACHE))
    if cache not in _COMPILED:
        subprocess.run([sys.executable, "-c", "import gatewayd.app.cli, gatewayd.app.daemon"],
                       cwd=ROOT, env=env, check=True)
        _COMPILED.add(cache)
    return env


class Daemon:
    """The real daemon as a subprocess; READY through a private NOTIFY_SOCKET."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.log = workdir / "daemon.log"
        self.proc: asyncio.subprocess.Process | None = None
        installed_env(dict(os.environ))   # compile now: not inside a timed start

    def _env(self, notify: Path) -> dict[str, str]:
        return installed_env({**os.environ, "NOTIFY_SOCKET": str(notify)})

    async def start(self) -> None:
        sock_path = self.workdir / "notify"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(sock_path))
        sock.setblocking(False)
        try:
            with self.log.open("ab") as out:
                self.proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "gatewayd.app.cli", "run", "-c", str(self.config),
                    "--log-format", "json", cwd=ROOT, stdout=out, stderr=asyncio.subprocess.STDOUT,
                    env=self._env(sock_path),
                )
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(START_TIMEOUT_S):
                while b"READY=1" not in await loop.sock_recv(sock, 4096):
                    pass
        except BaseException:
            await self.stop()
            sock.close()
            sock_path.unlink(missing_ok=True)
            raise
        self._ready(sock, sock_path)

    def _ready(self, sock: socket.socket, sock_path: Path) -> None:
        """READY has come: the notify socket is no longer needed."""
        sock.close()
        sock_path.unlink(missing_ok=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                return await proc.wait()
        except TimeoutError:
            proc.kill()
            return await proc.wait()

    @contextlib.asynccontextmanager
    async def running(self, *, tail: int = 6000, indent: str = "") -> AsyncIterator[None]:
        """Start the daemon; after the block stop it and say so if it did not exit with 0.
        On a failure (its start's too), print the last `tail` characters of its log first."""
        try:
            await self.start()
            yield
        except BaseException:
            print(self.tail(tail), file=sys.stderr)
            await self.stop()
            raise
        code = await self.stop()
        if code != 0:
            print(f"{indent}daemon exited with {code}")

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


class WatchedDaemon(Daemon):
    """The real daemon with a systemd watchdog asked for: WATCHDOG=1 arrivals are kept."""

    def __init__(self, config: Path, workdir: Path, watchdog_usec: int) -> None:
        super().__init__(config, workdir)
        self.watchdog_usec = watchdog_usec
        self.beats: list[float] = []
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    def _env(self, notify: Path) -> dict[str, str]:
        return {**super()._env(notify), "WATCHDOG_USEC": str(self.watchdog_usec)}

    def _ready(self, sock: socket.socket, sock_path: Path) -> None:
        self._sock = sock
        self._task = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self._sock, 4096)
            if b"WATCHDOG=1" in data:
                self.beats.append(time.monotonic())

    def longest_gap(self, since: float, until: float) -> float:
        """The longest time between two WATCHDOG=1 arrivals in [since, until] (monotonic)."""
        beats = [t for t in self.beats if since <= t <= until]
        return max((b - a for a, b in itertools.pairwise(beats)), default=float("nan"))

    async def stop(self) -> int | None:
        if self._task is not None:
            self._task.cancel()
        if self._sock is not None:
            self._sock.close()
        return await super().stop()
