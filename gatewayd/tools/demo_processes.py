"""The demo's processes: a private mosquitto and the real daemon, started and stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

# The daemon must be ready (store open, valves closed) within this; a fresh
# machine's first start compiles bytecode, hence the margin.
READY_TIMEOUT_S = 60.0
# SIGTERM to exit: the daemon promises 10 s; then SIGKILL.
STOP_TIMEOUT_S = 15.0
MOSQUITTO_START_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Mosquitto:
    """A private broker on a free port of 127.0.0.1, for the demo's center."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false"]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to its own user and cannot read DIR
        conf.write_text("\n".join(lines) + "\n")
        with (self.workdir / "mosquitto.log").open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                "mosquitto", "-c", str(conf), stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + MOSQUITTO_START_S
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                break
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                return
            await asyncio.sleep(0.05)
        await self.stop()
        raise RuntimeError(f"mosquitto did not start (see {self.workdir / 'mosquitto.log'})")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5)
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()


class DaemonProcess:
    """`gatewayd run` as a child in its own session, READY read from its sd_notify."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.log_path = workdir / "daemon.log"
        self.proc: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._drain: asyncio.Task[None] | None = None
        self.status = ""   # the daemon's last STATUS= line

    async def start(self) -> None:
        """Start it and return once it says READY=1; raise if it exits or times out."""
        path = self.workdir / "notify.sock"
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.setblocking(False)
        self._sock = sock
        env = {**os.environ, "NOTIFY_SOCKET": str(path)}
        env.pop("WATCHDOG_USEC", None)
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gatewayd.app.cli", "run", "-c", str(self.config),
                "--log-format", "json", stdin=asyncio.subprocess.DEVNULL, stdout=log,
                stderr=log, env=env, start_new_session=True)
        loop = asyncio.get_running_loop()
        exited = loop.create_task(self.proc.wait())
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                while True:
                    received = loop.create_task(loop.sock_recv(sock, 4096))
                    done, _ = await asyncio.wait({received, exited},
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if received in done:
                        if b"READY=1" in received.result():
                            # Keep reading, as systemd does: the daemon goes on
                            # sending STATUS= lines, and a full socket queue must
                            # not be what stops it.
                            self._drain = loop.create_task(self._read_notifications(sock))
                            return
                        continue
                    received.cancel()
                    raise RuntimeError(f"the daemon exited with code {self.proc.returncode} "
                                       f"before it was ready:\n{self.log_tail()}")
        except TimeoutError:
            await self.stop()
            raise RuntimeError(f"the daemon was not ready within {READY_TIMEOUT_S:.0f} s:\n"
                               f"{self.log_tail()}") from None
        finally:
            exited.cancel()

    async def _read_notifications(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.sock_recv(sock, 4096)
            except OSError:
                return
            for line in data.decode(errors="replace").splitlines():
                if line.startswith("STATUS="):
                    self.status = line.removeprefix("STATUS=")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def exited(self) -> bool:
        return self.proc is not None and self.proc.returncode is not None

    async def stop(self) -> int | None:
        """SIGTERM, wait, SIGKILL if it does not stop in time; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
            self._drain = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        return self.proc.returncode

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


async def _answers(port: int, wait_s: float = 2.0) -> bool:
    """Whether the daemon's metrics endpoint listens (it binds right after READY)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return True
        await asyncio.sleep(0.1)
    return False
