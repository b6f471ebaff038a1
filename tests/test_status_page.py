"""The read-only status page (`[web]`), as a person sees it: `gatewayd run` against a
pymodbus building, the page in Debian's headless chromium at a phone's size.

Also: the README's alarm table says what the page says (one text), everything
shown is escaped, and `[web] listen` is read as the spec and decisions.md say.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from gatewayd.config.load import load_config
from gatewayd.contract.enums import AlarmCode
from gatewayd.errors import ConfigError
from gatewayd.services.alarm_advice import ADVICE
from gatewayd.services.status_html import page
from gatewayd.services.status_page import SCRIPT, STYLE
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger
from sim.modbus import SimBuilding
from tests.browser_fixtures import Browser, free_port, open_browser
from tests.test_power import ROOT, Daemon

RELAY = SimBuilding.RELAY_BASE
# How long the page may take to show a change: the meter needs three failed polls,
# the page a refresh (5 s); generous for a loaded 2-core box. A deadline, not a figure.
SHOWN_WITHIN_S = 60.0


# --- one text for the alarms ---------------------------------------------------------------

def readme_alarm_table() -> dict[str, str]:
    """The README's alarm table: code -> "what to do" (Markdown, `\\|` unescaped)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Alarms: what they mean and what to do", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 4, f"a README alarm row has {len(cells)} cells: {line[:60]}"
        rows[cells[0].strip("`")] = cells[3].replace("\\|", "|")
    return rows


def test_the_readme_alarm_table_says_what_the_page_says() -> None:
    assert set(ADVICE) == set(AlarmCode), "every alarm code has its advice"
    table = readme_alarm_table()
    assert set(table) == {c.value for c in AlarmCode}
    for code, advice in ADVICE.items():
        assert table[code.value] == advice.what_to_do, code


# --- escaping ----------------------------------------------------------------------------------

class Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_everything_shown_is_escaped() -> None:
    evil = '<img src=x onerror="alert(1)">&"\''
    view: dict[str, Any] = {
        "building": evil, "updated": evil, "version": evil,
        "alarms": [{"code": "meter_offline", "device": f"meter:{evil}", "detail": evil},
                   {"code": evil, "device": evil, "detail": evil}],
        "center": {"configured": True, "connected": False, "broker": evil, "last_error": evil},
        "outbox": {"pending": evil, "telemetry": 0, "bytes": 0},
        "rooms": [{"room": evil, "balance_fen": -5, "account_known": False, "power_w": None,
                   "breaker": evil, "cut_reason": evil, "online": False, "failing": True}],
        "points": [{"point": evil, "service": evil, "state": evil, "card": evil,
                    "volume_ml": evil, "amount_fen": None, "fault": evil}],
        "buses": [{"bus": evil, "protocol": evil, "connected": False, "devices": evil,
                   "offline": evil}],
    }
    doc = page(view, style=STYLE, script=SCRIPT, refresh_s=5)
    parsed = Elements()
    parsed.feed(doc)
    assert "img" not in parsed.tags
    assert parsed.tags.count("script") == 1
    # Shown as written, character for character.
    assert sum(evil in t for t in parsed.text) >= 10


# --- [web] in the config -------------------------------------------------------------------------

def web_config(tmp: Path, web: str, metrics: str = "") -> Path:
    path = tmp / "gateway.toml"
    path.write_text(f'[gateway]\nbuilding = "b07"\nstate_dir = "{tmp / "state"}"\n{metrics}\n{web}\n')
    return path


def test_web_is_off_by_default_and_on_loopback_when_set(tmp_path: Path) -> None:
    assert load_config(web_config(tmp_path, "")).web is None
    config = load_config(web_config(tmp_path, "[web]"))
    assert config.web is not None and (config.web.host, config.web.port) == ("127.0.0.1", 8080)
    assert not config.warnings


def test_a_non_loopback_listen_is_allowed_with_a_warning(tmp_path: Path) -> None:
    config = load_config(web_config(tmp_path, '[web]\nlisten = "0.0.0.0:8080"'))
    assert config.web is not None and config.web.host == "0.0.0.0"
    (warning,) = config.warnings
    assert str(warning).startswith("web.listen: 0.0.0.0 is not loopback")
    assert "balance" in str(warning)


def test_web_and_metrics_on_one_port_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(web_config(tmp_path, '[web]\nlisten = "127.0.0.1:9108"', metrics="[metrics]"))
    assert "web.listen: 127.0.0.1:9108 is [metrics] listen too" in str(e.value)


# --- in a real browser, against the running daemon ----------------------------------------------

@pytest.fixture
async def building() -> AsyncIterator[SimBuilding]:
    sim = await SimBuilding.tcp(2, per_endpoint=2)
    for room in range(2):
        sim.couple(room, 0, room)
        await sim.endpoints[0].set_coil(RELAY, room, True)
    try:
        yield sim
    finally:
        await sim.stop()


def write_config(tmp: Path, sim: SimBuilding, port: int, reader_tty: str) -> Path:
    rooms = "".join(
        f'[[rooms]]\nid = "{101 + i}"\n'
        f'meter = {{ bus = "b", unit = {i + 1}, profile = "eastron-sdm120" }}\n'
        f'breaker = {{ bus = "b", unit = {RELAY}, profile = "relay-board", channel = {i} }}\n'
        for i in range(2))
    path = tmp / "gateway.toml"
    path.write_text(f"""
[gateway]
building = "b07"
state_dir = "{tmp / 'state'}"
poll_interval_s = 0.2
clock_synced = "yes"
[tariffs]
power = {{ price = "100", unit = "kWh" }}
shower = {{ price = "0.05", unit = "min" }}
[[buses]]
name = "b"
type = "tcp"
host = "127.0.0.1"
port = {sim.ports[0]}
timeout_s = 0.3
{rooms}
[[readers]]
id = "r1"
type = "serial"
port = "{reader_tty}"
protocol = "rdm6300"
[[points]]
id = "shower-1"
service = "shower"
reader = "r1"
valve = {{ bus = "b", unit = {RELAY}, profile = "relay-board", channel = 2 }}
[web]
listen = "127.0.0.1:{port}"
""")
    return path


async def request(port: int, method: str) -> tuple[int, dict[str, str], bytes]:
    def go() -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(method, "/", body=b"room=101&breaker=on" if method == "POST" else None)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()
    return await asyncio.to_thread(go)


async def shown(browser: Browser, css: str, *texts: str) -> str:
    """The text of `css` once it holds every one of `texts` (the page refreshing itself)."""
    deadline = asyncio.get_running_loop().time() + SHOWN_WITHIN_S
    while True:
        text = await asyncio.to_thread(browser.text, css)
        if text is not None and all(t in text for t in texts):
            return text
        assert asyncio.get_running_loop().time() < deadline, f"{css} shows {text!r}, not {texts}"
        await asyncio.sleep(0.5)


async def test_a_person_sees_the_building_on_a_phone(tmp_path: Path, building: SimBuilding) -> None:
    sim = building
    master, slave = os.openpty()   # the shower's reader: a quiet serial line
    port = free_port()
    config = write_config(tmp_path, sim, port, os.ttyname(slave))
    seed = Store.open(tmp_path / "state", "b07")
    try:
        seed.call(lambda t: Ledger.credit(t, "room-b07-101", 123_456))
        seed.call(lambda t: Ledger.credit(t, "room-b07-102", 30))
    finally:
        seed.close()
    sim.set_load(0, 0)
    sim.set_load(1, 7200, pf=0.9)   # 2 Wh/s at 10 fen per Wh: 30 fen last about 1.5 s
    daemon = Daemon(config)
    await daemon.start()
    browser, close_browser = await open_browser(tmp_path)
    try:
        for _ in range(600):
            try:
                status, _, _ = await request(port, "GET")
                break
            except OSError:
                await asyncio.sleep(0.1)
        await asyncio.to_thread(browser.get, f"http://127.0.0.1:{port}/")
        assert "width=device-width" in await asyncio.to_thread(
            browser.script, "return document.querySelector('meta[name=viewport]').content;")
        # A room with money: its balance in yuan, its breaker on, its meter online.
        row = await shown(browser, 'tr[data-room="101"]', "1234.56", "通 on", "在线 online")
        assert "余额不足" not in row
        await asyncio.to_thread(browser.script, "window.loadedOnce = true;")
        # A room whose money ran out: cut, with its reason, and the coil really is off.
        await shown(browser, 'tr[data-room="102"]', "断 off", "余额不足 balance")
        assert (await sim.endpoints[0].coils(RELAY, 1, 1)) == [False]
        assert "关 closed" in (await shown(browser, 'tr[data-point="shower-1"]', "shower-1"))
        assert "未配置 not configured" in (await shown(browser, "#center", "Outbox"))

        # Room 101's meter falls silent: the alarm appears with what to do about it.
        sim.endpoints[0].set_fault(1, "silent")
        alarm = await shown(browser, 'article[data-code="meter_offline"][data-device="meter:101"]',
                            ADVICE[AlarmCode.METER_OFFLINE].what_to_do)
        assert "电表离线 meter_offline · meter:101" in alarm
        await shown(browser, 'tr[data-room="101"]', "离线 OFFLINE")
        # ...without anyone reloading it: the page updated itself in place.
        assert await asyncio.to_thread(browser.script, "return window.loadedOnce === true;")
        await asyncio.to_thread(browser.screenshot, tmp_path / "phone.png")

        # Nothing on it acts: anything but GET and HEAD is refused.
        for method in ("POST", "PUT", "DELETE"):
            status, headers, _ = await request(port, method)
            assert (status, headers["Allow"]) == (405, "GET, HEAD"), method
        status, headers, body = await request(port, "HEAD")
        assert (status, body) == (200, b"") and headers["Content-Type"].startswith("text/html")
        assert (await sim.endpoints[0].coils(RELAY, 1, 1)) == [False]
    finally:
        await asyncio.to_thread(close_browser)
        assert await daemon.stop() == 0
        os.close(master)
        os.close(slave)
