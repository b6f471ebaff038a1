"""One RS-485 line of DL/T 645-2007 meters: a request in, its answer out.

Contract: `request(req, timeout_s)` writes one request frame (FE preamble first) on
a quiet line and returns the answer to it: a `ReadAnswer` with the same data
identifier or a `RelayAck`, from the same address, or the meter's `ErrorAnswer`
to that function. Otherwise it raises a `LinkError`: `LinkTimeout`, `LinkDown`,
`LinkNoisy` (see `drivers.serial_line`, whose line discipline it keeps: a late
answer is dropped, never taken for the next request).

Nothing else is ever taken for an answer. Stray bytes are dropped and counted
(`on_dropped`); a frame with a bad checksum, one from another address, and one
from this address that does not answer this request (another identifier, a late
answer) are dropped and counted (`on_frames(bad, foreign)`) while the request
keeps waiting for its own answer until its timeout. The line does not retry,
reopen or queue: `drivers.dlt645.bus` does.
"""

from __future__ import annotations

from collections.abc import Callable

from drivers.dlt645.frames import (
    BROADCAST,
    MAX_FRAME,
    READ,
    READ_ADDRESS,
    RELAY,
    AddressAnswer,
    Answer,
    ErrorAnswer,
    ReadAddress,
    ReadAnswer,
    ReadRequest,
    RelayAck,
    Request,
    decode_answer,
    scan,
)
from drivers.errors import FrameError
from drivers.serial_line import HalfDuplexLine, open_serial

# Called with (frames with a bad checksum, frames not for this request) as they are dropped.
FrameSink = Callable[[int, int], None]


def answers(request: Request, answer: Answer) -> bool:
    """True when `answer` (from the request's address) is the answer to `request`."""
    if isinstance(request, ReadRequest):
        if isinstance(answer, ReadAnswer):
            return answer.di == request.di
        return isinstance(answer, ErrorAnswer) and answer.function == READ
    if isinstance(request, ReadAddress):
        return isinstance(answer, AddressAnswer) or (
            isinstance(answer, ErrorAnswer) and answer.function == READ_ADDRESS)
    if isinstance(answer, ErrorAnswer):
        return answer.function == RELAY
    return isinstance(answer, RelayAck)


class Dlt645Link(HalfDuplexLine[Request, Answer]):
    """One serial line of DL/T 645 meters, one request at a time (see the module's contract)."""

    MAX_FRAME = MAX_FRAME
    DROP_EVENT = "dlt645_bytes_dropped"

    def __init__(self, name: str, baudrate: int, parity: str, stopbits: int, *,
                 gap_s: float = 0.0, on_dropped: Callable[[int], None] | None = None,
                 on_frames: FrameSink | None = None) -> None:
        super().__init__(name, baudrate, parity, stopbits, gap_s=gap_s, on_dropped=on_dropped)
        self._on_frames = on_frames

    @classmethod
    async def open(cls, name: str, port: str, *, baudrate: int, parity: str, stopbits: int,
                   timeout_s: float, gap_s: float = 0.0,
                   on_dropped: Callable[[int], None] | None = None,
                   on_frames: FrameSink | None = None) -> Dlt645Link:
        """Open the serial port; `LinkDown` if it cannot be opened."""
        return await open_serial(
            lambda: cls(name, baudrate, parity, stopbits, gap_s=gap_s, on_dropped=on_dropped,
                        on_frames=on_frames),
            port, baudrate=baudrate, parity=parity, stopbits=stopbits, timeout_s=timeout_s)

    async def request(self, request: Request, timeout_s: float) -> Answer:
        """Send `request` and return its answer (see the module's contract)."""
        return await self._exchange(request.frame().encode(), request, timeout_s)

    def _take(self, buffer: bytearray, expect: Request) -> Answer | None:
        while True:
            # To the wildcard, the meter answers from its own address.
            found = scan(buffer, None if expect.address == BROADCAST else expect.address)
            del buffer[:found.used]
            self._dropped(found.stray)
            foreign = found.foreign
            answer: Answer | None = None
            if found.frame is not None:
                try:
                    answer = decode_answer(found.frame)
                except FrameError:   # a request, or a function we do not speak
                    answer = None
                if answer is None or not answers(expect, answer):
                    foreign, answer = foreign + 1, None
            if (found.bad or foreign) and self._on_frames is not None:
                self._on_frames(found.bad, foreign)
            if answer is not None:
                self._dropped(len(buffer))
                buffer.clear()
                return answer
            if found.frame is None:
                return None
