"""sd_notify(3) without libsystemd: READY, RELOADING, WATCHDOG, STOPPING, STATUS.

A no-op when NOTIFY_SOCKET is unset (running by hand or in tests without it).
"""

from __future__ import annotations

import os
import socket
import time

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    """Sends datagrams to the service manager's notification socket."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._sock: socket.socket | None = None
        self._address = ""
        if address:
            # A leading '@' is Linux's abstract namespace.
            self._address = "\0" + address[1:] if address.startswith("@") else address
            # Never blocking: a manager that stops reading (a full queue) must not
            # freeze the daemon, taps and all; a message that does not fit is dropped.
            self._sock = socket.socket(socket.AF_UNIX,
                                       socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except BlockingIOError:
            if not self._warned:
                log.warning("sd_notify_dropped", lines=list(lines),
                            detail="the service manager is not reading its notification socket")
                self._warned = True
        except OSError as e:
            # The manager being gone must not stop the daemon; say it once.
            if not self._warned:
                log.warning("sd_notify_failed", error=str(e))
                self._warned = True

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self, status: str = "") -> None:
        """RELOADING=1, stamped with MONOTONIC_USEC (systemd 253+ matches a reload by
        it); READY=1 says the reload is over."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}",
                    *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self, status: str = "") -> None:
        self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s() -> float | None:
    """Half the manager's watchdog timeout (WATCHDOG_USEC), or None when not asked.

    WATCHDOG_PID, when set, must be this process (systemd sets it for the main PID).
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1e6 / 2
