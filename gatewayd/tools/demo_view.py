"""The demo's views: a live rich view on a terminal, plain lines otherwise."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from gatewayd.store.readonly import StoredEvent
from gatewayd.tools.demo_compact import compact
from gatewayd.tools.demo_summary import describe, yuan

PLAIN_STATUS_EVERY_S = 10.0
EVENTS_SHOWN = 12
STORY_SHOWN = 4
#: A terminal smaller than this (columns, lines) gets the compact view (demo_compact).
WIDE_MIN = (100, 40)



class View:
    """What the demo shows; `PlainView` and `LiveView` implement it."""

    def narrate(self, at: str, text: str) -> None:
        raise NotImplementedError

    def events(self, events: list[StoredEvent]) -> None:
        raise NotImplementedError

    def status(self, doc: dict[str, Any] | None) -> None:
        raise NotImplementedError

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None


class PlainView(View):
    """Lines, for logs and pipes: the story, every event, a status line now and then."""

    def __init__(self, out: IO[str], names: dict[str, str], header: Callable[[], str]) -> None:
        self.out = out
        self.names = names
        self.header = header
        self._last_status = time.monotonic()  # the first after a while: meters are read by then

    def _print(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def narrate(self, at: str, text: str) -> None:
        self._print(f"[{at}] {text}")

    def events(self, events: list[StoredEvent]) -> None:
        for e in events:
            if e.type == "power.usage":
                continue  # the status line carries balances; usage reports would drown the story
            self._print(f"    event #{e.seq} {describe(e, self.names)}")

    def status(self, doc: dict[str, Any] | None) -> None:
        now = time.monotonic()
        if doc is None or now - self._last_status < PLAIN_STATUS_EVERY_S:
            return
        self._last_status = now
        rooms = doc.get("rooms", [])
        points = doc.get("points", [])
        cut = [r["room"] for r in rooms if r.get("breaker") == "off"]
        offline = [r["room"] for r in rooms if not r.get("online")]
        open_ = [p["point"] for p in points if p.get("state") == "open"]
        header = self.header().replace("\n", "; ")
        self._print(f"[status] {header}; rooms {len(rooms)}: cut {_names(cut)}, meters "
                    f"offline {_names(offline)}; water points open {_names(open_)}; "
                    f"{sum(r.get('power_w') or 0 for r in rooms):.0f} W in all")


def _names(names: list[str]) -> str:
    """`104, 106`, or `none`: a list as a person writes it."""
    return ", ".join(names) or "none"


def buses_line(buses: list[dict[str, Any]]) -> str:
    """Each bus, its protocol and (DL/T 645) the round: how fast its meters are read."""
    parts = []
    for b in buses:
        if b.get("protocol") == "dlt645":
            round_s = b.get("round_s")
            parts.append(f"{b['bus']} DL/T 645, {b.get('meters', 0)} meters, round "
                         + ("-" if round_s is None else f"{round_s:.1f} s"))
        else:
            parts.append(f"{b['bus']} Modbus")
    return ", ".join(parts) or "-"


class LiveView(View):
    """A live rich view: rooms, water points, the story and recent events."""

    def __init__(self, names: dict[str, str], header: Callable[[], str], console: Any = None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = console or Console()
        self.names = names
        self.header = header
        self.story: deque[tuple[str, str]] = deque(maxlen=STORY_SHOWN)
        self.recent: deque[StoredEvent] = deque(maxlen=EVENTS_SHOWN)
        self.doc: dict[str, Any] | None = None
        self.live = Live(console=self.console, auto_refresh=False, transient=False)

    def start(self) -> None:
        self.live.start()

    def stop(self) -> None:
        self.live.update(self._render(), refresh=True)
        self.live.stop()

    def narrate(self, at: str, text: str) -> None:
        self.story.append((at, text))
        self._refresh()

    def events(self, events: list[StoredEvent]) -> None:
        self.recent.extend(e for e in events if e.type != "power.usage")

    def status(self, doc: dict[str, Any] | None) -> None:
        if doc is not None:
            self.doc = doc
        self._refresh()

    def _refresh(self) -> None:
        self.live.update(self._render(), refresh=True)

    def _render(self) -> Any:
        width, height = self.console.size
        if width < WIDE_MIN[0] or height < WIDE_MIN[1]:
            return compact(self.doc or {}, self.header(), self.story, self.recent, self.names,
                           width=width, height=height)
        return self._render_wide()

    def _render_wide(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(expand=True, padding=(0, 1))
        grid.add_column(ratio=3)
        grid.add_column(ratio=2)
        story = Panel(self._story(), title="the day", border_style="blue")
        grid.add_row(self._rooms(), Group(self._points(), story))
        return Group(
            Text(self.header(), style="bold"),
            grid,
            Panel(self._recent(), title="events (from the store)", border_style="dim"),
            Text("Ctrl-C stops the demo (the daemon closes every valve and charges open sessions)",
                 style="dim"),
        )

    def _rooms(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        doc = self.doc or {}
        alarms: dict[str, list[str]] = {}
        for a in doc.get("alarms", []):
            alarms.setdefault(a["device"].split(":", 1)[-1], []).append(a["code"])
        height = self.console.size.height
        room_rows = max(4, height - 14 - STORY_SHOWN - min(len(self.recent), EVENTS_SHOWN))
        rooms = Table(title="rooms", expand=True, pad_edge=False)
        for col, justify in (("room", "left"), ("balance", "right"), ("power W", "right"),
                             ("breaker", "left"), ("cut / faults", "left")):
            rooms.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        all_rooms = doc.get("rooms", [])
        for r in all_rooms[:room_rows]:
            breaker = r.get("breaker", "unknown")
            faults = [*([f"cut: {r['cut_reason']}"] if r.get("cut_reason") else []),
                      *alarms.get(r["room"], [])]
            online = bool(r.get("online"))
            if not online and "meter_offline" not in faults:
                faults.append("no reading yet")
            rooms.add_row(
                r["room"],
                Text(yuan(r["balance_fen"]), style="red" if r["balance_fen"] <= 0 else ""),
                "-" if r.get("power_w") is None or not online else f"{r['power_w']:.0f}",
                Text(breaker, style={"on": "green", "off": "bold red"}.get(breaker, "yellow")),
                Text(", ".join(dict.fromkeys(faults)), style="yellow"),
            )
        if len(all_rooms) > room_rows:
            rooms.caption = f"and {len(all_rooms) - room_rows} more rooms (gatewayd status shows all)"
        return rooms

    def _points(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        points = Table(title="water points", expand=True, pad_edge=False)
        for col in ("point", "state", "who", "volume", "charge"):
            points.add_column(col, no_wrap=True)
        for p in (self.doc or {}).get("points", []):
            state = p.get("state", "?")
            points.add_row(
                p["point"], Text(state, style={"open": "bold cyan", "fault": "bold red"}.get(state, "")),
                self.names.get(p.get("card") or "", p.get("card") or ""),
                "" if p.get("volume_ml") is None else f"{p['volume_ml'] / 1000:.2f} L",
                "" if p.get("amount_fen") is None else yuan(p["amount_fen"]),
            )
        return points

    def _story(self) -> Any:
        from rich.text import Text

        story = Text()
        for i, (at, text) in enumerate(self.story):
            story.append(f"{at}  ", style="dim")
            story.append(text + ("\n" if i < len(self.story) - 1 else ""),
                         style="bold" if i == len(self.story) - 1 else "")
        return story

    def _recent(self) -> Any:
        from rich.text import Text

        recent = Text()
        for i, e in enumerate(self.recent):
            line = describe(e, self.names)
            style = ("bold red" if e.type == "breaker.cut" or "REFUSED" in line or
                     (e.type == "alarm" and e.doc.get("active")) else
                     "green" if e.type in ("breaker.restored", "account.credited") else "")
            recent.append(f"#{e.seq:<5} ", style="dim")
            recent.append(line + ("\n" if i < len(self.recent) - 1 else ""), style=style)
        return recent
