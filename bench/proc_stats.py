"""What a process of a bench costs, read from /proc: CPU seconds, resident memory, children."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` in seconds, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int, key: str = "VmRSS:") -> float:
    """The `key` line of /proc/PID/status (resident memory now, by default) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return math.nan


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory (VmHWM) of `pid` in MiB."""
    return rss_mb(pid, "VmHWM:")


def children(pid: int) -> list[int]:
    """The pids of the children of every thread of `pid`."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out
