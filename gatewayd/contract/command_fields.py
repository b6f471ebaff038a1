"""Readers of the JSON values a command carries, for the schema of ``command_args``.

Contract of the module: pure. Each reader checks one value and returns it
typed, or raises ``InvalidField`` whose text, ``path: problem`` (JSON-path style:
``args.cards[3].kind: expected one of ...``), is the ``bad_request`` message.
Integers are JSON integers within +-(2**53 - 1): ``true``, ``1.0`` and ``"1"``
are refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final, Literal, NoReturn, TypeVar

from gatewayd.contract.command_types import MAX_NAME_CHARS, UnknownFields
from gatewayd.contract.enums import CardKind, CardStatus, Service, TariffUnit
from gatewayd.contract.scalars import JSON_INT_MAX
from gatewayd.errors import InvalidField

__all__ = [
    "MAX_CARD_NUMBER",
    "MAX_INT",
    "MISSING",
    "CardFormat",
    "Fields",
    "InvalidField",
    "describe",
    "encodable",
    "fail",
    "json_object",
    "problem",
    "read_bool",
    "read_card",
    "read_choice",
    "read_int",
    "read_name",
]

#: The range every JSON peer (and SQLite) represents exactly (one value: scalars').
MAX_INT: Final = JSON_INT_MAX
#: An absent key, told apart from a JSON null.
MISSING: Final[Any] = object()

#: How the building spells a card id (``gateway.card_format``, behaviour.md "Card readers").
CardFormat = Literal["hex", "dec10"]
#: The largest ``dec10`` card number: 4 bytes.
MAX_CARD_NUMBER: Final = 2**32 - 1

_CARD_RE: Final = re.compile(r"[0-9A-Fa-f]{2,32}", re.ASCII)
_DEC10_RE: Final = re.compile(r"[0-9]{10}", re.ASCII)
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAME_EXPECTED: Final = f"a string of 1 to {MAX_NAME_CHARS} characters without control characters"


def encodable(text: str) -> bool:
    """Whether UTF-8 can carry ``text`` (JSON can smuggle in unpaired surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def describe(value: Any) -> str:
    """A short JSON-like rendering of a refused value, for error messages."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value) if abs(value) < 10**24 else f"an integer of {len(str(abs(value)))} digits"
    if isinstance(value, float):
        return json.dumps(value)
    if isinstance(value, str):
        shown = json.dumps(value[:40], ensure_ascii=False)
        if not encodable(shown):  # an unpaired surrogate: show it escaped
            shown = json.dumps(value[:40])
        return shown if len(value) <= 40 else f"{shown[:-1]}...\" ({len(value)} characters)"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__  # pragma: no cover - json.loads yields nothing else


def problem(path: str, expected: str, value: Any) -> str:
    """``path: missing, expected X`` or ``path: expected X, got Y``."""
    if value is MISSING:
        return f"{path}: missing, expected {expected}"
    return f"{path}: expected {expected}, got {describe(value)}"


def fail(path: str, expected: str, value: Any) -> NoReturn:
    raise InvalidField(problem(path, expected, value))


def read_int(path: str, value: Any, expected: str, minimum: int = -MAX_INT) -> int:
    # type(), not isinstance: a JSON true must not count as 1
    if type(value) is not int or not minimum <= value <= MAX_INT:
        fail(path, expected, value)
    result: int = value
    return result


def read_bool(path: str, value: Any) -> bool:
    if type(value) is not bool:
        fail(path, "true or false", value)
    result: bool = value
    return result


def read_name(path: str, value: Any) -> str:
    """An account or room id: 1 to 128 characters without control characters."""
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_NAME_CHARS
        or _CONTROL_RE.search(value)
    ):
        fail(path, _NAME_EXPECTED, value)
    return value


def read_card(path: str, value: Any, card_format: CardFormat = "hex") -> str:
    """A card id in the building's ``card_format``.

    ``hex``: 2 to 32 hex digits, an even number (whole bytes), upper-cased.
    ``dec10``: exactly 10 digits, at most ``MAX_CARD_NUMBER``.
    """
    if card_format == "dec10":
        if not isinstance(value, str) or not _DEC10_RE.fullmatch(value) or int(value) > MAX_CARD_NUMBER:
            fail(path, f"a card number of 10 digits from 0000000000 to {MAX_CARD_NUMBER}", value)
        return value
    if not isinstance(value, str) or not _CARD_RE.fullmatch(value):
        fail(path, "a card UID of 2 to 32 hex digits", value)
    if len(value) % 2:
        fail(path, "a card UID of an even number of hex digits (whole bytes)", value)
    return value.upper()


_E = TypeVar("_E", CardKind, CardStatus, Service, TariffUnit)


def read_choice(path: str, value: Any, enum: type[_E]) -> _E:
    if isinstance(value, str):
        try:
            return enum(value)
        except ValueError:
            pass
    fail(path, "one of " + ", ".join(f'"{member.value}"' for member in enum), value)


def json_object(path: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        fail(path, "an object", value)
    return value


class Fields:
    """Reads the keys of one JSON object, remembering which were known.

    ``card_format`` is the building's, for the card ids among the keys (``read_card``).
    """

    __slots__ = ("_obj", "_path", "_seen", "card_format")

    def __init__(self, obj: Mapping[str, Any], path: str, card_format: CardFormat = "hex") -> None:
        self._obj = obj
        self._path = path
        self._seen: set[str] = set()
        self.card_format: CardFormat = card_format

    def path(self, key: str) -> str:
        return f"{self._path}.{key}"

    def get(self, key: str) -> Any:
        """The value, or ``MISSING`` when absent."""
        self._seen.add(key)
        return self._obj.get(key, MISSING)

    def optional(self, key: str) -> Any:
        """The value, or None when absent or null."""
        value = self.get(key)
        return None if value is MISSING else value

    def finish(self, unknown: UnknownFields, ignored: list[str]) -> None:
        """Refuse (``"reject"``) or list in ``ignored`` the keys nobody read."""
        extra = sorted(key for key in self._obj if key not in self._seen)
        if extra and unknown == "reject":
            raise InvalidField(f"{self.path(extra[0])}: unknown field")
        ignored.extend(self.path(key) for key in extra)
