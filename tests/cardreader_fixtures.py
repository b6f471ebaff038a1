"""Fixtures for the card reader tests: a pty serial port, a private pcscd with vpcd,
a recorder for what a reader reports.

pcscd always serves `/run/pcscd/pcscd.comm` (1.9.9 has no option to move it;
only the client library honours PCSCLITE_CSOCK_NAME), so one pcscd is
started per test session and shared. Its vpcd reader listens on a free port
chosen here (the port is the `CHANNELID` of the reader.conf entry; the next
port serves the second slot), never the default 35963.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from drivers.protocols import CardReader, CardTap
from sim.serial_card import PtyPort

# Safety net against a hung test, not a performance threshold.
WAIT_S = 10.0

VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
PCSCD_SOCKET = Path("/run/pcscd/pcscd.comm")
PCSCD_PIDFILE = Path("/run/pcscd/pcscd.pid")
VPCD_READER = "Virtual PCD 00 00"


class Recorder:
    """Collects what a reader reports: taps and status changes, in order."""

    def __init__(self) -> None:
        self.taps: asyncio.Queue[CardTap] = asyncio.Queue()
        self.statuses: asyncio.Queue[tuple[bool, str]] = asyncio.Queue()
        self.all_taps: list[CardTap] = []
        self.all_statuses: list[tuple[bool, str]] = []

    def sink(self, tap: CardTap) -> None:
        self.all_taps.append(tap)
        self.taps.put_nowait(tap)

    def status(self, online: bool, detail: str) -> None:
        self.all_statuses.append((online, detail))
        self.statuses.put_nowait((online, detail))

    async def tap(self) -> CardTap:
        async with asyncio.timeout(WAIT_S):
            return await self.taps.get()

    async def state(self) -> tuple[bool, str]:
        async with asyncio.timeout(WAIT_S):
            return await self.statuses.get()

    async def online(self) -> None:
        online, detail = await self.state()
        assert online, f"expected the reader online, it reported offline: {detail}"

    async def offline(self) -> str:
        online, detail = await self.state()
        assert not online, "expected the reader offline, it reported online"
        assert detail
        return detail


@contextlib.asynccontextmanager
async def running(reader: CardReader, recorder: Recorder) -> AsyncIterator[asyncio.Task[None]]:
    """Run `reader` in a task; on exit cancel it and check it ended by cancellation only."""
    task = asyncio.create_task(reader.run(recorder.sink, recorder.status), name="reader-under-test")
    try:
        yield task
    finally:
        assert not task.done(), f"reader stopped by itself: {task!r}"
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(WAIT_S):
                await task
        assert task.cancelled()


@pytest.fixture
def pty_port(tmp_path: Path) -> Iterator[PtyPort]:
    """A simulated serial reader: the driver opens `pty_port.path`."""
    with PtyPort(tmp_path / "ttyCARD") as port:
        yield port


def _free_port_pair() -> int:
    """A TCP port P such that P and P + 1 are free on 127.0.0.1 (vpcd uses both)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no pair of free TCP ports")


def _listening(port: int) -> bool:
    # Not a connect(): to vpcd a connection is a card placed on the reader.
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=False
    ).stdout
    return bool(out.strip())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running_pcscd() -> int | None:
    try:
        pid = int(PCSCD_PIDFILE.read_text().strip("\x00 \n"))  # pcscd writes "PID\n\0"
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


class Pcscd:
    """A private pcscd whose only reader is vpcd on `port` ("Virtual PCD 00 00")."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.port = port
        self.reader = VPCD_READER
        self.confdir = workdir / "reader.conf.d"
        self.confdir.mkdir()
        # DEVICENAME "/dev/null:PORT" makes vpcd listen rather than connect out.
        (self.confdir / "vpcd").write_text(
            'FRIENDLYNAME "Virtual PCD"\n'
            f"DEVICENAME   /dev/null:0x{port:04X}\n"
            f"LIBPATH      {VPCD_DRIVER}\n"
            f"CHANNELID    0x{port:04X}\n"
        )
        self.logfile = workdir / "pcscd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None
        with self.logfile.open("ab") as log:
            self.proc = subprocess.Popen(
                ["pcscd", "--foreground", "--config", str(self.confdir)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + WAIT_S
        while not (PCSCD_SOCKET.exists() and _listening(self.port)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"pcscd exited with {self.proc.returncode}: see {self.logfile}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"pcscd not ready after {WAIT_S} s: see {self.logfile}")
            time.sleep(0.02)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pcscd_unavailable() -> str | None:
    """Why a private pcscd with vpcd cannot run here, or None when it can."""
    if shutil.which("pcscd") is None or not VPCD_DRIVER.exists():
        return "pcscd or vsmartcard-vpcd is not installed (make deps installs them)"
    if importlib.util.find_spec("smartcard") is None:
        return "pyscard is not installed (pip install '.[pcsc]')"
    if shutil.which("ss") is None:
        return "ss (iproute2) is needed to see vpcd listening without placing a card"
    other = _running_pcscd()
    if other is not None:
        return f"another pcscd (pid {other}) owns {PCSCD_SOCKET}; only one can run"
    return None


@contextlib.contextmanager
def private_pcscd() -> Iterator[Pcscd]:
    """A started private pcscd on a free port pair, stopped at the end."""
    with tempfile.TemporaryDirectory(prefix="pcscd-test-") as workdir:
        daemon = Pcscd(Path(workdir), _free_port_pair())
        daemon.start()
        try:
            yield daemon
        finally:
            daemon.stop()


@pytest.fixture(scope="session")
def pcscd() -> Iterator[Pcscd]:
    """The session's pcscd with vpcd (skipped, with the reason, where it cannot run)."""
    why = pcscd_unavailable()
    if why is not None:
        pytest.skip(why)
    with private_pcscd() as daemon:
        yield daemon


# vpcd can hide a card swap: a card placed while pcscd has not yet polled the
# removal of the previous test's card (every ~400 ms) is never reported. Each
# PC/SC test starts after a settling pause longer than a few of those polls.
VPCD_SETTLE_S = 1.5


@pytest.fixture
def vpcd_idle() -> None:
    """Wait until pcscd has certainly noticed the last card removal (before the
    test's event loop exists, so no thread or task checks see this wait)."""
    time.sleep(VPCD_SETTLE_S)
