"""Active alarms: raised once, cleared once, counted for the status document.

`raise_`/`clear` return whether the state changed: the caller then records
the `alarm` event (center-link.md "Events") in its own store transaction.
"""

from __future__ import annotations

from collections import Counter

import structlog

log = structlog.get_logger(__name__)


class Alarms:
    def __init__(self) -> None:
        self.active: dict[tuple[str, str], str] = {}

    def raise_(self, code: str, device: str, detail: str) -> bool:
        if (code, device) in self.active:
            return False
        self.active[(code, device)] = detail
        log.warning("alarm_raised", code=code, device=device, detail=detail)
        return True

    def clear(self, code: str, device: str) -> bool:
        if self.active.pop((code, device), None) is None:
            return False
        log.info("alarm_cleared", code=code, device=device)
        return True

    def is_active(self, code: str, device: str) -> bool:
        return (code, device) in self.active

    def counts(self) -> Counter[str]:
        return Counter(code for code, _ in self.active)
