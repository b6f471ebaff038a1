"""A real headless browser for page tests: Debian's chromium driven through
Debian's chromedriver with the W3C WebDriver protocol, spoken here over urllib.

No WebDriver library: the few calls a page test needs (open a page, run a line
of script to read what is shown, take a screenshot) are plain HTTP, and a
library would bring a dependency tree and a driver downloader that cannot work
offline (docs/decisions.md). `make deps` installs chromium and chromium-driver.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

# chromedriver answers /status within a second or two; a cold start of
# chromium on a loaded 2-core box can take several.
DRIVER_START_S = 30.0
CALL_TIMEOUT_S = 60.0
# A phone's viewport (CSS pixels of a common 6-inch phone).
PHONE = (390, 844)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Browser:
    """One WebDriver session: blocking calls (run them with asyncio.to_thread)."""

    def __init__(self, driver_url: str, session: str) -> None:
        self.url = f"{driver_url}/session/{session}"

    def get(self, url: str) -> None:
        call("POST", f"{self.url}/url", {"url": url})

    def script(self, source: str, *args: Any) -> Any:
        """The value of `source` (a function body) run in the page."""
        return call("POST", f"{self.url}/execute/sync", {"script": source, "args": list(args)})

    def text(self, css: str) -> str | None:
        """What a person sees in the first element matching `css` (None: no such element)."""
        value = self.script("var e = document.querySelector(arguments[0]);"
                            "return e ? e.innerText : null;", css)
        return None if value is None else str(value)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(call("GET", f"{self.url}/screenshot")))


def call(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=CALL_TIMEOUT_S) as resp:
            return json.loads(resp.read())["value"]
    except urllib.error.HTTPError as e:
        raise AssertionError(f"webdriver {method} {url}: {e.read().decode(errors='replace')}") from e


@contextmanager
def browser(tmp: Path, size: tuple[int, int] = PHONE) -> Iterator[Browser]:
    """A headless chromium session of the given window size; closed on exit."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "apt-get install chromium chromium-driver (make deps does)"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    session = None
    try:
        deadline = time.monotonic() + DRIVER_START_S
        while True:
            try:
                if call("GET", f"{base}/status").get("ready"):
                    break
            except (OSError, AssertionError):
                pass
            assert time.monotonic() < deadline, "chromedriver did not start"
            time.sleep(0.1)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={size[0]},{size[1]}", f"--user-data-dir={tmp / 'chromium'}"]
        caps = {"browserName": "chrome", "goog:chromeOptions": {"binary": chromium, "args": args}}
        session = call("POST", f"{base}/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]
        yield Browser(base, session)
    finally:
        if session is not None:
            with suppress(OSError, AssertionError):
                call("DELETE", f"{base}/session/{session}")
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def open_browser(tmp: Path, size: tuple[int, int] = PHONE) -> tuple[Browser, Any]:
    """`browser()` entered in a thread, so that a simulator on the test's loop keeps
    answering meanwhile; returns the session and the exit to call (in a thread too)."""
    import asyncio

    cm = browser(tmp, size)
    session = await asyncio.to_thread(cm.__enter__)
    return session, lambda: cm.__exit__(None, None, None)
