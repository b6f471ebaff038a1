"""The read-only status page (`[web] listen = "127.0.0.1:8080"`).

Contract:
- `GET /` answers one HTML page built at the request from the live status
  view (`Snapshot.full_view`, what `gatewayd status` shows): rooms, water
  points, alarms with what to do, the center link and the outbox.
- It refreshes itself: a few lines of script fetch the page every REFRESH_S
  and swap its content in place (the scroll position stays; a lost daemon
  shows a banner instead of a browser error). Without script, a meta refresh.
- Read only: GET and HEAD, anything else 405 (`http_listener`); no forms, no
  links that act. A Content-Security-Policy allows only the page's own
  script and style (by hash) and fetches to itself.
- Monitoring never stops the gateway: a taken port is logged and retried.
"""

from __future__ import annotations

import base64
import hashlib

from gatewayd.config.model import Config
from gatewayd.services.http_listener import HttpListener, ListeningComponent, Response
from gatewayd.services.snapshot import Snapshot
from gatewayd.services.status_html import page

# Often enough to watch a breaker trip; a page costs one status view.
REFRESH_S = 5.0

STYLE = (
    "body{font-family:system-ui,'Noto Sans CJK SC','WenQuanYi Micro Hei',sans-serif;margin:0 auto;"
    "max-width:64rem;padding:.5rem;line-height:1.4;color:#111;background:#fff}"
    "h1{font-size:1.3rem;margin:.2rem 0}h2{font-size:1.1rem;margin:1rem 0 .3rem}"
    "h3{font-size:1rem;margin:0}header p{margin:.1rem 0;color:#444}"
    "table{border-collapse:collapse;width:100%}"
    "th,td{padding:.25rem .4rem;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}"
    "th small{display:block;font-weight:normal;color:#555}"
    "td.n{text-align:right;font-variant-numeric:tabular-nums}"
    ".scroll{overflow-x:auto}.bad{color:#b00020;font-weight:600}.on{color:#0a6b2d}"
    ".alarm{border-left:4px solid #b00020;padding:.3rem .6rem;margin:.5rem 0;background:#fff4f4}"
    ".alarm p{margin:.2rem 0}dl{display:grid;grid-template-columns:max-content 1fr;gap:.1rem .8rem}"
    "dd{margin:0}#lost{background:#b00020;color:#fff;padding:.4rem}"
    "footer{margin-top:1rem;color:#666;font-size:.85rem}"
    "@media (max-width:30rem){body{font-size:15px;padding:.3rem}th,td{padding:.2rem .25rem}}"
)
SCRIPT = (
    "(function(){var every=EVERY;"
    "function tick(){fetch(location.pathname,{cache:'no-store'})"
    ".then(function(r){if(!r.ok){throw new Error(r.status);}return r.text();})"
    ".then(function(text){var doc=new DOMParser().parseFromString(text,'text/html');"
    "document.querySelector('header').replaceWith(doc.querySelector('header'));"
    "document.querySelector('main').replaceWith(doc.querySelector('main'));"
    "document.title=doc.title;})"
    ".catch(function(){document.getElementById('lost').hidden=false;})"
    ".finally(function(){setTimeout(tick,every);});}"
    "setTimeout(tick,every);})();"
).replace("EVERY", str(int(REFRESH_S * 1000)))


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


HEADERS = (
    ("Content-Security-Policy",
     f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(STYLE)}; "
     "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


class StatusPage(ListeningComponent):
    """The `web` component: the page on `config.web`."""

    name = "web"

    def __init__(self, config: Config, snapshot: Snapshot) -> None:
        if config.web is None:
            raise ValueError("no [web] section in the config")
        self.snapshot = snapshot
        self.listener = HttpListener("web", config.web.host, config.web.port, {b"/": self.render})

    async def render(self) -> Response:
        view = await self.snapshot.full_view()
        body = page(view, style=STYLE, script=SCRIPT, refresh_s=REFRESH_S)
        return Response(body.encode(), content_type="text/html; charset=utf-8", headers=HEADERS)
