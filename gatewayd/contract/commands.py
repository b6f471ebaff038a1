"""Center commands from payload bytes to typed, well-formed commands (center-link.md "Commands").

Contract of the layer: pure functions, no I/O, no clock (callers pass ``now``
as epoch seconds); ``parse_command`` and ``accept_command`` never raise,
whatever the payload: every outcome is a ``ParsedCommand`` or a
``CommandRejection`` whose ``encode()`` is the result to publish. A typical
command parses in well under a millisecond, but a ``cards.load`` near
``MAX_COMMAND_BYTES`` takes about half a second on a desktop CPU: the link
should call these from a worker thread, not the loop that serves taps (they
are thread-safe).

``parse_command`` runs checks 1 to 8 below; ``command_admission`` holds the
signature (4) and age (9) checks and ``accept_command``, which runs them all.
The typed results are in ``command_types``, the ``args`` schema in
``command_args``.

Order of checks (the first failure is the result; later checks never run):

1. ``bad_json``, id ``null``: payload larger than ``max_bytes``, not UTF-8,
   not JSON (including a byte order mark, ``NaN``/``Infinity``, numbers
   that overflow a float, integers of more than 4300 digits, and duplicate
   keys, which would make what is signed ambiguous), or not a JSON object.
2. ``bad_request``, id ``null``: no usable ``id`` (a string of 1 to 64
   characters that UTF-8 can carry).
3. ``bad_json``, with the id: nesting deeper than ``MAX_DEPTH`` or a string
   with an unpaired surrogate escape (``"\\ud800"``), which no canonical
   UTF-8 form can carry, so it could never be signed. ``bad_request``, with
   the id: a value outside the canonical form's domain (``canonical``): a
   non-integer number (``1500.0`` included) or an integer beyond
   +-(2**53 - 1) anywhere, or a non-ASCII key; the message names it. Such a
   command has no signed form either, so this too comes before the signature.
4. ``bad_signature`` (``accept_command`` only; ``verify_signature``):
   missing or wrong ``sig``. It comes before every schema check: what an
   unauthenticated sender gets back says nothing about the schema, and the
   contract's "missing or wrong sig: refused with bad_signature" holds
   whatever else is wrong.
5. ``bad_request``: ``to`` is not this building on the building topic, or not
   ``all`` on the broadcast topic.
6. ``bad_request`` if ``type`` is not a string, ``unknown_type`` if it is not
   a v1 command type.
7. ``bad_request``: ``ts`` is not an RFC 3339 date-time with offset;
   ``expires``, when given, is not one, is before ``ts``, or is more than
   ``MAX_EXPIRES_S`` (7 days) after it.
8. ``bad_request``: ``args`` does not match the type's schema; the message
   names the field, JSON-path style: ``args.cards[3].kind: expected one of
   ...``. Fields are checked in the contract's order.
9. ``stale`` (``check_age``; ``accept_command`` step unless ``now`` is None):
   outside the command's validity (center-link.md "Signing"), from
   ``ts - max_age_s`` until ``expires``, else ``ts + max_age_s``. While the
   clock is not synchronised only the end counts: the caller's ``now`` is
   then the later of the clock and the newest applied ``ts``, and no command
   is refused for lying in the future.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, NoReturn

from gatewayd.contract.canonical import SIGNATURE_FIELD, CanonicalFormError, canonical_json
from gatewayd.contract.command_args import parse_args
from gatewayd.contract.command_fields import (
    MISSING,
    CardFormat,
    InvalidField,
    describe,
    encodable,
    fail,
    problem,
)
from gatewayd.contract.command_types import (
    BROADCAST_TARGET,
    MAX_COMMAND_BYTES,
    MAX_DEPTH,
    MAX_EXPIRES_S,
    MAX_ID_CHARS,
    CommandRejection,
    ParsedCommand,
    TopicKind,
    UnknownFields,
)
from gatewayd.contract.enums import CommandType, ErrorCode
from gatewayd.contract.wire import parse_rfc3339

__all__ = ["SignatureCheck", "parse_command", "usable_id"]

#: Check 4, as ``parse_command`` calls it: (decoded object, id, canonical form)
#: to the ``bad_signature`` rejection, or None.
SignatureCheck = Callable[[dict[str, Any], str, bytes], CommandRejection | None]

_TOP_LEVEL_FIELDS: Final = frozenset({"id", "to", "type", "ts", "expires", "args", SIGNATURE_FIELD})


# --------------------------------------------------------------------------
# JSON decoding
# --------------------------------------------------------------------------


class _BadJson(Exception):
    """The payload is not an acceptable JSON text; the message says why."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _BadJson(f"duplicate key {describe(key)}")
            seen.add(key)
    return obj


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadJson(f"number {text[:40]} is out of range")
    return value


def _no_constants(name: str) -> NoReturn:
    raise _BadJson(f"{name} is not JSON")


def _decode(payload: bytes, max_bytes: int) -> dict[str, Any]:
    if len(payload) > max_bytes:
        raise _BadJson(f"payload is {len(payload)} bytes, more than the {max_bytes} accepted")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadJson(f"not UTF-8: invalid byte at offset {exc.start}") from None
    if text.startswith("\ufeff"):
        raise _BadJson("not JSON: starts with a byte order mark (U+FEFF)")
    try:
        obj = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_float=_finite_float,
            parse_constant=_no_constants,
        )
    except json.JSONDecodeError as exc:
        raise _BadJson(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise _BadJson(f"nesting deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        # The scanner has checked the syntax by then; what is left is
        # int()'s guard against integers of more than 4300 digits.
        raise _BadJson("not JSON: a number has too many digits") from None
    if not isinstance(obj, dict):
        raise _BadJson(f"payload is {describe(obj)}, expected a JSON object")
    return obj


def _check_depth(obj: dict[str, Any]) -> None:
    """Refuse nesting deeper than MAX_DEPTH, iteratively (no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _BadJson(f"nesting deeper than {MAX_DEPTH} levels")
        values = container.values() if isinstance(container, dict) else container
        stack.extend((value, depth + 1) for value in values if isinstance(value, dict | list))


def usable_id(value: Any) -> str | None:
    """The command's id (check 2): a string of 1 to ``MAX_ID_CHARS`` characters UTF-8 can carry."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS or not encodable(value):
        return None
    return value


# --------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------


def parse_command(
    payload: bytes,
    *,
    topic_kind: TopicKind,
    building: str,
    unknown_fields: UnknownFields = "ignore",
    max_bytes: int = MAX_COMMAND_BYTES,
    signature: SignatureCheck | None = None,
    card_format: CardFormat = "hex",
) -> ParsedCommand | CommandRejection:
    """Parse and schema-check one command payload (checks 1 to 8 of the module doc).

    Never raises. The signature is checked (step 4) only when ``signature``
    is given (``accept_command`` does); the age never is here: see
    ``verify_signature``, ``check_age`` and ``accept_command``.

    Args:
        payload: the MQTT message payload as received.
        topic_kind: ``"building"`` for ``{root}/cmd``, ``"broadcast"`` for
            ``{prefix}/all/cmd``; decides what ``to`` must be.
        building: this gateway's building id.
        unknown_fields: ``"ignore"`` (the contract's rule) or ``"reject"``
            unknown keys inside ``args``.
        max_bytes: payloads larger than this are refused unparsed.
        signature: called with the decoded object, its id and its canonical
            form (``canonical.canonical_json``) after step 3; a rejection it
            returns is the result.
        card_format: ``gateway.card_format``, how this building spells card
            ids; ids in another format are refused with ``bad_request``.
    """
    found_id: list[str] = []
    try:
        return _parse(
            payload,
            topic_kind=topic_kind,
            building=building,
            unknown=unknown_fields,
            max_bytes=max_bytes,
            found_id=found_id,
            signature=signature,
            card_format=card_format,
        )
    except Exception as exc:
        # Nothing a command carries may crash the gateway (center-link.md): a
        # bug here becomes an ``internal`` result, answered under the id if
        # it was read, and the link keeps serving.
        return CommandRejection(
            found_id[0] if found_id else None,
            ErrorCode.INTERNAL,
            f"the gateway failed to parse the command ({type(exc).__name__})",
        )


def _parse(
    payload: bytes,
    *,
    topic_kind: TopicKind,
    building: str,
    unknown: UnknownFields,
    max_bytes: int,
    found_id: list[str],
    signature: SignatureCheck | None,
    card_format: CardFormat,
) -> ParsedCommand | CommandRejection:
    try:
        obj = _decode(bytes(payload), max_bytes)
    except _BadJson as exc:
        return CommandRejection(None, ErrorCode.BAD_JSON, str(exc))

    command_id = usable_id(obj.get("id"))
    if command_id is None:
        expected = f"a string of 1 to {MAX_ID_CHARS} characters"
        message = problem("id", expected, obj.get("id", MISSING))
        return CommandRejection(None, ErrorCode.BAD_REQUEST, message)
    found_id.append(command_id)

    canonical = _canonical(obj, command_id)
    if isinstance(canonical, CommandRejection):
        return canonical
    if signature is not None and (refused := signature(obj, command_id, canonical)) is not None:
        return refused
    return _envelope(obj, command_id, topic_kind=topic_kind, building=building, unknown=unknown,
                     card_format=card_format)


def _canonical(obj: dict[str, Any], command_id: str) -> bytes | CommandRejection:
    """Check 3: the command's canonical form (what its signature covers), or the
    rejection of what has none, so could never be signed."""
    try:
        _check_depth(obj)
        return canonical_json(obj)
    except _BadJson as exc:
        return CommandRejection(command_id, ErrorCode.BAD_JSON, str(exc))
    except CanonicalFormError as exc:
        return CommandRejection(command_id, ErrorCode.BAD_REQUEST, str(exc))
    except UnicodeEncodeError:
        return CommandRejection(
            command_id,
            ErrorCode.BAD_JSON,
            "a string holds an unpaired surrogate escape, which UTF-8 cannot carry",
        )


def _envelope(
    obj: dict[str, Any], command_id: str, *, topic_kind: TopicKind, building: str,
    unknown: UnknownFields, card_format: CardFormat,
) -> ParsedCommand | CommandRejection:
    """Checks 5 to 8: ``to``, ``type``, ``ts`` and ``expires``, ``args``."""
    def bad_request(message: str) -> CommandRejection:
        return CommandRejection(command_id, ErrorCode.BAD_REQUEST, message)

    to = obj.get("to", MISSING)
    if topic_kind == "broadcast":
        wanted, where = BROADCAST_TARGET, "the broadcast command topic"
    else:
        wanted, where = building, "this building's command topic"
    if to != wanted:
        got = "missing" if to is MISSING else f"got {describe(to)}"
        return bad_request(f'to: expected "{wanted}" on {where}, {got}')

    raw_type = obj.get("type", MISSING)
    if not isinstance(raw_type, str):
        return bad_request(problem("type", "a command type string", raw_type))
    try:
        command_type = CommandType(raw_type)
    except ValueError:
        return CommandRejection(
            command_id, ErrorCode.UNKNOWN_TYPE, f"type: unknown command type {describe(raw_type)}"
        )

    ignored: list[str] = []
    try:
        raw_ts = obj.get("ts", MISSING)
        issued_at = parse_rfc3339(raw_ts) if isinstance(raw_ts, str) else None
        if issued_at is None:
            fail("ts", "an RFC 3339 date-time with offset", raw_ts)
        expires = _expires(obj.get("expires"), issued_at)
        args = parse_args(command_type, obj.get("args", MISSING), unknown, ignored, card_format)
    except InvalidField as exc:
        return bad_request(str(exc))

    ignored[:0] = sorted(key for key in obj if key not in _TOP_LEVEL_FIELDS)
    return ParsedCommand(
        id=command_id,
        type=command_type,
        to=to,
        ts=raw_ts,
        issued_at=issued_at,
        args=args,
        raw=obj,
        ignored=tuple(ignored),
        expires=expires,
    )


def _expires(raw: Any, issued_at: datetime) -> datetime | None:
    """The command's ``expires`` (None when absent or null), within 7 days after ``ts``."""
    if raw is None:
        return None
    expected = "an RFC 3339 date-time with offset or null"
    moment = parse_rfc3339(raw) if isinstance(raw, str) else None
    if moment is None:
        fail("expires", expected, raw)
    after = moment.timestamp() - issued_at.timestamp()
    if after < 0:
        # A command that was never valid: a bug at the center, said as such
        # rather than `stale`, which would read as a delivery delay.
        fail("expires", "a time at or after ts", raw)
    if after > MAX_EXPIRES_S:
        fail("expires", f"at most {MAX_EXPIRES_S // 86400} days after ts", raw)
    return moment
