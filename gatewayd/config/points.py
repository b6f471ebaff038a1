"""[[readers]] and [[points]]: the card readers, and the water points (shower, drinking)
that take taps from them, each with its valve and flow counter.

Contract of the module: each reader records every problem at its place and
returns what is whole. A reader serves one point; a point priced per litre
needs a flow counter.
"""

from __future__ import annotations

from collections.abc import Mapping

from gatewayd.config.buses import Wiring
from gatewayd.config.model import CARD_KINDS, NAME_RE, NAME_TEXT, SERVICES, Bus, Point, Reader, Tariffs
from gatewayd.config.validate import Table, show

__all__ = ["read_points", "read_readers"]


def read_readers(root: Table, wiring: Wiring) -> dict[str, Reader]:
    """[[readers]], by id."""
    readers: dict[str, Reader] = {}
    for t in root.tables("readers"):
        rid = t.text("id", "", required=True, pattern=NAME_RE, pattern_text=NAME_TEXT)
        kind = t.text("type", "", required=True, choices=("serial", "pcsc"))
        if kind == "serial":
            reader = Reader(
                id=rid,
                type="serial",
                port=wiring.serial_port(t, f"reader {show(rid)}"),
                baudrate=t.integer("baudrate", 9600, minimum=300, maximum=921600),
                protocol=t.text(  # type: ignore[arg-type]
                    "protocol", "rdm6300", choices=("rdm6300", "ascii-line")
                ),
            )
        elif kind == "pcsc":
            reader = Reader(id=rid, type="pcsc", name=t.text("name", "", required=True))
        else:
            t.done(allowed_extra=("port", "baudrate", "protocol", "name"))
            continue
        if t.unique("id", rid, readers, "reader"):
            readers[rid] = reader
        t.done()
    return readers


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
