"""Ed25519 signatures of center commands and the key files (center-link.md "Signing").

The center signs each command with a private key that never leaves it; the
gateway holds only the public key. ``sig`` is the standard base64 (with
padding, 88 characters) of the Ed25519 signature of the command's canonical
form without ``sig`` (``canonical.canonical_json``: RFC 8785, JCS, on the
integer-only, ASCII-keyed JSON a command may carry). The gateway signs and
verifies the object it *parsed*, not the bytes on the wire: every top-level
field is covered, those the contract does not define too. Ed25519 is
deterministic, so a key and a command give one signature
(docs/signing-vectors.md).

Key files are the only I/O, both PEM: the public key as SubjectPublicKeyInfo
(``-----BEGIN PUBLIC KEY-----``), the private key as PKCS#8
(``-----BEGIN PRIVATE KEY-----``, or ``ENCRYPTED PRIVATE KEY`` with a
password), what ``generate_keypair`` writes. Other forms are refused with a
``KeyFileError`` that says what the file holds: a private key where the
public one belongs, a key of another algorithm, an OpenSSH key, the
traditional ``-----BEGIN RSA/EC PRIVATE KEY-----`` forms.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from gatewayd.contract.canonical import SIGNATURE_FIELD, canonical_json
from gatewayd.errors import KeyFileError

__all__ = [
    "PRIVATE_KEY_REFUSED",
    "KeyFileError",
    "KeyPair",
    "decode_signature",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "private_key_kind",
    "sign_command",
    "signature_of",
    "verify_canonical",
    "verify_command",
]

_SIGNATURE_BYTES: Final = 64
# A PEM Ed25519 key is ~120 bytes; anything far larger is the wrong file.
_MAX_KEY_FILE_BYTES: Final = 64 * 1024


class KeyPair(NamedTuple):
    """A freshly generated key pair as PEM bytes."""

    private_pem: bytes  # PKCS#8, unencrypted: keep it on the center only
    public_pem: bytes  # SubjectPublicKeyInfo: center.command_public_key_file


def signature_of(command: Mapping[str, Any], private_key: Ed25519PrivateKey) -> str:
    """Return the ``sig`` value for a command (standard base64, padded)."""
    return base64.b64encode(private_key.sign(canonical_json(command))).decode("ascii")


def sign_command(command: Mapping[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """Return a copy of ``command`` with its ``sig`` set (any old ``sig`` replaced).

    This is the center's side of the contract; the gateway uses it in tests,
    the simulator and operator tools.
    """
    signed = dict(command)
    signed[SIGNATURE_FIELD] = signature_of(command, private_key)
    return signed


def decode_signature(sig: object) -> bytes | None:
    """Return the 64 signature bytes of a ``sig`` value, or None when malformed.

    Only strict standard base64 with padding is accepted: no URL-safe
    alphabet, no white space, no missing padding.
    """
    if not isinstance(sig, str) or len(sig) != 88 or not sig.isascii():
        return None
    try:
        raw = base64.b64decode(sig, validate=True)
    except binascii.Error:
        return None
    return raw if len(raw) == _SIGNATURE_BYTES else None


def verify_command(command: Mapping[str, Any], public_key: Ed25519PublicKey) -> bool:
    """Return True when the command's ``sig`` is a valid signature of it by ``public_key``.

    Never raises: a missing, malformed or wrong ``sig``, or a command that
    has no canonical form, is simply not valid.
    """
    sig = command.get(SIGNATURE_FIELD)
    if decode_signature(sig) is None:
        return False
    try:
        canonical = canonical_json(command)
    except (TypeError, ValueError, RecursionError):
        # CanonicalFormError and UnicodeEncodeError are ValueErrors.
        return False
    return verify_canonical(canonical, sig, public_key)


def verify_canonical(canonical: bytes, sig: object, public_key: Ed25519PublicKey) -> bool:
    """``verify_command`` for a caller that holds the command's ``canonical_json``
    already (the parser computes it for check 3): True when ``sig`` signs it."""
    raw = decode_signature(sig)
    if raw is None:
        return False
    try:
        public_key.verify(raw, canonical)
    except InvalidSignature:
        return False
    return True


def _read_key_file(path: str | os.PathLike[str]) -> tuple[str, bytes]:
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read(_MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise KeyFileError(name, "no such file") from None
    except PermissionError:
        raise KeyFileError(name, "permission denied") from None
    except IsADirectoryError:
        raise KeyFileError(name, "is a directory, expected a PEM file") from None
    except OSError as exc:
        raise KeyFileError(name, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise KeyFileError(name, "too large for a PEM key file")
    if not data.strip():
        raise KeyFileError(name, "is empty")
    return name, data


def _algorithm(key: object) -> str:
    """A stable, readable name for a key's algorithm (class names vary by release)."""
    families: tuple[tuple[str, tuple[type, ...]], ...] = (
        ("RSA", (rsa.RSAPublicKey, rsa.RSAPrivateKey)),
        ("EC", (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)),
        ("DSA", (dsa.DSAPublicKey, dsa.DSAPrivateKey)),
        ("Ed448", (ed448.Ed448PublicKey, ed448.Ed448PrivateKey)),
        ("X25519", (x25519.X25519PublicKey, x25519.X25519PrivateKey)),
        ("X448", (x448.X448PublicKey, x448.X448PrivateKey)),
    )
    for name, classes in families:
        if isinstance(key, classes):
            return name
    return type(key).__name__


#: Why a private key given as the center's public key is refused (behaviour.md "Faults").
PRIVATE_KEY_REFUSED: Final = (
    "holds a private key; a gateway must hold only the center's public key: a center's "
    "private key must never be on a gateway (whoever reads it can sign commands for every "
    "building). Delete it here, have the center make a new key pair (gatewayd keygen) and "
    "give the gateways only the public one (center.pub)"
)

_PEM_PRIVATE = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----")
_MAKE_A_PAIR: Final = "make the pair with gatewayd keygen (or openssl genpkey -algorithm ed25519)"
#: OpenSSH's own key forms, which PEM parsers do not read: said as such.
_OPENSSH_PUBLIC: Final = (
    "an OpenSSH public key; expected PEM SubjectPublicKeyInfo (-----BEGIN PUBLIC KEY-----): "
    + _MAKE_A_PAIR)
_OPENSSH_PRIVATE: Final = (
    "an OpenSSH private key; expected PEM PKCS#8 (-----BEGIN PRIVATE KEY-----): " + _MAKE_A_PAIR)


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Load the center's Ed25519 public key from a PEM SubjectPublicKeyInfo file.

    Raises:
        KeyFileError: the file is missing, unreadable, not PEM (an OpenSSH
            public key is said as such), holds a
            private key (a gateway must never hold one), or holds a key of
            another algorithm.
    """
    name, data = _read_key_file(path)
    if private_key_kind(data):
        raise KeyFileError(name, PRIVATE_KEY_REFUSED)
    if data.lstrip().startswith(b"ssh-"):
        raise KeyFileError(name, _OPENSSH_PUBLIC)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(name, "not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(
            name, f"not an Ed25519 public key (found {_algorithm(key)})"
        )
    return key


def private_key_kind(data: bytes) -> str | None:
    """What kind of private key `data` holds ("PEM", "DER", "PuTTY"), or None.

    Looked at before any parser sees the bytes, so that the refusal says what
    the file is rather than why it is not a public key. DER: a SEQUENCE whose
    first element is an INTEGER (PKCS#8, PKCS#1 and SEC1 private keys start with
    a version) or a SEQUENCE followed by an OCTET STRING (encrypted PKCS#8); a
    SubjectPublicKeyInfo is a SEQUENCE followed by a BIT STRING."""
    if _PEM_PRIVATE.search(data):
        return "PEM"
    if data.startswith(b"PuTTY-User-Key-File-"):
        return "PuTTY"
    outer = _der_header(data, 0)
    if outer is None or data[0] != 0x30:
        return None
    _, first = outer
    if first >= len(data):
        return None
    if data[first] == 0x02:
        return "DER"
    inner = _der_header(data, first)
    if data[first] == 0x30 and inner is not None:
        length, body = inner
        after = body + length
        if after < len(data) and data[after] == 0x04:
            return "DER"
    return None


def _der_header(data: bytes, at: int) -> tuple[int, int] | None:
    """(content length, content offset) of the DER element at `at`, or None."""
    if at + 2 > len(data):
        return None
    first = data[at + 1]
    if first < 0x80:
        return first, at + 2
    n = first & 0x7F
    if not 1 <= n <= 4 or at + 2 + n > len(data):
        return None
    return int.from_bytes(data[at + 2:at + 2 + n], "big"), at + 2 + n


def load_private_key(
    path: str | os.PathLike[str], password: bytes | None = None
) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from a PKCS#8 PEM file (encrypted with ``password``, or not).

    Raises:
        KeyFileError: the file is missing, unreadable, not a PEM private key
            (an OpenSSH private key is said as such),
            encrypted without (or with the wrong) ``password``, or of another
            algorithm.
    """
    name, data = _read_key_file(path)
    if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
        raise KeyFileError(name, _OPENSSH_PRIVATE)
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError:
        reason = "is encrypted; a password is needed" if password is None else "not encrypted"
        raise KeyFileError(name, reason) from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(name, "not a PEM private key, or a wrong password") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(
            name, f"not an Ed25519 private key (found {_algorithm(key)})"
        )
    return key


def generate_keypair() -> KeyPair:
    """Generate a new Ed25519 key pair as PEM (for ``gatewayd keygen``)."""
    private_key = Ed25519PrivateKey.generate()
    return KeyPair(
        private_pem=private_key.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.PKCS8,
            encryption_algorithm=serialization.NoEncryption(),
        ),
        public_pem=private_key.public_key().public_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PublicFormat.SubjectPublicKeyInfo,
        ),
    )
