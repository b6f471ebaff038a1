"""A small collecting validator for TOML-shaped data.

`Table` wraps one TOML table and a place (`rooms[3].meter`). Each accessor
checks one key, records a `Problem` when it is wrong, and returns a usable
fallback so that validation goes on: one pass finds every problem. `done()`
reports the keys nobody asked for (unknown keys are errors: a typo must not
silently disable a rule).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

T = TypeVar("T")
K = TypeVar("K")

# Plain decimal notation only: "0.56", "12", "0". Decimal() also takes "1e-2",
# "-0", ".5", " 0.03 " and "1_0.0", none of which a price should be.
DECIMAL_RE = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")
# How alike a name must be to a known one to be offered as "did you mean" (difflib's
# ratio: "gatway" and "gateway" are 0.92, "unit" and "uid" 0.57).
SUGGEST_CUTOFF = 0.7
DECIMAL_TEXT = 'a plain decimal string such as "0.56" (digits, at most one \'.\')'


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a file, at a place (`rooms[3].meter.bus`); once located
    (`lines.Locator`), with its line and what it belongs to (`room "301"`)."""

    place: str
    message: str
    line: int | None = None
    subject: str = ""

    def __str__(self) -> str:
        """`place: message (room "301", line 42)`: the spec's `place: message`, then where."""
        text = f"{self.place}: {self.message}" if self.place else self.message
        where = ", ".join(filter(None, (self.subject, f"line {self.line}" if self.line else "")))
        return f"{text} ({where})" if where else text


def closest(name: str, known: Iterable[str]) -> str | None:
    """The one of `known` that `name` is most likely a typo of, or None."""
    close = difflib.get_close_matches(name, sorted(set(known)), n=1, cutoff=SUGGEST_CUTOFF)
    return close[0] if close else None


def suggestion(name: str, known: Iterable[str]) -> str:
    """`; did you mean "gateway"?` for a name close to one of `known`, else ""."""
    return _did_you_mean(closest(name, known))


def _did_you_mean(guess: str | None) -> str:
    return f"; did you mean {show(guess)}?" if guess else ""


def show(value: object) -> str:
    """A value as the user wrote it, for messages: strings quoted, tables named."""
    if isinstance(value, str):
        # As a TOML basic string: quotes, backslashes and control characters escaped.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


class Table:
    """One TOML table under validation."""

    def __init__(self, data: dict[str, Any], place: str, problems: list[Problem]) -> None:
        self.data = data
        self.place = place
        self.problems = problems
        self._seen: set[str] = set()
        # Required keys found missing, with their problem: a misspelt key found by
        # `done()` replaces it (one problem for one typo).
        self._missing: dict[str, Problem] = {}

    def at(self, key: str) -> str:
        return f"{self.place}.{key}" if self.place else key

    def problem(self, key: str | None, message: str) -> None:
        self.problems.append(Problem(self.at(key) if key else self.place, message))

    def has(self, key: str) -> bool:
        return key in self.data

    def _get(self, key: str, required: bool) -> tuple[bool, Any]:
        self._seen.add(key)
        if key not in self.data:
            if required:
                self.problem(key, "required")
                self._missing[key] = self.problems[-1]
            return False, None
        return True, self.data[key]

    def text(
        self,
        key: str,
        default: str = "",
        *,
        required: bool = False,
        pattern: re.Pattern[str] | None = None,
        pattern_text: str = "",
        choices: Sequence[str] | None = None,
    ) -> str:
        present, value = self._get(key, required)
        if not present:
            return default
        if not isinstance(value, str):
            self.problem(key, f"expected a string, got {show(value)}")
            return default
        if required and value == "":
            # A required name written empty is a missing one, never "no name":
            # a room with `bus = ""` must not silently lose its meter.
            self.problem(key, 'required: got ""')
            return default
        if choices is not None and value not in choices:
            self.problem(key, f"expected one of {', '.join(choices)}, got {show(value)}")
            return default
        if pattern is not None and not pattern.fullmatch(value):
            self.problem(key, f"expected {pattern_text or pattern.pattern}, got {show(value)}")
            return default
        return value

    def integer(
        self,
        key: str,
        default: int = 0,
        *,
        required: bool = False,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        present, value = self._get(key, required)
        if not present:
            return default
        if not isinstance(value, int) or isinstance(value, bool):
            self.problem(key, f"expected {_int_range(minimum, maximum)}, got {show(value)}")
            return default
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            self.problem(key, f"expected {_int_range(minimum, maximum)}, got {value}")
            return default
        return value

    def number(
        self,
        key: str,
        default: float = 0.0,
        *,
        required: bool = False,
        minimum: float | None = None,
        above: float | None = None,
        maximum: float | None = None,
    ) -> float:
        """A number (TOML integers are accepted for float keys)."""
        present, value = self._get(key, required)
        if not present:
            return default
        text = _float_range(minimum, above, maximum)
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.problem(key, f"expected {text}, got {show(value)}")
            return default
        number = float(value)
        if (
            not math.isfinite(number)
            or (minimum is not None and number < minimum)
            or (above is not None and number <= above)
            or (maximum is not None and number > maximum)
        ):
            self.problem(key, f"expected {text}, got {show(value)}")
            return default
        return number

    def flag(self, key: str, default: bool = False) -> bool:
        present, value = self._get(key, False)
        if not present:
            return default
        if not isinstance(value, bool):
            self.problem(key, f"expected true or false, got {show(value)}")
            return default
        return value

    def decimal(
        self,
        key: str,
        default: Decimal = Decimal(0),
        *,
        required: bool = False,
        minimum: Decimal = Decimal(0),
        allow_number: bool = False,
    ) -> Decimal:
        """A decimal written as a plain string ("0.56"): money must not pass through floats.

        Only digits with at most one '.' are accepted: no sign, exponent,
        spaces or '_', which `Decimal()` would take but a price must not have.
        With `allow_number`, a TOML number is taken exactly as written (not money)."""
        present, value = self._get(key, required)
        if not present:
            return default
        if allow_number and isinstance(value, int | float) and not isinstance(value, bool):
            number = Decimal(str(value))  # nan and inf parse, and fail below
        elif isinstance(value, str) and DECIMAL_RE.fullmatch(value):
            number = Decimal(value)
        elif isinstance(value, str):
            self.problem(key, f"expected {DECIMAL_TEXT}, got {show(value)}")
            return default
        else:
            self.problem(key, f'expected a decimal string such as "0.56", got {show(value)}')
            return default
        if not number.is_finite() or number < minimum:
            self.problem(key, f"expected a decimal string >= {minimum}, got {show(value)}")
            return default
        return number

    def str_list(
        self, key: str, *, choices: Sequence[str] | None = None, default: Sequence[str] = ()
    ) -> tuple[str, ...]:
        present, value = self._get(key, False)
        if not present:
            return tuple(default)
        if not isinstance(value, list):
            self.problem(key, f"expected an array of strings, got {show(value)}")
            return tuple(default)
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.problem(f"{key}[{i}]", f"expected a string, got {show(item)}")
            elif choices is not None and item not in choices:
                self.problem(
                    f"{key}[{i}]", f"expected one of {', '.join(choices)}, got {show(item)}"
                )
            else:
                out.append(item)
        return tuple(out)

    def table(self, key: str, *, required: bool = False) -> Table | None:
        present, value = self._get(key, required)
        if not present:
            return None
        if not isinstance(value, dict):
            self.problem(key, f"expected a table, got {show(value)}")
            return None
        return Table(value, self.at(key), self.problems)

    def tables(self, key: str) -> Iterator[Table]:
        """An array of tables (`[[rooms]]`), each with its 0-based place."""
        present, value = self._get(key, False)
        if not present:
            return
        if not isinstance(value, list):
            self.problem(key, f"expected an array of tables ([[{key}]]), got {show(value)}")
            return
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                self.problem(f"{key}[{i}]", f"expected a table, got {show(item)}")
                continue
            yield Table(item, f"{self.at(key)}[{i}]", self.problems)

    def check(self, key: str, value: T, test: Callable[[T], str | None]) -> T:
        """Run an extra test on a value already read; `test` returns a message or None."""
        message = test(value)
        if message:
            self.problem(key, message)
        return value

    def unique(self, key: str, name: str, taken: Container[str], what: str) -> bool:
        """Whether `name`, read from `key`, is a usable id not in `taken`; a repeat is a
        problem. "" is an id that already failed: not a repeat of the last one that did."""
        if name in taken:
            self.problem(key, f"{what} {show(name)} is defined twice")
            return False
        return bool(name)

    def done(self, allowed_extra: Sequence[str] = ()) -> None:
        """Report the keys nobody asked for, with the known key each may be a typo of.

        A typo of a required key that is missing is one problem, at the typo
        (`[gatway]`: not also "gateway: required" and its own required keys)."""
        known = [*self._seen, *allowed_extra]
        for key in self.data:
            if key in known:
                continue
            guess = closest(key, known)
            kind = "section" if not self.place and _is_section(self.data[key]) else "key"
            problem = Problem(self.at(key), f"unknown {kind}{_did_you_mean(guess)}")
            missing = self._missing.pop(guess, None) if guess else None
            at = [i for i, p in enumerate(self.problems) if p is missing]
            if at:
                self.problems[at[0]] = problem
            else:
                self.problems.append(problem)


def _is_section(value: object) -> bool:
    """A table or an array of tables: at the top of the file, a section."""
    return isinstance(value, dict) or (
        isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value))


def claim(owners: dict[K, str], key: K, who: str) -> str | None:
    """Record `who` as the user of `key`: None, or the other user that has it already."""
    owner = owners.setdefault(key, who)
    return owner if owner != who else None


def _int_range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer from {minimum} to {maximum}"
    if minimum is not None:
        return f"an integer >= {minimum}"
    if maximum is not None:
        return f"an integer <= {maximum}"
    return "an integer"


def _float_range(minimum: float | None, above: float | None, maximum: float | None) -> str:
    parts = []
    if minimum is not None:
        parts.append(f">= {minimum:g}")
    if above is not None:
        parts.append(f"> {above:g}")
    if maximum is not None:
        parts.append(f"<= {maximum:g}")
    return "a number" + (" " + " and ".join(parts) if parts else "")
