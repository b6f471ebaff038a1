"""Tapping known cards at an RDM6300 on a pty, timed to the valve's coil write at the
simulator: from the moment the write of the frame's last byte to the pty returned.

A tap at a closed point opens it (measured); the same card tapped again closes it
(not measured). Waits of twice `DEBOUNCE_S` between taps (the daemon runs with
`tap_debounce_s = DEBOUNCE_S`) keep every tap from being lost to the debounce.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from building import VALVE_BASE
from building_sim import SimProc

from sim.serial_card import PtyPort, frame

DEBOUNCE_S = 0.05
SERIAL_CARDS = [f"04A1B2C3{i:02X}" for i in range(16)]
# Safety nets against a hung bench, not measurements.
TAP_TIMEOUT_S = 10.0
FIRST_TAP_TIMEOUT_S = 30.0


async def first_tap(valves: SimProc, pty: PtyPort, ch: int, uid: str) -> None:
    """Tap `uid` until valve `ch` opens, then close it.

    The reader opens its pty after READY, and pyserial flushes what came before.
    """
    async with asyncio.timeout(FIRST_TAP_TIMEOUT_S):
        while True:
            before = time.monotonic()
            pty.write(frame(uid, "rdm6300"))
            with contextlib.suppress(TimeoutError):
                await valves.write_to(0, VALVE_BASE, ch, True, after=before, timeout=0.5)
                break
    await asyncio.sleep(DEBOUNCE_S * 2)
    before = time.monotonic()
    pty.write(frame(uid, "rdm6300"))
    await valves.write_to(0, VALVE_BASE, ch, False, after=before, timeout=TAP_TIMEOUT_S)
    await asyncio.sleep(DEBOUNCE_S * 2)


async def tap_open_close(valves: SimProc, pty: PtyPort, ch: int, uid: str) -> float:
    """Tap `uid` at closed valve `ch`: seconds from the last byte to the coil write; then close it."""
    data = frame(uid, "rdm6300")
    before = time.monotonic()
    pty.write(data)  # returns once the last byte is in the pty
    last_byte = time.monotonic()
    opened = await valves.write_to(0, VALVE_BASE, ch, True, after=before, timeout=TAP_TIMEOUT_S)
    await asyncio.sleep(DEBOUNCE_S * 2)
    before = time.monotonic()
    pty.write(data)
    await valves.write_to(0, VALVE_BASE, ch, False, after=before, timeout=TAP_TIMEOUT_S)
    await asyncio.sleep(DEBOUNCE_S * 2)
    return opened.t - last_byte


async def serial_taps(valves: SimProc, pty: PtyPort, taps: int) -> list[float]:
    """`taps` samples at valve 0, cards rotating."""
    await first_tap(valves, pty, 0, SERIAL_CARDS[0])
    return [await tap_open_close(valves, pty, 0, SERIAL_CARDS[(i + 1) % len(SERIAL_CARDS)])
            for i in range(taps)]
