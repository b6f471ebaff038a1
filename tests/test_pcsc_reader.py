"""The PC/SC card reader against a real pcscd with the vpcd virtual reader and a virtual card."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from drivers.cardreader.factory import open_reader
from drivers.cardreader.pcsc_reader import PcscCardReader
from drivers.cardreader.reconnect import Backoff
from sim.vcard import VirtualCard
from tests.cardreader_fixtures import (
    WAIT_S,
    Pcscd,
    Recorder,
    running,
)

pytestmark = [pytest.mark.pcsc,
              pytest.mark.usefixtures("vpcd_idle", "no_leaked_threads", "no_leaked_tasks")]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_reader(prefix: str = "Virtual PCD 00 00", clock: FakeClock | None = None) -> PcscCardReader:
    reader = open_reader(
        "r-drink-1",
        "pcsc",
        name=prefix,
        debounce_s=1.5,
        backoff=Backoff(initial_s=0.05, cap_s=0.2),
        clock=clock or time.monotonic,
    )
    assert isinstance(reader, PcscCardReader)
    return reader


async def read_by_reader(card: VirtualCard) -> None:
    """Wait until the reader has asked the card for its UID."""
    async with asyncio.timeout(WAIT_S):
        while card.apdus == 0:
            await asyncio.sleep(0.01)


async def test_a_placed_card_is_one_tap_with_its_uid(pcscd: Pcscd) -> None:
    rec = Recorder()
    async with running(make_reader(), rec):
        await rec.online()
        async with VirtualCard("04A1B2C3D4E5F6", port=pcscd.port):
            tap = await rec.tap()
            await asyncio.sleep(1.0)  # held on the reader for a while
        assert (tap.reader, tap.uid) == ("r-drink-1", "04A1B2C3D4E5F6")
        # Another card next: a second tap of the held one would arrive first.
        async with VirtualCard("1A2B3C4D", port=pcscd.port):
            assert (await rec.tap()).uid == "1A2B3C4D"
    assert [t.uid for t in rec.all_taps] == ["04A1B2C3D4E5F6", "1A2B3C4D"]


async def lifted(reader: PcscCardReader, card: VirtualCard) -> None:
    """Wait until the reader holds `card` as on the reader, remove it, and wait
    until the reader has seen it go. (Without the first wait, a removal checked
    before the reader recorded the placement passes at once, and the test's fake
    clock moves on before the reader stamps the removal.)"""
    async with asyncio.timeout(WAIT_S):
        while reader.card_on_reader != card.uid.hex().upper():
            await asyncio.sleep(0.01)
    await card.remove()
    async with asyncio.timeout(WAIT_S):
        while reader.card_on_reader is not None:
            await asyncio.sleep(0.01)


async def test_placed_again_taps_only_after_the_debounce_window(pcscd: Pcscd) -> None:
    clock = FakeClock()
    rec = Recorder()
    reader = make_reader(clock=clock)
    async with running(reader, rec):
        await rec.online()
        card = VirtualCard("04A1B2C3", port=pcscd.port)
        await card.place()
        assert (await rec.tap()).uid == "04A1B2C3"
        clock.now += 5.0  # held for 5 s
        await lifted(reader, card)
        clock.now += 1.0  # put back 1 s after it was lifted: the same tap
        card = VirtualCard("04A1B2C3", port=pcscd.port)
        await card.place()
        await read_by_reader(card)
        await lifted(reader, card)
        clock.now += 1.6  # 1.6 s after it was last lifted: a new tap
        async with VirtualCard("04A1B2C3", port=pcscd.port):
            second = await rec.tap()
    assert second.uid == "04A1B2C3"
    assert second.mono == pytest.approx(1007.6)
    assert len(rec.all_taps) == 2


async def test_a_card_that_does_not_give_its_uid_is_no_tap(pcscd: Pcscd) -> None:
    rec = Recorder()
    async with running(make_reader(), rec):
        await rec.online()
        # Answers get-data with 6A 81 (function not supported).
        async with VirtualCard("04A1B2C3", port=pcscd.port, uid_readable=False) as refusing:
            await read_by_reader(refusing)
        async with VirtualCard("1A2B3C4D", port=pcscd.port):
            assert (await rec.tap()).uid == "1A2B3C4D"
    assert [t.uid for t in rec.all_taps] == ["1A2B3C4D"]


async def test_a_dec10_building_with_a_reversed_reader_taps_the_printed_number(pcscd: Pcscd) -> None:
    reader = open_reader("r-drink-1", "pcsc", name="Virtual PCD 00 00", debounce_s=1.5,
                         card_format="dec10", uid_order="reversed",
                         backoff=Backoff(initial_s=0.05, cap_s=0.2))
    rec = Recorder()
    async with running(reader, rec):
        await rec.online()
        # Read as 04 A1 B2 C3 D4 E5 F6; reversed F6 E5 D4 C3 B2 A1 04; the last 4
        # bytes 0xC3B2A104 = 195*16777216 + 178*65536 + 161*256 + 4 = 3283263748.
        async with VirtualCard("04A1B2C3D4E5F6", port=pcscd.port):
            assert (await rec.tap()).uid == "3283263748"


async def test_no_matching_reader_is_offline_and_stops_promptly(pcscd: Pcscd) -> None:
    rec = Recorder()
    async with running(make_reader(prefix="ACS ACR122U"), rec):
        detail = await rec.offline()
        assert "ACS ACR122U" in detail
    assert rec.all_statuses == [(False, detail)]


async def test_pcscd_restart_offline_then_back_and_tapping(pcscd: Pcscd) -> None:
    rec = Recorder()
    async with running(make_reader(), rec):
        await rec.online()
        await asyncio.to_thread(pcscd.stop)
        detail = await rec.offline()
        assert detail
        await asyncio.to_thread(pcscd.start)
        await rec.online()
        async with VirtualCard("04A1B2C3", port=pcscd.port):
            assert (await rec.tap()).uid == "04A1B2C3"
    assert [online for online, _ in rec.all_statuses] == [True, False, True]


async def test_pcscd_down_at_start_then_up(pcscd: Pcscd) -> None:
    await asyncio.to_thread(pcscd.stop)
    rec = Recorder()
    try:
        async with running(make_reader(), rec):
            assert "pcscd" in await rec.offline()
            await asyncio.to_thread(pcscd.start)
            await rec.online()
            async with VirtualCard("04A1B2C3", port=pcscd.port):
                assert (await rec.tap()).uid == "04A1B2C3"
    finally:
        if pcscd.proc is None:
            await asyncio.to_thread(pcscd.start)


async def test_without_pyscard_the_reader_stays_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import fail, as on a gateway without the extra.
    monkeypatch.setitem(sys.modules, "smartcard.scard", None)
    rec = Recorder()
    async with running(make_reader(), rec):
        assert "pyscard is not installed" in await rec.offline()
