"""The JSON Schemas of the center link (docs/schemas/), generated from the contract's own types.

Every message the gateway publishes or accepts is a ``msgspec`` Struct of
``contract.events``, ``contract.wire``, ``contract.results`` or
``contract.command_types``; ``json_schemas()`` turns those classes into JSON
Schema (draft 2020-12) documents, so the published schemas cannot drift from
the code. One self-contained file per message type, and a ``oneOf`` per family:

- ``event.json`` and ``event.<type>.json``: the envelope, ``type``, the fields;
- ``status.json``, ``will.json``, ``telemetry.json``;
- ``command.json`` and ``command.<type>.json``: the command and its ``args``;
- ``result.json`` and ``result.<type>.json``: success (its shapes) or failure.

What a field's type cannot say (a rule across fields, what ``command_args``
also accepts) is added in ``_EVENT_RULES`` and ``_ARGS_RULES`` below. Objects
are open (no ``additionalProperties: false``): the contract grows by adding
fields, which a consumer must ignore.

Contract of the layer: pure, no I/O; ``gatewayd.tools.contract_docs`` writes
the files.
"""

from __future__ import annotations

import copy
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import msgspec

from gatewayd.contract.command_types import Command, CommandArgs
from gatewayd.contract.enums import CommandType
from gatewayd.contract.events import EventBody, EventEnvelope
from gatewayd.contract.results import RESULT_SHAPES
from gatewayd.contract.wire import ResultError, ResultOk, Status, Telemetry, Will

__all__ = ["DIALECT", "json_schemas"]

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

Schema = dict[str, Any]

_EVENT_RULES: Final[Mapping[str, Schema]] = {
    "tap": {"if": {"properties": {"granted": {"const": True}}, "required": ["granted"]},
            "then": {"properties": {"reason": {"enum": ["start", "stop"]}}},
            "else": {"properties": {"reason": {"not": {"enum": ["start", "stop"]}}}}},
    "alarm": {"if": {"properties": {"code": {"const": "meter_jump"}}, "required": ["code"]},
              "then": {"properties": {"detail": {"type": "integer", "minimum": 0}}}},
}


def _not_both(a: str, b: str) -> Schema:
    return {"not": {"properties": {a: {"type": "string"}, b: {"type": "string"}}, "required": [a, b]}}


_ARGS_RULES: Final[Mapping[CommandType, Schema]] = {
    CommandType.STATE_GET: {"allOf": [_not_both("room", "account"), _not_both("room", "card"),
                                      _not_both("account", "card")]},
    CommandType.TARIFF_SET: {
        "if": {"properties": {"service": {"const": "power"}}, "required": ["service"]},
        "then": {"properties": {"unit": {"const": "kWh"}}},
        "else": {"properties": {"unit": {"enum": ["L", "min"]}}}},
}


def json_schemas() -> dict[str, Schema]:
    """Every schema file, by file name, in a stable order."""
    files: dict[str, Schema] = {}
    files |= _events()
    files["status.json"] = _document("status", [Status], lambda s, _: s[0])
    files["will.json"] = _document("will", [Will], lambda s, _: s[0])
    files["telemetry.json"] = _document("telemetry", [Telemetry], lambda s, _: s[0])
    files |= _commands()
    files |= _results()
    return files


# --- building documents -----------------------------------------------------------


#: Composes a document's root from the schemas of its types and the components.
Root = Callable[[list[Schema], dict[str, Schema]], Schema]


def _document(title: str, types: list[Any], root: Root, description: str | None = None) -> Schema:
    """A self-contained document: ``root(schemas, components)`` composed from the
    schemas of ``types``, with every component it may refer to in ``$defs``."""
    schemas, components = msgspec.json.schema_components(types, ref_template="#/$defs/{name}")
    body = _resolve(root(list(schemas), components), components)
    doc: Schema = {"$schema": DIALECT, "title": title}
    description = description or body.pop("description", None)
    if description:
        doc["description"] = description
    doc |= {k: v for k, v in body.items() if k != "title"}
    used: Schema = {}
    while grown := {n: components[n] for n in components if n not in used and _refers([doc, used], n)}:
        used |= grown
    used = dict(sorted(used.items()))
    if used:
        doc["$defs"] = used
    polished: Schema = _polish(doc)
    return polished


def _resolve(schema: Schema, components: Mapping[str, Schema]) -> Schema:
    """Inline a top-level ``$ref`` (a copy): a document's root is its message, not a pointer."""
    ref = schema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**components[ref.removeprefix("#/$defs/")], **rest}
    return copy.deepcopy(schema)


def _refers(doc: Any, name: str) -> bool:
    return f'"#/$defs/{name}"' in msgspec.json.encode(doc).decode()


def _polish(node: Any) -> Any:
    """Docstrings' ``literal`` marks become Markdown's; ``format: decimal`` (msgspec's,
    not a JSON Schema format) goes, the pattern says it; so does the default of a
    constant (``duplicate`` is absent, never false)."""
    if isinstance(node, dict):
        out = {k: _polish(v) for k, v in node.items()
               if not (k == "format" and v == "decimal") and not (k == "default" and "const" in node)}
        if isinstance(out.get("description"), str):
            out["description"] = out["description"].replace("``", "`")
        return out
    if isinstance(node, list):
        return [_polish(v) for v in node]
    return node


def _merge(*parts: Schema) -> Schema:
    """An object schema with the properties and required keys of ``parts``, in order."""
    out: Schema = {"type": "object", "properties": {}, "required": []}
    for part in parts:
        out["properties"] |= part.get("properties", {})
        out["required"] += [r for r in part.get("required", []) if r not in out["required"]]
    return out


def _union(title: str, description: str, members: Iterable[Schema]) -> Schema:
    """One document whose root is the ``oneOf`` of self-contained ``members``."""
    defs: Schema = {}
    one_of = []
    for member in members:
        defs |= member.get("$defs", {})
        one_of.append({k: v for k, v in member.items() if k not in ("$schema", "$defs")})
    doc: Schema = {"$schema": DIALECT, "title": title, "description": description, "oneOf": one_of}
    if defs:
        doc["$defs"] = dict(sorted(defs.items()))
    return doc


# --- events --------------------------------------------------------------------------


def _event_bodies() -> list[Any]:
    return list(typing.get_args(EventBody))


def _events() -> dict[str, Schema]:
    files: dict[str, Schema] = {}
    for body in _event_bodies():
        name = _type_tag(body)

        def root(schemas: list[Schema], comps: dict[str, Schema], name: str = name) -> Schema:
            envelope, own = (_resolve(s, comps) for s in schemas)
            return {**_merge(envelope, own), "description": own.get("description", ""),
                    **_EVENT_RULES.get(name, {})}

        files[f"event.{name}.json"] = _document(f"event {name}", [EventEnvelope, body], root)
    files["event.json"] = _union(
        "event", "One event on {root}/events: the envelope, `type`, then the fields of its type.",
        [files[f"event.{_type_tag(b)}.json"] for b in _event_bodies()])
    return dict(sorted(files.items()))


def _type_tag(body: type[msgspec.Struct]) -> str:
    """The ``type`` tag of an event body class."""
    tag = body.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


# --- commands ----------------------------------------------------------------------


def _args_classes() -> list[Any]:
    return list(typing.get_args(CommandArgs))


def _commands() -> dict[str, Schema]:
    files: dict[str, Schema] = {}
    for args in _args_classes():
        ctype: CommandType = args.TYPE

        def root(schemas: list[Schema], comps: dict[str, Schema], ctype: CommandType = ctype) -> Schema:
            envelope = _resolve(schemas[0], comps)
            arg_name = envelope["properties"]["args"]["$ref"].removeprefix("#/$defs/")
            comps[arg_name] = _wire_args(comps[arg_name], _ARGS_RULES.get(ctype, {}))
            envelope["properties"]["type"] = {"const": ctype.value}
            if not comps[arg_name]["required"]:   # ping, state.get: args may be left out or null
                envelope["properties"]["args"] = {"anyOf": [envelope["properties"]["args"],
                                                            {"type": "null"}]}
                envelope["required"] = [r for r in envelope["required"] if r != "args"]
            for nested in ("CardPut",) if ctype is CommandType.CARDS_LOAD else ():
                comps[nested] = _wire_args(comps[nested], {})
            return {**envelope, "description": comps[arg_name].get("description", "")}

        generic: Any = Command
        command = generic[args]
        files[f"command.{ctype.value}.json"] = _document(f"command {ctype.value}", [command], root)
    files["command.json"] = _union(
        "command", "One command on {root}/cmd or {prefix}/all/cmd.",
        [files[f"command.{a.TYPE.value}.json"] for a in _args_classes()])
    return dict(sorted(files.items()))


def _wire_args(schema: Schema, rules: Schema) -> Schema:
    """An ``args`` schema as ``command_args`` reads it: an optional argument may
    also be null, and a date may be written as an RFC 3339 date-time."""
    props = {}
    for key, prop in schema["properties"].items():
        wire = _date_or_time(prop)
        if key not in schema["required"] and not _nullable(wire):
            default = wire.pop("default", None)
            wire = {"anyOf": [wire, {"type": "null"}]}
            if default is not None:
                wire["default"] = default
        props[key] = wire
    return {**schema, "properties": props, **rules}


def _nullable(prop: Schema) -> bool:
    return {"type": "null"} in prop.get("anyOf", [])


def _date_or_time(prop: Schema) -> Schema:
    if prop.get("format") == "date":
        rest = {k: v for k, v in prop.items() if k != "format"}
        return {**rest, "anyOf": [{"format": "date"}, {"format": "date-time"}]}
    if "anyOf" in prop:
        return {**prop, "anyOf": [_date_or_time(p) for p in prop["anyOf"]]}
    return prop


# --- results ------------------------------------------------------------------------


def _results() -> dict[str, Schema]:
    files: dict[str, Schema] = {}
    for ctype, shapes in RESULT_SHAPES.items():
        files[f"result.{ctype.value}.json"] = _result_document(
            f"result {ctype.value}", f"The result of a `{ctype.value}` command on {{root}}/cmd/result.",
            shapes)
    every = tuple(dict.fromkeys(s for shapes in RESULT_SHAPES.values() for s in shapes))
    files["result.json"] = _result_document(
        "result", "One result on {root}/cmd/result: success, with one of the shapes, or failure.", every)
    return dict(sorted(files.items()))


def _result_document(title: str, description: str, shapes: tuple[type[msgspec.Struct], ...]) -> Schema:
    def root(schemas: list[Schema], comps: dict[str, Schema]) -> Schema:
        ok, failed = (_resolve(s, comps) for s in schemas[:2])
        refs = schemas[2:]
        ok["properties"]["result"] = refs[0] if len(refs) == 1 else {"anyOf": refs}
        return {"oneOf": [{**ok, "title": "success"}, {**failed, "title": "failure"}]}

    return _document(title, [ResultOk[Any], ResultError, *shapes], root, description)
