"""Applying the center's commands (center-link.md "Commands").

Contract:
- `handle(payload, topic_kind)` never raises. Checks come from
  `gatewayd.contract.command_admission.accept_command` (JSON, id, to, type, args, signature,
  age). A refused command's result is returned for the link to publish at
  once and its id is NOT remembered: a forged command must not be able to
  claim the id of a genuine one.
- Validity (center-link.md "Signing") is checked after the duplicate lookup,
  against `command_now()`: the system clock while it is synchronised, else
  the later of it and the newest `ts` of any command applied (kept by
  `gatewayd.store.command_log` in the same transaction as the command's
  result, so it survives restarts).
- An accepted command, the ledger change and event it causes, and its result
  commit in one store transaction; the result then leaves through the outbox
  (class 0). A repeated id is answered with the first result and
  `"duplicate": true`, never applied again.
- Commands are applied one at a time, in arrival order; what each one does is
  `gatewayd.center.command_effects`.
- A payload over `INLINE_PARSE_BYTES` is first screened in a worker process
  (`gatewayd.center.screen`): one that fails its JSON, signature or schema
  checks is refused from there, and never parsed in the daemon, so a flood
  of big bogus commands costs the loop that serves taps only the hand-off.
- Refusals are logged within a budget (the first 20 a minute, then a
  summary); each one is still answered.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gatewayd.center.command_effects import carry_out
from gatewayd.center.screen import BoundedLog, CommandScreen
from gatewayd.config.model import Config
from gatewayd.contract.command_admission import accept_command, check_age, valid_window
from gatewayd.contract.command_types import CommandRejection, ParsedCommand, TopicKind
from gatewayd.contract.enums import ErrorCode
from gatewayd.contract.wire import as_duplicate, encode_result_error
from gatewayd.errors import Refused
from gatewayd.services.clock import Clock
from gatewayd.services.power.service import PowerService
from gatewayd.services.water.service import WaterService
from gatewayd.store import command_log
from gatewayd.store.cards import Cards
from gatewayd.store.db import Store
from gatewayd.store.ledger import Ledger
from gatewayd.store.txn import Txn

log = structlog.get_logger(__name__)

# Commands larger than this are screened in the worker process, then (if they
# pass) parsed and verified in a worker thread.
INLINE_PARSE_BYTES = 64 * 1024
# Refusals logged one by one each minute; the rest are summarised.
REFUSALS_LOGGED_PER_MIN = 20


class CommandService:
    """The center link's command handler."""

    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Clock,
        *,
        ledger: Ledger,
        cards: Cards,
        power: PowerService,
        water: WaterService,
        public_key: Ed25519PublicKey | None,
        status: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.ledger = ledger
        self.cards = cards
        self.power = power
        self.water = water
        self.public_key = public_key
        self.status = status
        center = config.center
        #: The worker process for big payloads: a supervisor component of its own.
        self.screen = CommandScreen(config.gateway.building, public_key,
                                    insecure_unsigned=bool(center and center.insecure_unsigned_commands),
                                    card_format=config.gateway.card_format)
        self.refusal_log = BoundedLog("command_refused", burst=REFUSALS_LOGGED_PER_MIN, group="code")
        self.screen.logs.append(self.refusal_log)
        self._lock = asyncio.Lock()
        self.applied = 0
        self.refused = 0
        self._newest_ts: float | None = None   # command_log.newest_ts, read when first needed

    async def handle(self, payload: bytes, topic_kind: TopicKind) -> bytes | None:
        if len(payload) > INLINE_PARSE_BYTES:
            refused = await self._screened(payload, topic_kind)
            if refused is not None:
                return refused
        center = self.config.center
        try:
            # The age is checked in `_apply`, after the duplicate lookup: a repeat of
            # an applied command (redelivered by the broker after a crash, say) is
            # answered with its first result even when it has grown old meanwhile;
            # `stale` would tell the center it was not applied.
            check = functools.partial(
                accept_command, payload, topic_kind=topic_kind,
                building=self.config.gateway.building, public_key=self.public_key,
                now=None, clock_synced=False,
                insecure_unsigned=bool(center and center.insecure_unsigned_commands),
                card_format=self.config.gateway.card_format,
            )
            # A big command (a cards.load of thousands of cards) takes up to half a
            # second to parse and verify: off the loop, which keeps serving taps.
            checked = check() if len(payload) <= INLINE_PARSE_BYTES else await asyncio.to_thread(check)
            if isinstance(checked, CommandRejection):
                return self._refused(checked)
            async with self._lock:
                return await self._apply(checked)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug must not kill the link: answer `internal`
            log.exception("command_failed")
            cid = _id_of(payload)
            return encode_result_error(cid, ErrorCode.INTERNAL, f"internal error: {type(e).__name__}")

    async def _screened(self, payload: bytes, topic_kind: TopicKind) -> bytes | None:
        """The refusal of a big payload, decided in the worker process; None if it passes."""
        try:
            rejection = await self.screen.screen(payload, topic_kind)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug must not kill the link: answer `internal`
            log.exception("command_screen_failed")
            return encode_result_error(None, ErrorCode.INTERNAL, f"internal error: {type(e).__name__}")
        return None if rejection is None else self._refused(rejection)

    def _refused(self, rejection: CommandRejection) -> bytes:
        self.refused += 1
        self.refusal_log.note(id=rejection.id, code=str(rejection.code), message=rejection.message)
        return rejection.encode()

    async def _apply(self, cmd: ParsedCommand) -> bytes | None:
        first = await self.store.read(functools.partial(command_log.first_result, command_id=cmd.id))
        if first is not None:
            log.info("command_duplicate", id=cmd.id, type=str(cmd.type))
            return as_duplicate(first)
        now, synced = await self.command_now()
        stale = check_age(cmd.issued_at, now, self._max_age_s(), expires=cmd.expires,
                          clock_synced=synced, command_id=cmd.id)
        if stale is not None:
            return self._refused(stale)
        try:
            await carry_out(self, cmd)
        except Refused as e:
            self.refused += 1
            log.warning("command_not_applied", id=cmd.id, type=str(cmd.type), code=str(e.code),
                        message=e.message)
            encoded = encode_result_error(cmd.id, e.code, e.message)
            await self.store.run(self.remember(cmd, encoded))
            self._applied_ts(cmd)
            return None
        self._applied_ts(cmd)
        self.applied += 1
        log.info("command_applied", id=cmd.id, type=str(cmd.type))
        return None

    async def command_now(self) -> tuple[float, bool]:
        """The "now" commands are judged by, and whether the clock is synchronised.

        While it is not, "now" never goes back behind the newest `ts` of any
        command applied (center-link.md "Signing"): a recorded command cannot
        be replayed after its validity, whatever the local clock says.
        """
        wall = self.clock.wall()
        if self.clock.synced():
            return wall, True
        if self._newest_ts is None:
            newest = await self.store.read(command_log.newest_ts)
            self._newest_ts = float("-inf") if newest is None else newest
        return max(wall, self._newest_ts), False

    def _applied_ts(self, cmd: ParsedCommand) -> None:
        """Raise the in-memory floor once `cmd`'s result (and the stored newest ts) committed."""
        if self._newest_ts is not None:   # else read from the store when first needed
            self._newest_ts = max(self._newest_ts, cmd.issued_at.timestamp())

    def _max_age_s(self) -> float:
        center = self.config.center
        return center.max_command_age_s if center else 300.0

    def remember(self, cmd: ParsedCommand, result: bytes) -> Callable[[Txn], None]:
        """The store step that records `cmd` as handled: its first result, kept
        until its validity ended (retention.prune), and the newest applied `ts`."""
        issued = cmd.issued_at.timestamp()
        _, valid_until = valid_window(cmd.issued_at, cmd.expires, self._max_age_s())

        def job(txn: Txn) -> None:
            command_log.remember(txn, cmd.id, result, received=time.time(),
                                 valid_until=valid_until, issued=issued)
        return job


def _id_of(payload: bytes) -> str | None:
    try:
        obj = json.loads(payload)
    except Exception:
        return None
    cid = obj.get("id") if isinstance(obj, dict) else None
    return cid if isinstance(cid, str) and 1 <= len(cid) <= 64 else None
