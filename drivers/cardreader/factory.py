"""Build a card reader from one `[[readers]]` table of the configuration."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from drivers.cardreader.pcsc_reader import PcscCardReader
from drivers.cardreader.reconnect import Backoff
from drivers.cardreader.serial_reader import PROTOCOLS, SerialCardReader
from drivers.protocols import CardReader

READER_TYPES = ("serial", "pcsc")
_SERIAL_KEYS = frozenset({"port", "baudrate", "protocol"})
_PCSC_KEYS = frozenset({"name"})


def open_reader(
    id: str,  # named after the config keys `id` and `type`
    type: str,
    *,
    debounce_s: float,
    clock: Callable[[], float] = time.monotonic,
    backoff: Backoff | None = None,
    **settings: Any,
) -> CardReader:
    """A reader for `[[readers]] id/type/...` (nothing is opened until `run()`).

    Args:
        id: the reader id; becomes `CardReader.name` and `Tap.reader`.
        type: "serial" (settings `port`, optional `baudrate` = 9600 and
            `protocol` = "rdm6300" or "ascii-line") or "pcsc" (setting `name`,
            a prefix of the PC/SC reader name).
        debounce_s: `gateway.tap_debounce_s`.
        clock: monotonic clock for taps and debouncing.
        backoff: reopen policy (default: 0.5 s doubling to 30 s, with jitter).

    Raises:
        ValueError: unknown type or protocol, missing or unknown setting.
    """
    if type == "serial":
        _check_keys(id, settings, _SERIAL_KEYS, required=("port",))
        protocol = settings.get("protocol", "rdm6300")
        if protocol not in PROTOCOLS:
            raise ValueError(
                f"reader {id!r}: unknown protocol {protocol!r} (expected one of {sorted(PROTOCOLS)})"
            )
        baudrate = settings.get("baudrate", 9600)
        if not isinstance(baudrate, int) or isinstance(baudrate, bool) or baudrate <= 0:
            raise ValueError(f"reader {id!r}: baudrate must be a positive integer, not {baudrate!r}")
        return SerialCardReader(
            id,
            str(settings["port"]),
            baudrate=baudrate,
            protocol=protocol,
            debounce_s=debounce_s,
            clock=clock,
            backoff=backoff,
        )
    if type == "pcsc":
        _check_keys(id, settings, _PCSC_KEYS, required=("name",))
        return PcscCardReader(id, str(settings["name"]), debounce_s=debounce_s, clock=clock, backoff=backoff)
    raise ValueError(f"reader {id!r}: unknown type {type!r} (expected one of {list(READER_TYPES)})")


def _check_keys(
    reader: str, settings: dict[str, Any], allowed: frozenset[str], required: tuple[str, ...]
) -> None:
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ValueError(f"reader {reader!r}: unknown setting(s) {unknown}")
    missing = [key for key in required if key not in settings]
    if missing:
        raise ValueError(f"reader {reader!r}: missing setting(s) {missing}")
