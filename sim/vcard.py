"""A virtual contactless card for vsmartcard's `vpcd` pcscd driver.

vpcd listens on a TCP port (35963 by default, one port per virtual reader
slot). Connecting to it places a card on "Virtual PCD 00 00"; closing the
socket removes it. Both ways, a frame is a 2-byte big-endian length and a
payload. From vpcd, a 1-byte payload is a control code (0 power off, 1 power
on, 2 reset, 4 send the ATR); anything longer is a command APDU that the card
must answer with a response APDU.

This card answers the PC/SC get-data APDU `FF CA 00 00 00` with its UID and
`90 00` (or `6A 81` if made with `uid_readable=False`), and every other APDU
with `6D 00` (instruction not supported).

    async with VirtualCard("04A1B2C3D4E5F6", port=35963):
        ...  # the card lies on the reader

or from a shell: `python -m sim.vcard 04A1B2C3D4E5F6 --hold 3`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
from types import TracebackType

DEFAULT_PORT = 35963

# PC/SC part 3 ATR of a contactless MIFARE Classic 1K card: what a real
# ACR122U reports, so applications that look at the ATR see something usual.
DEFAULT_ATR = bytes.fromhex("3B8F8001804F0CA000000306030001000000006A")

CTRL_OFF = 0
CTRL_ON = 1
CTRL_RESET = 2
CTRL_ATR = 4

GET_UID = bytes.fromhex("FFCA000000")
SW_OK = bytes.fromhex("9000")
SW_INS_NOT_SUPPORTED = bytes.fromhex("6D00")
SW_FUNCTION_NOT_SUPPORTED = bytes.fromhex("6A81")

# How long to wait for vpcd to accept the connection: it is a local socket.
CONNECT_TIMEOUT_S = 5.0


def answer(uid: bytes | None, atr: bytes, payload: bytes) -> bytes | None:
    """The card's reply to one vpcd payload, or None when none is due.

    `uid` None is a card that refuses get-data (`6A 81`), as some do.
    """
    if len(payload) == 1:
        return atr if payload[0] == CTRL_ATR else None
    if payload[:4] == GET_UID[:4] and len(payload) == 5:  # FF CA 00 00 Le
        return SW_FUNCTION_NOT_SUPPORTED if uid is None else uid + SW_OK
    return SW_INS_NOT_SUPPORTED


class VirtualCard:
    """A card on a vpcd reader for as long as the `async with` block lasts.

    Args:
        uid: the card's UID, as hex (separators ':' and ' ' allowed) or bytes.
        host: where vpcd listens.
        port: vpcd's port for the reader slot (35963 is "Virtual PCD 00 00").
        atr: the ATR returned on request.
        uid_readable: False makes a card that refuses get-data (no tap).
    """

    def __init__(
        self,
        uid: str | bytes,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        atr: bytes = DEFAULT_ATR,
        uid_readable: bool = True,
    ) -> None:
        if isinstance(uid, str):
            uid = bytes.fromhex(uid.replace(":", "").replace(" ", ""))
        if not uid:
            raise ValueError("a card needs a UID of at least one byte")
        self.uid = uid
        self.host = host
        self.port = port
        self.atr = atr
        self.uid_readable = uid_readable
        self.apdus = 0
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def place(self) -> None:
        """Put the card on the reader (connect to vpcd)."""
        if self._writer is not None:
            raise RuntimeError("the card is already placed")
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(self.host, self.port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Without these, each APDU waits ~40 ms for a delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._writer = writer
        self._task = asyncio.create_task(self._serve(reader, writer), name=f"vcard-{self.uid.hex().upper()}")

    async def remove(self) -> None:
        """Take the card off the reader (close the connection)."""
        writer, task = self._writer, self._task
        self._writer = self._task = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def __aenter__(self) -> VirtualCard:
        await self.place()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.remove()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        quickack = getattr(socket, "TCP_QUICKACK", None)
        try:
            while True:
                header = await reader.readexactly(2)
                payload = await reader.readexactly(int.from_bytes(header, "big"))
                reply = answer(self.uid if self.uid_readable else None, self.atr, payload)
                if len(payload) > 1:
                    self.apdus += 1
                if reply is not None:
                    writer.write(len(reply).to_bytes(2, "big") + reply)
                    await writer.drain()
                if sock is not None and quickack is not None:
                    # Linux clears quick-ack after use: set it again each turn.
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # vpcd went away (pcscd stopped): the card is off the reader.


async def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sim.vcard",
        description="Place a virtual contactless card on a vpcd reader.",
    )
    parser.add_argument("uid", help="card UID in hex, e.g. 04A1B2C3")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--hold", type=float, default=None, help="seconds on the reader (default: until Ctrl-C)"
    )
    args = parser.parse_args(argv)
    try:
        card = VirtualCard(args.uid, host=args.host, port=args.port)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        async with card:
            print(f"card {card.uid.hex().upper()} placed on {args.host}:{args.port}")
            if args.hold is None:
                await asyncio.Event().wait()
            else:
                await asyncio.sleep(args.hold)
    except OSError as exc:
        print(f"cannot reach vpcd at {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print("card removed")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    try:
        return asyncio.run(_main(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
