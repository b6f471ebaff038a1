"""Every public exception gatewayd raises, in one tree under `GatewaydError`.

Data is carried as attributes, the message is for operators and logs. The
drivers' own failures are `drivers.errors.DriverError` (drivers import nothing
from gatewayd). It imports nothing of the project at run time, so every layer can use it.

    GatewaydError
    ├── ConfigError       the config file cannot be used (`path`, `problems`, `warnings`)
    ├── KeyFileError      a key file is missing or wrong (`path`, `reason`)
    ├── CanonicalFormError a command has no canonical form (`path`, `reason`); a ValueError
    ├── Refused           a command that cannot be applied (`code`, `message`)
    ├── InvalidField      a command's field is wrong; its text, `path: problem`, is the
    │                     `bad_request` message (raised and caught inside the contract)
    ├── LinkConfigError   a local setting the center link cannot use (`reason`)
    ├── ProbeUsage        `gatewayd probe` was given no device, or a wrong one
    ├── ProbeRefused      the device's bus is the daemon's (or another program's)
    └── StoreError        the store cannot be used
        ├── StoreLocked   another gatewayd holds the state directory
        └── StoreClosed   a job was submitted after close()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from gatewayd.config.validate import Problem
    from gatewayd.contract.enums import ErrorCode


class GatewaydError(Exception):
    """Root of every public exception raised by `gatewayd/`."""


class ConfigError(GatewaydError):
    """The file cannot be used. `problems` lists every reason, with places;
    `warnings` what else was found (not reasons on their own)."""

    def __init__(
        self, path: Path, problems: list[Problem], warnings: Sequence[Problem] = ()
    ) -> None:
        self.path = path
        self.problems = problems
        self.warnings = tuple(warnings)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """What `check-config` prints: a header, then each problem as `place: message`."""
        n = len(self.problems)
        header = f"{self.path}: {n} problem{'s' if n != 1 else ''}:"
        return [header, *(str(p) for p in self.problems)]


class KeyFileError(GatewaydError):
    """A key file is missing, unreadable or not the expected kind of key.

    ``str()`` names the file and the problem, ready for an operator:
    ``/etc/gatewayd/center.pub: not an Ed25519 public key (found RSA)``.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class CanonicalFormError(GatewaydError, ValueError):
    """A command has no canonical form, so it can be neither signed nor verified:
    a non-integer number, an integer beyond +-(2**53 - 1), or a non-ASCII key.
    `path` names the value JSON-path style (`args.max_power_w`); `reason` says why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class Refused(GatewaydError):
    """A command that is well-formed but cannot be applied (not_found, conflict)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class InvalidField(GatewaydError):
    """A command's field is wrong; its text, ``path: problem``, is the ``bad_request`` message."""


class LinkConfigError(GatewaydError):
    """A local setting the link cannot use (unreadable password or key file,
    bad certificate, broker refusing the credentials); retried at the longest
    delay, since only an operator can fix it. `reason` says what."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProbeUsage(GatewaydError):
    """The options name no device, or a wrong one: the message says what to give."""


class ProbeRefused(GatewaydError):
    """The device's bus is the daemon's (or another program's): the message says so."""


class StoreError(GatewaydError):
    """The store cannot be used; the message says why and what to do."""


class StoreLocked(StoreError):
    """Another gatewayd holds the state directory."""


class StoreClosed(StoreError):
    """A job was submitted after close()."""
