"""The serial card reader against a real pseudo-terminal: taps, noise, unplug, replug."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from drivers.cardreader import rdm6300
from drivers.cardreader.cardid import CardFormat
from drivers.cardreader.factory import open_reader
from drivers.cardreader.reconnect import Backoff
from drivers.cardreader.serial_reader import SerialCardReader
from drivers.protocols import CardTap
from sim.serial_card import PtyPort, SerialCardProtocol, frame
from tests.cardreader_fixtures import (
    WAIT_S,
    Recorder,
    pty_port,
    running,
)

__all__ = ["pty_port"]  # fixtures used by name

pytestmark = pytest.mark.usefixtures("no_leaked_threads", "no_leaked_tasks")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_reader(
    port: PtyPort,
    protocol: SerialCardProtocol = "rdm6300",
    clock: Callable[[], float] = time.monotonic,
) -> SerialCardReader:
    reader = open_reader(
        "r-shower-1",
        "serial",
        port=str(port.path),
        baudrate=9600,
        protocol=protocol,
        debounce_s=1.5,
        clock=clock,
        # Retry fast so unplug/replug tests finish quickly; the policy is unit-tested below.
        backoff=Backoff(initial_s=0.02, cap_s=0.1),
    )
    assert isinstance(reader, SerialCardReader)
    return reader


@pytest.mark.parametrize("protocol", ["rdm6300", "ascii-line"])
async def test_a_card_is_one_tap_with_its_uid(pty_port: PtyPort, protocol: SerialCardProtocol) -> None:
    rec = Recorder()
    async with running(make_reader(pty_port, protocol), rec):
        await rec.online()
        pty_port.write(frame("0C00123456", protocol))
        tap = await rec.tap()
        assert (tap.reader, tap.uid) == ("r-shower-1", "0C00123456")


@pytest.mark.parametrize("protocol", ["rdm6300", "ascii-line"])
async def test_frames_written_byte_by_byte_among_noise(
    pty_port: PtyPort, protocol: SerialCardProtocol
) -> None:
    rec = Recorder()
    reader = make_reader(pty_port, protocol)
    noise = b"\x02\x0312AB\xff\x00" if protocol == "rdm6300" else b"\xff\x00garbage!\r\n"
    async with running(reader, rec):
        await rec.online()
        stream = noise + frame("0C00123456", protocol) + noise + frame("1A2B3C4D5E", protocol)
        await pty_port.send(stream, byte_delay_s=0.001)
        assert (await rec.tap()).uid == "0C00123456"
        assert (await rec.tap()).uid == "1A2B3C4D5E"
    assert reader.stats.frames_ok == 2
    assert reader.stats.dropped > 0
    assert rec.taps.empty()


async def test_bad_checksum_is_dropped_and_counted(pty_port: PtyPort) -> None:
    rec = Recorder()
    reader = make_reader(pty_port)
    async with running(reader, rec):
        await rec.online()
        corrupt = rdm6300.encode("0C00123456")[:-3] + b"00\x03"
        pty_port.write(corrupt + rdm6300.encode("1A2B3C4D5E"))
        assert (await rec.tap()).uid == "1A2B3C4D5E"
    assert reader.stats.bad_checksum == 1
    assert rec.all_taps == [rec.all_taps[0]]


async def test_a_dec_line_reader_in_a_dec10_building(pty_port: PtyPort) -> None:
    rec = Recorder()
    reader = open_reader("r-usb-1", "serial", port=str(pty_port.path), protocol="ascii-line",
                         line_format="dec", card_format="dec10", debounce_s=1.5,
                         backoff=Backoff(initial_s=0.02, cap_s=0.1))
    assert isinstance(reader, SerialCardReader)
    async with running(reader, rec):
        await rec.online()
        # An 8H10D USB reader types the number printed on the card. A hex line,
        # and a number over 2^32 - 1, are dropped and counted, never guessed.
        await pty_port.send(b"04A1B2C3\r\n4294967296\r\n0040856634\r\n", byte_delay_s=0.001)
        tap = await rec.tap()
        assert (tap.reader, tap.uid) == ("r-usb-1", "0040856634")
    assert (reader.stats.frames_ok, reader.stats.malformed) == (1, 2)
    assert reader.stats.last_drop == "not a decimal card number: b'4294967296'"
    assert [t.uid for t in rec.all_taps] == ["0040856634"]


@pytest.mark.parametrize(("card_format", "uid_order", "card_id"), [
    # The EM4100 card 01 02 6F 6C 3A: its last 4 bytes 0x026F6C3A = 40856634.
    ("dec10", "as_read", "0040856634"),
    ("hex", "reversed", "3A6C6F0201"),
])
async def test_an_rdm6300_in_the_buildings_card_format(
    pty_port: PtyPort, card_format: CardFormat, uid_order: str, card_id: str
) -> None:
    rec = Recorder()
    reader = open_reader("r-shower-1", "serial", port=str(pty_port.path), card_format=card_format,
                         uid_order=uid_order, debounce_s=1.5, backoff=Backoff(initial_s=0.02, cap_s=0.1))
    async with running(reader, rec):
        await rec.online()
        pty_port.write(rdm6300.encode("01026F6C3A"))
        assert (await rec.tap()).uid == card_id


async def test_a_held_card_is_one_tap(pty_port: PtyPort) -> None:
    rec = Recorder()
    async with running(make_reader(pty_port), rec):
        await rec.online()
        await pty_port.present("0C00123456", repeats=10, interval_s=0.02)
        # Another card afterwards: any extra tap of the held one would come first.
        pty_port.write(rdm6300.encode("1A2B3C4D5E"))
        assert [(await rec.tap()).uid, (await rec.tap()).uid] == ["0C00123456", "1A2B3C4D5E"]


async def test_the_same_card_taps_again_after_the_debounce_window(pty_port: PtyPort) -> None:
    clock = FakeClock()
    rec = Recorder()
    reader = make_reader(pty_port, clock=clock)

    async def seen(uid: str) -> None:
        # Wait until the reader has decoded the frame, so the clock moves after it.
        frames = reader.stats.frames_ok
        pty_port.write(rdm6300.encode(uid))
        async with asyncio.timeout(WAIT_S):
            while reader.stats.frames_ok == frames:
                await asyncio.sleep(0.001)

    async with running(reader, rec):
        await rec.online()
        await seen("0C00123456")
        clock.now += 1.0
        await seen("0C00123456")  # within the window: the same tap
        clock.now += 1.0
        await seen("0C00123456")  # 2 s after the first sighting, 1 s after the last
        clock.now += 1.6
        await seen("0C00123456")  # 1.6 s after the last sighting: a new tap
        await seen("1A2B3C4D5E")
    assert [(t.uid, t.mono - 1000.0) for t in rec.all_taps] == [
        ("0C00123456", 0.0),
        ("0C00123456", pytest.approx(3.6)),
        ("1A2B3C4D5E", pytest.approx(3.6)),
    ]


async def test_unplug_reports_offline_once_and_replug_online(pty_port: PtyPort) -> None:
    rec = Recorder()
    async with running(make_reader(pty_port), rec):
        await rec.online()
        pty_port.unplug()
        detail = await rec.offline()
        assert detail
        # Several reopen attempts fail while unplugged; none is reported again.
        await asyncio.sleep(0.3)
        assert rec.statuses.empty()
        pty_port.plug()
        await rec.online()
        pty_port.write(rdm6300.encode("0C00123456"))
        assert (await rec.tap()).uid == "0C00123456"
    assert [online for online, _ in rec.all_statuses] == [True, False, True]


async def test_a_port_missing_at_start_is_offline_until_plugged(pty_port: PtyPort) -> None:
    pty_port.unplug()
    rec = Recorder()
    async with running(make_reader(pty_port), rec):
        detail = await rec.offline()
        assert str(pty_port.path) in detail
        pty_port.plug()
        await rec.online()
        pty_port.write(rdm6300.encode("0C00123456"))
        assert (await rec.tap()).uid == "0C00123456"


async def test_a_partial_frame_before_unplug_does_not_join_the_next(pty_port: PtyPort) -> None:
    rec = Recorder()
    async with running(make_reader(pty_port), rec):
        await rec.online()
        pty_port.write(rdm6300.encode("0C00123456")[:9])
        pty_port.unplug()
        await rec.offline()
        pty_port.plug()
        await rec.online()
        pty_port.write(rdm6300.encode("0C00123456")[9:] + rdm6300.encode("1A2B3C4D5E"))
        assert (await rec.tap()).uid == "1A2B3C4D5E"
    assert [t.uid for t in rec.all_taps] == ["1A2B3C4D5E"]


async def test_a_failing_sink_does_not_stop_the_reader(pty_port: PtyPort) -> None:
    rec = Recorder()
    calls: list[str] = []

    async def sink(tap: CardTap) -> None:
        calls.append(tap.uid)
        if len(calls) == 1:
            raise RuntimeError("the daemon's handler failed")
        rec.sink(tap)

    reader = make_reader(pty_port)
    task = asyncio.create_task(reader.run(sink, rec.status))
    try:
        await rec.online()
        pty_port.write(rdm6300.encode("0C00123456") + rdm6300.encode("1A2B3C4D5E"))
        assert (await rec.tap()).uid == "1A2B3C4D5E"
        assert calls == ["0C00123456", "1A2B3C4D5E"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_failing_status_callback_does_not_stop_the_reader(pty_port: PtyPort) -> None:
    rec = Recorder()

    def status(online: bool, detail: str) -> None:
        rec.status(online, detail)
        raise RuntimeError("the daemon's status handler failed")

    task = asyncio.create_task(make_reader(pty_port).run(rec.sink, status))
    try:
        await rec.online()
        pty_port.unplug()
        await rec.offline()
        pty_port.plug()
        await rec.online()
        pty_port.write(rdm6300.encode("0C00123456"))
        assert (await rec.tap()).uid == "0C00123456"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_cancel_releases_the_port(pty_port: PtyPort) -> None:
    for _ in range(2):  # the second run can open the port again and read
        rec = Recorder()
        async with running(make_reader(pty_port), rec):
            await rec.online()
            pty_port.write(rdm6300.encode("0C00123456"))
            assert (await rec.tap()).uid == "0C00123456"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"type": "usb"}, "unknown type 'usb'"),
        ({"type": "serial"}, r"missing setting\(s\) \['port'\]"),
        ({"type": "serial", "port": "/dev/x", "protocol": "wiegand"}, "unknown protocol 'wiegand'"),
        ({"type": "serial", "port": "/dev/x", "baudrate": "fast"}, "baudrate must be"),
        ({"type": "serial", "port": "/dev/x", "parity": "N"}, r"unknown setting\(s\) \['parity'\]"),
        ({"type": "pcsc"}, r"missing setting\(s\) \['name'\]"),
    ],
)
def test_open_reader_refuses_bad_settings(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_reader("r-1", debounce_s=1.5, **settings)


def test_backoff_grows_with_jitter_to_the_cap_and_resets() -> None:
    backoff = Backoff(initial_s=0.5, cap_s=30.0, jitter=0.25)
    delays = [backoff.next_delay() for _ in range(12)]
    for attempt, delay in enumerate(delays):
        base = min(30.0, 0.5 * 2**attempt)
        assert base * 0.75 <= delay <= base * 1.25
    backoff.reset()
    assert 0.375 <= backoff.next_delay() <= 0.625
    assert 22.5 <= backoff.longest() <= 37.5
