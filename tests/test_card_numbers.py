"""Campus card numbers end to end (issue 16): a `dec10` building whose shower
reader is an "8H10D" USB reader (`ascii-line`, `line_format = "dec"`) on a
pseudo-terminal, the real daemon, a real mosquitto and a pymodbus relay board.
The center puts the card by its printed number (and is refused a hex UID); a
tap of that number opens the valve, and the events carry the number."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from sim.modbus import SimBuilding
from sim.serial_card import PtyPort
from tests.mqtt_fixtures import Broker, Seen, collecting
from tests.test_gateway_e2e import broker, building, gatewayd
from tests.test_power import Daemon
from tests.test_water import valve_becomes

__all__ = ["broker", "building"]  # fixtures used by name

RELAY = SimBuilding.RELAY_BASE
TOPIC = "ecard/v1/b07"
NUMBER = "0040856634"   # printed on the card; its EM4100 UID ends 02 6F 6C 3A


def write_config(tmp: Path, broker: Broker, sim: SimBuilding, tty: Path) -> Path:
    path = tmp / "gateway.toml"
    path.write_text(f"""
[gateway]
building = "b07"
state_dir = "{tmp / 'state'}"
poll_interval_s = 0.2
tap_debounce_s = 0.4
clock_synced = "yes"
card_format = "dec10"

[center]
broker = "{broker.url}"
command_public_key_file = "{tmp / 'center.pub'}"

[tariffs]
shower = {{ price = "6", unit = "min" }}

[water]
min_balance_fen = 1

[[buses]]
name = "b"
type = "tcp"
host = "127.0.0.1"
port = {sim.ports[0]}
timeout_s = 0.3

[[readers]]
id = "r-usb"
type = "serial"
port = "{tty}"
protocol = "ascii-line"
line_format = "dec"

[[points]]
id = "shower-1"
service = "shower"
reader = "r-usb"
valve = {{ bus = "b", unit = {RELAY}, profile = "relay-board", channel = 0 }}
""")
    return path


def events(seen: list[Seen], type_: str) -> list[dict[str, object]]:
    out = [json.loads(s.payload) for s in seen if s.topic == f"{TOPIC}/events"]
    return [e for e in out if e["type"] == type_]


async def test_a_dec10_card_put_by_number_and_tapped_on_a_decimal_reader(
    tmp_path: Path, broker: Broker, building: SimBuilding
) -> None:
    code, _, err = await gatewayd("keygen", "--out-private", str(tmp_path / "center.key"),
                                  "--out-public", str(tmp_path / "center.pub"))
    assert code == 0, err

    async def send(*args: str) -> dict[str, object]:
        _, out, err = await gatewayd("send", "--key", str(tmp_path / "center.key"),
                                     "--broker", broker.url, "--building", "b07",
                                     "--timeout", "20", *args)
        assert out, err
        result: dict[str, object] = json.loads(out)
        return result

    with PtyPort(tmp_path / "ttyUSB-card") as pty:
        daemon = Daemon(write_config(tmp_path, broker, building, pty.path))
        async with collecting(broker, [f"{TOPIC}/#"]) as center:
            await daemon.start()
            try:
                await center.wait_for(lambda seen: any(
                    s.topic == f"{TOPIC}/status" and s.json()["online"] for s in seen), timeout=30)
                # A hex UID is not how this building spells a card.
                r = await send("card.put", "card=04A1B2C3", "account=stu-1", "kind=student",
                               "status=active")
                assert r["ok"] is False
                assert r["error"] == {  # the center reads why
                    "code": "bad_request",
                    "message": 'args.card: expected a card number of 10 digits from 0000000000 '
                               'to 4294967295, got "04A1B2C3"'}
                r = await send("account.credit", "account=stu-1", "amount_fen=1000")
                assert r["ok"] is True, r
                r = await send("card.put", f"card={NUMBER}", "account=stu-1", "kind=student",
                               "status=active")
                assert r["ok"] is True, r

                # The reader types the number; a hex line before it is dropped, not guessed.
                pty.write(b"026F6C3A\r\n" + NUMBER.encode() + b"\r\n")
                await valve_becomes(building, True)
                await asyncio.sleep(1.2)  # past the debounce window: the next line is a tap
                pty.write(b"40856634\r\n")  # the same number, not zero-padded by this reader
                await valve_becomes(building, False)
                await center.wait_for(lambda seen: bool(events(seen, "water.session")), timeout=10)
            finally:
                assert await daemon.stop() == 0, daemon.output.decode()[-3000:]
            taps = events(center.seen, "tap")
            assert [(t["card"], t["granted"], t["point"]) for t in taps] == [
                (NUMBER, True, "shower-1"), (NUMBER, True, "shower-1")]
            (session,) = events(center.seen, "water.session")
            assert (session["card"], session["account"], session["end_reason"]) == (NUMBER, "stu-1", "tap")
