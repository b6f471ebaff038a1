"""The file and folder keys of the config file: resolved, and checked when asked.

Contract of the module: relative paths (`state_dir`, `profiles_dir`, `*_file`)
are taken from the config file's folder, never from the working directory.
With `check_files`, a named file must be readable and a folder usable; a
secret or trust anchor that others may read or write is a warning.
"""

from __future__ import annotations

import os
from pathlib import Path

from gatewayd.config.validate import Problem, Table, show

__all__ = ["Files", "is_secret", "is_trust_anchor"]


def is_secret(key: str) -> bool:
    """A file key that names a secret: `password_file` (wherever it appears, e.g. a
    DL/T 645 breaker's), `key_file` (the TLS client key). Not public keys."""
    return key.endswith(("password_file", "private_key_file")) or key == "key_file"


def is_trust_anchor(key: str) -> bool:
    """A file key whose content decides whom the gateway trusts: the center's
    public key and the CA. Anyone may read it; only its owner may write it."""
    return key in ("command_public_key_file", "ca_file")



class Files:
    """Reads path keys for one config file; warnings go to `warnings`."""

    def __init__(self, config_path: Path, check_files: bool, warnings: list[Problem]) -> None:
        # Relative paths in the file are relative to the file, wherever it was run from.
        self.base = config_path.absolute().parent
        self.check_files = check_files
        self.warnings = warnings

    def path_text(self, t: Table, key: str, *, required: bool = False) -> str | None:
        """A path as written, or None when absent, empty or not usable (then a problem)."""
        before = len(t.problems)
        value = t.text(key, "", required=required)
        if len(t.problems) > before or not value:
            return None
        if "\0" in value:
            t.problem(key, "expected a path without NUL characters")
            return None
        return value

    def resolve(self, value: str) -> Path:
        """A path from the file: relative ones are taken from the file's folder."""
        return self.base / value  # an absolute `value` replaces the base

    def directory(self, t: Table, key: str, default: str) -> Path | None:
        """A folder key: `default` when absent, None when wrong (a problem recorded)."""
        if not t.has(key):
            t.text(key)  # mark the key as read
            return Path(default)
        if t.data[key] == "":
            t.text(key)
            t.problem(key, 'expected a path, got ""')
            return None
        value = self.path_text(t, key)
        return self.resolve(value) if value is not None else None

    def check_state_dir(self, t: Table, state_dir: Path) -> None:
        try:
            if state_dir.exists():
                if not state_dir.is_dir():
                    t.problem("state_dir", f"{state_dir} exists and is not a directory")
                elif not os.access(state_dir, os.W_OK | os.X_OK):
                    t.problem("state_dir", f"{state_dir} is not writable by this user")
                return
            parent = state_dir.parent
            while not parent.exists() and parent != parent.parent:
                parent = parent.parent
        except OSError as e:  # a name too long, a loop of links
            t.problem("state_dir", f"cannot use {state_dir}: {e.strerror or e}")
            return
        if not os.access(parent, os.W_OK | os.X_OK):
            t.problem("state_dir", f"{state_dir} does not exist and {parent} is not writable")

    def check_profiles_dir(self, t: Table, profiles_dir: Path) -> None:
        try:
            exists, is_dir = profiles_dir.exists(), profiles_dir.is_dir()
        except OSError as e:
            t.problem("profiles_dir", f"cannot use {profiles_dir}: {e.strerror or e}")
            return
        if not exists:
            # A warning, not an error: the contract's own example names the
            # default folder, which a site without profiles of its own lacks.
            self.warnings.append(Problem(
                t.at("profiles_dir"),
                f"no such directory {show(str(profiles_dir))} (only the shipped profiles are used)"))
        elif not is_dir:
            t.problem("profiles_dir", f"{show(str(profiles_dir))} is not a directory")

    def file(self, t: Table, key: str, *, required: bool = False) -> Path | None:
        """A file key; with `check_files`, the file must be readable, and a secret
        (`is_secret(key)`) readable by every user is warned about."""
        value = self.path_text(t, key, required=required)
        if value is None:
            return None
        path = self.resolve(value)
        if self.check_files:
            try:
                with path.open("rb") as f:
                    mode = os.fstat(f.fileno()).st_mode
            except OSError as e:
                t.problem(key, f"cannot read {path}: {e.strerror or e}")
            else:
                if is_secret(key) and mode & 0o004:
                    self.warnings.append(Problem(t.at(key), (
                        f"{path} is a secret readable by every user on this machine "
                        f"(mode {mode & 0o7777:04o}): chmod 0640 with the group gatewayd runs "
                        "as (chown root:gatewayd), or 0600 owned by that user")))
                if is_trust_anchor(key) and mode & 0o022:
                    # Whoever can replace the center's public key can sign commands
                    # that move money and cut power.
                    self.warnings.append(Problem(t.at(key), (
                        f"{path} can be written by users other than its owner "
                        f"(mode {mode & 0o7777:04o}): whoever replaces it can forge the center's "
                        "commands; chmod 0644, owned by root")))
        return path
