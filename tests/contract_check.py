"""Check published messages against the published JSON Schemas (docs/schemas/), as a
center would, with a standard validator (`jsonschema`, draft 2020-12, formats checked).

`problem(topic, payload)` picks the schema by topic (status or will, event,
telemetry, result) and returns None or what is wrong. The schemas are used
closed here: an object may hold no key its schema does not list. The files
themselves stay open, because a center must ignore fields a later gateway
adds; this gateway, though, sends exactly what it documents.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema

SCHEMAS = Path(__file__).resolve().parent.parent / "docs" / "schemas"

# Topic suffixes of what a gateway publishes ({prefix}/{building}/...), and their schema.
_BY_SUFFIX = {"/events": "event.json", "/telemetry": "telemetry.json", "/cmd/result": "result.json"}


def closed(node: Any) -> Any:
    """`node` with `additionalProperties: false` on every object schema that lists properties."""
    if isinstance(node, dict):
        out = {k: closed(v) for k, v in node.items()}
        if out.get("type") == "object" and "properties" in out:
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(node, list):
        return [closed(v) for v in node]
    return node


@functools.cache
def validator(name: str, *, strict: bool = True) -> jsonschema.Draft202012Validator:
    """A validator of docs/schemas/`name` (closed when `strict`), checking formats."""
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(
        closed(schema) if strict else schema,
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def schema_for(topic: str, message: Any) -> str | None:
    """The schema file of a message the gateway published on `topic`; None for another topic."""
    if topic.endswith("/status"):
        online = isinstance(message, dict) and message.get("online") is False
        return "will.json" if online else "status.json"
    return next((name for suffix, name in _BY_SUFFIX.items() if topic.endswith(suffix)), None)


def problem(topic: str, payload: bytes) -> str | None:
    """What is wrong with `payload` on `topic` by the published schemas, or None."""
    if not payload:   # a retained message cleared, not a message
        return None
    try:
        message = json.loads(payload)
    except ValueError as e:
        return f"{topic}: not JSON ({e}): {payload[:200]!r}"
    name = schema_for(topic, message)
    if name is None:
        return None
    error = jsonschema.exceptions.best_match(validator(name).iter_errors(message))
    if error is None:
        return None
    return f"{topic}: {name} {error.json_path}: {error.message[:300]} in {payload[:300]!r}"
