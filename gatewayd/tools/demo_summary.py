"""The demo's summary of a day: what the store's log says against its balances, and
one line per event for people.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatewayd.store.readonly import Ledgers, StoredEvent


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None



@dataclass
class Summary:
    lines: list[str] = field(default_factory=list)
    matches: bool = True


def summarize(events: list[StoredEvent], before: Ledgers, after: Ledgers,
              real_s: float, day: str) -> Summary:
    """What happened, from the events; and whether every account's balance moved by
    exactly its credits minus its charges."""
    taps = [e.doc for e in events if e.type == "tap"]
    refused = Counter(t["reason"] for t in taps if not t["granted"])
    sessions = [e.doc for e in events if e.type == "water.session"]
    by_service = Counter(s["service"] for s in sessions)
    cuts = Counter(e.doc["reason"] for e in events if e.type == "breaker.cut")
    restores = Counter(e.doc["reason"] for e in events if e.type == "breaker.restored")
    usage = [e.doc for e in events if e.type == "power.usage"]
    credits = [e.doc for e in events if e.type == "account.credited"]
    alarms = Counter((e.doc["code"], e.doc["active"]) for e in events if e.type == "alarm")

    credited: Counter[str] = Counter()
    for c in credits:
        credited[c["account"]] += c["amount_fen"]
    power_fen = sum(u["amount_fen"] for u in usage)
    water_fen = sum(s["amount_fen"] for s in sessions)
    unreported_change = sum(after.unreported.values()) - sum(before.unreported.values())
    synced = after.synced - before.synced
    mismatches = _mismatches(credited, [*sessions, *usage], before, after, synced)

    def counts(c: Counter[str]) -> str:
        return ", ".join(f"{k} {v}" for k, v in c.most_common()) or "none"

    out = Summary()
    out.lines = [
        f"What happened ({real_s:.0f} s, the day reached {day}):",
        f"  taps:        {len(taps)} ({len(taps) - sum(refused.values())} granted; refused: "
        f"{counts(refused)})",
        f"  sessions:    {len(sessions)} ({counts(by_service)}), "
        f"{sum(s['volume_ml'] for s in sessions) / 1000:.2f} L, charged {yuan(water_fen)}",
        f"  cuts:        {sum(cuts.values())} ({counts(cuts)}); restored {sum(restores.values())} "
        f"({counts(restores)})",
        f"  electricity: charged {yuan(power_fen + unreported_change)} "
        f"({len(usage)} usage reports, {yuan(power_fen)}; not yet reported "
        f"{yuan(unreported_change)})",
        f"  credits:     {len(credits)}, {yuan(sum(credited.values()))}",
        "  alarms:      " + (", ".join(
            f"{code} {'raised' if active else 'cleared'} {n}"
            for (code, active), n in sorted(alarms.items())) or "none"),
        f"  events:      {len(events)} (seq {before.last_seq + 1} to {after.last_seq}), "
        f"published to the center {sum(1 for e in events if e.published)}",
        f"  money charged in all: {yuan(power_fen + water_fen + unreported_change)}",
    ]
    out.matches = not mismatches
    out.lines.append(
        f"  balances of {len(after.balances)} accounts = start + credits - charges: "
        f"matches the store: {'yes' if out.matches else 'NO'}")
    if synced:
        out.lines.append(f"  ({len(synced)} accounts set by the center's account.sync are not "
                         f"checked: {', '.join(sorted(synced))})")
    out.lines += mismatches
    return out


def _mismatches(credited: Counter[str], debits: list[dict[str, Any]], before: Ledgers,
                after: Ledgers, synced: frozenset[str]) -> list[str]:
    """The accounts whose balance did not move by exactly their credits minus their
    charges (reported, and accrued but not yet reported); those the center synced
    are left out."""
    debited: Counter[str] = Counter()
    for d in debits:
        debited[d["account"]] += d["amount_fen"]
    out = []
    for account in sorted(set(before.balances) | set(after.balances)):
        if account in synced:
            continue
        change = after.balances.get(account, 0) - before.balances.get(account, 0)
        charged = (debited[account] + after.unreported.get(account, 0)
                   - before.unreported.get(account, 0))
        if change != credited[account] - charged:
            out.append(f"    {account}: balance moved {yuan(change)}, events say "
                       f"{yuan(credited[account] - charged)}")
    return out


def yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}¥{abs(fen) // 100}.{abs(fen) % 100:02d}"


def describe(e: StoredEvent, names: dict[str, str]) -> str:
    """One line for an event, as a person at the desk would say it."""
    d = e.doc

    def who(card: str | None) -> str:
        return names.get(card or "", card or "?")

    if e.type == "tap":
        verdict = (("in" if d["reason"] == "start" else "out") if d["granted"]
                   else f"REFUSED ({d['reason']})")
        return f"tap {d.get('point') or d['reader']}: {who(d['card'])} {verdict}"
    if e.type == "water.session":
        return (f"{d['service']} {d['point']}: {who(d['card'])} {d['volume_ml'] / 1000:.2f} L, "
                f"{d['seconds']} s, {yuan(d['amount_fen'])} (ended: {d['end_reason']})")
    if e.type == "power.usage":
        return (f"usage room {d['room']}: {d['wh']} Wh, {yuan(d['amount_fen'])}, "
                f"balance {yuan(d['balance_fen'])}")
    if e.type == "account.credited":
        return (f"credit {d['account']}: +{yuan(d['amount_fen'])}, "
                f"balance {yuan(d['balance_fen'])}")
    if e.type == "breaker.cut":
        power = "" if d.get("power_w") is None else f", {d['power_w']:.0f} W"
        return f"CUT room {d['room']} ({d['reason']}{power})"
    if e.type == "breaker.restored":
        return f"restored room {d['room']} ({d['reason']})"
    if e.type == "balance.low":
        return f"low balance {d['account']}: {yuan(d['balance_fen'])}"
    if e.type == "alarm":
        state = "RAISED" if d["active"] else "cleared"
        detail = f": {d['detail']}" if d.get("detail") and d["active"] else ""
        return f"alarm {d['code']} {d['device']} {state}{detail}"
    return e.type
