"""Refused taps of a flooded reader, folded into counted events. Pure: no I/O, no clock.

behaviour.md "Card readers": past `gateway.refused_taps_per_min` refused taps
in a minute at one reader (a card emulator cycling UIDs), further refusals
are folded into one `tap` event per reason a minute, with `count`, and
`reader_flood` is raised until a minute passes under the limit. Granted taps
are never folded (nor counted here).

Minutes are per reader: the first refusal starts one, and while the reader
is flooded the next starts where the last ended, so that each minute is
judged; a minute of a reader not flooded that ends at or under the limit
leaves nothing behind. The caller records what `refuse` and `roll` return:
the tap itself (`record`), the folds of the minutes that ended, and the
alarm's transitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gatewayd.contract.enums import TapReason

WINDOW_S = 60.0


@dataclass
class Fold:
    """Refusals of one reader and reason folded into one `tap` event.

    `card` and `point` are the last folded refusal's (the event needs one of
    each); `count` is how many refusals the event stands for.
    """

    reader: str
    reason: TapReason
    card: str
    point: str | None
    count: int = 0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to do about a refusal, or about the minutes that ended.

    `record`: record this refusal as its own `tap` event (False: folded).
    `folds`: folded events of minutes that ended, to record now.
    `flood`: per reader, True to raise `reader_flood`, False to clear it.
    """

    record: bool = False
    folds: tuple[Fold, ...] = ()
    flood: tuple[tuple[str, bool], ...] = ()


@dataclass
class _Minute:
    start: float
    refused: int = 0
    folds: dict[str, Fold] = field(default_factory=dict)


class RefusalFolder:
    """Per-reader refusal counting and folding.

    Args:
        limit_per_min: `gateway.refused_taps_per_min`.
    """

    def __init__(self, limit_per_min: int) -> None:
        self.limit = limit_per_min
        self._minutes: dict[str, _Minute] = {}
        self._flooded: set[str] = set()

    def flooded(self, reader: str) -> bool:
        return reader in self._flooded

    def refuse(self, reader: str, card: str, point: str | None, reason: TapReason, now: float) -> Outcome:
        """A refused tap at `reader`, monotonic time `now`."""
        folds: list[Fold] = []
        flood: list[tuple[str, bool]] = []
        self._roll_reader(reader, now, folds, flood)
        minute = self._minutes.get(reader)
        if minute is None:
            minute = self._minutes[reader] = _Minute(now)
        minute.refused += 1
        if minute.refused <= self.limit:
            return Outcome(True, tuple(folds), tuple(flood))
        fold = minute.folds.get(reason)
        if fold is None:
            fold = minute.folds[reason] = Fold(reader, reason, card, point)
        fold.card, fold.point = card, point
        fold.count += 1
        if reader not in self._flooded:
            self._flooded.add(reader)
            flood.append((reader, True))
        return Outcome(False, tuple(folds), tuple(flood))

    def roll(self, now: float) -> Outcome:
        """End the minutes that are over: their folds, and the floods that ended."""
        folds: list[Fold] = []
        flood: list[tuple[str, bool]] = []
        for reader in list(self._minutes):
            self._roll_reader(reader, now, folds, flood)
        return Outcome(False, tuple(folds), tuple(flood))

    def flush(self) -> Outcome:
        """The folds of the minutes under way, to record now (at shutdown)."""
        folds: list[Fold] = []
        for minute in self._minutes.values():
            folds.extend(minute.folds.values())
            minute.folds = {}
        return Outcome(False, tuple(folds))

    def _roll_reader(self, reader: str, now: float, folds: list[Fold],
                     flood: list[tuple[str, bool]]) -> None:
        minute = self._minutes.get(reader)
        while minute is not None and now >= minute.start + WINDOW_S:
            folds.extend(minute.folds.values())
            if minute.refused > self.limit:
                # Still flooded: the next minute follows on, to be judged in turn.
                minute = self._minutes[reader] = _Minute(minute.start + WINDOW_S)
                continue
            del self._minutes[reader]
            minute = None
            if reader in self._flooded:
                self._flooded.discard(reader)
                flood.append((reader, False))
