"""Test vectors for command signatures: docs/signing-vectors.md and docs/signing-vectors.json.

Contract: pure generation from fixed inputs; ``write`` (and ``python -m
gatewayd.tools.signing_vectors [DOCS_DIR]``) is the only I/O. The key pair is
RFC 8032's first Ed25519 test key (a public test key: never use it for
anything real), and Ed25519 is deterministic, so every vector is exact: the
canonical bytes (``contract.canonical``) of each command and its ``sig``
(``contract.signing``) are what any correct implementation computes.
``tests/test_signing_vectors.py`` checks that the committed files equal what
this module generates, and the gateway against them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatewayd.contract.canonical import canonical_json
from gatewayd.contract.signing import sign_command

__all__ = ["JSON", "MARKDOWN", "markdown", "vectors", "write"]

#: RFC 8032 section 7.1, TEST 1: secret key (the seed) and public key.
SEED_HEX: Final = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
PUBLIC_HEX: Final = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
MARKDOWN: Final = "signing-vectors.md"
JSON: Final = "signing-vectors.json"

_TS: Final = "2026-11-23T21:04:05.120+08:00"

#: (name, what it shows, the command without sig).
COMMANDS: Final[tuple[tuple[str, str, dict[str, Any]], ...]] = (
    ("ping", "the smallest command: no args",
     {"id": "v-1", "to": "b07", "type": "ping", "ts": _TS}),
    ("credit-non-ascii", "non-ASCII text (an account id in Chinese), kept as UTF-8, not escaped; "
     "an expires",
     {"id": "v-2", "to": "b07", "type": "account.credit", "ts": _TS,
      "expires": "2026-11-26T21:04:05.120+08:00",
      "args": {"account": "张三-2024001", "amount_fen": 5000}}),
    ("cards-load-nested", "nested args: a list of objects, each sorted by key; null and false",
     {"id": "v-3", "to": "all", "type": "cards.load", "ts": _TS,
      "args": {"version": 42, "full": False, "cards": [
          {"card": "04A1B2C3", "account": "stu-2024001", "kind": "student",
           "status": "active", "expires": "2027-07-31"},
          {"card": "04A1B2C4", "account": "t-0042", "kind": "teacher", "status": "lost",
           "expires": None}]}}),
    ("unknown-top-level-field", "a top-level field the contract does not define is signed too; "
     "string escapes: quote, backslash, controls, slash, DEL, U+2028, a character above U+FFFF",
     {"id": "v-4", "to": "b07", "type": "room.cut", "ts": _TS,
      "args": {"room": "0312", "hold": True},
      "x-trace": {"by": "ops \"night\" \\ desk\t1\n\u0001/\u007f\u2028🏠", "hops": [3, -1, 0]}}),
    ("integers-at-the-bound", "the largest integers a command may carry, +-(2**53 - 1)",
     {"id": "v-5", "to": "b07", "type": "account.sync", "ts": _TS,
      "args": {"account": "stu-2024001", "balance_fen": -9007199254740991,
               "through_seq": 9007199254740991}}),
)

#: Commands the gateway refuses before it looks at the signature (no canonical form).
REFUSED: Final[tuple[tuple[str, str], ...]] = (
    ('{"id":"r-1","to":"b07","type":"room.limit","ts":"' + _TS + '",'
     '"args":{"room":"0312","max_power_w":1500.0}}',
     "a non-integer number (1500.0 is not 1500)"),
    ('{"id":"r-2","to":"b07","type":"ping","ts":"' + _TS + '","n":9007199254740992}',
     "an integer beyond 2**53 - 1, in any field"),
    ('{"id":"r-3","to":"b07","type":"ping","ts":"' + _TS + '","备注":"x"}',
     "a non-ASCII key"),
)


def private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(SEED_HEX))


def vectors() -> dict[str, Any]:
    """Everything docs/signing-vectors.json holds."""
    key = private_key()
    entries = []
    for name, shows, command in COMMANDS:
        signed = sign_command(command, key)
        canonical = canonical_json(signed)
        entries.append({
            "name": name,
            "shows": shows,
            "command": signed,
            "canonical_utf8": canonical.decode(),
            "canonical_hex": canonical.hex(),
            "sig": signed["sig"],
        })
    return {
        "about": "Ed25519 command signatures of the gatewayd center link "
                 "(docs/center-link.md, Signing); see signing-vectors.md",
        "key": {
            "rfc8032": "section 7.1, TEST 1: a public test key, never use it for anything real",
            "private_seed_hex": SEED_HEX,
            "public_hex": PUBLIC_HEX,
            "private_pem": key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()).decode(),
            "public_pem": key.public_key().public_bytes(
                serialization.Encoding.PEM,
                serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
        },
        "vectors": entries,
        "refused": [{"payload": payload, "code": "bad_request", "why": why}
                    for payload, why in REFUSED],
    }


_INTRO: Final = """\
# Signing test vectors

Generated by `python -m gatewayd.tools.signing_vectors` from
`gatewayd/tools/signing_vectors.py`; do not edit by hand. The same data,
machine-readable: [signing-vectors.json](signing-vectors.json). The procedure
is in [center-link.md, "Signing"](center-link.md#signing): `sig` is the
standard base64 (padded) of the Ed25519 signature of the command's canonical
form without `sig`, which is RFC 8785 (JCS) of the command as parsed.

The key pair is RFC 8032's first Ed25519 test key (section 7.1, TEST 1). It
is public: use it for tests only, never for a real center. Ed25519 is
deterministic, so an implementation that is right reproduces every byte
below. A test that changes one byte of a command (or of its canonical form)
must see the signature fail.

## The key pair

Private key (seed) `{seed}`, public key `{public}`.

```
{private_pem}{public_pem}```
"""


def markdown(data: dict[str, Any]) -> str:
    """docs/signing-vectors.md, from ``vectors()``."""
    key = data["key"]
    parts = [_INTRO.format(seed=key["private_seed_hex"], public=key["public_hex"],
                           private_pem=key["private_pem"], public_pem=key["public_pem"])]
    for number, entry in enumerate(data["vectors"], 1):
        parts.append(
            f"\n## {number}. {entry['name']}\n\n{entry['shows'][0].upper()}{entry['shows'][1:]}.\n\n"
            "The command as sent, here with non-ASCII characters escaped (any key order, "
            "spacing and escapes will do):\n\n"
            f"```json\n{json.dumps(entry['command'], indent=1)}\n```\n\n"
            "Its canonical form as UTF-8 text (where it holds DEL or U+2028, they are raw "
            "and invisible here; the hex is exact):\n\n"
            f"```\n{entry['canonical_utf8']}\n```\n\n"
            f"As hex ({len(entry['canonical_hex']) // 2} bytes):\n\n"
            f"```\n{_wrap(entry['canonical_hex'])}\n```\n\n"
            f"`sig`:\n\n```\n{entry['sig']}\n```\n")
    parts.append("\n## Refused before the signature is looked at\n\n"
                 "These have no canonical form, so nothing can sign them; the gateway "
                 "answers `bad_request` naming the value, whatever their `sig`:\n\n")
    parts.extend(f"- {item['why']}:\n\n  ```json\n  {item['payload']}\n  ```\n\n"
                 for item in data["refused"])
    return "".join(parts).rstrip("\n") + "\n"


def _wrap(text: str, width: int = 64) -> str:
    return "\n".join(text[i:i + width] for i in range(0, len(text), width))


def write(docs: Path) -> None:
    """Write both files into ``docs``."""
    data = vectors()
    (docs / JSON).write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (docs / MARKDOWN).write_text(markdown(data), encoding="utf-8")


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "docs")
