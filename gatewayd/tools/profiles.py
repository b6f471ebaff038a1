"""`gatewayd profiles`: the device profiles a config can name, shipped and site ones.

Contract: lists every profile of the site's `gateway.profiles_dir` (read from the
config file, even one with other problems: a missing profile is when staff look)
and of the shipped folder, one a line: name, kind, protocol, model and where it
comes from; a site profile with a shipped one's name says that it replaces it. A
profile that does not load is listed as invalid, its problems on stderr, and the
exit code is 1.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from drivers.errors import ProfileError
from drivers.profile import SHIPPED_DIR, Profile, available_profiles, load_profile_file
from gatewayd.config.files import Files
from gatewayd.config.gateway import DEFAULT_PROFILES_DIR
from gatewayd.config.load import DEFAULT_CONFIG_PATH
from gatewayd.tools.probe_show import print_table

__all__ = ["add_subcommand"]

HEADINGS = ("NAME", "KIND", "PROTOCOL", "MODEL", "FROM")


def add_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("profiles", help="list the device profiles: shipped and the site's",
                       description="List the device profiles a config can name: the site's "
                       "(gateway.profiles_dir) and the shipped ones.")
    p.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH,
                   help=f"config file naming profiles_dir (default {DEFAULT_CONFIG_PATH})")
    p.add_argument("--profiles-dir", type=Path, help="the site's profile folder (instead of "
                   "the config file's)")
    p.set_defaults(func=cmd_profiles)


def site_dir(config: Path) -> tuple[Path, str]:
    """The site's profile folder per `config`'s `gateway.profiles_dir`, and a note when
    the file could not say (then the default folder)."""
    try:
        data = tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        return Path(DEFAULT_PROFILES_DIR), f"{config}: cannot read it ({e}): site profiles " \
            f"from {DEFAULT_PROFILES_DIR}"
    gateway = data.get("gateway")
    value = gateway.get("profiles_dir") if isinstance(gateway, dict) else None
    if not isinstance(value, str) or not value or "\0" in value:
        return Path(DEFAULT_PROFILES_DIR), ""
    return Files(config, False, []).resolve(value), ""


def cmd_profiles(args: argparse.Namespace) -> int:
    note = ""
    if args.profiles_dir is not None:
        site = args.profiles_dir
    else:
        site, note = site_dir(args.config)
    if note:
        print(f"note: {note}", file=sys.stderr)
    site_files = available_profiles([site]) if site.resolve() != SHIPPED_DIR else {}
    shipped = available_profiles([SHIPPED_DIR])
    rows: list[tuple[str, ...]] = []
    problems: list[str] = []
    for name in sorted({*site_files, *shipped}):
        path = site_files.get(name) or shipped[name]
        where = f"site {path}" if name in site_files else "shipped"
        if name in site_files and name in shipped:
            where += " (replaces the shipped one)"
        try:
            profile: Profile | None = load_profile_file(path)
        except ProfileError as e:
            profile = None
            problems += [str(p) for p in e.problems]
        rows.append(_row(name, profile, where))
    print_table(HEADINGS, rows)
    if not site.is_dir():
        print(f"(no site profiles: {site} is not a folder)")
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


def _row(name: str, profile: Profile | None, where: str) -> tuple[str, ...]:
    if profile is None:
        return (name, "-", "-", "INVALID (its problems on stderr)", where)
    return (name, profile.kind, profile.protocol, profile.model, where)
