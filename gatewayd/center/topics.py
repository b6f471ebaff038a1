"""The center link's MQTT topics (center-link.md "Topics"), named in one place.

Contract: pure. Every topic derives from `center.prefix` and the building;
commands arrive on the building's own topic and on the campus broadcast one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["TopicKind", "Topics"]

#: Which command topic a command came on, as the command handler is told.
TopicKind = Literal["building", "broadcast"]


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one building under one prefix."""

    status: str
    events: str
    telemetry: str
    cmd: str
    broadcast: str
    result: str

    @classmethod
    def of(cls, prefix: str, building: str) -> Topics:
        root = f"{prefix}/{building}"
        return cls(status=f"{root}/status", events=f"{root}/events", telemetry=f"{root}/telemetry",
                   cmd=f"{root}/cmd", broadcast=f"{prefix}/all/cmd", result=f"{root}/cmd/result")

    def kind(self, topic: str) -> TopicKind | None:
        """The command topic `topic` is, or None for one we never subscribed to."""
        if topic == self.cmd:
            return "building"
        if topic == self.broadcast:
            return "broadcast"
        return None
