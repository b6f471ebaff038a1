"""The simulated building of the daemon benches: where each room's meter and breaker sit,
the config lines that describe them to the daemon, and the accounts seeded before a run.

`PER_ENDPOINT` meters per Modbus TCP endpoint (one `[[buses]]` per endpoint, like
one gateway per floor), and on each endpoint the relay boards for that floor's
breakers (units 201.., 16 coils each; room on unit u is breaker channel
(u-1) % 16 of board 201 + (u-1) // 16). Valves are a relay board of their own
(unit `VALVE_BASE`) on a separate endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from gatewayd.rules.water import Card
from gatewayd.store.cards import Cards
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger
from gatewayd.store.txn import Txn
from sim.modbus_units import COILS

PER_ENDPOINT = 50
RELAY_BASE = 201
VALVE_BASE = 201
BUILDING = "b07"
STUDENT = "stu-1"
RICH_FEN = 10**9


def room_id(index: int) -> str:
    """Room index 0.. -> "101".."150", "201".., one floor per endpoint."""
    return f"{index // PER_ENDPOINT + 1}{index % PER_ENDPOINT + 1:02d}"


def locate(index: int) -> tuple[int, int]:
    """(endpoint, meter unit) of room `index`."""
    return index // PER_ENDPOINT, index % PER_ENDPOINT + 1


def breaker_of(unit: int) -> tuple[int, int]:
    """(relay unit, channel) of the breaker of the room metered by `unit`."""
    return RELAY_BASE + (unit - 1) // COILS, (unit - 1) % COILS


def account(room: str) -> str:
    return f"room-{BUILDING}-{room}"


def rooms_config(ports: Sequence[int], meters: int, profile: str) -> list[str]:
    """The [[buses]] and [[rooms]] of the simulated building."""
    lines: list[str] = []
    for e, port in enumerate(ports[: -(-meters // PER_ENDPOINT)]):
        lines += ["[[buses]]", f'name = "floor{e + 1}"', 'type = "tcp"', 'host = "127.0.0.1"',
                  f"port = {port}", "timeout_s = 1.0", ""]
    for i in range(meters):
        e, unit = locate(i)
        relay, ch = breaker_of(unit)
        lines += [
            "[[rooms]]", f'id = "{room_id(i)}"',
            f'meter = {{ bus = "floor{e + 1}", unit = {unit}, profile = "{profile}" }}',
            f'breaker = {{ bus = "floor{e + 1}", unit = {relay}, profile = "relay-board", '
            f"channel = {ch} }}", "",
        ]
    return lines


def gateway_config(workdir: Path, *settings: str) -> list[str]:
    """The [gateway] section: the building, the state under `workdir`, and `settings`."""
    return ["[gateway]", f'building = "{BUILDING}"', f'state_dir = "{workdir / "state"}"',
            *settings, 'clock_synced = "yes"', ""]


def valves_bus_config(port: int) -> list[str]:
    """The [[buses]] entry of the valves' relay board."""
    return ["[[buses]]", 'name = "valves"', 'type = "tcp"', 'host = "127.0.0.1"',
            f"port = {port}", "timeout_s = 1.0", ""]


def serial_shower_config(reader: str, point: str, tty: Path, channel: int) -> list[str]:
    """A serial reader and the shower it opens: valve `channel` of the valves' board."""
    return [
        "[[readers]]", f'id = "{reader}"', 'type = "serial"', f'port = "{tty}"', "",
        "[[points]]", f'id = "{point}"', 'service = "shower"', f'reader = "{reader}"',
        f'valve = {{ bus = "valves", unit = {VALVE_BASE}, profile = "relay-board", '
        f"channel = {channel} }}", "",
    ]


def write_config(workdir: Path, lines: Sequence[str]) -> Path:
    """`lines` as the daemon's gateway.toml in `workdir`."""
    path = workdir / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def seed_store(state_dir: Path, balances: Mapping[str, int], cards: Sequence[str] = (),
               holder: str = STUDENT) -> None:
    """Credit each account its balance, and give `holder` the active student `cards`."""
    store = Store.open(state_dir, BUILDING)
    try:
        def job(txn: Txn) -> None:
            for account_id, fen in balances.items():
                Ledger.credit(txn, account_id, fen)
            for uid in cards:
                Cards.put(txn, Card(uid, holder, "student", "active", None))
        store.call(job)
    finally:
        store.close()


def rich_rooms(meters: int) -> dict[str, int]:
    """Every room's account with more than a bench can spend."""
    return {account(room_id(i)): RICH_FEN for i in range(meters)}
