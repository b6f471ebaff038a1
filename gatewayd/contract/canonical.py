"""The canonical form of a command: the exact bytes its signature covers
(center-link.md "The canonical form").

Contract of the module: pure. ``canonical_json`` returns the command without
``sig`` as RFC 8785 (JSON Canonicalization Scheme, JCS) writes it, and is
defined only on the JSON a command may carry (``check_canonical``):

- numbers are integers within +-(2**53 - 1): a non-integer (``1500.0``
  included) or a larger integer has no canonical form here (JCS would write
  the nearest double, which neither side can hold exactly);
- object keys are ASCII, so sorting by code point (what this module does)
  and by UTF-16 code unit (what JCS says) agree;
- strings are any Unicode text UTF-8 can carry (no unpaired surrogates).

Within that domain the bytes are JCS byte for byte: object members sorted by
key at every level, no white space, ``true``/``false``/``null``, integers in
plain decimal (``-0`` as ``0``), strings in double quotes with ``"`` and
``\\`` escaped, ``\\b \\f \\n \\r \\t`` for those controls, every other
character below U+0020 as ``\\u00xx`` (lower-case hex), and every other
character as itself, in UTF-8 (``/``, U+007F, U+2028 and characters above
U+FFFF included). Python's ``json.dumps(obj, sort_keys=True,
separators=(",", ":"), ensure_ascii=False)`` writes exactly these bytes for
such values, and is what this module uses once the domain is checked.
Outside it ``canonical_json`` raises ``CanonicalFormError``, so nothing
outside it can be signed nor verified; ``commands`` refuses it
``bad_request``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

from gatewayd.contract.command_fields import MAX_INT, describe
from gatewayd.errors import CanonicalFormError

__all__ = ["SIGNATURE_FIELD", "CanonicalFormError", "canonical_json", "check_canonical"]

#: The command field that carries the signature, left out of the signed bytes.
SIGNATURE_FIELD: Final = "sig"

_RANGE: Final = f"from -{MAX_INT} to {MAX_INT}"


def canonical_json(command: Mapping[str, Any]) -> bytes:
    """Return the bytes a command's signature covers: its JCS form without ``sig``.

    ``command`` is a JSON object as ``json.loads`` returns it (a Python
    center may pass tuples for lists). Raises ``CanonicalFormError`` (a
    ``ValueError``) for a value outside the domain of the module doc,
    ``UnicodeEncodeError`` for a string with an unpaired surrogate,
    ``TypeError`` for a value JSON cannot hold.
    """
    unsigned = {key: value for key, value in command.items() if key != SIGNATURE_FIELD}
    check_canonical(unsigned)
    return json.dumps(
        unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def check_canonical(command: Mapping[str, Any]) -> None:
    """Raise ``CanonicalFormError`` naming the first value outside the domain.

    Iterative (no recursion to exhaust). Paths are JSON-path style, as in
    ``bad_request`` messages: ``args.cards[3].kind``. Written for speed: a
    ``cards.load`` near 8 MiB holds some 400,000 values.
    """
    stack: list[tuple[Any, str]] = [(command, "")]
    while stack:
        container, path = stack.pop()
        pairs: Iterable[tuple[Any, Any]]
        if type(container) is dict or isinstance(container, Mapping):
            if not _ascii_keys(container):
                _bad_key(path, list(container))
            pairs, before, after = container.items(), (f"{path}." if path else ""), ""
        else:
            pairs, before, after = enumerate(container), f"{path}[", "]"
        for key, value in pairs:
            kind = type(value)
            if kind is str or kind is bool or value is None:
                continue
            if kind is int and -MAX_INT <= value <= MAX_INT:
                continue
            if kind is dict or kind is list:
                stack.append((value, f"{before}{key}{after}"))
                continue
            _other(value, f"{before}{key}{after}", stack)


def _ascii_keys(obj: Mapping[Any, Any]) -> bool:
    try:
        return "".join(obj).isascii()
    except TypeError:  # a key that is not a string
        return False


def _other(value: Any, path: str, stack: list[tuple[Any, str]]) -> None:
    """A value the fast path did not pass: a container to walk, or a number to refuse."""
    if isinstance(value, str | bool):
        return
    if isinstance(value, Mapping | list | tuple):
        stack.append((value, path))
    elif isinstance(value, float):
        raise CanonicalFormError(
            path, f"{describe(value)} is not an integer; a command carries integers only "
            "(prices are decimal strings)")
    elif isinstance(value, int) and not -MAX_INT <= value <= MAX_INT:
        raise CanonicalFormError(
            path, f"{describe(value)} is not an integer {_RANGE}; a command carries "
            "no larger number")


def _bad_key(path: str, keys: list[Any]) -> None:
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"keys must be strings, got {type(key).__name__}")
        if not key.isascii():
            raise CanonicalFormError(
                path or "the command", f"key {describe(key)} is not ASCII; keys are ASCII only")
