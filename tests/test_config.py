"""Config loading: every problem at once, with places; the CLI's exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.cardreader.pcsc_reader import PcscCardReader
from drivers.cardreader.serial_reader import SerialCardReader
from gatewayd.app.daemon import make_reader
from gatewayd.config.load import load_config
from gatewayd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
[gateway]
building = "b07"
timezone = "Asia/Shanghai"
state_dir = "{state}"

[tariffs]
power = {{ price = "0.56", unit = "kWh" }}
shower = {{ price = "0.5", unit = "min" }}

[[buses]]
name = "floor1"
type = "tcp"
host = "127.0.0.1"
port = 1502

[[rooms]]
id = "101"
meter = {{ bus = "floor1", unit = 1, profile = "eastron-sdm120" }}
breaker = {{ bus = "floor1", unit = 200, profile = "relay-board", channel = 0 }}
max_power_w = 1200

[[rooms]]
id = "102"
meter = {{ bus = "floor1", unit = 2, profile = "eastron-sdm120" }}
breaker = {{ bus = "floor1", unit = 200, profile = "relay-board", channel = 1, invert = true }}

[[power.curfew]]
days = ["mon"]
from = "23:30"
to = "06:00"
except = ["102"]

[[readers]]
id = "r1"
type = "serial"
port = "/dev/null"

[[points]]
id = "shower-1"
service = "shower"
reader = "r1"
valve = {{ bus = "floor1", unit = 210, profile = "relay-board", channel = 0 }}
"""


def write(tmp_path: Path, text: str, name: str = "gateway.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).replace("{state}", str(tmp_path / "state")))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    # `place: message`; where each is (its line, its room) is tested on its own.
    return [f"{p.place}: {p.message}" if p.place else p.message for p in info.value.problems]


def test_good_config_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD.replace("{{", "{").replace("}}", "}")))
    assert cfg.gateway.building == "b07"
    assert cfg.gateway.poll_interval_s == 1.0
    assert cfg.center is None
    assert cfg.tariffs.power.price == Decimal("0.56")
    assert cfg.tariffs.drinking.unit == "L"
    r101, r102 = cfg.rooms
    assert r101.account == "room-b07-101"
    assert r101.rules.max_power_w == 1200
    assert r102.rules.max_power_w == 1500
    assert r102.breaker.invert and r102.breaker.channel == 1
    assert r101.meter.profile.kind == "meter"
    assert cfg.curfews[0].except_rooms == {"102"}
    assert cfg.points[0].flow is None
    assert cfg.points[0].kinds == {"student", "teacher", "family"}


def test_many_problems_reported_at_once_with_places(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [gateway]
        building = "B07!"
        poll_interval_s = 0.01
        tap_debounc_s = 2

        [tariffs]
        power = { price = 0.56, unit = "kWh" }

        [[buses]]
        name = "rs485-a"
        type = "rtu"
        port = "/dev/ttyUSB0"
        parity = "X"

        [[rooms]]
        id = "301"
        meter = { bus = "rs485-c", unit = 1, profile = "eastron-sdm120" }
        breaker = { bus = "rs485-a", unit = 31, profile = "relay-board" }

        [[rooms]]
        id = "302"
        max_power_w = "1.5k"
        meter = { bus = "rs485-a", unit = 2, profile = "no-such-meter" }
        breaker = { bus = "rs485-a", unit = 31, profile = "relay-board" }

        [[rooms]]
        id = "303"
        meter = { bus = "rs485-a", unit = 3, profile = "relay-board" }
        breaker = { bus = "rs485-a", unit = 300, profile = "relay-board", channel = 2 }

        [[points]]
        id = "shower-1"
        service = "bath"
        reader = "r-missing"
        valve = { bus = "rs485-a", unit = 31, profile = "relay-board", channel = 0 }
        """,
    )
    found = problems(path)
    expected = [
        'gateway.building: expected 1 to 32 of a-z, 0-9 and \'-\', got "B07!"',
        "gateway.poll_interval_s: expected a number >= 0.1, got 0.01",
        'gateway.tap_debounc_s: unknown key; did you mean "tap_debounce_s"?',
        'tariffs.power.price: expected a decimal string such as "0.56", got 0.56',
        "buses[0].parity: expected one of N, E, O, got \"X\"",
        'rooms[0].meter.bus: no bus named "rs485-c"',
        'rooms[1].max_power_w: expected an integer >= 100, got "1.5k"',
        'rooms[2].meter.profile: profile "relay-board" is a switch, expected a meter',
        "rooms[2].breaker.unit: expected an integer from 1 to 247, got 300",
        'points[0].service: expected one of shower, drinking, got "bath"',
        'points[0].reader: no reader with id "r-missing"',
    ]
    for line in expected:
        assert line in found, f"missing {line!r} in {found}"
    assert any(p.startswith("rooms[1].meter.profile:") and "no-such-meter" in p for p in found)
    # Rooms 301 and 302 both claim unit 31 channel 0; the point's valve too.
    assert any(p.startswith("rooms[1].breaker:") and "already used by room \"301\"" in p
               for p in found), found
    assert any(p.startswith("points[0].valve:") for p in found), found


def test_references_and_requirements(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [gateway]
        building = "b1"

        [center]
        broker = "http://x"

        [[power.curfew]]
        days = ["monday"]
        from = "25:00"
        to = "06:00"
        except = ["999"]

        [[readers]]
        id = "r1"
        type = "serial"
        port = "/dev/null"

        [[readers]]
        id = "r1"
        type = "pcsc"
        name = "ACS"

        [[points]]
        id = "p1"
        service = "shower"
        reader = "r1"
        valve = { bus = "b", unit = 1, profile = "relay-board" }
        """,
    )
    found = problems(path)
    for line in [
        'center.broker: expected "mqtt://HOST[:PORT]" or "mqtts://HOST[:PORT]", got "http://x"',
        "center.command_public_key_file: required",
        'power.curfew[0].days[0]: expected one of mon, tue, wed, thu, fri, sat, sun, got "monday"',
        "power.curfew[0].from: expected \"HH:MM\", got \"25:00\"",
        'readers[1].id: reader "r1" is defined twice',
        'points[0].valve.bus: no bus named "b"',
        'points[0].flow: required: tariffs.shower is priced per "L", which needs a flow meter '
        '(or price this service per "min")',
    ]:
        assert line in found, f"missing {line!r} in {found}"


def test_missing_files_are_named(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [gateway]
        building = "b1"
        state_dir = "{state}"
        [center]
        broker = "mqtts://127.0.0.1"
        ca_file = "/nonexistent/ca.pem"
        command_public_key_file = "center.pub"
        """,
    )
    found = problems(path)
    assert "center.ca_file: cannot read /nonexistent/ca.pem: No such file or directory" in found
    assert (f"center.command_public_key_file: cannot read {tmp_path}/center.pub: "
            "No such file or directory") in found


def test_public_key_must_be_ed25519(tmp_path: Path) -> None:
    (tmp_path / "center.pub").write_text("not a key\n")
    path = write(
        tmp_path,
        """
        [gateway]
        building = "b1"
        state_dir = "{state}"
        [center]
        broker = "mqtt://127.0.0.1:1883"
        command_public_key_file = "center.pub"
        """,
    )
    found = problems(path)
    assert any(p.startswith("center.command_public_key_file:") and "not a PEM public key" in p
               for p in found)


def test_broken_toml_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\nbuilding = "b1\n')
    found = problems(path)
    assert len(found) == 1 and found[0].startswith("invalid TOML:") and "line 2" in found[0]


def test_missing_file(tmp_path: Path) -> None:
    found = problems(tmp_path / "nope.toml")
    assert found == ["cannot read the file: No such file or directory"]


def test_site_profile_overrides_shipped_and_is_checked(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "eastron-sdm120.toml").write_text(
        'kind = "meter"\n[fields]\nenergy_wh = { table = "input", address = 0, type = "f64" }\n'
    )
    text = GOOD.replace("{{", "{").replace("}}", "}").replace(
        'timezone = "Asia/Shanghai"', f'timezone = "Asia/Shanghai"\nprofiles_dir = "{profiles}"'
    )
    found = problems(write(tmp_path, text))
    assert any(p.startswith("rooms[0].meter.profile:") and "fields.energy_wh.type" in p
               for p in found), found
    assert any("power_w" in p for p in found), found
    # Reported once, not once per room using it.
    assert sum("fields.energy_wh.type" in p for p in found) == 1


def test_example_config_is_valid(tmp_path: Path) -> None:
    text = (ROOT / "conf" / "example.toml").read_text()
    text = text.replace('"/var/lib/gatewayd"', f'"{tmp_path / "state"}"')
    cfg = load_config(write(tmp_path, text))
    assert cfg.gateway.building == "b07"
    assert len(cfg.rooms) == 5 and len(cfg.points) == 3


def test_generated_building_is_valid(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "conf"))
    try:
        import generate  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    text = generate.generate("b07", floors=6, rooms_per_floor=52, showers_per_floor=6, subnet="10.20")
    text = text.replace('timezone = "Asia/Shanghai"',
                        f'timezone = "Asia/Shanghai"\nstate_dir = "{tmp_path}/s"')
    cfg = load_config(write(tmp_path, text))
    assert len(cfg.rooms) == 312 and len(cfg.points) == 36


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd.app.cli", *args], capture_output=True, text=True, cwd=ROOT,
        timeout=60,
    )


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    good = write(tmp_path, GOOD.replace("{{", "{").replace("}}", "}"))
    ok = run_cli("check-config", str(good))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("\n") == 1 and "ok, building b07: 2 rooms" in ok.stdout

    bad = write(tmp_path, '[gateway]\nbuilding = "b07"\nfoo = 1\n[[rooms]]\nid = "1"\n', "bad.toml")
    res = run_cli("check-config", str(bad))
    assert res.returncode == 2
    assert res.stdout == ""
    # A header, then each problem exactly as the spec shows it: `place: message`.
    assert res.stderr.splitlines() == [
        f"{bad}: 3 problems:",
        "gateway.foo: unknown key (line 3)",
        'rooms[0].meter: required (room "1", line 4)',
        'rooms[0].breaker: required (room "1", line 4)',
    ]


def test_run_refuses_bad_config_and_writes_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    bad = write(tmp_path, f'[gateway]\nbuilding = "b07"\nstate_dir = "{state}"\nbogus = true\n')
    res = run_cli("run", "-c", str(bad))
    assert res.returncode == 2
    assert res.stderr.splitlines() == [f"{bad}: 1 problem:", "gateway.bogus: unknown key (line 4)"]
    assert not state.exists()


def test_status_prints_problems_in_the_same_form(tmp_path: Path) -> None:
    bad = write(tmp_path, '[gateway]\nbuilding = "b07"\nbogus = true\n')
    res = run_cli("status", "-c", str(bad))
    assert res.returncode == 2
    assert res.stderr.splitlines() == [f"{bad}: 1 problem:", "gateway.bogus: unknown key (line 3)"]


# -- curfew exceptions naming rooms not in the file ----------------------------

CURFEW_UNKNOWN = """
[gateway]
building = "b07"
state_dir = "{state}"

[[power.curfew]]
from = "23:30"
to = "06:00"
except = ["101", "102"]
"""


def test_curfew_except_unknown_room_is_a_warning(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, CURFEW_UNKNOWN))
    assert [str(w) for w in cfg.warnings] == [
        'power.curfew[0].except[0]: no room "101" in this file (ignored) (line 9)',
        'power.curfew[0].except[1]: no room "102" in this file (ignored) (line 9)',
    ]
    assert cfg.curfews[0].except_rooms == frozenset()
    # A room that exists is kept, and not warned about.
    good = load_config(write(tmp_path, GOOD.replace("{{", "{").replace("}}", "}")))
    assert good.warnings == () and good.curfews[0].except_rooms == {"102"}


def test_check_config_prints_warnings_and_exits_0(tmp_path: Path) -> None:
    path = write(tmp_path, CURFEW_UNKNOWN)
    res = run_cli("check-config", str(path))
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == [
        'warning: power.curfew[0].except[0]: no room "101" in this file (ignored) (line 9)',
        'warning: power.curfew[0].except[1]: no room "102" in this file (ignored) (line 9)',
    ]
    assert res.stdout.splitlines() == [f"{path}: ok, building b07: 0 rooms, 0 water points, "
                                       "0 readers, 0 buses, offline only (no [center])"]


def test_check_config_prints_warnings_after_problems(tmp_path: Path) -> None:
    path = write(tmp_path, CURFEW_UNKNOWN + "\n[water]\nstep_fen = 0\n")
    res = run_cli("check-config", str(path))
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"{path}: 1 problem:",
        "water.step_fen: expected an integer >= 1, got 0 (line 12)",
        'warning: power.curfew[0].except[0]: no room "101" in this file (ignored) (line 9)',
        'warning: power.curfew[0].except[1]: no room "102" in this file (ignored) (line 9)',
    ]


def test_run_logs_config_warnings_at_start(tmp_path: Path) -> None:
    path = write(tmp_path, CURFEW_UNKNOWN)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gatewayd.app.cli", "run", "-c", str(path), "--log-format", "json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        warnings: list[dict[str, str]] = []
        for line in proc.stdout:
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "config_warning":
                warnings.append(event)
            if event.get("event") == "ready":
                break
        proc.terminate()
        proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [(w["level"], w["warning"]) for w in warnings] == [
        ("warning", 'power.curfew[0].except[0]: no room "101" in this file (ignored) (line 9)'),
        ("warning", 'power.curfew[0].except[1]: no room "102" in this file (ignored) (line 9)'),
    ]


# -- tariff defaults -----------------------------------------------------------


def test_tariff_price_and_unit_default_to_the_spec(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
        [gateway]
        building = "b07"
        state_dir = "{state}"
        [tariffs]
        power = {}
        shower = { unit = "min" }
        drinking = { price = "0.02" }
        """))
    assert cfg.tariffs.power.price == Decimal("0.56") and cfg.tariffs.power.unit == "kWh"
    assert cfg.tariffs.shower.price == Decimal("0.03") and cfg.tariffs.shower.unit == "min"
    assert cfg.tariffs.drinking.price == Decimal("0.02") and cfg.tariffs.drinking.unit == "L"


# -- paths -----------------------------------------------------------------------


def test_relative_dirs_are_taken_from_the_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    (etc / "profiles").mkdir(parents=True)
    # A site profile that differs from the shipped one, to see which folder was searched.
    (etc / "profiles" / "eastron-sdm120.toml").write_text(
        'kind = "meter"\nmodel = "site copy"\n[fields]\n'
        'energy_wh = { table = "input", address = 0, type = "f32" }\n'
        'power_w = { table = "input", address = 12, type = "f32" }\n'
    )
    text = GOOD.replace("{{", "{").replace("}}", "}").replace(
        'state_dir = "{state}"', 'state_dir = "state"\nprofiles_dir = "profiles"'
    )
    path = write(etc, text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(path)
    assert cfg.gateway.state_dir == etc / "state"
    assert cfg.gateway.profiles_dir == etc / "profiles"
    assert cfg.rooms[0].meter.profile.model == "site copy"
    # Given relative to the working directory, the file's folder still counts.
    monkeypatch.chdir(tmp_path)
    assert load_config(Path("etc/gateway.toml")).gateway.state_dir == etc / "state"


def test_empty_state_dir_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\nbuilding = "b07"\nstate_dir = ""\nprofiles_dir = ""\n')
    assert problems(path) == [
        'gateway.state_dir: expected a path, got ""',
        'gateway.profiles_dir: expected a path, got ""',
    ]


def test_a_missing_profiles_dir_is_a_warning_and_a_file_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-profiles"
    path = write(tmp_path, f'[gateway]\nbuilding = "b07"\nstate_dir = "{{state}}"\n'
                           f'profiles_dir = "{missing}"\n')
    cfg = load_config(path)
    assert [str(w) for w in cfg.warnings] == [
        f'gateway.profiles_dir: no such directory "{missing}" (only the shipped profiles are used) '
        "(line 4)"]
    (tmp_path / "a-file").write_text("")
    path = write(tmp_path, '[gateway]\nbuilding = "b07"\nstate_dir = "{state}"\n'
                           'profiles_dir = "a-file"\n')
    assert problems(path) == [f'gateway.profiles_dir: "{tmp_path}/a-file" is not a directory']


def test_default_profiles_dir_may_be_missing(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[gateway]\nbuilding = "b07"\nstate_dir = "{state}"\n'))
    assert cfg.gateway.profiles_dir == Path("/etc/gatewayd/profiles")


def test_nul_in_a_path_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = write(tmp_path, r"""
        [gateway]
        building = "b07"
        state_dir = "/tmp/a\u0000b"
        profiles_dir = "p\u0000"
        [center]
        broker = "mqtts://127.0.0.1"
        ca_file = "ca\u0000.pem"
        command_public_key_file = "\u0000"
        """)
    found = problems(path)
    for key in ("gateway.state_dir", "gateway.profiles_dir", "center.ca_file",
                "center.command_public_key_file"):
        assert f"{key}: expected a path without NUL characters" in found, found
    res = run_cli("check-config", str(path))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "gateway.state_dir: expected a path without NUL characters (line 4)" in (
        res.stderr.splitlines())


# -- ids that already failed -----------------------------------------------------


def test_bad_ids_are_not_reported_as_duplicates(tmp_path: Path) -> None:
    rooms = "".join(
        f'[[rooms]]\n{line}\nmeter = {{ bus = "b", unit = {i + 1}, profile = "eastron-sdm120" }}\n'
        f'breaker = {{ bus = "b", unit = 100, profile = "relay-board", channel = {i} }}\n'
        for i, line in enumerate(['id = "bad id"', "", 'id = "!"', 'id = "ok"', 'id = "ok"'])
    )
    points = "".join(
        f'[[points]]\n{line}\nservice = "drinking"\nreader = "r{i}"\n'
        f'valve = {{ bus = "b", unit = 101, profile = "relay-board", channel = {i} }}\n'
        f'flow = {{ bus = "b", unit = 102, profile = "pulse-counter", channel = {i}, '
        "ml_per_pulse = 1 }\n"
        for i, line in enumerate(["", 'id = "?"', 'id = "p"', 'id = "p"'])
    )
    readers = "".join(f'[[readers]]\nid = "r{i}"\ntype = "pcsc"\nname = "R{i}"\n' for i in range(4))
    path = write(tmp_path, '[gateway]\nbuilding = "b07"\nstate_dir = "{state}"\n'
                 '[[buses]]\nname = "b"\ntype = "tcp"\nhost = "127.0.0.1"\n'
                 + rooms + readers + points)
    found = problems(path)
    twice = [p for p in found if "defined twice" in p]
    assert twice == ['rooms[4].id: room "ok" is defined twice',
                     'points[3].id: point "p" is defined twice'], found
    assert "rooms[1].id: required" in found and "points[0].id: required" in found


# -- decimal strings -------------------------------------------------------------


def tariff_config(tmp_path: Path, price: str) -> Path:
    return write(tmp_path, '[gateway]\nbuilding = "b07"\nstate_dir = "{state}"\n[tariffs]\n'
                 f"power = {{ price = {price}, unit = \"kWh\" }}\n")


@pytest.mark.parametrize("price", ["1e-2", "-0", ".5", " 0.03 ", "1_0.0", "+1", "00.5", "1.",
                                   "0.5.1", "NaN", "Infinity", "", "0x10", "\u0661"])
def test_price_must_be_plain_decimal(tmp_path: Path, price: str) -> None:
    path = tariff_config(tmp_path, json.dumps(price))
    assert problems(path) == [
        "tariffs.power.price: expected a plain decimal string such as \"0.56\" (digits, "
        f"at most one '.'), got {json.dumps(price, ensure_ascii=False)}"
    ]


@pytest.mark.parametrize("price", ["0", "0.56", "12", "10.000", "0.0001"])
def test_plain_decimal_prices_are_accepted(tmp_path: Path, price: str) -> None:
    cfg = load_config(tariff_config(tmp_path, json.dumps(price)))
    assert cfg.tariffs.power.price == Decimal(price)


def test_room_reader_and_point_ids_are_any_plain_text(tmp_path: Path) -> None:
    """Ids travel in JSON: "A栋 301" is a room; control characters and spaces at the
    ends are not (bus names stay plain: they never leave the file)."""
    body = '''
        [gateway]
        building = "b07"
        state_dir = "{state}"
        [tariffs]
        shower = { price = "0.5", unit = "min" }
        [[buses]]
        name = "b"
        type = "tcp"
        host = "127.0.0.1"
        [[rooms]]
        id = "%s"
        meter = { bus = "b", unit = 1, profile = "eastron-sdm120" }
        breaker = { bus = "b", unit = 100, profile = "relay-board", channel = 0 }
        [[readers]]
        id = "读卡器 1"
        type = "serial"
        port = "/dev/ttyUSB0"
        [[points]]
        id = "淋浴-1"
        service = "shower"
        reader = "读卡器 1"
        valve = { bus = "b", unit = 100, profile = "relay-board", channel = 1 }
    '''
    cfg = load_config(write(tmp_path, body % "A栋 301"))
    assert [r.id for r in cfg.rooms] == ["A栋 301"]
    assert cfg.rooms[0].account == "room-b07-A栋 301"
    assert [p.id for p in cfg.points] == ["淋浴-1"]
    for bad in (" 301", "301 ", "3\\t01"):
        assert problems(write(tmp_path, body % bad)) == [
            f"rooms[0].id: expected 1 to 128 characters, without control characters or spaces "
            f"at either end, got {json.dumps(bad.replace(chr(92) + 't', chr(9)))}"]


SHARED = """
[gateway]
building = "b07"
state_dir = "{state}"

[[power.curfew]]
days = []
from = "23:00"
to = "06:00"

[[buses]]
name = "a"
type = "rtu"
port = "/dev/ttyUSB0"

[[buses]]
name = "b"
type = "rtu"
port = "/dev/ttyUSB0"

[[buses]]
name = "c"
type = "tcp"
host = ""

[[rooms]]
id = "1"
meter = { bus = "a", unit = 1, profile = "eastron-sdm120" }
breaker = { bus = "", unit = 31, profile = "relay-board", channel = 0 }

[[rooms]]
id = "2"
meter = { bus = "a", unit = 1, profile = "eastron-sdm120" }
breaker = { bus = "a", unit = 31, profile = "", channel = 1 }

[[readers]]
id = "r1"
type = "serial"
port = "/dev/ttyUSB0"

[[readers]]
id = "r2"
type = "pcsc"
name = ""

[[points]]
id = "p1"
service = "shower"
reader = "r1"
valve = { bus = "a", unit = 40, profile = "relay-board", channel = 0 }
flow = { bus = "a", unit = 41, profile = "pulse-counter", channel = 0, ml_per_pulse = 10 }

[[points]]
id = "p2"
service = "shower"
reader = ""
valve = { bus = "a", unit = 40, profile = "relay-board", channel = 1 }
flow = { bus = "a", unit = 41, profile = "pulse-counter", channel = 0, ml_per_pulse = 10 }

[center]
broker = ""
command_public_key_file = ""
"""


def test_empty_names_and_shared_devices_are_problems(tmp_path: Path) -> None:
    """A required name written "" is missing, not "none": a room must never
    lose its breaker silently. A meter, a flow counter channel or a serial
    port has one user."""
    path = write(tmp_path, SHARED)
    assert sorted(problems(path)) == sorted([
        'center.broker: required: got ""',
        'center.command_public_key_file: required: got ""',
        'buses[1].port: port "/dev/ttyUSB0" is already used by bus "a"',
        'buses[2].host: required: got ""',
        'rooms[0].breaker.bus: required: got ""',
        'rooms[1].breaker.profile: required: got ""',
        'readers[0].port: port "/dev/ttyUSB0" is already used by bus "a"',
        'readers[1].name: required: got ""',
        'points[1].reader: required: got ""',
        'points[1].flow: the same flow counter (bus "a", unit 41, channel 0) '
        'is already used by point "p1"',
        'rooms[1].meter: the same meter (bus "a", unit 1) is already used by room "1"',
    ])
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [str(w) for w in info.value.warnings] == [
        "power.curfew[0].days: no days: this curfew never applies (line 7)"
    ]


def test_two_rooms_may_not_share_an_account(tmp_path: Path) -> None:
    """behaviour.md: a room's electricity uses the room's own account."""
    rooms = "".join(
        f'[[rooms]]\nid = "{i}"\n{account}'
        f'meter = {{ bus = "a", unit = {i}, profile = "eastron-sdm120" }}\n'
        f'breaker = {{ bus = "a", unit = 31, profile = "relay-board", channel = {i} }}\n'
        for i, account in ((1, 'account = "x"\n'), (2, 'account = "x"\n'),
                           (3, 'account = "room-b07-4"\n'), (4, "")))
    path = write(tmp_path, '[gateway]\nbuilding = "b07"\nstate_dir = "{state}"\n'
                 '[[buses]]\nname = "a"\ntype = "tcp"\nhost = "h"\n' + rooms)
    assert problems(path) == [
        'rooms[1].account: account "x" is already used by room "1": each room has its own account',
        'rooms[3].account: account "room-b07-4" is already used by room "3": '
        "each room has its own account",
    ]


def test_building_all_is_reserved_for_broadcasts(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\nbuilding = "all"\nstate_dir = "{state}"\n')
    assert problems(path) == [
        'gateway.building: "all" is reserved: {prefix}/all/cmd is the broadcast topic']


# -- no follow-on errors; one address, one device (issue 14, item 12) -------------

TWO_ROOMS = """
[gateway]
building = "b07"
state_dir = "{state}"

[[buses]]
name = "a"
type = "tcp"
host = "h"

[[rooms]]
id = "101"
meter = { bus = "a", unit = 1, profile = "eastron-sdm120" }
breaker = { bus = "a", unit = 200, profile = "relay-board", channel = 0 }

[[rooms]]
id = "102"
meter = { bus = "a", unit = METER, profile = "eastron-sdm120" }
breaker = { bus = "a", unit = 200, profile = "relay-board", channel = CHANNEL }
"""


@pytest.mark.parametrize(("meter", "channel", "expected"), [
    ('"3"', "1", 'rooms[1].meter.unit: expected an integer from 0 to 255, got "3"'),
    ("300", "1", "rooms[1].meter.unit: expected an integer from 0 to 255, got 300"),
    ("2", '"2"', 'rooms[1].breaker.channel: expected an integer from 0 to 1999, got "2"'),
    ("2", "-1", "rooms[1].breaker.channel: expected an integer from 0 to 1999, got -1"),
])
def test_a_wrong_value_is_one_problem_not_a_false_shared_device(
    tmp_path: Path, meter: str, channel: str, expected: str
) -> None:
    """The fallback used to go on checking (unit 1, channel 0) is no device: it must
    not be found "already used" by room 101's meter or breaker channel."""
    text = TWO_ROOMS.replace("METER", meter).replace("CHANNEL", channel)
    assert problems(write(tmp_path, text)) == [expected]


DEVICES = """
[gateway]
building = "b07"
state_dir = "{state}"

[tariffs]
shower = { price = "0.5", unit = "min" }

[[buses]]
name = "a"
type = "rtu"
port = "/dev/ttyUSB0"

[[rooms]]
id = "101"
meter = { bus = "a", unit = 1, profile = "eastron-sdm120" }
breaker = { bus = "a", unit = BREAKER_UNIT, profile = "relay-board", channel = 0 }

[[readers]]
id = "r1"
type = "serial"
port = "/dev/ttyUSB1"

[[points]]
id = "p1"
service = "shower"
reader = "r1"
valve = { bus = "a", unit = 40, profile = "VALVE_PROFILE", channel = 0 }
flow = { bus = "a", unit = FLOW_UNIT, profile = "pulse-counter", channel = 0, ml_per_pulse = 10 }
"""


def devices(breaker: int = 31, valve: str = "relay-board", flow: int = 40) -> str:
    return (DEVICES.replace("BREAKER_UNIT", str(breaker)).replace("VALVE_PROFILE", valve)
            .replace("FLOW_UNIT", str(flow)))


def test_two_devices_on_one_bus_address_are_an_error(tmp_path: Path) -> None:
    # The contract's own example: a valve and a flow counter on one board (unit 40).
    cfg = load_config(write(tmp_path, devices()))
    assert cfg.points[0].valve.unit == cfg.points[0].flow.unit == 40  # type: ignore[union-attr]
    # A meter and a relay board on one unit: two devices answering to one address.
    assert problems(write(tmp_path, devices(breaker=1))) == [
        'rooms[0].breaker: bus "a", unit 1 is already room "101"\'s meter (profile '
        '"eastron-sdm120"): a switch (profile "relay-board") cannot have the same address; '
        "two devices on one bus need two units"]
    # A flow counter on a meter's unit.
    assert problems(write(tmp_path, devices(flow=1))) == [
        'points[0].flow: bus "a", unit 1 is already room "101"\'s meter (profile '
        '"eastron-sdm120"): a counter (profile "pulse-counter") cannot have the same address; '
        "two devices on one bus need two units"]
    # One relay board read as coils by one user and as holding registers by another.
    assert problems(write(tmp_path, devices(breaker=40, valve="relay-board-holding"))) == [
        'points[0].valve: bus "a", unit 40 is already room "101"\'s switch with profile '
        '"relay-board": one device cannot also be a switch with profile "relay-board-holding"']


def test_a_generated_floor_of_205_rooms_keeps_its_boards_clear_of_its_meters(
    tmp_path: Path,
) -> None:
    sys.path.insert(0, str(ROOT / "conf"))
    try:
        import generate
    finally:
        sys.path.pop(0)
    text = generate.generate("b07", floors=2, rooms_per_floor=205, showers_per_floor=6,
                             subnet="10.20")
    text = text.replace('timezone = "Asia/Shanghai"',
                        f'timezone = "Asia/Shanghai"\nstate_dir = "{tmp_path}/s"')
    cfg = load_config(write(tmp_path, text))
    assert len(cfg.rooms) == 410 and len({r.id for r in cfg.rooms}) == 410
    assert {r.breaker.unit for r in cfg.rooms} == {206}
    assert {p.valve.unit for p in cfg.points} == {207}
    with pytest.raises(ValueError, match="at most 244 rooms a floor"):
        generate.generate("b07", floors=1, rooms_per_floor=245, showers_per_floor=1,
                          subnet="10.20")


# -- secrets (issue 14, item 9) ---------------------------------------------------

SECRETS = """
[gateway]
building = "b07"
state_dir = "{state}"

[center]
broker = "BROKER"
username = "gw-b07"
password_file = "mqtt.password"
command_public_key_file = "center.pub"
"""


def secrets(tmp_path: Path, password_mode: int, *, tls: bool = False,
            key_mode: int = 0o600) -> Path:
    from gatewayd.contract.signing import generate_keypair

    (tmp_path / "center.pub").write_bytes(generate_keypair().public_pem)
    (tmp_path / "mqtt.password").write_text("secret\n")
    (tmp_path / "mqtt.password").chmod(password_mode)
    text = SECRETS.replace("BROKER", "mqtts://127.0.0.1" if tls else "mqtt://127.0.0.1:1")
    if tls:
        for name, mode in (("gw.pem", 0o644), ("gw.key", key_mode)):
            (tmp_path / name).write_text("-\n")
            (tmp_path / name).chmod(mode)
        text += 'cert_file = "gw.pem"\nkey_file = "gw.key"\n'
    return write(tmp_path, text)


def test_secrets_readable_by_every_user_are_warned_about(tmp_path: Path) -> None:
    path = secrets(tmp_path, 0o666, tls=True, key_mode=0o644)
    res = run_cli("check-config", str(path))
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == [
        f"warning: center.password_file: {tmp_path}/mqtt.password is a secret readable by every "
        "user on this machine (mode 0666): chmod 0640 with the group gatewayd runs as "
        "(chown root:gatewayd), or 0600 owned by that user (line 9)",
        f"warning: center.key_file: {tmp_path}/gw.key is a secret readable by every user on "
        "this machine (mode 0644): chmod 0640 with the group gatewayd runs as "
        "(chown root:gatewayd), or 0600 owned by that user (line 12)",
    ]
    # 0640 is the contract's own mode for a secret (config.md): no warning.
    assert load_config(secrets(tmp_path, 0o640, tls=True, key_mode=0o640)).warnings == ()
    # The certificate (0644) is public: never warned about.


def test_a_center_public_key_others_can_write_is_warned_about(tmp_path: Path) -> None:
    """Whoever can replace the center's public key can forge its commands."""
    path = secrets(tmp_path, 0o640)
    (tmp_path / "center.pub").chmod(0o666)
    res = run_cli("check-config", str(path))
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == [
        f"warning: center.command_public_key_file: {tmp_path}/center.pub can be written by users "
        "other than its owner (mode 0666): whoever replaces it can forge the center's commands; "
        "chmod 0644, owned by root (line 10)",
    ]
    (tmp_path / "center.pub").chmod(0o644)
    assert load_config(path).warnings == ()


def test_run_warns_about_a_readable_secret_at_start(tmp_path: Path) -> None:
    path = secrets(tmp_path, 0o644)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gatewayd.app.cli", "run", "-c", str(path), "--log-format", "json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        warnings: list[str] = []
        for line in proc.stdout:
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "config_warning":
                warnings.append(event["warning"])
            if event.get("event") == "ready":
                break
        proc.terminate()
        proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert warnings == [
        f"center.password_file: {tmp_path}/mqtt.password is a secret readable by every user on "
        "this machine (mode 0644): chmod 0640 with the group gatewayd runs as "
        "(chown root:gatewayd), or 0600 owned by that user (line 9)"]


@pytest.mark.parametrize("encoding", ["PEM", "DER"])
def test_a_private_key_given_as_the_centers_public_key_is_refused(
    tmp_path: Path, encoding: str
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = secrets(tmp_path, 0o600)
    (tmp_path / "center.pub").write_bytes(Ed25519PrivateKey.generate().private_bytes(
        getattr(serialization.Encoding, encoding), serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    assert problems(path) == [
        f"center.command_public_key_file: {tmp_path}/center.pub holds a private key; a gateway "
        "must hold only the center's public key: a center's private key must never be on a "
        "gateway (whoever reads it can sign commands for every building). Delete it here, have "
        "the center make a new key pair (gatewayd keygen) and give the gateways only the public "
        "one (center.pub)"]


READERS = """
[gateway]
building = "b1"
card_format = "dec10"

[[readers]]
id = "r-usb"
type = "serial"
port = "/dev/null"
protocol = "ascii-line"
line_format = "dec"

[[readers]]
id = "r-rdm"
type = "serial"
port = "/dev/zero"
uid_order = "reversed"

[[readers]]
id = "r-pcsc"
type = "pcsc"
name = "ACS"
uid_order = "reversed"
"""


def test_card_format_uid_order_and_line_format(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, READERS))
    assert cfg.gateway.card_format == "dec10"
    usb, rdm, pcsc = (cfg.readers[r] for r in ("r-usb", "r-rdm", "r-pcsc"))
    assert (usb.protocol, usb.line_format, usb.uid_order) == ("ascii-line", "dec", "as_read")
    assert (rdm.protocol, rdm.line_format, rdm.uid_order) == ("rdm6300", "hex", "reversed")
    assert pcsc.uid_order == "reversed"
    # The defaults: a hex building, ascii-line lines in hex.
    cfg = load_config(write(tmp_path, READERS.replace('card_format = "dec10"', "")
                            .replace('line_format = "dec"', "")))
    assert cfg.gateway.card_format == "hex" and cfg.readers["r-usb"].line_format == "hex"


def test_line_format_only_on_ascii_line_readers_and_spellings_checked(tmp_path: Path) -> None:
    text = (READERS.replace('card_format = "dec10"', 'card_format = "dec"')
            .replace('line_format = "dec"', 'line_format = "decimal"')
            .replace('uid_order = "reversed"\n\n', 'uid_order = "lsb"\nline_format = "dec"\n\n', 1)
            .replace('name = "ACS"', 'name = "ACS"\nline_format = "hex"'))
    assert sorted(problems(write(tmp_path, text))) == sorted([
        'gateway.card_format: expected one of hex, dec10, got "dec"',
        'readers[0].line_format: expected one of hex, dec, got "decimal"',
        'readers[1].uid_order: expected one of as_read, reversed, got "lsb"',
        'readers[1].line_format: only an ascii-line reader has one (protocol = "ascii-line"); '
        'this reader\'s protocol is "rdm6300"',
        'readers[2].line_format: only an ascii-line reader has one (protocol = "ascii-line"); '
        "a pcsc reader reads the card's UID",
    ])


# -- readers: the file and the driver agree ---------------------------------------


def test_every_reader_setting_the_file_takes_reaches_the_driver(tmp_path: Path) -> None:
    """Each reader shape, every optional key set, opens (a key the file takes and the
    driver refuses would stop the daemon at start)."""
    config = load_config(write(tmp_path, """
        [gateway]
        building = "b07"
        state_dir = "{state}"
        card_format = "dec10"

        [[readers]]
        id = "r-rdm"
        type = "serial"
        port = "/dev/ttyUSB0"
        baudrate = 19200
        protocol = "rdm6300"
        uid_order = "reversed"

        [[readers]]
        id = "r-line"
        type = "serial"
        port = "/dev/ttyUSB1"
        protocol = "ascii-line"
        line_format = "dec"

        [[readers]]
        id = "r-pcsc"
        type = "pcsc"
        name = "ACS ACR122U"
        uid_order = "reversed"
        """))
    readers = {rid: make_reader(r, config.gateway) for rid, r in config.readers.items()}
    rdm, line, pcsc = readers["r-rdm"], readers["r-line"], readers["r-pcsc"]
    assert isinstance(rdm, SerialCardReader) and isinstance(line, SerialCardReader)
    assert (rdm.name, rdm.port, rdm.baudrate, rdm.protocol) == ("r-rdm", "/dev/ttyUSB0", 19200, "rdm6300")
    assert (line.port, line.baudrate, line.protocol) == ("/dev/ttyUSB1", 9600, "ascii-line")
    assert isinstance(pcsc, PcscCardReader)
    assert (pcsc.name, pcsc.prefix, pcsc.ids.uid_order) == ("r-pcsc", "ACS ACR122U", "reversed")
