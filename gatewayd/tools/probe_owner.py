"""Whether the daemon owns a bus that `gatewayd probe` is asked to touch.

Contract: the daemon holds an flock on its state directory's lock file for its
whole life (`gatewayd.store.files`) and one on each serial port it opens (the
drivers open ports exclusively). `flock_holder(path)` reads who holds an flock on
a file from /proc/locks, without taking any lock: a probe never keeps the daemon
from starting. `Owner.check(...)` turns that into a refusal (`ProbeRefused`, with
what to do) or a note: a serial port someone holds is never opened; while the
daemon of the config runs, a Modbus TCP endpoint of its file may be read (a second
client is harmless), but not switched or scanned without `--force`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gatewayd.config.model import Bus
from gatewayd.errors import ProbeRefused
from gatewayd.store.files import LOCK_NAME

__all__ = ["Owner", "flock_holder"]

PROC_LOCKS = Path("/proc/locks")
STOP_FIRST = "stop gatewayd first (sudo systemctl stop gatewayd)"


def flock_holder(path: Path) -> int | None:
    """The pid of the process holding an flock on `path`, or None (no such file, no lock)."""
    try:
        st = os.stat(path)
        table = PROC_LOCKS.read_text()
    except OSError:
        return None
    # /proc/locks: "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2146537 0 EOF" (major:minor in
    # hex, the inode in decimal); a waiting lock's line has "->" and is not a holder.
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():
        fields = line.split()
        if "FLOCK" in fields and "->" not in fields and inode in fields:
            pid = fields[fields.index(inode) - 1]
            return int(pid) if pid.isdigit() else None
    return None


def process_name(pid: int) -> str:
    """`pid 1234 (gatewayd)`: a pid as a message names it."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"pid {pid}"
    # A Python program's comm is "python3": its command line names it better.
    named = "gatewayd" if any(part.endswith((b"gatewayd", b"gatewayd.app.cli"))
                              for part in cmdline) else comm
    return f"pid {pid} ({named})"


@dataclass(frozen=True, slots=True)
class Owner:
    """The daemon of one config file: its pid when it runs, and the ports and TCP
    endpoints of its file."""

    pid: int | None
    ports: frozenset[str] = frozenset()   # serial ports: buses and readers
    # Modbus TCP (host, port); None: not known (a file with problems), any may be its.
    endpoints: frozenset[tuple[str, int]] | None = frozenset()

    @classmethod
    def of(cls, state_dir: Path | None, ports: frozenset[str] = frozenset(),
           endpoints: frozenset[tuple[str, int]] | None = frozenset()) -> Owner:
        pid = flock_holder(state_dir / LOCK_NAME) if state_dir is not None else None
        return cls(pid, ports, endpoints)

    def check_port(self, port: str) -> None:
        """Raise `ProbeRefused` when a program holds serial `port`, or the running
        daemon's file names it (it may open it any moment)."""
        holder = flock_holder(Path(port))
        if holder is None and self.pid is not None and port in self.ports:
            holder = self.pid
        if holder is not None:
            raise ProbeRefused(f"{port} is in use by {process_name(holder)}: {STOP_FIRST}; "
                               "two programs on one serial line garble each other")

    def check_tcp(self, bus: Bus, *, writes: bool, force: bool) -> str:
        """Raise `ProbeRefused` when the running daemon polls the TCP endpoint of `bus` and
        this would write (switch) or scan it; else a note for stderr, or ""."""
        if self.pid is None or (
                self.endpoints is not None and (bus.host, bus.tcp_port) not in self.endpoints):
            return ""
        running = f"gatewayd ({process_name(self.pid)}) polls {bus.host}:{bus.tcp_port}"
        if not writes:
            return f"note: {running} too; reading beside it is harmless"
        if not force:
            raise ProbeRefused(f"{running}: {STOP_FIRST}, or add --force (it may switch the "
                               "device back, and a scan slows its polls)")
        return f"warning: {running}; going ahead (--force): it may undo what this does"

    def check_running(self, what: str) -> None:
        """Raise `ProbeRefused` while the daemon runs (a PC/SC reader it may hold)."""
        if self.pid is not None:
            raise ProbeRefused(f"gatewayd ({process_name(self.pid)}) uses {what}: {STOP_FIRST}")
