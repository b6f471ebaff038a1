"""`gatewayd status -c FILE`: the running daemon's state, for staff on the box.

Reads `state_dir/status.json`, which the daemon rewrites every few seconds,
and the pid in `state_dir/gatewayd.lock`: no socket, no database access, so
it is safe while the daemon runs and needs only read access to state_dir.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from gatewayd.services.snapshot import WRITE_EVERY_S, read_status
from gatewayd.store.files import LOCK_NAME

STALE_AFTER_S = 5 * WRITE_EVERY_S


def daemon_pid(state_dir: Path) -> int | None:
    """The pid recorded in the lock file, if that process is alive and is gatewayd.

    Raises PermissionError when this user may not read the lock file: then
    "not running" would be a lie."""
    try:
        text = (state_dir / LOCK_NAME).read_text()
    except PermissionError:
        raise
    except OSError:
        return None
    try:
        pid = int(text.strip() or "0")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if pid and b"gatewayd" in cmdline else None


def render(state_dir: Path, *, as_json: bool = False, out: Any = None, err: Any = None) -> int:
    out = out or sys.stdout
    try:
        pid = daemon_pid(state_dir)
    except PermissionError:
        (err or sys.stderr).write(f"gatewayd status: cannot read {state_dir}: permission denied; "
                                  "run as root or the gatewayd user\n")
        return 4
    doc = read_status(state_dir)
    if as_json:
        # The daemon's document with what this command found out beside it, on one
        # level: `.rooms`, `.center`, `.status.faults` (not `.status.status`).
        json.dump({**(doc or {}), "running": pid is not None, "pid": pid}, out, indent=2)
        out.write("\n")
        return 0 if pid else 3
    if pid is None:
        out.write(f"gatewayd is not running (state_dir {state_dir})\n")
        if doc is None:
            return 3
        out.write("last known state:\n")
    if doc is None:
        out.write("no status written yet (the daemon writes it every few seconds after start)\n")
        return 3 if pid is None else 0
    out.write("\n".join(_text_lines(doc, pid)) + "\n")
    return 0 if pid else 3


def _text_lines(doc: dict[str, Any], pid: int | None) -> list[str]:
    """The status document for people: the header, alarms, buses, rooms and points."""
    age = time.time() - float(doc.get("updated_epoch", 0))
    st = doc.get("status", {})
    center = doc.get("center", {})
    faults = st.get("faults", {})
    lines = [
        f"building {doc.get('building')}  pid {pid or '-'}  version {doc.get('version')}  "
        f"started {doc.get('started')}",
        f"updated {doc.get('updated')} ({age:.0f} s ago{', STALE' if age > STALE_AFTER_S else ''})",
        "center: " + (
            "not configured (offline only)" if not center.get("configured", True)
            else f"{'connected' if center.get('connected') else 'NOT connected'}, "
                 f"pending {doc.get('outbox', {}).get('pending', '?')}"
        ),
        f"clock {'synced' if st.get('clock_synced') else 'NOT synced'}  "
        f"cards version {st.get('cards_version')}  "
        f"accounts unknown {st.get('accounts_unknown')}  "
        f"last seq {doc.get('store', {}).get('next_seq', 1) - 1}  "
        f"store {doc.get('store', {}).get('store_id') or '?'}",
        f"faults: meters {faults.get('meters', 0)}, readers {faults.get('readers', 0)}, "
        f"valves {faults.get('valves', 0)}",
    ]
    lines += [f"  ALARM {a['code']} {a['device']}: {a['detail']}" for a in doc.get("alarms", [])]
    lines += _bus_lines(doc.get("buses", []))
    lines.append("")
    lines.append(_table(
        ["room", "balance", "power W", "breaker", "cut", "meter"],
        [[r["room"], _fen(r["balance_fen"]) + ("" if r["account_known"] else " ?"),
          "-" if r["power_w"] is None else f"{r['power_w']:.0f}", r["breaker"],
          r["cut_reason"] or "",
          ("online" if r["online"] else "OFFLINE") + (" FAILING" if r.get("failing") else "")]
         for r in doc.get("rooms", [])]))
    lines.append("")
    lines.append(_table(
        ["point", "service", "state", "card", "volume mL", "charge"],
        [[p["point"], p["service"], p["state"], p["card"] or "",
          "" if p["volume_ml"] is None else str(p["volume_ml"]),
          "" if p["amount_fen"] is None else _fen(p["amount_fen"])]
         for p in doc.get("points", [])]))
    return lines


def _bus_lines(buses: list[dict[str, Any]]) -> list[str]:
    """A line per DL/T 645 bus: its round time, how long every meter waits for its
    next reading (the overload detection time); Modbus buses are polled per room."""
    lines = []
    for b in buses:
        if b.get("protocol") != "dlt645":
            continue
        round_s = b.get("round_s")
        lines.append(
            f"bus {b['bus']} (DL/T 645): round "
            + ("- (no round yet)" if round_s is None else f"{round_s:.1f} s")
            + f", {b.get('rounds', 0)} rounds, {b.get('meters', 0)} meters, "
            f"{b.get('offline', 0)} offline{'' if b.get('connected') else ', port NOT open'}")
    return lines


def _fen(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return f"({head[0]}s: none)"
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), *(fmt.format(*map(str, r)) for r in rows)])
