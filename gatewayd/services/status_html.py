"""The status page's HTML from the status view (`Snapshot.full_view`): pure, no I/O.

Every value shown is HTML-escaped (ids come from a config file and from the
center's commands). Labels are bilingual, Chinese first ("房间 Room"): the
staff read Chinese, the code, logs and docs are English, and a label in both
lets either find the line the other means (docs/decisions.md).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gatewayd.contract.enums import AlarmCode, CutReason
from gatewayd.services.alarm_advice import ADVICE

CUT_REASONS_ZH = {
    CutReason.BALANCE: "余额不足", CutReason.OVERLOAD: "超功率", CutReason.RESISTIVE: "违规电器",
    CutReason.CURFEW: "熄灯", CutReason.REMOTE: "远程断电", CutReason.LOCKOUT: "锁定",
    CutReason.METER_OFFLINE: "电表离线",
}
BREAKER = {"on": ("通", "on", ""), "off": ("断", "off", "bad"), "unknown": ("?", "unknown", "bad")}
POINT_STATES = {"closed": ("关", "closed", ""), "open": ("用水中", "open", "on"),
                "fault": ("故障", "fault", "bad")}
SERVICES = {"shower": "淋浴 shower", "drinking": "饮水 drinking"}
_CODE_SPAN = re.compile(r"`([^`]+)`")

Row = tuple[Mapping[str, str], Sequence[tuple[str, str]]]   # attributes, (class, html) cells


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def label(zh: str, en: str) -> str:
    return f"{esc(zh)} <span lang=\"en\">{esc(en)}</span>"


def yuan(fen: int | None) -> str:
    if fen is None:
        return ""
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def markdown_text(text: str) -> str:
    """Escaped text with Markdown `code` spans as <code>."""
    return _CODE_SPAN.sub(r"<code>\1</code>", esc(text))


def table(name: str, head: Sequence[tuple[str, str]], rows: Iterable[Row], none: str) -> str:
    """A table (its header bilingual), or the `none` text when it has no rows."""
    body = [
        "<tr" + "".join(f' {k}="{esc(v)}"' for k, v in attrs.items()) + ">"
        + "".join(f'<td class="{cls}">{cell}</td>' if cls else f"<td>{cell}</td>" for cls, cell in cells)
        + "</tr>"
        for attrs, cells in rows
    ]
    if not body:
        return f'<p class="none">{none}</p>'
    heads = "".join(f"<th>{esc(zh)}<small>{esc(en)}</small></th>" for zh, en in head)
    return (f'<div class="scroll"><table id="{name}-table"><thead><tr>{heads}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def alarms_section(alarms: Sequence[Mapping[str, Any]]) -> str:
    items = []
    for a in alarms:
        try:
            advice = ADVICE.get(AlarmCode(a["code"]))
        except ValueError:
            advice = None  # a code newer than this page: still shown, without advice
        name = advice.name_zh + " " if advice else ""
        todo = (f'<p class="todo"><b>{label("处理", "What to do")}:</b> '
                f"{markdown_text(advice.what_to_do)}</p>") if advice else ""
        detail = f'<p class="detail">{esc(a["detail"])}</p>' if a.get("detail") else ""
        items.append(f'<article class="alarm" data-code="{esc(a["code"])}" '
                     f'data-device="{esc(a["device"])}"><h3>{esc(name)}<code>{esc(a["code"])}</code>'
                     f' · {esc(a["device"])}</h3>{detail}{todo}</article>')
    body = "".join(items) or f'<p class="none">{label("无报警", "No alarms")}</p>'
    return f'<section id="alarms"><h2>{label("报警", "Alarms")} ({len(alarms)})</h2>{body}</section>'


def center_section(center: Mapping[str, Any], outbox: Mapping[str, Any]) -> str:
    if not center.get("configured", True):
        state = label("未配置", "not configured (offline only)")
    elif center.get("connected"):
        state = label("已连接", "connected")
    else:
        state = f'<span class="bad">{label("未连接", "NOT connected")}</span>'
    lines = [(label("状态", "Link"), state)]
    if center.get("broker"):
        lines.append((label("服务器", "Broker"), esc(center["broker"])))
    if center.get("last_error") and not center.get("connected"):
        lines.append((label("原因", "Last error"), esc(center["last_error"])))
    if outbox:
        lines.append((label("待发", "Outbox"),
                      f'{esc(outbox.get("pending"))} {label("条", "messages pending")}, '
                      f'{esc(outbox.get("telemetry"))} {label("条遥测", "telemetry")}, '
                      f'{esc(outbox.get("bytes"))} bytes'))
    rows = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in lines)
    return f'<section id="center"><h2>{label("中心连接", "Center link")}</h2><dl>{rows}</dl></section>'


def room_row(r: Mapping[str, Any]) -> Row:
    zh, en, cls = BREAKER.get(r["breaker"], ("?", r["breaker"], "bad"))
    reason = r.get("cut_reason")
    meter = label("在线", "online") if r["online"] else f'<span class="bad">{label("离线", "OFFLINE")}</span>'
    if r.get("failing"):
        meter += f' <span class="bad">{label("故障", "FAILING")}</span>'
    balance = yuan(r["balance_fen"]) + ("" if r.get("account_known", True) else " ?")
    return {"data-room": r["room"]}, (
        ("", esc(r["room"])),
        ("n bad" if r["balance_fen"] <= 0 else "n", esc(balance)),
        # An offline meter's last power is not its power now.
        ("n", "-" if r["power_w"] is None or not r["online"] else esc(f"{r['power_w']:.0f}")),
        (f"breaker {cls}".strip(), label(zh, en)),
        ("bad" if reason else "", label(CUT_REASONS_ZH.get(reason, ""), reason) if reason else ""),
        ("", meter),
    )


def point_row(p: Mapping[str, Any]) -> Row:
    zh, en, cls = POINT_STATES.get(p["state"], ("?", p["state"], "bad"))
    state = label(zh, en) + (f" ({esc(p['fault'])})" if p.get("fault") else "")
    return {"data-point": p["point"]}, (
        ("", esc(p["point"])),
        ("", esc(SERVICES.get(p["service"], p["service"]))),
        (cls, state),
        ("", esc(p.get("card") or "")),
        ("n", esc("" if p.get("volume_ml") is None else p["volume_ml"])),
        ("n", esc(yuan(p.get("amount_fen")))),
    )


def bus_row(b: Mapping[str, Any]) -> Row:
    return {"data-bus": b["bus"]}, (
        ("", esc(b["bus"])),
        ("", esc(b.get("protocol"))),
        ("" if b.get("connected") else "bad",
         label("通", "open") if b.get("connected") else label("断", "NOT open")),
        ("n", esc(b.get("devices"))),
        ("n bad" if b.get("offline") else "n", esc(b.get("offline"))),
    )


def glance(view: Mapping[str, Any]) -> str:
    """One line: what needs a person now."""
    rooms = view.get("rooms", [])
    counts = (
        (label("报警", "alarms"), len(view.get("alarms", []))),
        (label("断电房间", "rooms cut"), sum(1 for r in rooms if r.get("cut_reason"))),
        (label("离线电表", "meters offline"), sum(1 for r in rooms if not r["online"])),
        (label("用水中", "sessions open"),
         sum(1 for p in view.get("points", []) if p["state"] == "open")),
    )
    return '<p id="glance">' + " · ".join(
        f'{name} <b class="{"bad" if n and i < 3 else ""}">{n}</b>'
        for i, (name, n) in enumerate(counts)) + "</p>"


def main_html(view: Mapping[str, Any]) -> str:
    """The part of the page the script replaces at each refresh."""
    rooms = table("rooms", (("房间", "Room"), ("余额(元)", "Balance"), ("功率 W", "Power"),
                            ("电闸", "Breaker"), ("断电原因", "Cut reason"), ("电表", "Meter")),
                  map(room_row, view.get("rooms", [])), label("无房间", "No rooms"))
    points = table("points", (("水点", "Point"), ("类型", "Service"), ("状态", "State"),
                              ("卡", "Card"), ("水量 mL", "Volume"), ("金额(元)", "Charge")),
                   map(point_row, view.get("points", [])), label("无水点", "No water points"))
    buses = table("buses", (("总线", "Bus"), ("协议", "Protocol"), ("端口", "Port"),
                            ("设备", "Devices"), ("离线", "Offline")),
                  map(bus_row, view.get("buses", [])), label("无总线", "No buses"))
    return (
        f"<main>{glance(view)}{alarms_section(view.get('alarms', []))}"
        f"{center_section(view.get('center', {}), view.get('outbox', {}))}"
        f'<section id="rooms"><h2>{label("房间", "Rooms")}</h2>{rooms}</section>'
        f'<section id="points"><h2>{label("水点", "Water points")}</h2>{points}</section>'
        f'<section id="buses"><h2>{label("总线", "Buses")}</h2>{buses}</section></main>'
    )


def page(view: Mapping[str, Any], *, style: str, script: str, refresh_s: float) -> str:
    """The whole document: head (viewport for phones), header, main, footer."""
    building = esc(view.get("building"))
    return (
        '<!DOCTYPE html><html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{building} · gatewayd</title><style>{style}</style>"
        f'<noscript><meta http-equiv="refresh" content="{refresh_s:.0f}"></noscript></head><body>'
        f'<header><h1>{label("楼宇网关", "Building")} {building}</h1>'
        f'<p id="updated">{label("更新于", "Updated")} <time>{esc(view.get("updated"))}</time></p>'
        f'<p id="lost" hidden>{label("连接中断，数据可能已过时", "Connection lost: the data may be old")}'
        "</p></header>"
        f"{main_html(view)}"
        f'<footer>{label("只读页面", "Read-only page")} · gatewayd {esc(view.get("version"))}'
        f"</footer><script>{script}</script></body></html>"
    )
