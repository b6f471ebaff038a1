"""The money rule of `account.sync`, as a pure function (center-link.md "account.sync").

The center sends an account's balance as it knows it, through the event
`through_seq` it has processed. The gateway has spent more since, which the
center has not seen yet:

- debits recorded after `through_seq` (`water.session`, `power.usage`);
- electricity charged but not yet reported in a `power.usage` (accrued);
- what open water sessions have debited so far.

The new local balance is the center's figure minus all three; the result
reports their sum as `unreported_fen`. No command may carry a balance beyond
+-`MAX_BALANCE_FEN` (2**53 - 1, exact in an IEEE double): `balance_problem`
says why a credit or a sync that would is refused (`conflict`). Each charge is counted exactly once:
an open session's charge moves into its `water.session` in the transaction
that deletes its row, and accrued power moves into a `power.usage` in the one
that resets the accrual.
"""

from __future__ import annotations

from dataclasses import dataclass

from gatewayd.contract.command_types import MAX_BALANCE_FEN
from gatewayd.contract.enums import EventType

#: Event types whose `amount_fen` the account has already paid locally.
DEBIT_TYPES: tuple[EventType, ...] = (EventType.WATER_SESSION, EventType.POWER_USAGE)


@dataclass(frozen=True, slots=True)
class Unreported:
    """What an account spent that the center has not seen, in fen."""

    debits_fen: int       # debit events after the center's `through_seq`
    accrued_fen: int      # electricity charged, not yet in a power.usage
    open_water_fen: int   # charged so far by open water sessions

    @property
    def total_fen(self) -> int:
        return self.debits_fen + self.accrued_fen + self.open_water_fen


def synced_balance(center_balance_fen: int, unreported: Unreported) -> int:
    """The local balance after `account.sync`: the center's figure less what it has not seen."""
    return center_balance_fen - unreported.total_fen


def balance_problem(account: str, balance_fen: int) -> str | None:
    """Why a command may not leave `account` at `balance_fen` (beyond the money bound), or None."""
    if -MAX_BALANCE_FEN <= balance_fen <= MAX_BALANCE_FEN:
        return None
    return (f"the balance of {account} would be {balance_fen} fen, beyond +-{MAX_BALANCE_FEN}, "
            "the money bound (exact in an IEEE double)")
