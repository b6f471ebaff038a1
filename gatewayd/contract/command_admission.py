"""Whether a well-formed command is accepted: signed by the center, within its validity
(center-link.md "Signing"); checks 4 and 9 of ``commands``.

Contract of the module: pure, no I/O, no clock (callers pass ``now`` as epoch
seconds), nothing raises. ``accept_command`` is the link's single entry point:
it runs every check in order and returns a ``ParsedCommand`` or the
``CommandRejection`` to publish. A ``cards.load`` near ``MAX_COMMAND_BYTES``
takes about half a second: call it from a worker thread (it is thread-safe).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gatewayd.contract.canonical import SIGNATURE_FIELD
from gatewayd.contract.command_fields import CardFormat, describe
from gatewayd.contract.command_types import (
    MAX_COMMAND_BYTES,
    CommandRejection,
    ParsedCommand,
    TopicKind,
    UnknownFields,
)
from gatewayd.contract.commands import parse_command
from gatewayd.contract.enums import ErrorCode
from gatewayd.contract.signing import decode_signature, verify_canonical, verify_command
from gatewayd.contract.wire import parse_rfc3339

__all__ = [
    "accept_command",
    "check_age",
    "sig_field_problem",
    "signature_problem",
    "valid_window",
    "verify_signature",
]


def verify_signature(raw_obj: Mapping[str, Any], public_key: Ed25519PublicKey) -> bool:
    """Return True when ``raw_obj["sig"]`` is the center's signature of ``raw_obj``.

    ``raw_obj`` is ``ParsedCommand.raw``. Never raises.
    """
    return verify_command(raw_obj, public_key)


def valid_window(
    issued_at: datetime, expires: datetime | None, max_age_s: float
) -> tuple[float, float]:
    """The command's validity, epoch seconds: from ``ts - max_age_s`` until
    ``expires`` when given, else until ``ts + max_age_s`` (center-link.md "Signing")."""
    issued = issued_at.timestamp()
    until = expires.timestamp() if expires is not None else issued + max_age_s
    return issued - max_age_s, until


def check_age(
    ts: str | datetime,
    now: float,
    max_age_s: float,
    *,
    expires: str | datetime | None = None,
    clock_synced: bool = True,
    command_id: str | None = None,
) -> CommandRejection | None:
    """Return a ``stale`` rejection when ``now`` is outside the command's validity.

    While the clock is synchronised both ends count: a command from further
    in the future than ``max_age_s`` is as suspect as a replayed one. While
    it is not, only the end does: the local clock may be behind, and the
    caller's ``now`` never goes back (center-link.md "Signing"). An
    unparseable ``ts`` or ``expires`` string gives ``bad_request``.

    Args:
        ts: the command's ``ts``, as text or as parsed (``ParsedCommand.issued_at``).
        now: the gateway's "now", epoch seconds.
        max_age_s: ``center.max_command_age_s``.
        expires: the command's ``expires`` (``ParsedCommand.expires``), or None.
        clock_synced: whether the clock is synchronised.
        command_id: the id the rejection answers.
    """
    issued = parse_rfc3339(ts) if isinstance(ts, str) else ts
    if issued is None:
        message = f"ts: expected an RFC 3339 date-time with offset, got {describe(ts)}"
        return CommandRejection(command_id, ErrorCode.BAD_REQUEST, message)
    if issued.tzinfo is None:
        return CommandRejection(command_id, ErrorCode.BAD_REQUEST, "ts: has no offset")
    until_dt = parse_rfc3339(expires) if isinstance(expires, str) else expires
    if isinstance(expires, str) and until_dt is None:
        message = f"expires: expected an RFC 3339 date-time with offset, got {describe(expires)}"
        return CommandRejection(command_id, ErrorCode.BAD_REQUEST, message)
    valid_from, valid_until = valid_window(issued, until_dt, max_age_s)
    unsynced = "" if clock_synced else (
        " (the clock is not synchronised: now is at least the newest applied command's ts)")
    if now > valid_until:
        if until_dt is not None:
            message = f"expires: passed {now - valid_until:.0f} s ago{unsynced}"
        else:
            message = (f"ts: {now - issued.timestamp():.0f} s old, more than the "
                       f"{max_age_s:g} s accepted{unsynced}")
        return CommandRejection(command_id, ErrorCode.STALE, message)
    if clock_synced and now < valid_from:
        return CommandRejection(
            command_id,
            ErrorCode.STALE,
            f"ts: {issued.timestamp() - now:.0f} s ahead of this gateway's clock, more than "
            f"the {max_age_s:g} s accepted",
        )
    return None


def accept_command(
    payload: bytes,
    *,
    topic_kind: TopicKind,
    building: str,
    public_key: Ed25519PublicKey | None,
    now: float | None,
    clock_synced: bool,
    max_age_s: float = 300.0,
    insecure_unsigned: bool = False,
    unknown_fields: UnknownFields = "ignore",
    max_bytes: int = MAX_COMMAND_BYTES,
    card_format: CardFormat = "hex",
) -> ParsedCommand | CommandRejection:
    """Run every check of the module doc, in order; the link's single entry point.

    Never raises. Duplicate ids are not this module's business: the link
    looks the id up in the store after this returns a ``ParsedCommand``.

    Args:
        payload: the MQTT message payload as received.
        topic_kind: ``"building"`` or ``"broadcast"``, the topic it came on.
        building: this gateway's building id.
        public_key: ``center.command_public_key_file``, loaded. With None
            every command is refused with ``bad_signature`` unless
            ``insecure_unsigned``.
        now: the gateway's "now", epoch seconds (while the clock is not
            synchronised, the later of the clock and the newest applied
            ``ts``); None leaves the validity to the caller, who checks it
            with ``check_age`` (after its duplicate lookup, say).
        clock_synced: whether the clock is synchronised (see ``check_age``).
        max_age_s: ``center.max_command_age_s``.
        insecure_unsigned: ``center.insecure_unsigned_commands`` (lab only):
            a command without ``sig`` is accepted; one with a ``sig`` is
            still verified when a key is configured, so a tampered command
            is refused even in a lab.
        unknown_fields: see ``parse_command``.
        max_bytes: see ``parse_command``.
        card_format: see ``parse_command``.
    """
    def signature(raw: dict[str, Any], command_id: str, canonical: bytes) -> CommandRejection | None:
        return signature_problem(raw, command_id, public_key, insecure_unsigned, canonical)

    parsed = parse_command(
        payload,
        topic_kind=topic_kind,
        building=building,
        unknown_fields=unknown_fields,
        max_bytes=max_bytes,
        signature=signature,
        card_format=card_format,
    )
    if isinstance(parsed, CommandRejection):
        return parsed
    if now is None:
        return parsed
    rejection = check_age(parsed.issued_at, now, max_age_s, expires=parsed.expires,
                          clock_synced=clock_synced, command_id=parsed.id)
    return parsed if rejection is None else rejection


def signature_problem(
    raw: Mapping[str, Any], command_id: str, public_key: Ed25519PublicKey | None,
    insecure_unsigned: bool, canonical: bytes | None = None,
) -> CommandRejection | None:
    """Check 4: the ``bad_signature`` rejection of the decoded command ``raw``, or None.

    ``canonical`` is ``raw``'s canonical form when the caller has it (the
    parser does): it is not computed again.
    """
    sig = raw.get(SIGNATURE_FIELD)
    refused = sig_field_problem(sig, public_key, insecure_unsigned)
    if refused is not None:
        return CommandRejection(command_id, ErrorCode.BAD_SIGNATURE, refused)
    if public_key is None or sig is None:
        return None  # insecure_unsigned: nothing to verify
    valid = (verify_signature(raw, public_key) if canonical is None
             else verify_canonical(canonical, sig, public_key))
    if not valid:
        return CommandRejection(command_id, ErrorCode.BAD_SIGNATURE,
                                "sig: does not verify with the center's public key")
    return None


def sig_field_problem(
    sig: Any, public_key: Ed25519PublicKey | None, insecure_unsigned: bool,
) -> str | None:
    """What check 4 can tell from the ``sig`` value alone (no key, no ``sig``, a
    malformed one), as the ``bad_signature`` message; None when only the
    verification itself can tell (or nothing is to be verified, in a lab).

    Shared by ``signature_problem`` and the flood screen, which looks at
    ``sig`` before it parses a whole payload.
    """
    if insecure_unsigned and (sig is None or public_key is None):
        return None
    if public_key is None:
        return "no command public key is configured, so no command can be verified"
    if sig is None:
        return f"{SIGNATURE_FIELD}: missing; commands must be signed"
    if decode_signature(sig) is None:
        return f"{SIGNATURE_FIELD}: expected the standard base64 of a 64-byte Ed25519 signature"
    return None
