"""The `gatewayd` command: run the daemon, check a config, and tools for staff."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from gatewayd import __version__
from gatewayd.app import logs
from gatewayd.config.load import DEFAULT_CONFIG_PATH, load_config, warning_lines
from gatewayd.errors import ConfigError, StoreError
from gatewayd.store.db import Store

# Exit codes: 0 done, 1 failure at run time, 2 unusable config or state (do not restart).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

log = structlog.get_logger("gatewayd")


#: Commands the daemon's own process runs: the staff tools are not imported for
#: them (a smaller, faster-starting daemon on the Pi).
CORE_COMMANDS = ("run", "check-config")


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(with_tools=not (words and words[0] in CORE_COMMANDS))
    args = parser.parse_args(words)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_CONFIG
    try:
        code: int = args.func(args)
    except BrokenPipeError:
        # `gatewayd status --json | head`: the reader left; no traceback for that.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return code


def _parser(*, with_tools: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gatewayd", description="Building gateway of the campus one-card system."
    )
    p.add_argument("--version", action="version", version=f"gatewayd {__version__}")
    sub = p.add_subparsers(metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH,
                     help=f"config file (default {DEFAULT_CONFIG_PATH})")
    run.add_argument("--log-level", choices=logs.LEVELS, default="info")
    run.add_argument("--log-format", choices=("auto", "json", "console"), default="auto",
                     help="json when stdout is not a terminal (journald), by default")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="check a config file and the profiles it uses")
    check.add_argument("file", type=Path, nargs="?", default=DEFAULT_CONFIG_PATH)
    check.set_defaults(func=cmd_check_config)

    status = sub.add_parser("status", help="show the running daemon's state (safe while it runs)")
    status.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH)
    status.add_argument("--json", action="store_true", help="machine-readable")
    status.set_defaults(func=cmd_status)

    if with_tools:
        from gatewayd.tools import centertool, demo, probe, profiles

        demo.add_subcommand(sub)
        centertool.add_subcommands(sub)
        profiles.add_subcommand(sub)
        probe.add_subcommand(sub)
    return p


def cmd_status(args: argparse.Namespace) -> int:
    from gatewayd.tools.status import render

    try:
        config = load_config(args.config, check_files=False)
    except ConfigError as e:
        _print_lines(e.lines())
        return EXIT_CONFIG
    return render(config.gateway.state_dir, as_json=args.json)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as e:
        _print_lines([*e.lines(), *warning_lines(e.warnings)])
        return EXIT_CONFIG
    _print_lines(warning_lines(config.warnings))
    print(f"{args.file}: ok, {config.summary()}")
    return EXIT_OK


def _print_lines(lines: Sequence[str]) -> None:
    """Problems and warnings go to stderr, one a line (the spec's `place: message`)."""
    for line in lines:
        print(line, file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    # `systemctl reload` before the supervisor takes SIGHUP over (while the store
    # opens) must not kill the daemon, as SIGHUP's default action would.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    fmt = args.log_format
    logs.setup(args.log_level, json=None if fmt == "auto" else fmt == "json")
    try:
        config = load_config(args.config)
    except ConfigError as e:
        for problem in e.problems:
            log.error("config_invalid", file=str(e.path), problem=str(problem))
        _print_lines(e.lines())
        return EXIT_CONFIG
    for warning in config.warnings:
        log.warning("config_warning", file=str(config.path), warning=str(warning))
    try:
        store = Store.open(config.gateway.state_dir, config.gateway.building)
    except StoreError as e:
        log.error("store_refused", error=str(e))
        print(f"gatewayd: {e}", file=sys.stderr)
        return EXIT_CONFIG
    from gatewayd.app.daemon import serve

    try:
        asyncio.run(serve(config, store))
    except KeyboardInterrupt:
        pass
    finally:
        store.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
