"""The scalar kinds the published messages carry, as annotated types.

A UUID, an RFC 3339 time, a ``seq``, an amount of fen: each is a plain ``str``
or ``int`` at run time, annotated once here with what the contract says of it
(center-link.md "Conventions"). The message Structs (``contract.events``,
``contract.wire``, ``contract.results``) use these names, so the JSON Schemas
generated from them (``contract.schemas``) say it too: ``"format": "uuid"``,
``"format": "date-time"``, ``"minimum": 1``, and a description.

Contract of the layer: pure, no I/O. Annotations only inform the schemas and
``msgspec`` decoding (``decode_event``); encoding ignores them.
"""

from __future__ import annotations

from typing import Annotated, Final

from msgspec import Meta

__all__ = [
    "JSON_INT_MAX",
    "Fen",
    "Seq",
    "Timestamp",
    "Uuid",
    "Wh",
]

#: The largest integer every JSON peer (an IEEE double) holds exactly: 2**53 - 1.
JSON_INT_MAX: Final = 2**53 - 1

Uuid = Annotated[str, Meta(
    description="A random UUID (version 4), lower-case, with hyphens.",
    extra_json_schema={"format": "uuid"},
)]
Timestamp = Annotated[str, Meta(
    description="An RFC 3339 date-time with the building's offset and milliseconds.",
    extra_json_schema={"format": "date-time"},
    examples=["2026-11-23T21:04:05.120+08:00"],
)]
Seq = Annotated[int, Meta(
    ge=1,
    description="Per building and store: the first event is 1, each next one exactly 1 more.",
)]
Fen = Annotated[int, Meta(description="Money, an integer number of fen (1 yuan = 100 fen).")]
Wh = Annotated[int, Meta(description="Energy, an integer number of Wh.")]
