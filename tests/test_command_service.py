"""Commands applied to a real store and a real (simulated) building, without MQTT.

The results a command leaves in the store's `commands` table are what the
center receives; the events and balances are what it settles.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.center.apply import CommandService
from gatewayd.config.load import load_config
from gatewayd.config.model import Config
from gatewayd.contract.enums import AlarmCode
from gatewayd.contract.events import PowerUsage, breaker_device, meter_device, valve_device
from gatewayd.contract.signing import sign_command
from gatewayd.services.alarms import Alarms
from gatewayd.services.clock import Clock
from gatewayd.services.hardware import Hardware
from gatewayd.services.power.service import PowerService
from gatewayd.services.water.service import WaterService
from gatewayd.store.cards import Cards
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger
from gatewayd.store.txn import Txn
from sim.modbus import SimBuilding

RELAY = SimBuilding.RELAY_BASE


@dataclass
class Gateway:
    config: Config
    store: Store
    ledger: Ledger
    cards: Cards
    power: PowerService
    water: WaterService
    service: CommandService
    key: Ed25519PrivateKey
    sim: SimBuilding

    def command(self, type_: str, args: dict[str, Any] | None = None, *, to: str = "b07",
                cid: str | None = None, sign: bool = True, age_s: float = 0.0) -> bytes:
        cmd: dict[str, Any] = {"id": cid or str(uuid.uuid4()), "to": to, "type": type_,
                               "ts": self.power.clock.stamp(time.time() - age_s)}
        if args is not None:
            cmd["args"] = args
        if sign:
            cmd = sign_command(cmd, self.key)
        return json.dumps(cmd).encode()

    async def send(self, type_: str, args: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        """Handle a command; return its one result as the center would receive it."""
        payload = self.command(type_, args, **kw)
        cid = json.loads(payload)["id"]
        direct = await self.service.handle(payload, "broadcast" if kw.get("to") == "all" else "building")
        if direct is not None:
            result: dict[str, Any] = json.loads(direct)
            return result
        row = await self.store.read(lambda t: t.execute(
            "SELECT result FROM commands WHERE id = ?", (cid,)).fetchone())
        assert row is not None, "an accepted command must leave its result in the outbox"
        stored: dict[str, Any] = json.loads(row[0])
        return stored

    async def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        rows = await self.store.read(lambda t: t.execute(
            "SELECT payload FROM events ORDER BY seq").fetchall())
        evs = [json.loads(r[0]) for r in rows]
        return [e for e in evs if type_ is None or e["type"] == type_]


async def _fixed_status() -> dict[str, Any]:
    return {"ok": 1}


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    sim = await SimBuilding.tcp(3, per_endpoint=3)
    key = Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization

    (tmp_path / "center.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    rooms = "\n".join(
        f'[[rooms]]\nid = "{101 + i}"\n'
        f'meter = {{ bus = "b", unit = {i + 1}, profile = "eastron-sdm120" }}\n'
        f'breaker = {{ bus = "b", unit = {RELAY}, profile = "relay-board", channel = {i} }}\n'
        for i in range(3))
    (tmp_path / "gw.toml").write_text(f"""
[gateway]
building = "b07"
state_dir = "{tmp_path / 'state'}"
clock_synced = "yes"
timezone = "Asia/Shanghai"
[center]
broker = "mqtt://127.0.0.1:1"
command_public_key_file = "center.pub"
[tariffs]
shower = {{ price = "0.5", unit = "min" }}
[[buses]]
name = "b"
type = "tcp"
host = "127.0.0.1"
port = {sim.ports[0]}
timeout_s = 0.3
{rooms}
[[points]]
id = "shower-1"
service = "shower"
reader = "r1"
valve = {{ bus = "b", unit = {RELAY}, profile = "relay-board", channel = 8 }}
[[readers]]
id = "r1"
type = "serial"
port = "/dev/null"
""")
    for ch in range(3):
        await sim.endpoints[0].set_coil(RELAY, ch, True)
    config = load_config(tmp_path / "gw.toml")
    store = Store.open(config.gateway.state_dir, "b07")
    clock = Clock(config.gateway.timezone, "yes")
    ledger, cards, alarms = Ledger(), Cards(), Alarms()
    hw = Hardware(config)
    await hw.start()
    power = PowerService(config, store, ledger=ledger, alarms=alarms, clock=clock, devices={
        r.id: (hw.meter(meter_device(r.id), r.meter), hw.switch(breaker_device(r.id), r.breaker))
        for r in config.rooms})
    water = WaterService(config, store, ledger=ledger, cards=cards, alarms=alarms, clock=clock,
                         devices={p.id: (hw.switch(valve_device(p.id), p.valve), None)
                                  for p in config.points},
                         readers={}, center_online=lambda: True)
    service = CommandService(config, store, clock, ledger=ledger, cards=cards, power=power,
                             water=water, public_key=key.public_key(), status=_fixed_status)
    await power.start()
    await water.start()
    try:
        yield Gateway(config, store, ledger, cards, power, water, service, key, sim)
    finally:
        await hw.close()
        store.close()
        await sim.stop()


async def coil(gw: Gateway, ch: int) -> bool:
    return (await gw.sim.endpoints[0].coils(RELAY, ch, 1))[0]


async def test_credit_event_result_and_duplicate(gw: Gateway) -> None:
    r = await gw.send("account.credit", {"account": "stu-1", "amount_fen": 500}, cid="c-1")
    assert r == {"id": "c-1", "ok": True, "result": {"account": "stu-1", "balance_fen": 500}}
    (ev,) = await gw.events("account.credited")
    assert (ev["account"], ev["amount_fen"], ev["balance_fen"], ev["command"]) == (
        "stu-1", 500, 500, "c-1")
    again = await gw.send("account.credit", {"account": "stu-1", "amount_fen": 500}, cid="c-1")
    assert again == {**r, "duplicate": True}
    assert gw.ledger.balance("stu-1") == 500
    assert len(await gw.events("account.credited")) == 1


async def test_credit_restores_room_cut_for_balance(gw: Gateway) -> None:
    await gw.send("account.sync", {"account": "room-b07-101", "balance_fen": 0, "through_seq": 0})
    rt = gw.power.rooms["101"]
    await gw.power.evaluate(rt, None)
    assert rt.state.cut_reason == "balance" and await coil(gw, 0) is False
    await gw.send("account.credit", {"account": "room-b07-101", "amount_fen": 1000})
    assert await coil(gw, 0) is True
    restored = await gw.events("breaker.restored")
    assert [(e["room"], e["reason"]) for e in restored] == [("101", "balance")]


async def test_sync_subtracts_debits_the_center_has_not_seen(gw: Gateway) -> None:
    acct = "room-b07-102"
    await gw.send("account.credit", {"account": acct, "amount_fen": 10_000})
    # Two debits reported after seq 1 (the credit), and 7 fen accrued, unreported.
    def debits(txn: Txn) -> None:
        for fen in (30, 12):
            Ledger.debit(txn, acct, fen)
            txn.event(PowerUsage(room="102", account=acct, wh=1, amount_fen=fen,
                                      meter_wh_from=0, meter_wh_to=1, balance_fen=0),
                      ts="2026-11-25T10:00:00.000+08:00")
        Ledger.debit(txn, acct, 7)
        txn.execute("INSERT INTO rooms (room, accrued_fen) VALUES ('102', 7) "
                    "ON CONFLICT (room) DO UPDATE SET accrued_fen = 7")
    await gw.store.run(debits)
    through = 2  # the center has seen the credit and the first debit
    r = await gw.send("account.sync", {"account": acct, "balance_fen": 9_970, "through_seq": through})
    assert r["ok"] and r["result"]["balance_fen"] == 9_970 - 12 - 7
    assert gw.ledger.balance(acct) == 9_951
    bad = await gw.send("account.sync", {"account": acct, "balance_fen": 1, "through_seq": 999})
    assert bad["ok"] is False and bad["error"]["code"] == "conflict"
    # Events pruned after keep_events_days: the last seq assigned still counts.
    last = await gw.store.read(lambda t: t.execute(
        "SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()[0])
    await gw.store.run(lambda t: t.execute("DELETE FROM events"))
    r = await gw.send("account.sync", {"account": acct, "balance_fen": 500, "through_seq": last})
    assert r["ok"], r
    assert gw.ledger.balance(acct) == 500 - r["result"]["unreported_fen"]


async def test_cards_and_blocks(gw: Gateway) -> None:
    put = {"card": "04a1b2c3", "account": "stu-1", "kind": "student", "status": "active"}
    assert (await gw.send("card.put", put))["ok"]
    assert gw.cards.get("04A1B2C3") is not None
    assert (await gw.send("card.block", {"card": "04A1B2C3"}))["result"]["status"] == "lost"
    assert gw.cards.get("04A1B2C3").status == "lost"  # type: ignore[union-attr]
    assert (await gw.send("card.unblock", {"card": "04A1B2C3"}))["result"]["status"] == "active"
    missing = await gw.send("card.block", {"card": "FFFF"})
    assert missing["error"]["code"] == "not_found"
    # A cancelled card reported lost stays cancelled (its taps keep saying so).
    await gw.send("card.put", {**put, "card": "0C0C", "status": "cancelled"})
    assert (await gw.send("card.block", {"card": "0C0C"}))["result"]["status"] == "cancelled"
    assert gw.cards.get("0C0C").status == "cancelled"  # type: ignore[union-attr]
    load = {"version": 5, "full": True, "cards": [
        {"card": "AA01", "account": "a", "kind": "teacher", "status": "active"},
        {"card": "AA02", "account": "b", "kind": "family", "status": "lost",
         "expires": "2027-06-30"}]}
    assert (await gw.send("cards.load", load))["result"] == {"version": 5, "full": True, "cards": 2}
    assert gw.cards.get("04A1B2C3") is None and gw.cards.version == 5
    partial = {"version": 6, "full": False, "cards": [
        {"card": "AA03", "account": "c", "kind": "student", "status": "active"}]}
    assert (await gw.send("cards.load", partial))["ok"]
    assert gw.cards.get("AA01") is not None and gw.cards.get("AA03") is not None
    stale = await gw.send("cards.load", {**load, "version": 4})
    assert stale["error"]["code"] == "conflict"
    # The store agrees with the mirror after a restart.
    fresh = Cards()
    await gw.store.read(fresh.load)
    assert set(fresh.cards) == {"AA01", "AA02", "AA03"} and fresh.version == 6


async def test_rooms_cut_hold_restore_limit(gw: Gateway) -> None:
    r = await gw.send("room.cut", {"room": "103", "hold": True})
    assert r["result"] == {"room": "103", "cut": True, "cut_reason": "remote", "hold": True}
    assert await coil(gw, 2) is False
    r = await gw.send("room.restore", {"room": "103"})
    assert r["result"]["cut"] is False and await coil(gw, 2) is True
    r = await gw.send("room.limit", {"room": "103", "max_power_w": 800})
    assert r["result"]["max_power_w"] == 800
    assert gw.power.describe(gw.power.rooms["103"])["max_power_w"] == 800
    missing = await gw.send("room.cut", {"room": "999"})
    assert missing["error"]["code"] == "not_found"
    kinds = [(e["type"], e["reason"]) for e in await gw.events() if e["type"].startswith("breaker")]
    assert kinds == [("breaker.cut", "remote"), ("breaker.restored", "remote")]


async def test_tariff_set_checks_flow_meters(gw: Gateway) -> None:
    r = await gw.send("tariff.set", {"service": "shower", "price": "0.05", "unit": "L"})
    assert r["error"]["code"] == "conflict" and "shower-1" in r["error"]["message"]
    r = await gw.send("tariff.set", {"service": "power", "price": "0.60", "unit": "kWh"})
    assert r["ok"]
    saved = await gw.store.read(lambda t: t.execute(
        "SELECT value FROM meta WHERE key = 'tariff.power'").fetchone())
    assert saved == ("0.60 kWh",)


async def test_resend_state_ping_and_refusals(gw: Gateway) -> None:
    await gw.send("account.credit", {"account": "x", "amount_fen": 1})
    await gw.store.run(lambda t: t.execute("UPDATE events SET published = 1"))
    r = await gw.send("events.resend", {"from_seq": 1})
    assert r["result"]["queued"] == 1
    pending = await gw.store.read(lambda t: t.execute(
        "SELECT COUNT(*) FROM events WHERE published IS NULL").fetchone()[0])
    assert pending == 1
    assert (await gw.send("ping"))["result"] == {}
    state = await gw.send("state.get", {"room": "101"})
    assert state["result"]["room"]["room"] == "101"
    assert (await gw.send("state.get", {"account": "x"}))["result"]["account"]["balance_fen"] == 1
    assert (await gw.send("state.get"))["result"] == {"ok": 1}
    # Refused before application: answered, id not remembered.
    forged = await gw.send("account.credit", {"account": "x", "amount_fen": 9}, cid="f-1", sign=False)
    assert forged["error"]["code"] == "bad_signature"
    ok = await gw.send("account.credit", {"account": "x", "amount_fen": 9}, cid="f-1")
    assert ok["ok"] is True and "duplicate" not in ok
    wrong_to = await gw.send("ping", to="b08")
    assert wrong_to["error"]["code"] == "bad_request"
    assert (await gw.send("ping", to="all"))["ok"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.binary(max_size=300),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                 lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                 max_leaves=20).map(lambda o: json.dumps(o).encode()),
    st.fixed_dictionaries({"id": st.text(min_size=1, max_size=64), "to": st.just("b07"),
                           "type": st.sampled_from(["ping", "account.credit", "room.cut", "x"]),
                           "args": st.dictionaries(st.text(max_size=10), st.integers() | st.text(),
                                                   max_size=3)}).map(lambda o: json.dumps(o).encode()),
))
async def test_fuzzed_commands_never_crash_and_get_one_result(gw: Gateway, payload: bytes) -> None:
    before = await gw.store.read(lambda t: t.execute("SELECT COUNT(*) FROM commands").fetchone()[0])
    direct = await gw.service.handle(payload, "building")
    after = await gw.store.read(lambda t: t.execute("SELECT COUNT(*) FROM commands").fetchone()[0])
    # Exactly one result: either published at once or stored for the outbox.
    assert (direct is not None) != (after == before + 1)
    if direct is not None:
        doc = json.loads(direct)
        assert doc["ok"] is False or doc.get("duplicate") is True


async def test_a_repeat_that_grew_old_is_answered_as_a_duplicate_not_stale(gw: Gateway) -> None:
    """A credit applied, then delivered again after max_command_age_s (the broker
    redelivers after a crash): the first result with duplicate, never `stale`,
    which would tell the center it was not applied."""
    first = await gw.send("account.credit", {"account": "x", "amount_fen": 5}, cid="late-1")
    assert first["ok"]
    again = await gw.send("account.credit", {"account": "x", "amount_fen": 5}, cid="late-1",
                          age_s=3600)
    assert again == {**first, "duplicate": True}
    assert gw.ledger.balance("x") == 5
    fresh = await gw.send("account.credit", {"account": "x", "amount_fen": 5}, cid="late-2",
                          age_s=3600)
    assert fresh["error"]["code"] == "stale"
    forged = await gw.send("account.credit", {"account": "x", "amount_fen": 5}, cid="late-1",
                           age_s=3600, sign=False)
    assert forged["error"]["code"] == "bad_signature"  # the signature is checked first
    assert gw.ledger.balance("x") == 5


async def test_a_failed_cut_then_a_restore_is_tried_at_once(gw: Gateway) -> None:
    """A breaker command failed (its relay board's answer lost); the rules then want the
    other state: that is tried at once, not after the failed command's retry
    period, and `breaker_mismatch` clears as soon as the breaker is where the
    rules want it."""
    alarms = gw.power.alarms
    gw.sim.endpoints[0].set_fault(RELAY, "silent")
    await gw.send("room.cut", {"room": "101", "hold": True})
    assert alarms.is_active(AlarmCode.BREAKER_MISMATCH, "breaker:101")
    assert gw.power.rooms["101"].breaker_on is None   # the answer was lost: unknown
    gw.sim.endpoints[0].set_fault(RELAY, None)
    await gw.send("room.restore", {"room": "101"})
    assert not alarms.is_active(AlarmCode.BREAKER_MISMATCH, "breaker:101")
    assert await coil(gw, 0) is True and gw.power.rooms["101"].breaker_on is True


async def test_a_flipped_bit_in_a_relay_boards_answer_does_nothing(gw: Gateway) -> None:
    """A board read says room 101's breaker is off, a read of that breaker alone
    says on (Modbus TCP has no checksum): the room is not held, nothing is
    switched, no alarm."""
    rt = gw.power.rooms["101"]
    await gw.power.evaluate(rt, None)
    assert rt.breaker_on is True
    await gw.power.breakers.seen(rt, False, gw.power.clock.mono())
    assert rt.breaker_on is True and rt.state.hold is False and rt.state.cut_reason is None
    assert not gw.power.alarms.is_active(AlarmCode.BREAKER_MISMATCH, "breaker:101")
    assert await coil(gw, 0) is True


MAX_BALANCE = 2**53 - 1


async def test_the_money_bound_keeps_every_amount_and_balance_exact_in_a_double(gw: Gateway) -> None:
    """Issue 17: amount_fen = 2**53 - 1 was accepted, and the balance event then
    carried 9007199254740993, which no IEEE double (no JavaScript center) holds."""
    too_big = await gw.send("account.credit", {"account": "a", "amount_fen": 2**53 - 1})
    assert too_big["error"] == {"code": "bad_request", "message": (
        "args.amount_fen: expected at most 1000000000000 (ten billion yuan), got 9007199254740991")}
    top = await gw.send("account.credit", {"account": "a", "amount_fen": 10**12})
    assert top["result"]["balance_fen"] == 10**12
    # A balance at the bound may be reached, never passed: the credit is a conflict,
    # recorded (a repeat is a duplicate) and nothing is written.
    sync = {"account": "a", "balance_fen": MAX_BALANCE - 10**12 + 1, "through_seq": 0}
    assert (await gw.send("account.sync", sync))["result"]["balance_fen"] == MAX_BALANCE - 10**12 + 1
    events = len(await gw.events())
    past = await gw.send("account.credit", {"account": "a", "amount_fen": 10**12}, cid="past")
    assert past["error"] == {"code": "conflict", "message": (
        "the balance of a would be 9007199254740992 fen, beyond +-9007199254740991, "
        "the money bound (exact in an IEEE double)")}
    again = await gw.send("account.credit", {"account": "a", "amount_fen": 10**12}, cid="past")
    assert again == {**past, "duplicate": True}
    assert gw.ledger.balance("a") == MAX_BALANCE - 10**12 + 1
    assert len(await gw.events()) == events
    at_bound = await gw.send("account.credit", {"account": "a", "amount_fen": 10**12 - 1})
    assert at_bound["result"]["balance_fen"] == MAX_BALANCE
    (*_, last) = await gw.events("account.credited")
    assert last["balance_fen"] == MAX_BALANCE and float(MAX_BALANCE) == MAX_BALANCE
    # A sync whose arithmetic would leave the bound is refused alike.
    def debit(txn: Txn) -> None:
        Ledger.debit(txn, "b", 5)
        txn.event(PowerUsage(room="101", account="b", wh=1, amount_fen=5, meter_wh_from=0,
                             meter_wh_to=1, balance_fen=-5), ts="2026-11-25T10:00:00.000+08:00")
    await gw.store.run(debit)
    low = await gw.send("account.sync", {"account": "b", "balance_fen": -MAX_BALANCE, "through_seq": 0})
    assert low["error"]["code"] == "conflict" and "-9007199254740996 fen" in low["error"]["message"]
    assert await gw.store.read(lambda t: Ledger.read(t, "b")) == (-5, False)  # unchanged


async def test_resend_beyond_the_last_seq_serves_an_empty_range(gw: Gateway) -> None:
    """Issue 17: not a to_seq below from_seq, but to_seq null: no seq in range yet."""
    empty = await gw.send("events.resend", {"from_seq": 1})
    assert empty["result"] == {"from_seq": 1, "to_seq": None, "queued": 0}
    await gw.send("account.credit", {"account": "x", "amount_fen": 1})
    await gw.send("account.credit", {"account": "x", "amount_fen": 2})
    for args in ({"from_seq": 3}, {"from_seq": 900, "to_seq": 950}):
        assert (await gw.send("events.resend", args))["result"] == {
            "from_seq": args["from_seq"], "to_seq": None, "queued": 0}
    served = await gw.send("events.resend", {"from_seq": 2, "to_seq": 950})
    assert served["result"] == {"from_seq": 2, "to_seq": 2, "queued": 1}
