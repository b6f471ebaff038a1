"""The short form of every reliability campaign (tests/soak, docs/reliability.md).

Each must run its checks and find no violation; `python -m tests.soak` runs
the full forms and prints the table.
"""

from __future__ import annotations

import contextlib
import shutil

import pytest

from tests.soak import campaigns
from tests.soak.campaigns import CAMPAIGNS, SHORT, can_mount


@pytest.mark.parametrize("name", list(CAMPAIGNS))
async def test_campaign_short(name: str, request: pytest.FixtureRequest,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    if name == "disk_full" and not can_mount():
        pytest.skip("the disk campaign mounts a small tmpfs: needs root on Linux")
    if name in {"power_cut", "center_outage", "command_flood"} and shutil.which("mosquitto") is None:
        pytest.skip("the campaign runs a broker: mosquitto not installed")
    if name == "device_faults":
        # The campaign restarts pcscd: it must be the session's (only one can run).
        # Without pcscd here the campaign runs without its PC/SC part, and says so.
        with contextlib.suppress(pytest.skip.Exception):
            monkeypatch.setattr(campaigns, "SHARED_PCSCD", request.getfixturevalue("pcscd"))
    row = await CAMPAIGNS[name](SHORT[name])
    assert row.checks > 0, f"{name} checked nothing"
    assert row.iterations == SHORT[name]
    assert not row.violations, "\n".join([*row.notes, *row.violations[:30]])
