"""`gatewayd probe ...`: commissioning commands for new hardware, before the daemon runs it.

    gatewayd probe meter  --room 301                      # raw registers and scaled values
    gatewayd probe switch --room 301 --off                # command a breaker, read it back
    gatewayd probe reader --reader r-shower-1 --count 3   # the cards a reader sees
    gatewayd probe scan   --bus rs485-a --units 1-40      # who answers on a bus

Contract: a device is named from the config file (`--room`, `--point`, `--reader`,
`--bus`) or given by options (`--port` or `--host`, `--unit` or `--address`,
`--profile`). Nothing is touched while the daemon owns it (`probe_owner`): exit code 3
and what to do. Exit codes: 0 done, 1 the device did not answer or did not follow,
2 a usage or config problem, 3 refused (the daemon, or another program, has the bus).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import structlog

from drivers.dlt645.bus import Dlt645Bus
from drivers.dlt645.credentials import read_credentials
from drivers.errors import DriverError
from gatewayd.config.load import DEFAULT_CONFIG_PATH
from gatewayd.config.model import Bus, DeviceRef
from gatewayd.errors import ConfigError, ProbeRefused, ProbeUsage
from gatewayd.services.hardware import AnyBus, make_bus
from gatewayd.tools import probe_dlt645, probe_modbus
from gatewayd.tools.probe_target import Site, parse_addresses, parse_units

__all__ = ["add_subcommand"]

DESCRIPTION = """\
Bring up new hardware before the daemon runs it: read a meter (raw registers and
scaled values, so a wrong scale is seen), switch a breaker, relay or valve and
read it back, see the cards a reader reads, find the devices on a bus.

  gatewayd probe meter  --room 301                      # a room of the config file
  gatewayd probe meter  --port /dev/ttyUSB0 --unit 5 --profile eastron-sdm120
  gatewayd probe switch --room 301 --off                # then --on
  gatewayd probe reader --reader r-shower-1 --count 3
  gatewayd probe scan   --port /dev/ttyUSB0 --units 1-40

A device in use by the running daemon is not touched (stop it first:
systemctl stop gatewayd). Exit codes: 0 done, 1 the device did not answer or
did not follow, 2 a usage or config problem, 3 refused: the bus is in use.
"""

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
# A scan asks up to 247 units: a short wait each (a device on RS-485 answers a
# one-register read in a few tens of milliseconds), raised with --timeout.
SCAN_TIMEOUT_S = 0.2
SCAN_TIMEOUT_DLT645_S = 0.5   # 2400 baud: a read and its answer take ~0.15 s on the wire


def add_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("probe", help="commissioning: read a meter, switch a relay, watch a "
                       "reader, scan a bus (refused while the daemon owns the bus)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=lambda _args: _usage(p))
    kinds = p.add_subparsers(metavar="KIND")
    meter = kinds.add_parser("meter", help="read one meter: raw registers and scaled values")
    meter.add_argument("--room", help="the room's meter, from the config file")
    _device_options(meter)
    meter.set_defaults(func=cmd_probe, probe="meter")
    switch = kinds.add_parser("switch", help="read a breaker, relay or valve; switch it with "
                              "--on/--off and read it back")
    where = switch.add_mutually_exclusive_group()
    where.add_argument("--room", help="the room's breaker, from the config file")
    where.add_argument("--point", help="the water point's valve, from the config file")
    state = switch.add_mutually_exclusive_group()
    state.add_argument("--on", dest="on", action="store_true", default=None,
                       help="close the breaker or relay, open the valve")
    state.add_argument("--off", dest="on", action="store_false", help="cut or close it")
    _device_options(switch, channel=True)
    switch.add_argument("--force", action="store_true", help="switch a Modbus TCP device "
                        "while the daemon polls its endpoint (it may switch it back)")
    switch.set_defaults(func=cmd_probe, probe="switch")
    _reader_parser(kinds)
    scan = kinds.add_parser("scan", help="which Modbus units or DL/T 645 meters answer on a bus")
    _line_options(scan)
    scan.add_argument("--units", default="1-247", help="Modbus units to ask (default 1-247; "
                      "e.g. 1-40,200)")
    scan.add_argument("--addresses", default="", help="DL/T 645 addresses to ask (12 digits, "
                      "comma-separated, or FIRST-LAST); default: the wildcard read of the "
                      "address, which one meter wired alone answers")
    scan.add_argument("--profile", help="Modbus: read this profile's first field instead of "
                      "holding register 0")
    scan.add_argument("--force", action="store_true", help="scan a Modbus TCP endpoint the "
                      "daemon polls (the scan slows its polls)")
    scan.set_defaults(func=cmd_probe, probe="scan")


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return EXIT_USAGE


def _line_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH,
                   help=f"config file (default {DEFAULT_CONFIG_PATH}, if it exists)")
    p.add_argument("--bus", help="a bus of the config file, by name")
    p.add_argument("--port", help="a serial port (RS-485), e.g. /dev/ttyUSB0")
    p.add_argument("--host", help="a Modbus TCP endpoint, HOST or HOST:PORT (port 502)")
    p.add_argument("--dlt645", action="store_true",
                   help="the devices on --port speak DL/T 645-2007 (default Modbus)")
    p.add_argument("--baudrate", type=int, help="default 9600, DL/T 645 2400")
    p.add_argument("--parity", choices=("N", "E", "O"), help="default N, DL/T 645 E")
    p.add_argument("--stopbits", type=int, choices=(1, 2), default=None, help="default 1")
    p.add_argument("--timeout", type=float, help="seconds a device has to answer")
    p.add_argument("-v", "--verbose", action="store_true", help="the drivers' log lines too")


def _device_options(p: argparse.ArgumentParser, *, channel: bool = False) -> None:
    _line_options(p)
    p.add_argument("--unit", type=int, help="Modbus unit id")
    p.add_argument("--address", help="DL/T 645 meter address (12 digits)")
    p.add_argument("--profile", help="device profile (gatewayd profiles lists them)")
    if channel:
        p.add_argument("--channel", type=int, default=0, help="relay board channel (default 0)")
        p.add_argument("--invert", action="store_true", help="a relay wired the other way")
        p.add_argument("--password-file", type=Path,
                       help="DL/T 645 relay: the LEVEL:PASSWORD:OPERATOR file")


def _reader_parser(kinds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reader = kinds.add_parser("reader", help="show the cards a reader sees, as card ids")
    reader.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH,
                        help=f"config file (default {DEFAULT_CONFIG_PATH}, if it exists)")
    reader.add_argument("--reader", help="a reader of the config file, by id")
    reader.add_argument("--port", help="a serial reader's port")
    reader.add_argument("--protocol", choices=("rdm6300", "ascii-line"), default="rdm6300")
    reader.add_argument("--line-format", choices=("hex", "dec"), default="hex",
                        help="ascii-line: what a line holds")
    reader.add_argument("--baudrate", type=int, default=9600)
    reader.add_argument("--uid-order", choices=("as_read", "reversed"), default="as_read")
    reader.add_argument("--card-format", choices=("hex", "dec10"),
                        help="default: the config file's gateway.card_format, else hex")
    reader.add_argument("--count", type=int, default=0, help="stop after N taps "
                        "(default: until Ctrl-C)")
    reader.add_argument("-v", "--verbose", action="store_true", help="the drivers' log lines too")
    reader.set_defaults(func=cmd_probe, probe="reader")


def cmd_probe(args: argparse.Namespace) -> int:
    _quiet_logs(args.verbose)
    try:
        named = any(getattr(args, k, None) for k in ("room", "point", "reader", "bus"))
        site = Site.load(args.config, named=named)
        return asyncio.run(_probe(args, site))
    except ProbeUsage as e:
        print(f"gatewayd probe: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as e:
        for line in e.lines():
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except ProbeRefused as e:
        print(f"refused: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except DriverError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


def _quiet_logs(verbose: bool) -> None:
    """The probe says what went wrong itself: the drivers' log lines only with -v."""
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if verbose else logging.CRITICAL),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


async def _probe(args: argparse.Namespace, site: Site) -> int:
    if args.probe == "reader":
        from gatewayd.tools.probe_reader import watch

        reader, ids = site.reader(args)
        return await watch(reader, ids, args.count)
    if args.probe == "scan":
        bus = site.bus(args, default_timeout=SCAN_TIMEOUT_DLT645_S if args.dlt645 else
                       SCAN_TIMEOUT_S, retries=0)
        _claim(site, bus, writes=True, force=args.force)
        return await _on_bus(bus, lambda driver: _scan(driver, bus, args, site))
    name, bus, ref = site.device(args)
    _claim(site, bus, writes=args.probe == "switch" and args.on is not None,
           force=getattr(args, "force", False))
    print(f"{name}: {_describe(bus, ref)}", flush=True)
    if args.probe == "meter":
        return await _on_bus(bus, lambda driver: _meter(driver, name, ref))
    return await _on_bus(bus, lambda driver: _switch(driver, name, ref, site, args.on))


def _claim(site: Site, bus: Bus, *, writes: bool, force: bool) -> None:
    """Refuse (`ProbeRefused`) a bus the daemon or another program has; print any note."""
    if bus.type == "rtu":
        site.owner.check_port(bus.port)
        return
    if note := site.owner.check_tcp(bus, writes=writes, force=force):
        print(note, file=sys.stderr)


def _describe(bus: Bus, ref: DeviceRef) -> str:
    line = (f"{bus.host}:{bus.tcp_port}" if bus.type == "tcp" else
            f"{bus.port} {bus.baudrate} {bus.parity}{bus.stopbits}")
    where = f"address {ref.address}" if ref.address else f"unit {ref.unit}"
    if not ref.address and ref.profile.kind == "switch":
        where += f" channel {ref.channel}"
    profile = ref.profile
    named = f"{profile.name}" + (f" ({profile.model})" if profile.model != profile.name else "")
    return f"{where} on {line}, profile {named}"


async def _on_bus(bus: Bus, work: Callable[[AnyBus], Awaitable[int]]) -> int:
    """`work` on the driver of `bus`, started and closed around it."""
    driver = make_bus(bus)
    await driver.start()
    try:
        return await work(driver)
    finally:
        await driver.close()


async def _meter(driver: AnyBus, name: str, ref: DeviceRef) -> int:
    if isinstance(driver, Dlt645Bus):
        return await probe_dlt645.read_meter(driver, name, ref)
    return await probe_modbus.read_meter(driver, name, ref)


async def _switch(driver: AnyBus, name: str, ref: DeviceRef, site: Site, on: bool | None) -> int:
    if not isinstance(driver, Dlt645Bus):
        return await probe_modbus.switch(driver, name, ref, on)
    credentials = None
    if on is not None:
        if ref.password_file is None:
            raise ProbeUsage("--password-file: switching a DL/T 645 relay needs its password")
        try:
            credentials = read_credentials(ref.password_file)
        except (OSError, ValueError) as e:
            raise ProbeUsage(f"--password-file: {e}") from None
    return await probe_dlt645.switch(driver, name, ref, credentials=credentials,
                                     tz=ZoneInfo(site.timezone), on=on)


async def _scan(driver: AnyBus, bus: Bus, args: argparse.Namespace, site: Site) -> int:
    line = (f"{bus.host}:{bus.tcp_port}" if bus.type == "tcp" else
            f"{bus.port} {bus.baudrate} {bus.parity}{bus.stopbits}")
    if isinstance(driver, Dlt645Bus):
        addresses = parse_addresses(args.addresses)
        asked = f"{len(addresses)} addresses" if addresses else "the wildcard address"
        print(f"scanning {line} (DL/T 645) for {asked}, {bus.timeout_s:g} s each", flush=True)
        return await probe_dlt645.scan(driver, addresses)
    units = parse_units(args.units)
    profile = site.profile(args.profile, "meter", bus) if args.profile else None
    print(f"scanning {line} (Modbus) for {len(units)} units, {bus.timeout_s:g} s each",
          flush=True)
    return await probe_modbus.scan(driver, units, profile)
