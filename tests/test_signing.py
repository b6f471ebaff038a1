"""Command signatures: canonical form, Ed25519 round trip, key files."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.contract.canonical import canonical_json
from gatewayd.contract.signing import (
    PRIVATE_KEY_REFUSED,
    decode_signature,
    generate_keypair,
    load_private_key,
    load_public_key,
    sign_command,
    signature_of,
    verify_command,
)
from gatewayd.errors import CanonicalFormError, KeyFileError

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key()
COMMAND: dict[str, Any] = {
    "id": "c-1",
    "to": "b07",
    "type": "account.credit",
    "ts": "2026-11-23T21:04:05.120+08:00",
    "args": {"amount_fen": 500, "account": "张三"},
}


NOT_AN_INTEGER = "is not an integer; a command carries integers only (prices are decimal strings)"


def spec_canonical(obj: dict[str, Any]) -> bytes:
    """The contract's expression, verbatim, as the center computes it."""
    unsigned = {k: v for k, v in obj.items() if k != "sig"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_canonical_json_is_the_exact_bytes_the_center_signs() -> None:
    signed = COMMAND | {"sig": "whatever"}
    assert (
        canonical_json(signed)
        == (
            '{"args":{"account":"张三","amount_fen":500},"id":"c-1",'
            '"to":"b07","ts":"2026-11-23T21:04:05.120+08:00","type":"account.credit"}'
        ).encode()
    )


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"b": 1, "a": [True, False, None]}, b'{"a":[true,false,null],"b":1}'),
        ({"s": 'é\u2028\t"\\/'}, '{"s":"é\u2028\\t\\"\\\\/"}'.encode()),
        ({"emoji": "🏠", "cjk": "宿舍"}, '{"cjk":"宿舍","emoji":"🏠"}'.encode()),
        ({"n": "\x00\x1f"}, b'{"n":"\\u0000\\u001f"}'),
        # Keys sort by code point, so upper case before lower case.
        ({"b": 1, "B": 2, "a": {"z": 1, "y": 2}}, b'{"B":2,"a":{"y":2,"z":1},"b":1}'),
    ],
)
def test_canonical_json_cases(obj: dict[str, Any], expected: bytes) -> None:
    assert canonical_json(obj) == expected == spec_canonical(obj)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        # Issue 17: floats are no longer written as Python writes them: a command
        # carries integers only, and JCS would write these differently.
        ({"f": 1e16}, f"f: 1e+16 {NOT_AN_INTEGER}"),
        ({"g": -0.0}, f"g: -0.0 {NOT_AN_INTEGER}"),
        ({"args": {"h": [1, 5.0]}}, f"args.h[1]: 5.0 {NOT_AN_INTEGER}"),
        ({"i": 0.1}, f"i: 0.1 {NOT_AN_INTEGER}"),
        ({"n": 2**53}, "n: 9007199254740992 is not an integer from -9007199254740991 to "
                       "9007199254740991; a command carries no larger number"),
        ({"n": [-(2**53)]}, "n[0]: -9007199254740992 is not an integer from -9007199254740991 "
                            "to 9007199254740991; a command carries no larger number"),
        # Keys are ASCII, so that code point and UTF-16 order agree.
        ({"b": 1, "é": 3}, 'the command: key "é" is not ASCII; keys are ASCII only'),
        ({"a": {"z": [{"🏠": 1}]}}, 'a.z[0]: key "🏠" is not ASCII; keys are ASCII only'),
    ],
)
def test_values_outside_the_canonical_domain_have_no_canonical_form(
        obj: dict[str, Any], message: str) -> None:
    with pytest.raises(CanonicalFormError) as caught:
        canonical_json(obj)
    assert str(caught.value) == message
    with pytest.raises(CanonicalFormError):
        sign_command(obj, KEY)  # nothing outside the domain can be signed


def test_integers_at_the_bound_are_canonical() -> None:
    obj = {"hi": 2**53 - 1, "lo": -(2**53 - 1), "t": True}
    assert canonical_json(obj) == b'{"hi":9007199254740991,"lo":-9007199254740991,"t":true}'


def test_canonical_form_of_a_parsed_payload_ignores_wire_formatting() -> None:
    wire = b'{ "type" : "ping",\n  "id":"c-1", "sig":"x", "note": "\\u5f20\\u4e09", "n": -0 }'
    assert canonical_json(json.loads(wire)) == '{"id":"c-1","n":0,"note":"张三","type":"ping"}'.encode()
    # Issue 17: a number written with a fraction has no canonical form any more.
    with pytest.raises(CanonicalFormError, match=r"n: 1\.5 is not an integer"):
        canonical_json(json.loads(wire.replace(b"-0", b"1.50")))


def test_sign_and_verify_round_trip() -> None:
    signed = sign_command(COMMAND, KEY)
    assert set(signed) == {*COMMAND, "sig"}
    assert "sig" not in COMMAND  # the input is not modified
    assert verify_command(signed, PUBLIC)
    raw = base64.b64decode(signed["sig"], validate=True)
    assert len(raw) == 64
    PUBLIC.verify(raw, spec_canonical(COMMAND))  # what an independent verifier checks


def test_resigning_replaces_the_old_signature() -> None:
    signed = sign_command(COMMAND, KEY)
    other = Ed25519PrivateKey.generate()
    resigned = sign_command(signed, other)
    assert resigned["sig"] == signature_of(COMMAND, other)
    assert verify_command(resigned, other.public_key())
    assert not verify_command(resigned, PUBLIC)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: c | {"to": "b08"},
        lambda c: c | {"args": c["args"] | {"amount_fen": 5000}},
        lambda c: c | {"args": c["args"] | {"account": "张四"}},
        lambda c: c | {"extra": None},
        lambda c: {k: v for k, v in c.items() if k != "ts"},
        lambda c: c | {"args": c["args"] | {"amount_fen": 500.0}},  # same number, other type
    ],
)
def test_tampered_command_does_not_verify(tamper: Any) -> None:
    assert not verify_command(tamper(sign_command(COMMAND, KEY)), PUBLIC)


def test_wrong_key_does_not_verify() -> None:
    assert not verify_command(sign_command(COMMAND, KEY), Ed25519PrivateKey.generate().public_key())


@pytest.mark.parametrize(
    "sig",
    [
        None,
        5,
        "",
        "A" * 88,
        "A" * 86 + "=",
        "A" * 86,
        "-" * 86 + "==",
        " " + "A" * 85 + "==",
        "é" * 86 + "==",
    ],
)
def test_malformed_signatures_never_verify(sig: Any) -> None:
    assert not verify_command(COMMAND | {"sig": sig}, PUBLIC)


def test_decode_signature_accepts_only_padded_standard_base64_of_64_bytes() -> None:
    raw = bytes(range(64))
    good = base64.b64encode(raw).decode()
    assert decode_signature(good) == raw
    assert decode_signature(base64.urlsafe_b64encode(raw).decode()) in (None, raw)  # same when no +/
    assert decode_signature(good.rstrip("=")) is None
    assert decode_signature(base64.b64encode(raw[:63]).decode()) is None
    assert decode_signature(good + "\n") is None


def test_commands_that_cannot_be_canonicalised_do_not_verify() -> None:
    assert not verify_command({"x": "\ud800", "sig": "A" * 86 + "=="}, PUBLIC)
    assert not verify_command({"x": object(), "sig": "A" * 86 + "=="}, PUBLIC)


# The canonical domain (issue 17): integers within +-(2**53 - 1), ASCII keys.
ascii_keys = st.text(st.characters(max_codepoint=127), max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ascii_keys, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(ascii_keys, json_values, max_size=6))
def test_any_json_object_survives_the_wire(obj: dict[str, Any]) -> None:
    """Signed, sent with arbitrary formatting, parsed back: still verifies."""
    signed = sign_command(obj, KEY)
    for wire in (json.dumps(signed), json.dumps(signed, indent=1, ensure_ascii=False)):
        assert verify_command(json.loads(wire), PUBLIC)


# --------------------------------------------------------------------------
# Key files
# --------------------------------------------------------------------------


def test_generated_key_pair_loads_back(tmp_path: Path) -> None:
    pair = generate_keypair()
    assert pair.private_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert pair.public_pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    (tmp_path / "center.key").write_bytes(pair.private_pem)
    (tmp_path / "center.pub").write_bytes(pair.public_pem)
    private = load_private_key(tmp_path / "center.key")
    public = load_public_key(str(tmp_path / "center.pub"))
    assert isinstance(public, Ed25519PublicKey)
    assert verify_command(sign_command(COMMAND, private), public)
    assert generate_keypair().public_pem != pair.public_pem


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def other_keys() -> dict[str, bytes]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem, spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    return {
        "rsa_public": rsa_key.public_key().public_bytes(pem, spki),
        "ec_public": ec_key.public_key().public_bytes(pem, spki),
        "rsa_private": rsa_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    }


def test_public_key_file_errors_name_the_file(tmp_path: Path) -> None:
    keys = other_keys()
    pair = generate_keypair()
    private_der = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    cases = {
        tmp_path / "missing.pub": "no such file",
        tmp_path: "is a directory, expected a PEM file",
        write(tmp_path / "empty.pub", b"\n"): "is empty",
        write(tmp_path / "garbage.pub", b"hello"): "not a PEM public key",
        write(tmp_path / "big.pub", b"x" * 70_000): "too large for a PEM key file",
        write(tmp_path / "rsa.pub", keys["rsa_public"]): "not an Ed25519 public key (found RSA)",
        write(tmp_path / "ec.pub", keys["ec_public"]): "not an Ed25519 public key (found EC)",
        write(tmp_path / "private.pem", pair.private_pem): PRIVATE_KEY_REFUSED,
        write(tmp_path / "private.der", private_der): PRIVATE_KEY_REFUSED,
    }
    for path, reason in cases.items():
        with pytest.raises(KeyFileError) as caught:
            load_public_key(path)
        assert str(caught.value) == f"{path}: {reason}"
        assert (caught.value.path, caught.value.reason) == (str(path), reason)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_public_key_file(tmp_path: Path) -> None:
    path = write(tmp_path / "center.pub", generate_keypair().public_pem)
    path.chmod(0)
    with pytest.raises(KeyFileError, match=r"center\.pub: permission denied$"):
        load_public_key(path)


def test_private_key_file_errors(tmp_path: Path) -> None:
    keys = other_keys()
    encrypted = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    enc_path = write(tmp_path / "enc.key", encrypted)
    assert isinstance(load_private_key(enc_path, password=b"secret"), Ed25519PrivateKey)
    cases: list[tuple[Path, bytes | None, str]] = [
        (tmp_path / "missing.key", None, "no such file"),
        (enc_path, None, "is encrypted; a password is needed"),
        (enc_path, b"wrong", "not a PEM private key, or a wrong password"),
        (write(tmp_path / "plain.key", generate_keypair().private_pem), b"x", "not encrypted"),
        (
            write(tmp_path / "pub.key", generate_keypair().public_pem),
            None,
            "not a PEM private key, or a wrong password",
        ),
        (
            write(tmp_path / "rsa.key", keys["rsa_private"]),
            None,
            "not an Ed25519 private key (found RSA)",
        ),
    ]
    for path, password, reason in cases:
        with pytest.raises(KeyFileError) as caught:
            load_private_key(path, password=password)
        assert str(caught.value) == f"{path}: {reason}"


def test_openssh_keys_are_refused_with_the_form_expected(tmp_path: Path) -> None:
    """Keys are PEM: SubjectPublicKeyInfo and PKCS#8; OpenSSH's forms are named as such."""
    key = Ed25519PrivateKey.generate()
    ssh_public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    ssh_private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    with pytest.raises(KeyFileError) as caught:
        load_public_key(write(tmp_path / "id_ed25519.pub", ssh_public + b" me@host\n"))
    assert caught.value.reason.startswith(
        "an OpenSSH public key; expected PEM SubjectPublicKeyInfo (-----BEGIN PUBLIC KEY-----)")
    with pytest.raises(KeyFileError) as caught:
        load_private_key(write(tmp_path / "id_ed25519", ssh_private))
    assert caught.value.reason.startswith(
        "an OpenSSH private key; expected PEM PKCS#8 (-----BEGIN PRIVATE KEY-----)")
    with pytest.raises(KeyFileError, match="holds a private key"):
        load_public_key(tmp_path / "id_ed25519")
