"""check-config in a 300-room file: each problem names its room, point or reader and its
line; "did you mean" for typos; one typo is one problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gatewayd.config.lines import Locator
from gatewayd.config.load import load_config
from gatewayd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def generated(tmp_path: Path) -> str:
    """conf/generate.py's 312-room building, its store in `tmp_path`."""
    sys.path.insert(0, str(ROOT / "conf"))
    try:
        import generate  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    text: str = generate.generate("b07", floors=6, rooms_per_floor=52, showers_per_floor=6,
                                  subnet="10.20")
    return text.replace('timezone = "Asia/Shanghai"',
                        f'timezone = "Asia/Shanghai"\nstate_dir = "{tmp_path}/s"')


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gatewayd.app.cli", "check-config", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def line_of(text: str, needle: str, after: str = "") -> int:
    """The 1-based line of the first `needle` after the first `after`."""
    start = text.index(after) if after else 0
    return text.count("\n", 0, text.index(needle, start)) + 1


def test_problems_in_a_300_room_file_name_the_room_and_the_line(tmp_path: Path) -> None:
    text = generated(tmp_path)
    # Room 437 (floor 4), the 193rd [[rooms]]: a wrong value, a misspelt key and profile.
    text = text.replace('id = "437"\nmeter = { bus = "floor4", unit = 37, profile = "eastron-sdm120" }',
                        'id = "437"\nmeter = { bus = "floor4", unit = 37, profile = "eastron-sdm12" }')
    text = text.replace('id = "437"', 'id = "437"\nmax_power_w = "1.5k"\nresistive_cutof = true')
    # The last shower's reader names a reader that is not there.
    text = text.replace('reader = "r-shower-6-6"', 'reader = "r-shower-6-7"')
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    res = check_config(path)
    assert res.returncode == 2
    lines = res.stderr.splitlines()
    assert lines[0] == f"{path}: 4 problems:"
    assert (f'rooms[192].max_power_w: expected an integer >= 100, got "1.5k" '
            f'(room "437", line {line_of(text, "max_power_w")})') in lines
    assert (f'rooms[192].resistive_cutof: unknown key; did you mean "resistive_cutoff"? '
            f'(room "437", line {line_of(text, "resistive_cutof ")})') in lines
    profile = next(x for x in lines if x.startswith("rooms[192].meter.profile: "))
    typo = line_of(text, 'eastron-sdm12"')
    assert 'no profile "eastron-sdm12"' in profile
    assert profile.endswith(f'; did you mean "eastron-sdm120"? (room "437", '
                            f"line {typo})")
    assert (f'points[35].reader: no reader with id "r-shower-6-7" (point "shower-6-6", '
            f'line {line_of(text, "r-shower-6-7")})') in lines


def test_a_misspelt_section_is_one_problem(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('# building 7\n[gatway]\nbuilding = "b07"\n')
    res = check_config(path)
    assert res.stderr.splitlines() == [
        f"{path}: 1 problem:", 'gatway: unknown section; did you mean "gateway"? (line 2)']
    # Without the section at all: one problem, not also its required keys.
    path.write_text('[water]\nstep_fen = 1\n')
    assert check_config(path).stderr.splitlines() == [f"{path}: 1 problem:", "gateway: required"]


def test_a_misspelt_required_key_is_one_problem(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nbuildng = "b07"\n\n[[roms]]\nid = "101"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [str(p) for p in info.value.problems] == [
        'gateway.buildng: unknown key; did you mean "building"? (line 2)',
        'roms: unknown section; did you mean "rooms"? (line 4)',
    ]


def test_an_unknown_key_far_from_every_known_one_has_no_guess(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[gateway]\nbuilding = "b07"\nstate_dir = "{tmp_path}/s"\ncolour = "red"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [str(p) for p in info.value.problems] == ["gateway.colour: unknown key (line 4)"]


def test_warnings_name_their_line_too(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[gateway]\nbuilding = "b07"\nstate_dir = "{tmp_path}/s"\n\n'
                    '[[power.curfew]]\nfrom = "23:00"\nto = "06:00"\nexcept = [\n  "101",\n]\n')
    assert [str(w) for w in load_config(path).warnings] == [
        'power.curfew[0].except[0]: no room "101" in this file (ignored) (line 8)']


def test_locator_follows_sub_tables_multiline_values_and_strings() -> None:
    text = (
        '[gateway]\nbuilding = "b07"\n'
        'site = """\n[[rooms]]\nid = "fake"\n"""\n'       # a multi-line string: not a room
        '[[rooms]]\nid = "101"\nexcept = [\n  "x",\n  "[y]",\n]\n'
        '[rooms.meter]\nbus = "a"\n'                        # rooms[0].meter
        '[[rooms]]\n"id" = "102"\nbreaker.bus = "b"\n'
        '[[power.curfew]]\nfrom = "23:00"\n'
    )
    import tomllib

    where = Locator(text, tomllib.loads(text))
    assert where.line("rooms[0]") == 7
    assert where.line("rooms[0].except[1]") == 9
    assert where.line("rooms[0].meter.bus") == 14
    assert where.line("rooms[0].meter.unit") == 13
    assert where.line("rooms[1].breaker.bus") == 17
    assert where.line("rooms[1].breaker.unit") == 17
    assert where.line("power.curfew[0].from") == 19
    assert where.line("metrics.listen") is None
    assert (where.subject("rooms[1].breaker"), where.subject("rooms[2]")) == ('room "102"', "")
