"""The shipped systemd unit parses cleanly and keeps its hardening score.

Both checks run offline with ``systemd-analyze`` (no running systemd needed).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "gatewayd.service"
MAX_EXPOSURE = 2.0

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not installed (apt-get install systemd)",
)

_OVERALL = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")
_PARSE_PROBLEM = re.compile(r"Unknown key|Unknown section|Failed to parse|Invalid")


def _analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _verifiable_copy(tmp_path: Path, extra: str = "") -> Path:
    """Copy the unit with ExecStart pointing at an existing binary.

    ``verify`` fails when the ExecStart binary is missing, and the venv in
    /opt/gatewayd does not exist on a build machine.
    """
    text = UNIT.read_text(encoding="utf-8")
    text, count = re.subn(
        r"^ExecStart=\S+",
        lambda _: f"ExecStart={sys.executable}",
        text,
        flags=re.MULTILINE,
    )
    assert count == 1, "the unit must have exactly one ExecStart= line"
    copy = tmp_path / UNIT.name
    copy.write_text(text + extra, encoding="utf-8")
    return copy


def _parse_problems(copy: Path, stderr: str) -> list[str]:
    """Lines of verify's stderr that report a setting systemd ignored.

    systemd only warns on an unknown or malformed setting and drops it, with
    exit status 0, so the messages themselves are the failure signal. Any line
    pointing at a line of the unit file ("FILE:LINE: ...") counts as well.
    """
    located = re.compile(re.escape(str(copy)) + r":\d+:")
    return [
        line for line in stderr.splitlines() if _PARSE_PROBLEM.search(line) or located.match(line)
    ]


def test_security_exposure_is_at_most_2() -> None:
    result = _analyze(
        "security",
        "--offline=yes",
        f"--threshold={round(MAX_EXPOSURE * 10)}",
        UNIT,
    )
    match = _OVERALL.search(result.stdout)
    assert match is not None, f"no overall score in output:\n{result.stdout}\n{result.stderr}"
    score = float(match.group(1))
    print(f"systemd-analyze security --offline=yes {UNIT.name}: exposure {score}")
    assert result.returncode == 0, f"exposure {score} above threshold:\n{result.stdout}"
    assert score <= MAX_EXPOSURE
    assert not [line for line in result.stderr.splitlines() if _PARSE_PROBLEM.search(line)], (
        result.stderr
    )


def test_security_keeps_what_the_daemon_needs() -> None:
    """The sandbox still allows serial ports and reading the NTP status."""
    result = _analyze("security", "--offline=yes", "--json=short", UNIT)
    assert result.returncode == 0, result.stderr
    checks: dict[str, dict[str, Any]] = {c["name"]: c for c in json.loads(result.stdout)}
    # clock_synced=auto reads the kernel NTP status with adjtimex(modes=0)
    # (clock_adjtime in glibc): the @clock group must stay allowed, so the
    # scorer must count it as exposed, and ProtectClock= (which denies all of
    # @clock by seccomp) must be off.
    assert not checks["SystemCallFilter=~@clock"]["set"]
    assert not checks["ProtectClock="]["set"]
    # Every serial class the RS-485 adapters and UARTs appear as is allowed rw.
    device_acl = checks["DeviceAllow="]["description"]
    for group in ("ttyUSB", "ttyAMA", "ttyS", "ttyACM"):
        assert f"char-{group}:rw" in device_acl, device_acl
    # The network the daemon uses (MQTT, Modbus TCP, pcscd, sd_notify).
    assert not checks["RestrictAddressFamilies=~AF_(INET|INET6)"]["set"]
    assert not checks["RestrictAddressFamilies=~AF_UNIX"]["set"]
    assert checks["User=/DynamicUser="]["set"]


def test_verify_reports_no_parse_problems(tmp_path: Path) -> None:
    copy = _verifiable_copy(tmp_path)
    result = _analyze("verify", copy)
    print(result.stderr)
    assert result.returncode == 0, result.stderr
    assert _parse_problems(copy, result.stderr) == []


def test_verify_check_catches_a_bad_setting(tmp_path: Path) -> None:
    """The check above can fail: this systemd reports a bad key on stderr."""
    copy = _verifiable_copy(tmp_path, extra="WatchdogSecs=30\n[Servise]\nType=notify\n")
    result = _analyze("verify", copy)
    problems = _parse_problems(copy, result.stderr)
    assert any("Unknown key" in line for line in problems), result.stderr
    assert any("Unknown section" in line for line in problems), result.stderr


def test_start_timeout_covers_the_ready_promise() -> None:
    """READY within 10 s of start (behaviour.md "Faults"), whatever is dead: the
    unit waits longer than that, with room for a slow SD card, but not the default
    90 s. The daemon's device I/O budget at start fits well within the 10 s."""
    from gatewayd.services.component import START_IO_S

    (value,) = re.findall(r"^TimeoutStartSec=(\d+)$", UNIT.read_text(), flags=re.MULTILINE)
    assert 10 < int(value) <= 30
    assert START_IO_S <= 5
