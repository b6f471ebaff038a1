"""Device profiles: loading, search order and every validation message."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.errors import ProfileError
from drivers.profile import SHIPPED_DIR, ProfileProblem, available_profiles, load_profile, parse_profile

SHIPPED = ["chint-ddsu666", "dlt645-2007", "dlt645-2007-relay", "eastron-sdm120",
           "eastron-sdm120-import", "pulse-counter", "relay-board", "relay-board-holding"]


def problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ProfileError) as info:
        parse_profile("x", text, "x.toml")
    assert all(p.file == "x.toml" for p in info.value.problems)
    return [(p.place, p.message) for p in info.value.problems]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_load(name: str) -> None:
    profile = load_profile(name, [SHIPPED_DIR])
    assert profile.name == name
    assert profile.model


def test_available_profiles_lists_shipped() -> None:
    assert list(available_profiles([SHIPPED_DIR])) == SHIPPED


def test_sdm120_fields() -> None:
    p = load_profile("eastron-sdm120", [SHIPPED_DIR])
    assert p.kind == "meter"
    energy = p.fields["energy_wh"]
    assert (energy.table, energy.address, energy.type, energy.scale) == ("input", 0x156, "f32", 1000)
    imp = load_profile("eastron-sdm120-import", [SHIPPED_DIR]).fields["energy_wh"]
    assert (imp.table, imp.address) == ("input", 0x48)
    assert set(p.fields) == {"energy_wh", "power_w", "voltage_v", "current_a", "pf"}


def test_site_dir_takes_precedence(tmp_path: Path) -> None:
    (tmp_path / "relay-board.toml").write_text(
        'kind = "switch"\nmodel = "site relay"\n[fields]\nstate = { table = "coil", address = 8 }\n'
    )
    p = load_profile("relay-board", [tmp_path, SHIPPED_DIR])
    assert p.model == "site relay"
    assert p.fields["state"].address == 8
    assert p.fields["state"].type == "bool"  # coil default
    assert available_profiles([tmp_path, SHIPPED_DIR])["relay-board"].parent == tmp_path


def test_missing_profile_names_the_dirs(tmp_path: Path) -> None:
    with pytest.raises(ProfileError) as info:
        load_profile("nope", [tmp_path / "missing", SHIPPED_DIR])
    [problem] = info.value.problems
    assert problem.file == "nope.toml"
    assert 'no profile "nope"' in problem.message
    assert str(SHIPPED_DIR) in problem.message


@pytest.mark.parametrize("name", ["", "../etc/passwd", ".hidden"])
def test_bad_profile_names(name: str) -> None:
    with pytest.raises(ProfileError, match="invalid profile name"):
        load_profile(name, [SHIPPED_DIR])


def test_invalid_toml() -> None:
    [(place, message)] = problems("kind = ")
    assert place == ""
    assert message.startswith("not valid TOML")


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile("bin", [tmp_path])


def test_every_problem_in_one_pass() -> None:
    found = problems(
        'kind = "meter"\n'
        'colour = "red"\n'
        "[fields]\n"
        'energy_wh = { table = "input", address = 0x48, type = "f64" }\n'
        'pf = { table = "coil", address = -1, type = "f32", word_order = "middle" }\n'
        'kwh = { table = "input", address = 0, type = "f32" }\n'
    )
    assert found == [
        ("colour", "unknown key; expected one of kind, model, fields, max_read_registers"),
        ("fields.energy_wh.type", 'expected one of u16, i16, u32, i32, f32, bool, got "f64"'),
        ("fields.pf.type", 'table "coil" holds only "bool", got "f32"'),
        ("fields.pf.table", 'a meter is read from "holding" or "input" registers'),
        ("fields.pf.address", "expected an integer from 0 to 65535, got -1"),
        ("fields.pf.word_order", 'expected one of big, little, got "middle"'),
        ("fields.kwh", "unknown field for a meter; expected one of energy_wh, power_w, "
                       "voltage_v, current_a, pf"),
        ("fields.power_w", "missing; a meter needs energy_wh and power_w"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [("kind", "missing; expected one of meter, switch, counter"),
              ("fields", "missing; expected a table of fields")]),
        ('kind = "valve"\n[fields]\n', [("kind", 'expected one of meter, switch, counter, got "valve"')]),
        ('kind = "switch"\nmodel = 3\n[fields]\nstate = { table = "coil", address = 0 }\n',
         [("model", "expected a non-empty string, got 3")]),
        ('kind = "switch"\nfields = 3\n', [("fields", "expected a table of fields, got 3")]),
        ('kind = "switch"\n[fields]\n', [("fields.state", "missing; a switch needs state")]),
        ('kind = "counter"\n[fields]\n', [("fields.count", "missing; a counter needs count")]),
        ('kind = "switch"\n[fields]\nstate = 1\n', [("fields.state", "expected an inline table, got 1")]),
        ('kind = "switch"\n[fields]\nstate = { address = 0, type = "u16" }\n',
         [("fields.state.table", "missing; expected one of holding, input, coil")]),
        ('kind = "switch"\n[fields]\nstate = { table = "holding", address = 0 }\n',
         [("fields.state.type", "missing; expected one of u16, i16, u32, i32, f32, bool")]),
        ('kind = "switch"\n[fields]\nstate = { table = "holding", type = "u16" }\n',
         [("fields.state.address", "missing; expected an integer from 0 to 65535")]),
        ('kind = "switch"\n[fields]\nstate = { table = "holding", address = 0, type = "bool" }\n',
         [("fields.state.type", '"bool" is only for table "coil", not "holding"')]),
        ('kind = "switch"\n[fields]\nstate = { table = "input", address = 0, type = "u16" }\n',
         [("fields.state.table", 'a switch must be writable: "coil" or "holding"')]),
        ('kind = "switch"\n[fields]\nstate = { table = "holding", address = 0, type = "f32" }\n',
         [("fields.state.type", 'a switch state is an integer or "bool", got "f32"')]),
        ('kind = "switch"\n[fields]\nstate = { table = "holding", address = 0, type = "u16",'
         ' on = 2, off = 2 }\n', [("fields.state.on", "on and off must differ, both are 2")]),
        ('kind = "switch"\n[fields]\nstate = { table = "holding", address = 0, type = "i16",'
         ' on = 40000 }\n', [("fields.state.on", "expected an integer from -32768 to 32767, got 40000")]),
        ('kind = "switch"\n[fields]\nstate = { table = "coil", address = 0, on = 1 }\n',
         [("fields.state.on", "only a switch in a holding register has on/off values")]),
        ('kind = "switch"\n[fields]\nstate = { table = "coil", address = 0, scale = 2 }\n',
         [("fields.state.scale", "only meter values take a scale")]),
        ('kind = "counter"\n[fields]\ncount = { table = "holding", address = 0, type = "f32" }\n',
         [("fields.count.type", 'expected one of u16, u32 for a counter, got "f32"')]),
        ('kind = "counter"\n[fields]\ncount = { table = "holding", address = 0, type = "u32",'
         ' stride = 1 }\n', [("fields.count.stride", "expected an integer of at least 2, got 1")]),
        ('kind = "counter"\n[fields]\ncount = { table = "holding", address = 65535, type = "u32" }\n',
         [("fields.count.address", "expected an integer from 0 to 65534, got 65535")]),
        ('kind = "meter"\n[fields]\nenergy_wh = { table = "input", address = 0, type = "f32",'
         ' scale = 0 }\npower_w = { table = "input", address = 2, type = "f32", stride = 2 }\n',
         [("fields.energy_wh.scale", "expected a non-zero number, got 0"),
          ("fields.power_w.stride", "only switches and counters have channels")]),
        ('kind = "meter"\nmax_read_registers = 126\n[fields]\n'
         'energy_wh = { table = "input", address = 0, type = "f32" }\n'
         'power_w = { table = "input", address = 2, type = "f32", colour = 1 }\n',
         [("max_read_registers", "expected an integer from 1 to 125, got 126"),
          ("fields.power_w.colour", "unknown key; expected one of table, address, type, "
                                    "word_order, scale, stride, on, off")]),
    ],
)
def test_validation_messages(text: str, expected: list[tuple[str, str]]) -> None:
    assert problems(text) == expected


def test_problem_str_and_error_message() -> None:
    p = ProfileProblem("a.toml", "fields.x.type", "bad")
    assert str(p) == "a.toml: fields.x.type: bad"
    assert str(ProfileProblem("a.toml", "", "bad")) == "a.toml: bad"
    assert str(ProfileError([p, p])) == "a.toml: fields.x.type: bad; a.toml: fields.x.type: bad"


def test_holding_switch_and_word_order() -> None:
    p = parse_profile(
        "h",
        'kind = "switch"\n[fields]\nstate = { table = "holding", address = 4, type = "i32",'
        ' word_order = "little", on = -1, off = 0, stride = 4 }\n',
        "h.toml",
    )
    f = p.fields["state"]
    assert (f.type, f.word_order, f.on, f.off, f.stride, f.width) == ("i32", "little", -1, 0, 4, 2)
    assert f.at_channel(2) == 12


def test_dlt645_shipped_profiles_build_field_specs() -> None:
    meter = load_profile("dlt645-2007", [SHIPPED_DIR])
    assert (meter.protocol, meter.kind, meter.fields, meter.control) == ("dlt645-2007", "meter", {}, None)
    power = meter.specs["power_w"]
    assert (power.di, power.length, power.decimals, power.signed, power.scale) == (
        0x02030000, 3, 4, True, 1000.0)
    assert meter.specs["energy_wh"].value(bytes.fromhex("56341200")) == pytest.approx(123456.0 * 10)
    assert meter.has("pf") and not meter.has("count")
    relay = load_profile("dlt645-2007-relay", [SHIPPED_DIR])
    state = relay.specs["state"]
    assert (state.di, state.length, state.bit, state.on) == (0x04000503, 2, 4, 0)
    assert relay.control == (0x1A, 0x1C)


DLT = 'protocol = "dlt645-2007"\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f'kind = "meter"\n{DLT}max_read_registers = 2\n[fields]\n'
         'energy_wh = { di = "00010000", length = 4 }\npower_w = { di = "0203", length = 9 }\n',
         [("max_read_registers", "unknown key; expected one of kind, protocol, model, fields, control"),
          ("fields.power_w.di", 'expected 8 hex digits such as "02030000", got "0203"'),
          ("fields.power_w.length", "expected an integer from 1 to 8 (bytes), got 9")]),
        (f'kind = "meter"\n{DLT}[fields]\nenergy_wh = {{ length = 4, decimals = 9, bit = 1 }}\n'
         'power_w = { di = "02030000", length = 3, signed = 1, scale = 0, table = "input" }\n',
         [("fields.energy_wh.di", 'missing; expected 8 hex digits ("00010000")'),
          ("fields.energy_wh.bit", "only a switch's state is a bit of a status word"),
          ("fields.energy_wh.decimals", "expected an integer from 0 to 8, got 9"),
          ("fields.power_w.table", "unknown key; expected one of di, length, decimals, signed, "
                                   "scale, bit, on"),
          ("fields.power_w.signed", "expected true or false, got 1"),
          ("fields.power_w.scale", "expected a non-zero number, got 0")]),
        (f'kind = "switch"\n{DLT}[fields]\nstate = {{ di = "04000503", length = 2, bit = 16 }}\n',
         [("fields.state.bit", "expected the bit of the status word, 0 to 15, got 16"),
          ("fields.state.on", "expected 0 or 1, the bit's value when the relay is on (closed), "
                              "got nothing"),
          ("control", 'missing; expected a table: off = "1A", on = "1C"')]),
        (f'kind = "switch"\n{DLT}[fields]\n'
         'state = { di = "04000503", length = 2, bit = 4, on = 0, decimals = 1 }\n'
         '[control]\noff = "1A"\non = "1B"\n',
         [("fields.state.decimals", "a switch's state is a bit of a status word (binary, not BCD)"),
          ("control.on", '"1A" (trip) or "1C" (close now), got "1B"')]),
        (f'kind = "meter"\n{DLT}[fields]\nenergy_wh = {{ di = "00010000", length = 4 }}\n'
         'power_w = { di = "02030000", length = 3 }\n[control]\noff = "1A"\n',
         [("control", "only a switch (a relay) has control codes")]),
        ('kind = "switch"\nprotocol = "dlt645"\n[fields]\nstate = { table = "coil", address = 0 }\n',
         [("protocol", 'expected one of modbus, dlt645-2007, got "dlt645"')]),
        ('kind = "switch"\n[fields]\nstate = { table = "coil", address = 0 }\n[control]\noff = "1A"\n',
         [("control", "unknown key; expected one of kind, model, fields, max_read_registers")]),
    ],
)
def test_dlt645_profile_messages(text: str, expected: list[tuple[str, str]]) -> None:
    assert problems(text) == expected


# -- `gatewayd profiles` ----------------------------------------------------------


def test_profiles_command_lists_shipped_and_site_profiles(tmp_path: Path) -> None:
    import subprocess
    import sys

    site = tmp_path / "profiles"
    site.mkdir()
    (site / "acme-dds100.toml").write_text(
        'kind = "meter"\nmodel = "ACME DDS100"\n[fields]\n'
        'energy_wh = { table = "holding", address = 0, type = "u32", scale = 10 }\n'
        'power_w = { table = "holding", address = 16, type = "i16" }\n')
    (site / "relay-board.toml").write_text(
        'kind = "switch"\n[fields]\nstate = { table = "coil", address = 8, type = "bool" }\n')
    config = tmp_path / "gateway.toml"
    # A file with other problems still says where its profiles are.
    config.write_text('[gateway]\nbuilding = "B 07"\nprofiles_dir = "profiles"\n[[rooms]]\n')
    res = subprocess.run([sys.executable, "-m", "gatewayd.app.cli", "profiles", "-c", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    rows = {line.split()[0]: line.split() for line in res.stdout.splitlines()[1:]}
    assert sorted(rows) == sorted([*SHIPPED, "acme-dds100"])
    assert rows["acme-dds100"] == ["acme-dds100", "meter", "modbus", "ACME", "DDS100", "site",
                                   str(site / "acme-dds100.toml")]
    assert rows["relay-board"][-5:] == [str(site / "relay-board.toml"), "(replaces", "the",
                                        "shipped", "one)"]
    assert rows["dlt645-2007-relay"][1:3] == ["switch", "dlt645-2007"]
    assert rows["eastron-sdm120"][-1] == "shipped"
    # A site profile that does not load is listed as invalid; its problems on stderr; exit 1.
    (site / "broken.toml").write_text('kind = "metr"\n')
    res = subprocess.run([sys.executable, "-m", "gatewayd.app.cli", "profiles", "-c", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "INVALID" in next(line for line in res.stdout.splitlines() if line.startswith("broken"))
    assert f'{site / "broken.toml"}: kind: expected one of meter, switch, counter, got "metr"' in (
        res.stderr.splitlines())
