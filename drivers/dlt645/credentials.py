"""The relay password of DL/T 645 meters: a `LEVEL:PASSWORD:OPERATOR` line, read once.

Contract: `parse_credentials` takes the one line of a `password_file` (config.md:
`02:123456:00000001`, hex: the level in 2 digits, the 3-byte password in 6, the
4-byte operator code in 8, as the meter's commissioning sheet gives them) and
returns `Credentials` or raises `ValueError` naming what is wrong, never echoing
the password. `Credentials` never shows the password in its repr (log lines).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a relay command carries to be obeyed: PA, P0..P2 and C0..C3."""

    level: int
    password: int
    operator: int

    def __repr__(self) -> str:
        return f"Credentials(level={self.level:02X}, password=***, operator={self.operator:08X})"


def parse_credentials(line: str) -> Credentials:
    """`LEVEL:PASSWORD:OPERATOR` in hex (`02:123456:00000001`)."""
    parts = line.strip().split(":")
    widths = (("level", 2), ("password", 6), ("operator", 8))
    if len(parts) != 3:
        raise ValueError("a password line is LEVEL:PASSWORD:OPERATOR (3 fields separated by ':')")
    values = []
    for (what, width), text in zip(widths, parts, strict=True):
        if len(text) != width or any(c not in "0123456789abcdefABCDEF" for c in text):
            raise ValueError(f"the {what} is {width} hex digits")
        values.append(int(text, 16))
    return Credentials(*values)


def read_credentials(path: Path) -> Credentials:
    """The credentials in the file at `path` (its first non-empty line)."""
    for line in path.read_text(encoding="ascii", errors="replace").splitlines():
        if line.strip():
            try:
                return parse_credentials(line)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
    raise ValueError(f"{path}: no LEVEL:PASSWORD:OPERATOR line")
