"""The published signing vectors (docs/signing-vectors.*) against the gateway, and the
canonical form against RFC 8785 (JCS) written out independently here."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.contract.canonical import canonical_json
from gatewayd.contract.command_admission import accept_command
from gatewayd.contract.command_types import CommandRejection, ParsedCommand, TopicKind
from gatewayd.contract.signing import load_private_key, load_public_key, signature_of, verify_command
from gatewayd.contract.wire import parse_rfc3339
from gatewayd.tools import signing_vectors

DOCS = Path(__file__).resolve().parent.parent / "docs"
DATA: dict[str, Any] = json.loads((DOCS / signing_vectors.JSON).read_text(encoding="utf-8"))
VECTORS = DATA["vectors"]
IDS = [v["name"] for v in VECTORS]


def test_the_committed_files_are_what_the_generator_writes(tmp_path: Path) -> None:
    signing_vectors.write(tmp_path)
    for name in (signing_vectors.MARKDOWN, signing_vectors.JSON):
        assert (DOCS / name).read_bytes() == (tmp_path / name).read_bytes(), (
            f"docs/{name} is stale: run python -m gatewayd.tools.signing_vectors")


@pytest.fixture(scope="module")
def public_key(tmp_path_factory: pytest.TempPathFactory) -> Ed25519PublicKey:
    path = tmp_path_factory.mktemp("keys") / "center.pub"
    path.write_text(DATA["key"]["public_pem"])
    return load_public_key(path)


def test_the_pem_key_pair_is_rfc_8032s(tmp_path: Path, public_key: Ed25519PublicKey) -> None:
    (tmp_path / "center.key").write_text(DATA["key"]["private_pem"])
    private = load_private_key(tmp_path / "center.key")
    assert private.private_bytes_raw().hex() == DATA["key"]["private_seed_hex"]
    assert public_key.public_bytes_raw().hex() == DATA["key"]["public_hex"]
    for vector in VECTORS:  # deterministic: the same key signs to the same bytes
        assert signature_of(vector["command"], private) == vector["sig"]


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_the_gateway_computes_each_vectors_bytes_and_verifies_it(
        vector: dict[str, Any], public_key: Ed25519PublicKey) -> None:
    canonical = bytes.fromhex(vector["canonical_hex"])
    assert canonical == vector["canonical_utf8"].encode("utf-8")
    # As sent, in any formatting: the same canonical bytes, and a valid signature.
    for wire in (json.dumps(vector["command"]), json.dumps(vector["command"], indent=3,
                                                           ensure_ascii=False)):
        parsed = json.loads(wire)
        assert canonical_json(parsed) == canonical
        assert verify_command(parsed, public_key)
    public_key.verify(base64.b64decode(vector["sig"], validate=True), canonical)
    command = vector["command"]
    now = parse_rfc3339(command["ts"])
    assert now is not None
    topic: TopicKind = "broadcast" if command["to"] == "all" else "building"
    outcome = accept_command(json.dumps(command).encode(), topic_kind=topic, building="b07",
                             public_key=public_key, now=now.timestamp(), clock_synced=True)
    assert isinstance(outcome, ParsedCommand), outcome


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_a_one_byte_change_fails(vector: dict[str, Any], public_key: Ed25519PublicKey) -> None:
    canonical = bytes.fromhex(vector["canonical_hex"])
    raw_sig = base64.b64decode(vector["sig"])
    for at in range(0, len(canonical), 7):
        changed = bytearray(canonical)
        changed[at] ^= 0x01
        with pytest.raises(InvalidSignature):
            public_key.verify(raw_sig, bytes(changed))
    # In the command: one character of the id, as a tampering broker would.
    tampered = vector["command"] | {"id": vector["command"]["id"][:-1] + "9"}
    assert not verify_command(tampered, public_key)
    outcome = accept_command(json.dumps(tampered).encode(), topic_kind="building", building="b07",
                             public_key=public_key, now=None, clock_synced=True)
    assert isinstance(outcome, CommandRejection) and outcome.code == "bad_signature"


@pytest.mark.parametrize("refused", DATA["refused"], ids=lambda r: r["why"])
def test_commands_without_a_canonical_form_are_refused_as_published(
        refused: dict[str, Any], public_key: Ed25519PublicKey) -> None:
    outcome = accept_command(refused["payload"].encode(), topic_kind="building", building="b07",
                             public_key=public_key, now=None, clock_synced=True)
    assert isinstance(outcome, CommandRejection) and outcome.code == refused["code"]


# --------------------------------------------------------------------------
# RFC 8785 (JCS), written from the RFC, not from json.dumps
# --------------------------------------------------------------------------

_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def jcs(value: Any) -> str:
    """RFC 8785 for null, booleans, integers within 2**53, strings, arrays, objects."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)  # ES6 Number.toString of an exact integer
    if isinstance(value, str):  # RFC 8785 3.2.2.2
        return '"' + "".join(_SHORT.get(c) or (f"\\u{ord(c):04x}" if c < " " else c)
                             for c in value) + '"'
    if isinstance(value, list):
        return "[" + ",".join(jcs(v) for v in value) + "]"
    members = sorted(value.items(), key=lambda kv: kv[0].encode("utf-16-be"))  # 3.2.3
    return "{" + ",".join(f"{jcs(k)}:{jcs(v)}" for k, v in members) + "}"


ascii_keys = st.text(st.characters(max_codepoint=127), max_size=6)
domain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ascii_keys, inner, max_size=4),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(ascii_keys, domain, max_size=6))
def test_the_canonical_form_is_jcs_on_the_whole_domain(obj: dict[str, Any]) -> None:
    unsigned = {k: v for k, v in obj.items() if k != "sig"}
    assert canonical_json(obj) == jcs(unsigned).encode("utf-8")


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_each_vector_is_jcs(vector: dict[str, Any]) -> None:
    unsigned = {k: v for k, v in vector["command"].items() if k != "sig"}
    assert jcs(unsigned) == vector["canonical_utf8"]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_javascript_computes_the_same_bytes() -> None:
    """What a Node.js center computes: JSON.stringify with keys sorted (UTF-16 order)."""
    script = (
        "const sort = v => Array.isArray(v) ? v.map(sort) : (v && typeof v === 'object') ?"
        " Object.fromEntries(Object.keys(v).sort().map(k => [k, sort(v[k])])) : v;"
        "const vs = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "process.stdout.write(JSON.stringify(vs.map(c => { const {sig, ...u} = c;"
        " return Buffer.from(JSON.stringify(sort(u)), 'utf8').toString('hex'); })));")
    commands = json.dumps([v["command"] for v in VECTORS])
    out = subprocess.run(["node", "-e", script], input=commands, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert json.loads(out) == [v["canonical_hex"] for v in VECTORS]
