"""The building's configuration file into a `model.Config` (docs/configuration.md, version 1).

`load_config(path)` reads one TOML file into frozen objects or raises
`ConfigError` carrying every problem found, each with its place in the file
(`rooms[3].meter.bus: no bus named "rs485-c"`). Profiles named by devices are
loaded and checked here too, so a config that loads is one the daemon can run.
Things worth saying that do not stop it (a curfew exception naming a room not
in this file) are `warnings`, on the `Config` or the `ConfigError`.

Each table has its reader: `gateway` ([gateway], [center], [metrics], [web]),
`policies` ([tariffs], [power], [water]), `buses` (buses, devices, profiles),
`rooms`, `points` (readers and water points); `files` resolves and checks
the paths. Relative paths (`state_dir`, `profiles_dir`, `*_file`) are taken
from the config file's folder, never from the working directory.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from gatewayd.config.buses import Wiring
from gatewayd.config.files import Files
from gatewayd.config.gateway import read_center, read_gateway, read_metrics, read_web
from gatewayd.config.lines import Locator
from gatewayd.config.model import POWER_DEFAULTS, Config
from gatewayd.config.points import read_points, read_readers
from gatewayd.config.policies import read_curfew, read_power_rules, read_tariffs, read_water
from gatewayd.config.rooms import read_rooms
from gatewayd.config.validate import Problem, Table
from gatewayd.errors import ConfigError

__all__ = ["DEFAULT_CONFIG_PATH", "load_config", "warning_lines"]

DEFAULT_CONFIG_PATH = Path("/etc/gatewayd/gateway.toml")


def warning_lines(warnings: Sequence[Problem]) -> list[str]:
    """Warnings as printed on stderr: `warning: place: message`."""
    return [f"warning: {w}" for w in warnings]


def load_config(path: Path | str, *, check_files: bool = True) -> Config:
    """Read and validate a config file; raise ConfigError with every problem.

    `check_files` also checks that named files (keys, certificates) can be read
    and that `state_dir` can be created or written.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(path, [Problem("", f"cannot read the file: {e.strerror or e}")]) from e
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as e:
        raise ConfigError(path, [Problem("", f"not UTF-8 text: {e}")]) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, [Problem("", f"invalid TOML: {e}")]) from e
    problems: list[Problem] = []
    warnings: list[Problem] = []
    files = Files(path, check_files, warnings)
    config = _read(path, Table(dict(data), "", problems), files, warnings)
    if problems or warnings:
        # Every place also gets its line and its room, point or reader (lines.py);
        # a clean file is not scanned again (a 500-room file at every start).
        where = Locator(text, data)
        warnings[:] = [where.located(w) for w in warnings]
        problems[:] = [where.located(p) for p in problems]
    if problems or config is None:
        raise ConfigError(path, problems, warnings)
    return replace(config, warnings=tuple(warnings))


def _read(path: Path, root: Table, files: Files, warnings: list[Problem]) -> Config | None:
    """Every table, in the order of config.md; None when a problem was found."""
    # Without [gateway], "gateway: required" says it all: not also its required keys.
    gateway = read_gateway(root.table("gateway", required=True) or Table({}, "gateway", []),
                           files)
    wiring = Wiring(root.problems, gateway.profiles_dir, files)
    center_t = root.table("center")
    center = read_center(center_t, gateway.building, files) if center_t else None
    tariffs = read_tariffs(root.table("tariffs"))
    power_t = root.table("power")
    power = read_power_rules(power_t, POWER_DEFAULTS) if power_t else POWER_DEFAULTS
    curfew_tables = list(power_t.tables("curfew")) if power_t else []
    if power_t:
        power_t.done()
    water = read_water(root.table("water"))
    buses = wiring.buses(root)
    rooms, room_ids = read_rooms(root, gateway.building, power, buses, wiring)
    curfews = tuple(read_curfew(t, room_ids, warnings) for t in curfew_tables)
    readers = read_readers(root, wiring)
    points = read_points(root, readers, buses, tariffs, wiring)
    wiring.check()
    metrics_t = root.table("metrics")
    metrics = read_metrics(metrics_t) if metrics_t else None
    web_t = root.table("web")
    web = read_web(web_t, metrics, warnings) if web_t else None
    root.done()
    if root.problems:
        return None
    return Config(
        path=path,
        gateway=gateway,
        center=center,
        tariffs=tariffs,
        power=power,
        curfews=curfews,
        water=water,
        buses=buses,
        rooms=rooms,
        readers=readers,
        points=points,
        metrics=metrics,
        web=web,
        profiles=dict(wiring.profiles),
        warnings=tuple(warnings),
    )
