"""Timing breaker cuts through the daemon: from the moment a rule's condition is met in a
simulated meter's registers to the breaker's coil write arriving at the simulator.

- balance: rooms with `BALANCE_FEN` (`FEN_PER_WH` fen/Wh) draw 1000 W and more from
  energy 0; their balance reaches zero at the first reading whose register rounds
  to the Wh that cost it, i.e. once the simulator's integrated energy is half a Wh
  short of it.
- overload: rooms go to 2000 W (over `MAX_POWER_W`) at T; the condition, "over the
  limit for trip_after_s", is met at T + `TRIP_AFTER_S`. The rule starts its timer
  at the first reading above the limit, kept in `CutTrial.timer`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from building import breaker_of, locate
from building_sim import SimProc

# 100 yuan per kWh: 10 fen per Wh, so a small balance runs out in seconds.
PRICE_YUAN_KWH = "100"
FEN_PER_WH = 10
BALANCE_FEN = 30
MAX_POWER_W = 1500
TRIP_AFTER_S = 2.0
POLL_S = 1.0


@dataclass
class CutTrial:
    room: int
    met: float            # when the condition was met in the registers
    cut: float = math.nan  # the breaker write arriving at the simulator
    reading: float = math.nan  # the last meter request before the cut
    timer: float = math.nan  # overload: the first reading above the limit + trip_after_s


def readings(requests: Sequence[float]) -> list[tuple[float, float]]:
    """(first, last) request time of each reading: its requests come back to back."""
    out: list[tuple[float, float]] = []
    for t in sorted(requests):
        if out and t - out[-1][1] < 0.2 * POLL_S:
            out[-1] = (out[-1][0], t)
        else:
            out.append((t, t))
    return out


async def start_loads(sim: SimProc, balance_rooms: list[int], overload_rooms: list[int],
                      ) -> tuple[list[CutTrial], list[CutTrial]]:
    """Start the loads (balance first, then overloads staggered): the trials, not yet cut."""
    balance: list[CutTrial] = []
    for k, i in enumerate(balance_rooms):
        e, unit = locate(i)
        watts = 1000 + 40 * k
        t0 = (await sim.call("load", ep=e, unit=unit, w=watts))["t"]
        # Balance 30 fen at 10 fen/Wh: zero at a register of 3 Wh, reached at 2.5 Wh.
        wh_zero = math.ceil(BALANCE_FEN / FEN_PER_WH)
        balance.append(CutTrial(i, t0 + (wh_zero - 0.5) * 3600 / watts))
    overload: list[CutTrial] = []
    for k, i in enumerate(overload_rooms):
        await asyncio.sleep(0.137 * (k > 0))  # spread the start over the poll phase
        e, unit = locate(i)
        t = (await sim.call("load", ep=e, unit=unit, w=2000))["t"]
        overload.append(CutTrial(i, t + TRIP_AFTER_S))
    return balance, overload


async def time_cut(sim: SimProc, trial: CutTrial, *, after: float, overload: bool) -> None:
    """Wait for the cut of `trial`'s room and fill in its times."""
    e, unit = locate(trial.room)
    relay, ch = breaker_of(unit)
    w = await sim.write_to(e, relay, ch, False, after=after)
    trial.cut = w.t
    reads = (await sim.call("reads", ep=e, unit=unit))["t"]
    trial.reading = max((t for t in reads if t <= w.t), default=math.nan)
    if overload:
        # The first reading that starts after the load rose (with two requests a
        # reading, power is in the first) starts the rule's timer when it ends.
        starts = readings(reads)
        t_load = trial.met - TRIP_AFTER_S
        end = next(b for a, b in starts if a >= t_load)
        trial.timer = end + TRIP_AFTER_S


async def cut_trials(sim: SimProc, balance_rooms: list[int], overload_rooms: list[int],
                     ) -> tuple[list[CutTrial], list[CutTrial]]:
    """Start the loads (balance first, then overloads staggered) and time every cut."""
    start = time.monotonic()
    balance, overload = await start_loads(sim, balance_rooms, overload_rooms)
    for trial in balance:
        await time_cut(sim, trial, after=start, overload=False)
    for trial in overload:
        await time_cut(sim, trial, after=start, overload=True)
    return balance, overload
