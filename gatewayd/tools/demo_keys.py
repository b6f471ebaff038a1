"""The demo's command keys: its gateway enforces signatures, as a real one does.

Contract: ``demo_keys`` returns the center public key the demo's gateway
verifies commands with, and the private key its center stub signs with.
By default the pair lives in the demo's ``--dir`` (``center.key``, 0600, and
``center.pub``), made on the first run and kept for the next; with
``--center-public-key`` the gateway verifies with that key instead (an
integrator's own center signs), and the stub, holding no private key, sends
its top-up unsigned: the gateway refuses it ``bad_signature``, as it should.
``signing_note`` is what the demo says about it on start.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatewayd.contract.signing import generate_keypair, load_private_key, load_public_key

__all__ = ["DemoKeys", "demo_keys", "signing_note"]


class DemoKeys(NamedTuple):
    public_path: Path  # center.command_public_key_file of the demo's gateway
    private_path: Path | None  # None: the center's private key is not the demo's
    private_key: Ed25519PrivateKey | None


def demo_keys(workdir: Path, given_public: Path | None) -> DemoKeys:
    """The demo's keys (see the module doc). Raises ``KeyFileError`` for an unusable file."""
    if given_public is not None:
        load_public_key(given_public)  # refused here, not by a daemon that will not start
        return DemoKeys(given_public.resolve(), None, None)
    private_path, public_path = workdir / "center.key", workdir / "center.pub"
    if not (private_path.exists() and public_path.exists()):
        pair = generate_keypair()
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pair.private_pem)
        public_path.write_bytes(pair.public_pem)
    return DemoKeys(public_path, private_path, load_private_key(private_path))


def signing_note(keys: DemoKeys, broker: str | None, building: str) -> str:
    """What the demo says on start about signatures."""
    head = f"commands are signed: the gateway verifies them with {keys.public_path}"
    if keys.private_path is None:
        return (f"{head} (--center-public-key); sign yours with your center's private key. "
                "The demo's own top-up is unsigned, so the gateway refuses it (bad_signature).")
    where = f"--broker {broker}" if broker else "--broker URL"
    return (f"{head}; the demo's center signs with {keys.private_path}. Send your own: "
            f"gatewayd send --key {keys.private_path} {where} --building {building} ping")
