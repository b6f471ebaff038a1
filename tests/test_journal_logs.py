"""Logs journald understands: `gatewayd run` as systemd starts it (JOURNAL_STREAM naming
its output), each line with its syslog priority and the event name first; and the
same daemon on a stream that is not the journal's, without the prefixes."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog

from gatewayd.app import logs
from tests.test_daemon import ROOT, config

LINE = re.compile(r'<(\d)>(\{"event": .*)')
# syslog priorities as journalctl -p names them.
ERR, WARNING, INFO = 3, 4, 6


def run_daemon(tmp_path: Path, *, journal: bool) -> list[str]:
    """Start, lose the database once (an error, a warning), stop; the output's lines."""
    out_path = tmp_path / "out.log"
    with out_path.open("w") as out:
        st = os.fstat(out.fileno())
        # Not the journal: JOURNAL_STREAM names some other file, as it does in a child
        # whose output was redirected away from the journal.
        stream = f"{st.st_dev}:{st.st_ino}" if journal else f"{st.st_dev}:{st.st_ino + 1}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "gatewayd.app.cli", "run", "-c", str(config(tmp_path))],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "JOURNAL_STREAM": stream})
    try:
        deadline = time.monotonic() + 60
        while "store_restored" not in out_path.read_text():
            if '"ready"' in out_path.read_text() and (tmp_path / "state/gatewayd.db").exists():
                (tmp_path / "state/gatewayd.db").unlink()   # the store probe notices
            assert time.monotonic() < deadline, out_path.read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return [line for line in out_path.read_text().splitlines() if line]


def test_each_line_carries_its_priority_and_its_event_first(
    tmp_path: Path) -> None:
    lines = run_daemon(tmp_path, journal=True)
    seen: dict[str, int] = {}
    for line in lines:
        m = LINE.fullmatch(line)
        assert m, f"not a journal line: {line}"
        doc = json.loads(m.group(2))
        assert int(m.group(1)) == logs.PRIORITY[doc["level"]], line
        seen.setdefault(doc["event"], int(m.group(1)))
    assert seen["store_file_lost"] == ERR
    assert seen["store_restored"] == WARNING
    assert seen["ready"] == INFO and seen["store_closed"] == INFO
    # What `journalctl -p err -u gatewayd` shows: the errors, and nothing else.
    assert {e for e, p in seen.items() if p <= ERR} == {"store_file_lost"}


def test_not_the_journal_no_prefix_event_still_first(
    tmp_path: Path) -> None:
    lines = run_daemon(tmp_path, journal=False)
    assert all(line.startswith('{"event": "') for line in lines), lines
    assert json.loads(next(x for x in lines if "store_file_lost" in x))["level"] == "error"


def test_library_lines_go_the_same_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pymodbus and paho log through the standard library: the same JSON, the same prefix."""
    path = tmp_path / "lib.log"
    with path.open("w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        try:
            logs.setup("info", json=True, stream=stream)
            logging.getLogger("pymodbus.logging").warning("Connection to %s lost", "b")
            logging.getLogger("paho").info("chatter")   # below WARNING: not shown
        finally:
            structlog.reset_defaults()
            logging.basicConfig(force=True)
    (line,) = path.read_text().splitlines()
    m = LINE.fullmatch(line)
    assert m and m.group(1) == str(WARNING), line
    doc = json.loads(m.group(2))
    assert (doc["event"], doc["logger"]) == ("Connection to b lost", "pymodbus.logging")


def test_stdout_of_another_kind_is_never_taken_for_the_journal(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "not:numbers")
    assert not logs.journal_stream(sys.stdout)
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not logs.journal_stream(sys.stdout)
