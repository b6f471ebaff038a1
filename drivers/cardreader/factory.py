"""Build a card reader from one `[[readers]]` table of the configuration."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from drivers.cardreader import READER_SETTINGS, READER_TYPES
from drivers.cardreader.cardid import LINE_FORMATS, CardFormat, CardIds
from drivers.cardreader.pcsc_reader import PcscCardReader
from drivers.cardreader.reconnect import Backoff
from drivers.cardreader.serial_reader import PROTOCOLS, SerialCardReader
from drivers.protocols import CardReader


def open_reader(
    id: str,  # named after the config keys `id` and `type`
    type: str,
    *,
    debounce_s: float,
    card_format: CardFormat = "hex",
    clock: Callable[[], float] = time.monotonic,
    backoff: Backoff | None = None,
    **settings: Any,
) -> CardReader:
    """A reader for `[[readers]] id/type/...` (nothing is opened until `run()`).

    Args:
        id: the reader id; becomes `CardReader.name` and `Tap.reader`.
        type: "serial" (settings `port`, optional `baudrate` = 9600,
            `protocol` = "rdm6300" or "ascii-line", and for ascii-line
            `line_format` = "hex" or "dec") or "pcsc" (setting `name`, a
            prefix of the PC/SC reader name). Both take `uid_order` =
            "as_read" (the default) or "reversed".
        debounce_s: `gateway.tap_debounce_s`.
        card_format: `gateway.card_format`, "hex" or "dec10".
        clock: monotonic clock for taps and debouncing.
        backoff: reopen policy (default: 0.5 s doubling to 30 s, with jitter).

    Raises:
        ValueError: unknown type or protocol, missing or unknown setting.
    """
    if type not in READER_TYPES:
        raise ValueError(f"reader {id!r}: unknown type {type!r} (expected one of {list(READER_TYPES)})")
    _check_keys(id, settings, READER_SETTINGS[type],
                required=("port",) if type == "serial" else ("name",))
    ids = _card_ids(id, card_format, settings.get("uid_order", "as_read"))
    if type == "pcsc":
        return PcscCardReader(id, str(settings["name"]), ids=ids, debounce_s=debounce_s, clock=clock,
                              backoff=backoff)
    protocol, line_format, baudrate = _serial_settings(id, settings)
    return SerialCardReader(
        id,
        str(settings["port"]),
        baudrate=baudrate,
        protocol=protocol,
        line_format=line_format,
        ids=ids,
        debounce_s=debounce_s,
        clock=clock,
        backoff=backoff,
    )


def _serial_settings(reader: str, settings: dict[str, Any]) -> tuple[Any, Any, int]:
    """A serial reader's checked `protocol`, `line_format` and `baudrate`."""
    protocol = settings.get("protocol", "rdm6300")
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"reader {reader!r}: unknown protocol {protocol!r} (expected one of {sorted(PROTOCOLS)})"
        )
    line_format = settings.get("line_format", "hex")
    if "line_format" in settings and protocol != "ascii-line":
        raise ValueError(f"reader {reader!r}: line_format applies only to ascii-line readers")
    if line_format not in LINE_FORMATS:
        raise ValueError(
            f"reader {reader!r}: unknown line_format {line_format!r} (expected one of {list(LINE_FORMATS)})"
        )
    baudrate = settings.get("baudrate", 9600)
    if not isinstance(baudrate, int) or isinstance(baudrate, bool) or baudrate <= 0:
        raise ValueError(f"reader {reader!r}: baudrate must be a positive integer, not {baudrate!r}")
    return protocol, line_format, baudrate


def _card_ids(reader: str, card_format: CardFormat, uid_order: Any) -> CardIds:
    try:
        return CardIds(card_format, uid_order)
    except ValueError as exc:
        raise ValueError(f"reader {reader!r}: {exc}") from None


def _check_keys(
    reader: str, settings: dict[str, Any], allowed: frozenset[str], required: tuple[str, ...]
) -> None:
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ValueError(f"reader {reader!r}: unknown setting(s) {unknown}")
    missing = [key for key in required if key not in settings]
    if missing:
        raise ValueError(f"reader {reader!r}: missing setting(s) {missing}")
