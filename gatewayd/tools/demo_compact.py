"""The demo's live view for a small terminal (80x24 and up): one line per thing, never wrapped.

Contract: `compact(...)` returns a rich renderable exactly `height` lines tall
at most and `width` columns wide: the header (building, day, center link,
buses), the rooms as a grid of cells (balance, power, breaker) with a line
naming the cut and offline ones, the water points, the latest line of the
story and as many recent events as the height leaves room for. Lines that do
not fit are cut with an ellipsis, never wrapped, so the layout keeps its shape.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any, Final

from rich.console import Group
from rich.text import Text

from gatewayd.store.readonly import StoredEvent
from gatewayd.tools.demo_summary import describe, yuan

ROOM_CELL: Final = 20    # "101  30.07   81W on ": four to a line of 80
POINT_CELL: Final = 40   # "shower-1-1 open  Chen Jie  1.23 L ¥2.21"
STORY_LINES: Final = 2
MIN_EVENTS: Final = 3    # rooms give way to at least this many recent events
FOOTER: Final = "Ctrl-C stops the demo (valves closed, open sessions charged)"


def _line(text: str | Text, style: str = "") -> Text:
    line = text if isinstance(text, Text) else Text(text, style=style)
    line.no_wrap = True
    line.overflow = "ellipsis"
    return line


def _room_cell(r: dict[str, Any]) -> Text:
    """`101  30.07   81W on `: the room, its balance in yuan, its power now, its breaker."""
    online = bool(r.get("online"))
    power = r.get("power_w")
    watts = f"{power:.0f}W" if online and power is not None else "-"
    breaker = r.get("breaker", "unknown")
    state, style = {"on": ("on", "green"), "off": ("CUT", "bold red")}.get(breaker, ("?", "yellow"))
    room = f"{r['room']} "
    cell = Text(room)
    balance = yuan(r["balance_fen"]).replace("¥", "")
    cell.append(f"{balance:>{max(len(balance), 10 - len(room))}}",
                style="red" if r["balance_fen"] <= 0 else "")
    cell.append(f"{watts:>6}", style="" if online else "yellow")
    cell.append(f" {state:<3}", style=style)
    return cell


def _grid(cells: Sequence[Text], cell_width: int, width: int, rows: int) -> tuple[list[Text], int]:
    """`cells` in columns of `cell_width`, at most `rows` lines; and how many did not fit."""
    per_line = max(1, width // cell_width)
    lines: list[Text] = []
    for start in range(0, min(len(cells), rows * per_line), per_line):
        line = Text()
        for cell in cells[start:start + per_line]:
            line.append_text(cell)
            line.append(" " * max(0, cell_width - cell.cell_len))
        lines.append(_line(line))
    return lines, max(0, len(cells) - rows * per_line)


def _troubles(doc: dict[str, Any]) -> Text:
    """One line: which rooms are cut and why, which meters are offline."""
    rooms = doc.get("rooms", [])
    cut = [f"{r['room']} {r.get('cut_reason') or 'off'}" for r in rooms if r.get("breaker") == "off"]
    offline = [r["room"] for r in rooms if not r.get("online")]
    line = Text("cut: ")
    line.append(", ".join(cut) or "none", style="bold red" if cut else "green")
    line.append("  meters offline: ")
    line.append(", ".join(offline) or "none", style="yellow" if offline else "green")
    return _line(line)


def _point_cell(p: dict[str, Any], names: dict[str, str]) -> Text:
    state = p.get("state", "?")
    cell = Text(f"{p['point']} ")
    cell.append(state, style={"open": "bold cyan", "fault": "bold red"}.get(state, "dim"))
    if p.get("card"):
        cell.append(f" {names.get(p['card'], p['card'])}")
    if p.get("volume_ml") is not None:
        cell.append(f" {p['volume_ml'] / 1000:.2f} L")
    if p.get("amount_fen") is not None:
        cell.append(f" {yuan(p['amount_fen'])}")
    cell.truncate(POINT_CELL - 1, overflow="ellipsis")
    return cell


def _story(story: Sequence[tuple[str, str]], width: int) -> list[Text]:
    """The latest line of the story, on at most STORY_LINES lines."""
    if not story:
        return [_line("the day begins...", "dim")]
    at, said = story[-1]
    text = Text(f"{at}  ", style="dim")
    text.append(said, style="bold")
    lines = list(text.wrap(_console_for(width), width))[:STORY_LINES]
    return [_line(t) for t in lines]


def _console_for(width: int) -> Any:
    """A console that only measures (Text.wrap needs one), never prints."""
    from rich.console import Console

    return Console(width=width, file=io.StringIO())


def compact(doc: dict[str, Any], header: str, story: Sequence[tuple[str, str]],
            recent: Sequence[StoredEvent], names: dict[str, str], *, width: int, height: int) -> Any:
    """The whole view in `width` x `height` (see the module's contract)."""
    top = [_line(h, "bold") for h in header.splitlines()]
    points = [_point_cell(p, names) for p in doc.get("points", [])]
    point_lines, _ = _grid(points, POINT_CELL, width, math.ceil(len(points) / max(1, width // POINT_CELL)))
    story_lines = _story(story, width)
    # Titles of rooms, points and the day, the troubles line and the footer: 5 lines.
    others = len(top) + len(point_lines) + len(story_lines) + 5
    rooms = [_room_cell(r) for r in doc.get("rooms", [])]
    needed = math.ceil(len(rooms) / max(1, width // ROOM_CELL))
    room_rows = max(1, min(needed, height - others - 1 - MIN_EVENTS))
    room_lines, hidden = _grid(rooms, ROOM_CELL, width, room_rows)
    title = f"rooms: ¥ balance, power now, breaker ({len(rooms)} rooms"
    title += f"; {hidden} more in gatewayd status)" if hidden else ")"
    out = [*top, _line(title, "bold underline"), *room_lines, _troubles(doc),
           _line("water points", "bold underline"), *point_lines,
           _line("the day", "bold underline"), *story_lines]
    room_for_events = height - len(out) - 2
    if room_for_events > 0:
        out.append(_line("events (from the store)", "bold underline"))
        out += [_line(f"#{e.seq:<5} {describe(e, names)}") for e in list(recent)[-room_for_events:]]
    out.append(_line(FOOTER, "dim"))
    return Group(*out[:height])
