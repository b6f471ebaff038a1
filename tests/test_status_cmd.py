"""`gatewayd status`: what staff see on the box while the daemon runs, and after."""

from __future__ import annotations

import asyncio
import io
import json
import re
import sqlite3
import sys
from pathlib import Path

import pytest

from sim.modbus import SimBuilding
from tests.test_power import ROOT, Daemon

RELAY = SimBuilding.RELAY_BASE


async def status(config: Path, *extra: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd.app.cli", "status", "-c", str(config), *extra, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_status_while_running_and_after(tmp_path: Path) -> None:
    sim = await SimBuilding.tcp(2, per_endpoint=2)
    try:
        await sim.endpoints[0].set_coil(RELAY, 0, True)  # room 102's breaker stays off
        sim.set_load(0, 480)
        config = tmp_path / "gateway.toml"
        config.write_text(f"""
[gateway]
building = "b07"
state_dir = "{tmp_path / 'state'}"
poll_interval_s = 0.2
[[buses]]
name = "b"
type = "tcp"
host = "127.0.0.1"
port = {sim.ports[0]}
""" + "".join(
            f'[[rooms]]\nid = "{101 + i}"\n'
            f'meter = {{ bus = "b", unit = {i + 1}, profile = "eastron-sdm120" }}\n'
            f'breaker = {{ bus = "b", unit = {RELAY}, profile = "relay-board", channel = {i} }}\n'
            for i in range(2)))
        code, out = await status(config)
        assert code == 3 and "not running" in out
        daemon = Daemon(config)
        await daemon.start()
        try:
            for _ in range(100):
                code, out = await status(config, "--json")
                doc = json.loads(out)
                rooms = {r["room"]: r for r in doc.get("rooms", [])}
                if code == 0 and rooms.get("101", {}).get("power_w"):
                    break
                await asyncio.sleep(0.2)
            assert doc["running"] is True and doc["pid"] == daemon.proc.pid  # type: ignore[union-attr]
            assert rooms["101"]["breaker"] == "on" and abs(rooms["101"]["power_w"] - 480) < 1
            # Found off with no cut recorded: held, and the alarm says so.
            assert rooms["102"]["breaker"] == "off" and rooms["102"]["hold"] is True
            code, out = await status(config)
            assert code == 0
            assert "building b07" in out and "breaker_mismatch breaker:102" in out
            assert "101" in out and "480" in out
            assert "cards version 0" in out
            # Words, not Python values (issue 18).
            assert "clock synced" in out or "clock NOT synced" in out
            assert not re.search(r"\b(True|False|None)\b|\['", out)
            assert doc["outbox"]["pending"] >= 1   # no center: events wait
            # One level (issue 18): the status fields under "status", not "status.status".
            assert doc["status"]["faults"] == {"meters": 0, "readers": 0, "valves": 0}
            store_id = doc["store"]["store_id"]
            assert f"store {store_id}" in out
        finally:
            assert await daemon.stop() == 0
        code, out = await status(config)
        assert code == 3 and "not running" in out and "last known state" in out
        # The store's own id, as kept in it.
        db = sqlite3.connect(tmp_path / "state" / "gatewayd.db")
        assert db.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone() == (store_id,)
        db.close()
    finally:
        await sim.stop()


def test_status_says_when_it_may_not_read_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not "gatewayd is not running" (a lie that sends staff restarting a healthy
    service) but what to do: root runs the tests, so the denial is simulated."""
    from gatewayd.tools import status as status_cmd

    def denied(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    out, err = io.StringIO(), io.StringIO()
    assert status_cmd.render(tmp_path, out=out, err=err) == 4
    assert out.getvalue() == ""
    assert "permission denied; run as root or the gatewayd user" in err.getvalue()
