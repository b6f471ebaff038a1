"""`gatewayd probe reader`: the cards a reader sees, as the building's card ids, with
what the reader sent (the UID's bytes, or the number of a decimal line).

Contract: `watch(reader, ids, count)` runs the reader's own driver (a serial reader
opens its port exclusively, as the daemon does) and prints one line per tap, debounced
as the daemon does, until `count` taps (0: until Ctrl-C). A reader that cannot be
opened ends it with exit code 1 and why.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from drivers.cardreader.cardid import CardIds
from drivers.protocols import CardReader, CardTap

__all__ = ["SeenIds", "watch"]

EXIT_OK, EXIT_FAILURE = 0, 1


@dataclass(frozen=True)
class SeenIds(CardIds):
    """The building's `CardIds` that also remembers what each id was made of."""

    raw: dict[str, str] = field(default_factory=dict, compare=False)

    def of_uid(self, uid: bytes) -> str:
        card = super().of_uid(uid)
        self.raw[card] = f"UID {uid.hex(' ').upper()}"
        return card

    def of_number(self, number: int) -> str:
        card = super().of_number(number)
        self.raw[card] = f"number {number}"
        return card


async def watch(reader: CardReader, ids: SeenIds, count: int) -> int:
    """Print taps until `count` of them (0: until cancelled); 1 when the reader fails."""
    taps = 0
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def tap(seen: CardTap) -> None:
        nonlocal taps
        taps += 1
        print(f"card {seen.uid}  ({ids.raw.get(seen.uid, 'sent as is')}, "
              f"card_format {ids.card_format}, uid_order {ids.uid_order})", flush=True)
        if count and taps >= count and not done.done():
            done.set_result(EXIT_OK)

    def status(online: bool, detail: str) -> None:
        if online:
            print(f"reader {reader.name} open: tap a card (Ctrl-C to stop)", flush=True)
        elif not done.done():
            print(f"reader {reader.name}: {detail}", flush=True)
            done.set_result(EXIT_FAILURE)

    task = asyncio.create_task(reader.run(tap, status), name=f"probe-reader-{reader.name}")
    try:
        return await done
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
