"""`gatewayd probe reader` on a PC/SC reader of the config file, against the real pcscd
with the vpcd virtual reader and a virtual card (the session's pcscd, conftest)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from gatewayd.store.files import StateFiles
from sim.vcard import VirtualCard
from tests.cardreader_fixtures import Pcscd
from tests.test_probe import ROOT, WAIT_S, probe

pytestmark = [pytest.mark.pcsc,
              pytest.mark.usefixtures("vpcd_idle", "no_leaked_threads", "no_leaked_tasks")]


def building(tmp_path: Path) -> Path:
    """A dec10 building with one PC/SC reader that sends the UID reversed."""
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nbuilding = "b07"\nstate_dir = "{tmp_path / "state"}"\n'
                      'card_format = "dec10"\n\n'
                      '[[readers]]\nid = "r-drink-1"\ntype = "pcsc"\n'
                      'name = "Virtual PCD"\nuid_order = "reversed"\n')
    return config


async def test_probe_prints_the_card_id_of_the_building_and_the_raw_uid(
        pcscd: Pcscd, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd.app.cli", "probe", "reader", "-c",
        str(building(tmp_path)), "--reader", "r-drink-1", "--count", "1", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(WAIT_S):
            opened = (await proc.stdout.readline()).decode()
            assert opened == "reader r-drink-1 open: tap a card (Ctrl-C to stop)\n", (
                opened + (await proc.communicate())[1].decode())
            async with VirtualCard("04A1B2C3D4E5F6", port=pcscd.port):
                rest, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    # Read as 04 A1 B2 C3 D4 E5 F6, reversed F6 E5 D4 C3 B2 A1 04: the last 4 bytes
    # 0xC3B2A104 = 3283263748. The raw UID is as the reader read it.
    assert rest.decode() == ("card 3283263748  (UID 04 A1 B2 C3 D4 E5 F6, "
                             "card_format dec10, uid_order reversed)\n"), err.decode()
    assert proc.returncode == 0


async def test_probe_is_refused_while_the_daemon_runs(pcscd: Pcscd, tmp_path: Path) -> None:
    config = building(tmp_path)
    # The daemon's own lock on its state directory, as `gatewayd run` holds it.
    state = StateFiles(tmp_path / "state")
    state.make_dir()
    state.lock()
    try:
        code, out, err = await probe("reader", "-c", config, "--reader", "r-drink-1",
                                     "--count", "1")
    finally:
        state.unlock()
    assert code == 3 and out == ""
    assert err.startswith(f"refused: gatewayd (pid {os.getpid()}")
    assert "PC/SC reader" in err and "Virtual PCD" in err
    assert "sudo systemctl stop gatewayd" in err
