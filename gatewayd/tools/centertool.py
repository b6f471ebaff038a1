"""Tools for staff and the center's developers: `gatewayd keygen`, `send`, `tail`.

- `keygen` makes the center's Ed25519 command key pair (PEM): the private key
  stays at the center (written 0600), the public one goes to every gateway
  (`center.command_public_key_file`); it prints the public key's fingerprint,
  which an installer compares on the box (README "Install").
- `send` builds, signs and publishes one command as the center would, waits
  for its result on `{root}/cmd/result` and prints it as JSON. Exit 0 when the
  result is ok, 1 when refused or the broker cannot be reached, 2 on bad
  arguments or key, 3 when no result came in time.
- `tail` prints what gateways publish (events, status, results; telemetry
  with `--telemetry`), one line per message, or the JSON with `--json`.

The subcommands live in `centertool_send` and `centertool_tail`; what they
share (exit codes, the broker's options) in `centertool_args`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from gatewayd.contract.signing import generate_keypair
from gatewayd.tools import centertool_send, centertool_tail
from gatewayd.tools.centertool_args import EXIT_OK, EXIT_USAGE

__all__ = ["add_subcommands"]


def add_subcommands(subparsers: Any) -> None:
    """Register keygen, send and tail on the `gatewayd` argument parser."""
    keygen = subparsers.add_parser("keygen", help="make the center's Ed25519 command key pair")
    keygen.add_argument("--out-private", type=Path, default=Path("center.key"),
                        help="private key (PEM, written 0600; default ./center.key)")
    keygen.add_argument("--out-public", type=Path, default=Path("center.pub"),
                        help="public key for the gateways (PEM; default ./center.pub)")
    keygen.add_argument("--force", action="store_true", help="overwrite existing files")
    keygen.set_defaults(func=cmd_keygen)
    centertool_send.add_parser(subparsers)
    centertool_tail.add_parser(subparsers)


# --- keygen ----------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    for path in (args.out_private, args.out_public):
        if path.exists() and not args.force:
            print(f"gatewayd keygen: {path} exists; use --force to overwrite", file=sys.stderr)
            return EXIT_USAGE
    pair = generate_keypair()
    try:
        _write(args.out_private, pair.private_pem, 0o600)
        _write(args.out_public, pair.public_pem, 0o644)
    except OSError as e:
        target = args.out_private if not args.out_private.exists() else args.out_public
        print(f"gatewayd keygen: cannot write {target}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    print(f"private key: {args.out_private} (keep it at the center; 0600)")
    print(f"public key:  {args.out_public} (center.command_public_key_file on every gateway)")
    print(f"fingerprint: {fingerprint(pair.public_pem)} (give it to the gateways' installers by "
          "phone or ticket; on a box: openssl pkey -pubin -in center.pub -outform DER | sha256sum)")
    return EXIT_OK


def fingerprint(public_pem: bytes) -> str:
    """SHA-256 of the key's DER SubjectPublicKeyInfo, in hex: what
    `openssl pkey -pubin -in center.pub -outform DER | sha256sum` prints."""
    key = serialization.load_pem_public_key(public_pem)
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write a file created with `mode` from the start (never briefly world-readable)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
