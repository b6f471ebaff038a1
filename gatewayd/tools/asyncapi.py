"""The AsyncAPI 3.0 document of the center link (docs/asyncapi.yaml), built from the code.

Channels are the link's own topics (``center.topics.Topics`` with the
parameters ``{prefix}`` and ``{building}`` left in), messages point at the
JSON Schemas of docs/schemas/ (``contract.schemas``), one per event family,
command type and result, and the MQTT bindings say what the link does: QoS 1
for status, events, commands and results, QoS 0 for telemetry, the status
retained. The document is written from the gateway's side: it sends status,
telemetry, events and results, and receives commands, each answered on the
result channel (the reply), matched by the command's ``id``.

Contract of the module: pure; ``gatewayd.tools.contract_docs`` writes the file.
"""

from __future__ import annotations

from typing import Any, Final

from gatewayd import __version__
from gatewayd.center.topics import Topics
from gatewayd.contract.enums import CommandType

__all__ = ["asyncapi_document"]

_SCHEMA_FORMAT: Final = "application/schema+json;version=draft-2020-12"
_MQTT_BINDING: Final = "0.2.0"
_CORRELATION: Final = {"description": "The command's id, which its result carries back.",
                       "location": "$message.payload#/id"}
_PARAMETERS: Final = {
    "prefix": {"description": "`center.prefix`: one or more topic levels of letters, digits, "
               "`_` and `-`.", "default": "ecard/v1"},
    "building": {"description": "`gateway.building`: `[a-z0-9-]{1,32}`, never `all`.",
                 "examples": ["b07"]},
}


def _ref(path: str) -> dict[str, str]:
    return {"$ref": path}


def _message(name: str, schema_file: str, summary: str, *, correlated: bool = False) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": name, "summary": summary, "contentType": "application/json",
        "payload": {"schemaFormat": _SCHEMA_FORMAT, "schema": _ref(f"schemas/{schema_file}")},
    }
    if correlated:
        message["correlationId"] = _CORRELATION
    return message


def _messages() -> dict[str, dict[str, Any]]:
    messages = {
        "status": _message("status", "status.json", "The retained status document (online)."),
        "will": _message("will", "will.json", "The will: offline (also sent on a clean stop)."),
        "telemetry": _message("telemetry", "telemetry.json", "The readings of every room and point."),
        "event": _message("event", "event.json", "One event: the envelope, `type`, its fields."),
    }
    for ctype in CommandType:
        messages[f"command.{ctype}"] = _message(
            f"command.{ctype}", f"command.{ctype}.json", f"A `{ctype}` command.", correlated=True)
        messages[f"result.{ctype}"] = _message(
            f"result.{ctype}", f"result.{ctype}.json", f"The result of a `{ctype}` command.",
            correlated=True)
    messages["result"] = _message(
        "result", "result.json", "A result whose command is unknown: `id` null, or a refusal.",
        correlated=True)
    return messages


def _channel(address: str, description: str, names: list[str], *, building: bool = True) -> dict[str, Any]:
    params = {k: _ref(f"#/components/parameters/{k}") for k in _PARAMETERS if building or k != "building"}
    return {"address": address, "description": description,
            "parameters": params,
            "messages": {n: _ref(f"#/components/messages/{n}") for n in names}}


def _channels() -> dict[str, dict[str, Any]]:
    topics = Topics.of("{prefix}", "{building}")
    commands = [f"command.{t}" for t in CommandType]
    return {
        "status": _channel(topics.status, "Retained: the status document, or the will.",
                           ["status", "will"]),
        "telemetry": _channel(topics.telemetry, "Every `center.telemetry_interval_s`.", ["telemetry"]),
        "events": _channel(topics.events, "One event per message.", ["event"]),
        "commands": _channel(topics.cmd, "Commands for this building.", commands),
        "broadcastCommands": _channel(topics.broadcast, "Commands for every building (`to`: `all`).",
                                      commands, building=False),
        "results": _channel(topics.result, "One result per command received at QoS 1.",
                            [f"result.{t}" for t in CommandType] + ["result"]),
    }


def _send(channel: str, summary: str, qos: int, *, retain: bool = False) -> dict[str, Any]:
    return {"action": "send", "channel": _ref(f"#/channels/{channel}"), "summary": summary,
            "bindings": {"mqtt": {"qos": qos, "retain": retain, "bindingVersion": _MQTT_BINDING}}}


def _receive_commands(channel: str, summary: str) -> dict[str, Any]:
    return {
        "action": "receive", "channel": _ref(f"#/channels/{channel}"), "summary": summary,
        "messages": [_ref(f"#/channels/{channel}/messages/command.{t}") for t in CommandType],
        "reply": {"channel": _ref("#/channels/results"),
                  "messages": [_ref(f"#/channels/results/messages/result.{t}") for t in CommandType]},
        "bindings": {"mqtt": {"qos": 1, "bindingVersion": _MQTT_BINDING}},
    }


def _operations() -> dict[str, dict[str, Any]]:
    return {
        "sendStatus": _send("status", "Publish the status (on connect, on change, periodically).",
                            1, retain=True),
        "sendTelemetry": _send("telemetry", "Publish telemetry; queued while offline.", 0),
        "sendEvents": _send("events", "Publish events from the outbox, at least once.", 1),
        "sendResults": _send("results", "Publish one result per command received.", 1),
        "receiveCommands": _receive_commands("commands", "Apply this building's commands."),
        "receiveBroadcastCommands": _receive_commands("broadcastCommands", "Apply campus commands."),
    }


def _servers() -> dict[str, dict[str, Any]]:
    variables = {"host": {"description": "The host of `center.broker`.", "default": "localhost"}}
    return {
        "mqtt": {"host": "{host}:1883", "protocol": "mqtt", "protocolVersion": "5",
                 "description": "Plain MQTT 5 (or 3.1.1 with `center.protocol`).", "variables": variables},
        "mqtts": {"host": "{host}:8883", "protocol": "secure-mqtt", "protocolVersion": "5",
                  "description": "MQTT over TLS, optionally with a client certificate.",
                  "variables": variables},
    }


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document, as the data its YAML file holds."""
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "gatewayd center link", "version": f"1 (gatewayd {__version__})",
                 "description": "Contract version 1 of the link between a building gateway and the "
                 "campus center. The reference is docs/center-link.md; the payloads are the JSON "
                 "Schemas of docs/schemas/, generated from the gateway's own types."},
        "defaultContentType": "application/json",
        "servers": _servers(),
        "channels": _channels(),
        "operations": _operations(),
        "components": {"messages": _messages(), "parameters": _PARAMETERS},
    }
