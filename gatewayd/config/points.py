"""[[readers]] and [[points]]: the card readers, and the water points (shower, drinking)
that take taps from them, each with its valve and flow counter.

Contract of the module: each reader records every problem at its place and
returns what is whole. A reader serves one point; a point priced per litre
needs a flow counter. Every reader may say `uid_order`; only an ascii-line
reader says `line_format` (what its lines hold).
"""

from __future__ import annotations

from collections.abc import Mapping

from drivers.cardreader import READER_SETTINGS, READER_TYPES
from drivers.cardreader.cardid import LINE_FORMATS, UID_ORDERS
from gatewayd.config.buses import Wiring
from gatewayd.config.model import CARD_KINDS, NAME_RE, NAME_TEXT, SERVICES, Bus, Point, Reader, Tariffs
from gatewayd.config.validate import Table, show

__all__ = ["read_points", "read_readers"]


def read_readers(root: Table, wiring: Wiring) -> dict[str, Reader]:
    """[[readers]], by id."""
    readers: dict[str, Reader] = {}
    for t in root.tables("readers"):
        rid = t.text("id", "", required=True, pattern=NAME_RE, pattern_text=NAME_TEXT)
        kind = t.text("type", "", required=True, choices=READER_TYPES)
        uid_order = t.text("uid_order", "as_read", choices=UID_ORDERS)
        if kind == "serial":
            reader = _serial_reader(t, rid, wiring, uid_order)
        elif kind == "pcsc":
            if t.has("line_format"):
                t.problem("line_format", "only an ascii-line reader has one (protocol = "
                          '"ascii-line"); a pcsc reader reads the card\'s UID')
            reader = Reader(id=rid, type="pcsc", name=t.text("name", "", required=True),
                            uid_order=uid_order)  # type: ignore[arg-type]
        else:
            t.done(allowed_extra=sorted(set().union(*READER_SETTINGS.values())))
            continue
        if t.unique("id", rid, readers, "reader"):
            readers[rid] = reader
        t.done(allowed_extra=("line_format",))
    return readers


def _serial_reader(t: Table, rid: str, wiring: Wiring, uid_order: str) -> Reader:
    """A `type = "serial"` reader: its port, speed, protocol and (ascii-line) line format."""
    port = wiring.serial_port(t, f"reader {show(rid)}")
    baudrate = t.integer("baudrate", 9600, minimum=300, maximum=921600)
    protocol = t.text("protocol", "rdm6300", choices=("rdm6300", "ascii-line"))
    line_format = "hex"
    if protocol == "ascii-line":
        line_format = t.text("line_format", "hex", choices=LINE_FORMATS)
    elif t.has("line_format"):
        t.problem("line_format", f'only an ascii-line reader has one (protocol = "ascii-line"); '
                  f"this reader's protocol is {show(protocol)}")
    return Reader(id=rid, type="serial", port=port, baudrate=baudrate,
                  protocol=protocol, uid_order=uid_order,  # type: ignore[arg-type]
                  line_format=line_format)  # type: ignore[arg-type]


def read_points(
    root: Table,
    readers: Mapping[str, Reader],
    buses: Mapping[str, Bus],
    tariffs: Tariffs,
    wiring: Wiring,
) -> tuple[Point, ...]:
    """[[points]]."""
    points: list[Point] = []
    seen: set[str] = set()
    reader_owner: dict[str, str] = {}
    for t in root.tables("points"):
        pid = t.text("id", "", required=True, pattern=NAME_RE, pattern_text=NAME_TEXT)
        if t.unique("id", pid, seen, "point"):
            seen.add(pid)
        service = t.text("service", "", required=True, choices=SERVICES)
        reader = t.text("reader", "", required=True)
        if reader and reader not in readers:
            t.problem("reader", f"no reader with id {show(reader)}")
        elif reader in reader_owner:
            t.problem("reader", f"reader {show(reader)} is already used by point "
                      f"{show(reader_owner[reader])}")
        elif reader:
            reader_owner[reader] = pid
        valve = wiring.device(t, "valve", "switch", buses, channel=True)
        if valve:
            wiring.use(t.at("valve"), f"point {show(pid)}", "switch", valve)
        flow = wiring.device(t, "flow", "counter", buses, required=False, channel=True, flow=True)
        if flow:
            wiring.use(t.at("flow"), f"point {show(pid)}", "counter", flow)
        kinds = t.str_list("kinds", choices=CARD_KINDS, default=("student", "teacher", "family"))
        if service in SERVICES and tariffs.of(service).unit == "L" and not t.has("flow"):
            t.problem(
                "flow",
                f'required: tariffs.{service} is priced per "L", which needs a flow meter '
                '(or price this service per "min")',
            )
        t.done()
        if pid and valve and service and reader in readers:
            points.append(Point(pid, service, reader, valve, flow, frozenset(kinds)))  # type: ignore[arg-type]
    return tuple(points)
