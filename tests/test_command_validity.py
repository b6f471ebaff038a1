"""A command's validity against real peers (center-link.md "Signing"): recorded
commands replayed while the clock is unsynchronised, `expires` for a gateway
that was offline, and ids kept as long as a command is valid.

On a real store and a simulated building (the `gw` fixture of
test_command_service), with a clock that says what a Pi says before NTP
answers; and through mosquitto to the daemon.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatewayd.center.apply import CommandService
from gatewayd.contract.signing import sign_command
from gatewayd.services.clock import Clock
from gatewayd.store import retention
from gatewayd.store.cards import Cards
from gatewayd.store.command_log import NEWEST_TS_KEY
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger
from tests.mqtt_fixtures import Broker, collecting, mosquitto
from tests.test_command_service import Gateway, coil, gw
from tests.test_power import Daemon

__all__ = ["gw"]  # the fixture, used by name

DAY = 86400.0
TOPIC = "ecard/v1/b07"


class PiClock(Clock):
    """A Pi before NTP answers: not synchronised, its wall clock `behind_s` behind
    (the time fake-hwclock saved at the last shutdown, say)."""

    def __init__(self, timezone: str, behind_s: float) -> None:
        super().__init__(timezone, "no")
        self.behind_s = behind_s

    def wall(self) -> float:
        return time.time() - self.behind_s


def signed(gw: Gateway, type_: str, args: dict[str, Any] | None = None, *, age_s: float = 0.0,
           expires_in_s: float | None = None, cid: str | None = None) -> bytes:
    """A command as the center signs it, issued `age_s` ago (real time)."""
    issued = time.time() - age_s
    cmd: dict[str, Any] = {"id": cid or str(uuid.uuid4()), "to": "b07", "type": type_,
                           "ts": gw.power.clock.stamp(issued)}
    if expires_in_s is not None:
        cmd["expires"] = gw.power.clock.stamp(issued + expires_in_s)
    if args is not None:
        cmd["args"] = args
    return json.dumps(sign_command(cmd, gw.key)).encode()


async def deliver(service: CommandService, store: Store, payload: bytes) -> dict[str, Any]:
    """Handle one command; its one result, as the center receives it."""
    direct = await service.handle(payload, "building")
    if direct is not None:
        result: dict[str, Any] = json.loads(direct)
        return result
    cid = json.loads(payload)["id"]
    row = await store.read(lambda t: t.execute(
        "SELECT result FROM commands WHERE id = ?", (cid,)).fetchone())
    assert row is not None
    stored: dict[str, Any] = json.loads(row[0])
    return stored


def unsynced(gw: Gateway, behind_s: float = 30 * DAY) -> None:
    gw.service.clock = PiClock(gw.config.gateway.timezone, behind_s)


# --- replays while the clock is unsynchronised -------------------------------------


async def tariff(gw: Gateway) -> Any:
    return await gw.store.read(lambda t: t.execute(
        "SELECT value FROM meta WHERE key = 'tariff.power'").fetchone())


@pytest.mark.parametrize("kind", ["account.credit", "card.unblock", "room.restore", "tariff.set"])
async def test_a_recorded_command_replayed_unsynchronised_is_stale(gw: Gateway, kind: str) -> None:
    """The issue's attack: a command recorded 10 days ago, replayed to a Pi whose
    clock is a month behind. Once the center's current commands have been
    applied, "now" is at least their ts: the replay is `stale`, nothing changes."""
    unsynced(gw)
    put = {"card": "04A1B2C3", "account": "stu-1", "kind": "student", "status": "active"}
    replay: dict[str, Any]
    if kind == "account.credit":
        assert (await gw.send("ping"))["ok"]
        replay = {"account": "stu-1", "amount_fen": 50_000}
    elif kind == "card.unblock":
        assert (await gw.send("card.put", put))["ok"]
        assert (await gw.send("card.block", {"card": "04A1B2C3"}))["ok"]
        replay = {"card": "04A1B2C3"}
    elif kind == "room.restore":
        assert (await gw.send("room.cut", {"room": "101", "hold": True}))["ok"]
        replay = {"room": "101"}
    else:
        assert (await gw.send("tariff.set", {"service": "power", "price": "0.56", "unit": "kWh"}))["ok"]
        replay = {"service": "power", "price": "0.01", "unit": "kWh"}
    r = await deliver(gw.service, gw.store, signed(gw, kind, replay, age_s=10 * DAY))
    assert r["ok"] is False and r["error"]["code"] == "stale", r
    assert "not synchronised" in r["error"]["message"]
    assert gw.ledger.balance("stu-1") == 0
    assert gw.cards.get("04A1B2C3") is None or gw.cards.get("04A1B2C3").status == "lost"  # type: ignore[union-attr]
    assert gw.power.rooms["101"].state.hold is (kind == "room.restore")
    if kind == "room.restore":
        assert await coil(gw, 0) is False
    assert await tariff(gw) in (None, ("0.56 kWh",))
    assert await gw.events("account.credited") == []


async def test_the_floor_survives_a_restart(gw: Gateway, tmp_path: Path) -> None:
    """The newest applied ts is in the store: after a restart, with the clock still
    a month behind and no command since, the recorded credit is still `stale`."""
    unsynced(gw)
    assert (await gw.send("ping"))["ok"]
    gw.store.close()
    store = Store.open(gw.config.gateway.state_dir, "b07")
    try:
        floor = await store.read(lambda t: t.execute(
            "SELECT value FROM meta WHERE key = ?", (NEWEST_TS_KEY,)).fetchone())
        assert floor is not None and abs(float(floor[0]) - time.time()) < 60
        ledger = Ledger()
        service = CommandService(gw.config, store, PiClock(gw.config.gateway.timezone, 30 * DAY),
                                 ledger=ledger, cards=Cards(), power=gw.power, water=gw.water,
                                 public_key=gw.key.public_key())
        r = await deliver(service, store, signed(gw, "account.credit",
                                                 {"account": "stu-1", "amount_fen": 50_000},
                                                 age_s=10 * DAY))
        assert r["error"]["code"] == "stale", r
        assert ledger.balance("stu-1") == 0
        # A current command is applied as usual.
        r = await deliver(service, store, signed(gw, "account.credit",
                                                 {"account": "stu-1", "amount_fen": 500}))
        assert r["ok"] is True and ledger.balance("stu-1") == 500
    finally:
        store.close()


async def test_unsynchronised_a_command_ahead_of_the_clock_is_applied(gw: Gateway) -> None:
    """The local clock may be behind: no command is refused for lying in the future."""
    unsynced(gw)
    r = await gw.send("account.credit", {"account": "stu-1", "amount_fen": 700})
    assert r["ok"] is True and gw.ledger.balance("stu-1") == 700


# --- expires ----------------------------------------------------------------------


async def test_a_top_up_queued_during_an_outage_is_applied(gw: Gateway) -> None:
    """Paid while the building's network was down: issued an hour before it is
    delivered (through the persistent session), with expires two days ahead."""
    credit = {"account": "stu-1", "amount_fen": 2_000}
    r = await deliver(gw.service, gw.store, signed(gw, "account.credit", credit, age_s=3600,
                                                  expires_in_s=2 * DAY, cid="topup-1"))
    assert r == {"id": "topup-1", "ok": True, "result": {"account": "stu-1", "balance_fen": 2_000}}
    # Without expires, the same delay is `stale` (max_command_age_s = 300).
    r = await deliver(gw.service, gw.store, signed(gw, "account.credit", credit, age_s=3600))
    assert r["error"]["code"] == "stale"
    # Past its expires: `stale`, even unsynchronised.
    unsynced(gw, behind_s=-3 * DAY)
    r = await deliver(gw.service, gw.store, signed(gw, "account.credit", credit, age_s=3600,
                                                  expires_in_s=2 * DAY))
    assert r["error"]["code"] == "stale" and r["error"]["message"].startswith("expires: passed")
    assert gw.ledger.balance("stu-1") == 2_000
    assert len(await gw.events("account.credited")) == 1


async def test_expires_more_than_7_days_after_ts_is_a_bad_request(gw: Gateway) -> None:
    credit = {"account": "stu-1", "amount_fen": 2_000}
    r = await deliver(gw.service, gw.store, signed(gw, "account.credit", credit,
                                                  expires_in_s=7 * DAY + 1))
    assert r["error"] == {"code": "bad_request", "message": r["error"]["message"]}
    assert r["error"]["message"].startswith("expires: expected at most 7 days after ts")
    r = await deliver(gw.service, gw.store, signed(gw, "account.credit", credit, expires_in_s=-1))
    assert r["error"]["code"] == "bad_request"
    assert gw.ledger.balance("stu-1") == 0


async def test_an_id_is_kept_until_its_validity_ended(gw: Gateway) -> None:
    """A top-up with expires applied while the clock was a month behind, then NTP
    answers: its `received` is a month old, but it is still valid, so its id is
    not pruned and a redelivery is a duplicate, not a second top-up."""
    unsynced(gw)
    payload = signed(gw, "account.credit", {"account": "stu-1", "amount_fen": 2_000},
                     expires_in_s=2 * DAY, cid="topup-2")
    first = await deliver(gw.service, gw.store, payload)
    assert first["ok"] is True
    # Received stamped by the real time.time() here; what the store kept is the
    # validity's end. Backdate `received` as a clock a month behind would have.
    await gw.store.run(lambda t: t.execute(
        "UPDATE commands SET published = 1, received = received - ?", (30 * DAY,)))
    await gw.store.run(lambda t: retention.prune(t, now=time.time(), keep_events_days=7))
    again = await deliver(gw.service, gw.store, payload)
    assert again == {**first, "duplicate": True}
    assert gw.ledger.balance("stu-1") == 2_000
    # Once its validity ended (and 7 days passed), the id goes.
    n = await gw.store.run(lambda t: retention.prune(t, now=time.time() + 2 * DAY + 1,
                                                   keep_events_days=7))
    assert n >= 1
    assert await gw.store.read(lambda t: t.execute(
        "SELECT COUNT(*) FROM commands WHERE id = 'topup-2'").fetchone()[0]) == 0


# --- through the broker, to the daemon ----------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with mosquitto(tmp_path / "mosquitto") as b:
        yield b


async def test_daemon_unsynchronised_refuses_a_replay_and_applies_a_queued_top_up(
    tmp_path: Path, broker: Broker
) -> None:
    """The daemon with `clock_synced = "no"`, commands published by the center
    through mosquitto: a 10-day-old credit is `stale`, a top-up issued an hour
    ago with expires two days ahead is applied, expires beyond 7 days is a
    `bad_request`."""
    key = Ed25519PrivateKey.generate()
    (tmp_path / "center.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[gateway]
building = "b07"
state_dir = "{tmp_path / 'state'}"
clock_synced = "no"
timezone = "Asia/Shanghai"
[center]
broker = "{broker.url}"
command_public_key_file = "{tmp_path / 'center.pub'}"
""")
    clock = Clock("Asia/Shanghai", "yes")

    def command(cid: str, fen: int, *, age_s: float = 0.0, expires_in_s: float | None = None) -> bytes:
        issued = time.time() - age_s
        cmd: dict[str, Any] = {"id": cid, "to": "b07", "type": "account.credit",
                               "ts": clock.stamp(issued),
                               "args": {"account": "stu-1", "amount_fen": fen}}
        if expires_in_s is not None:
            cmd["expires"] = clock.stamp(issued + expires_in_s)
        return json.dumps(sign_command(cmd, key)).encode()

    daemon = Daemon(config)
    async with collecting(broker, [f"{TOPIC}/#"]) as center:
        await daemon.start()
        try:
            await center.wait_for(lambda seen: any(
                s.topic == f"{TOPIC}/status" and s.json()["online"] for s in seen), timeout=30)

            async def result(cid: str, payload: bytes) -> dict[str, Any]:
                await center.publish(f"{TOPIC}/cmd", payload)
                seen = await center.wait_for(lambda seen: any(
                    s.topic == f"{TOPIC}/cmd/result" and s.json()["id"] == cid for s in seen))
                doc: dict[str, Any] = next(s.json() for s in seen if s.topic == f"{TOPIC}/cmd/result"
                                           and s.json()["id"] == cid)
                return doc

            r = await result("rec-1", command("rec-1", 50_000, age_s=10 * DAY))
            assert r["ok"] is False and r["error"]["code"] == "stale", r
            r = await result("topup-1", command("topup-1", 500, age_s=3600, expires_in_s=2 * DAY))
            assert r == {"id": "topup-1", "ok": True, "result": {"account": "stu-1", "balance_fen": 500}}
            r = await result("far-1", command("far-1", 500, expires_in_s=8 * DAY))
            assert r["ok"] is False and r["error"]["code"] == "bad_request", r
            credited = await center.wait_for(lambda seen: any(
                s.topic == f"{TOPIC}/events" and s.json()["type"] == "account.credited" for s in seen))
            amounts = [s.json()["amount_fen"] for s in credited
                       if s.topic == f"{TOPIC}/events" and s.json()["type"] == "account.credited"]
            assert amounts == [500]
        finally:
            assert await daemon.stop() == 0
