"""Where a place of the config file is written: its line, and the room, point, reader or
bus it belongs to, so that a problem in a 300-room file can be found.

Contract of the module: `Locator(text, data)` scans the TOML text lightly (tomllib
gives no positions): table headers (`[gateway]`, the n-th `[[rooms]]`, `[rooms.meter]`
under the last `[[rooms]]`) and the keys written under them, skipping the inside of
multi-line strings and arrays. `line(place)` is the line of the most specific part of
`rooms[3].meter.bus` that is written on a line of its own (for a key inside an inline
table, the line of that table), or None; `subject(place)` names the thing of an
array of tables by its id (`room "301"`). `located(problem)` adds both to a `Problem`.
Nothing here raises on any text: a place it cannot find just has no line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from gatewayd.config.validate import Problem, show

__all__ = ["Locator"]

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"|\'[^\']*\''
_KEY = rf"(?:{_BARE}|{_QUOTED})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER_RE = re.compile(rf"\s*(\[\[?)\s*({_DOTTED})\s*(\]\]?)\s*(?:#.*)?$")
_KEY_LINE_RE = re.compile(rf"\s*({_DOTTED})\s*=(.*)$")
_PART_RE = re.compile(_KEY)
_STRING_RE = re.compile(_QUOTED)
_LAST_PART_RE = re.compile(r"(\.[^.\[\]]+|\[\d+\])$")
# The arrays of tables whose members have an id, and how a message names one.
_SUBJECTS = {"rooms": ("room", "id"), "points": ("point", "id"),
             "readers": ("reader", "id"), "buses": ("bus", "name")}
_SUBJECT_RE = re.compile(r"(rooms|points|readers|buses)\[(\d+)\]")


def _parts(dotted: str) -> list[str]:
    """`a."b.c".d` -> ["a", "b.c", "d"]."""
    return [p[1:-1] if p[:1] in "\"'" else p for p in _PART_RE.findall(dotted)]


def _depth(text: str) -> int:
    """How many more brackets and braces `text` opens than it closes (strings and a
    comment left out)."""
    code = _STRING_RE.sub('""', text).split("#", 1)[0]
    return code.count("[") + code.count("{") - code.count("]") - code.count("}")


class Locator:
    """Lines and subjects of the places of one config file (see the module's contract)."""

    def __init__(self, text: str, data: Mapping[str, Any]) -> None:
        self.data = data
        self.lines: dict[str, int] = {}
        self._counts: dict[str, int] = {}   # members of each array of tables, by its place
        self._scan(text)

    def _scan(self, text: str) -> None:
        table = ""
        depth = 0   # brackets a multi-line value left open
        in_string = ""   # the quotes of a multi-line string left open
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string:
                if line.count(in_string) % 2:
                    in_string = ""
                continue
            if depth > 0:
                depth += _depth(line)
                continue
            if m := _HEADER_RE.match(line):
                table = self._header(_parts(m.group(2)), array=m.group(1) == "[[")
                self._mark(table, number)
            elif m := _KEY_LINE_RE.match(line):
                self._mark(".".join(filter(None, (table, *_parts(m.group(1))))), number)
                value = m.group(2)
                for quotes in ('"""', "'''"):
                    if value.count(quotes) % 2:
                        in_string = quotes
                depth = 0 if in_string else max(0, _depth(value))

    def _mark(self, place: str, number: int) -> None:
        """`place` starts at line `number`, and so do the places it is made of that have
        no line yet (`a.b.c = 1` writes the table `a.b`; `[[rooms]]` the array `rooms`)."""
        while place and place not in self.lines:
            self.lines[place] = number
            shorter = _LAST_PART_RE.sub("", place)
            if shorter == place:
                return
            place = shorter

    def _header(self, parts: list[str], *, array: bool) -> str:
        """The place a header opens: each array of tables on its path is its last member."""
        place = ""
        for i, part in enumerate(parts):
            place = f"{place}.{part}" if place else part
            if array and i == len(parts) - 1:
                self._counts[place] = self._counts.get(place, 0) + 1
            if place in self._counts:
                place = f"{place}[{self._counts[place] - 1}]"
        return place

    def line(self, place: str) -> int | None:
        """The line of `place`, or of the nearest enclosing place written in the file."""
        while place:
            if place in self.lines:
                return self.lines[place]
            shorter = _LAST_PART_RE.sub("", place)
            if shorter == place:
                return None
            place = shorter
        return None

    def subject(self, place: str) -> str:
        """`room "301"` for a place under `rooms[n]` whose id is written; else ""."""
        m = _SUBJECT_RE.match(place)
        if not m:
            return ""
        what, key = _SUBJECTS[m.group(1)]
        members = self.data.get(m.group(1))
        index = int(m.group(2))
        if not isinstance(members, list) or index >= len(members):
            return ""
        member = members[index]
        name = member.get(key) if isinstance(member, dict) else None
        return f"{what} {show(name)}" if isinstance(name, str) and name else ""

    def located(self, problem: Problem) -> Problem:
        """`problem` with its line and subject."""
        if not problem.place:
            return problem
        return replace(problem, line=self.line(problem.place), subject=self.subject(problem.place))
