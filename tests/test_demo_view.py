"""Issue 18: the demo's live view stays readable at 80x24, and its plain lines carry
no Python values. Rendered by rich into a recording console of that size."""

from __future__ import annotations

import argparse
import io
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rich.console import Console

from gatewayd.store.readonly import StoredEvent
from gatewayd.tools.demo import Demo
from gatewayd.tools.demo_view import LiveView, PlainView

KETTLE = ("Room 104 switches on a 1.8 kW kettle (a resistive load, banned in dorms): the gateway "
          "cuts the room at the next reading.")


def _doc() -> dict[str, Any]:
    """A status.json as the demo's daemon writes it: 16 Modbus rooms, 4 DL/T 645 rooms."""
    rooms: list[dict[str, Any]] = [{"room": f"{f}0{i}", "balance_fen": 3007 * i, "power_w": 80.0 + i,
              "breaker": "on", "cut_reason": None, "online": True}
             for f in (1, 2, 4) for i in range(1, 9 if f < 4 else 5)]
    rooms[3].update(breaker="off", cut_reason="resistive", power_w=0.0)    # 104
    rooms[4].update(online=False)                                           # 105
    rooms[2].update(balance_fen=-12)                                        # 103
    points: list[dict[str, Any]] = [
        {"point": p, "service": "shower", "state": "idle", "card": None, "volume_ml": None,
         "amount_fen": None} for p in ("shower-1-1", "shower-1-2", "shower-2-1", "shower-2-2",
                                             "drink-1-1", "drink-2-1")]
    points[0].update(state="open", card="04A1B2C3", volume_ml=1230, amount_fen=221)
    return {
        "building": "demo", "center": {"configured": True, "connected": True},
        "rooms": rooms, "points": points, "store": {"next_seq": 40},
        "alarms": [{"code": "meter_offline", "device": "meter:105", "detail": "no answer"}],
        "buses": [{"bus": "floor1", "protocol": "modbus"}, {"bus": "floor2", "protocol": "modbus"},
                  {"bus": "floor3-dlt", "protocol": "dlt645", "meters": 4, "round_s": 1.3}],
    }


def _demo(tmp_path: Path, doc: dict[str, Any]) -> Demo:
    demo = Demo(argparse.Namespace(speed=60.0), tmp_path, keep=True)
    demo.doc = doc
    demo.center = SimpleNamespace(events=38)  # type: ignore[assignment]
    demo.broker_label = "private mosquitto mqtt://127.0.0.1:44001"
    return demo


def test_the_live_view_fits_80x24_and_shows_the_building(tmp_path: Path) -> None:
    demo = _demo(tmp_path, _doc())
    console = Console(width=80, height=24, record=True, file=io.StringIO())
    view = LiveView({"04A1B2C3": "Chen Jie"}, demo.header, console=console)
    view.doc = demo.doc
    for minute in range(4):
        view.story.append((f"day 1 06:4{minute}", KETTLE))
    view.recent.extend(StoredEvent(seq, "tap", {"point": "shower-1-1", "reader": "r", "card": "04A1B2C3",
                                                "granted": True, "reason": "start"}, True)
                       for seq in range(1, 13))
    console.print(view._render())
    lines = console.export_text().splitlines()
    text = "\n".join(lines)
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80, text
    # Every room, each with its balance and breaker; the cut one says why, the offline one is named.
    for room in [*(f"{f}0{i}" for f in (1, 2) for i in range(1, 9)), "401", "404"]:
        assert re.search(rf"(^| ){room} +-?\d+\.\d\d ", text, re.M), (room, text)
    assert "104 resistive" in text and "meters offline: 105" in text and "-0.12" in text
    # Both bus kinds, the center link, a water point in use, the latest story line, recent events.
    assert "floor1 Modbus" in text and "floor3-dlt DL/T 645, 4 meters, round 1.3 s" in text
    assert "center: connected, 38 events received" in text
    assert "shower-1-1 open Chen Jie 1.23 L ¥2.21" in text
    assert "day 1 06:43  Room 104 switches on a 1.8 kW kettle" in text
    assert "#12    tap shower-1-1: Chen Jie in" in text
    assert "Ctrl-C stops the demo" in lines[-1]


def test_a_large_terminal_keeps_the_wide_view(tmp_path: Path) -> None:
    demo = _demo(tmp_path, _doc())
    console = Console(width=140, height=50, record=True, file=io.StringIO())
    view = LiveView({}, demo.header, console=console)
    view.doc = demo.doc
    console.print(view._render())
    text = console.export_text()
    assert "events (from the store)" in text and "cut / faults" in text  # the tables' headings


def test_plain_status_lines_are_words(tmp_path: Path) -> None:
    doc = _doc()
    out = io.StringIO()
    view = PlainView(out, {}, _demo(tmp_path, doc).header)
    view._last_status = float("-inf")
    view.status(doc)
    line = out.getvalue()
    assert "cut 104, meters offline 105; water points open shower-1-1;" in line
    assert not re.search(r"\b(True|False|None)\b|\['", line), line
