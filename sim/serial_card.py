"""Simulated serial card readers: a pseudo-terminal that a driver opens as its port.

`PtyPort(path)` makes a pty pair and a symlink `path` to its slave side: the
driver under test opens `path` like `/dev/ttyUSB0`; the simulator writes the
reader's bytes to the master side. `unplug()` closes the pty and removes the
link (the driver sees its port fail and the path vanish, as with a USB
adapter pulled out); `plug()` puts a fresh pty behind the same path.

Mind pyserial's flush on open: wait until the driver has the port open
(its `status(True, "")`) before writing, or the first bytes may be lost.
"""

from __future__ import annotations

import asyncio
import os
import tty
from pathlib import Path
from types import TracebackType
from typing import Literal

from drivers.cardreader import asciiline, rdm6300

SerialCardProtocol = Literal["rdm6300", "ascii-line"]
# An RDM6300 repeats its frame about this often while a card is in the field.
RDM6300_REPEAT_S = 0.1


def frame(uid: str, protocol: SerialCardProtocol) -> bytes:
    """What a reader of `protocol` sends once for `uid`."""
    return rdm6300.encode(uid) if protocol == "rdm6300" else asciiline.encode(uid)


class PtyPort:
    """A pty pair behind a stable path; see the module docstring."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._master: int | None = None
        self.plug()

    @property
    def plugged(self) -> bool:
        """True while the pty exists behind `path`."""
        return self._master is not None

    def plug(self) -> None:
        """Create a fresh pty (raw, no echo) and point `path` at its slave side."""
        if self._master is not None:
            return
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            slave_name = os.ttyname(slave)
        finally:
            # Only the driver reads the slave side; holding it here would not help.
            os.close(slave)
        self.path.unlink(missing_ok=True)
        self.path.symlink_to(slave_name)
        self._master = master

    def unplug(self) -> None:
        """Remove the link and close the pty: the driver's reads fail (hang-up)."""
        self.path.unlink(missing_ok=True)
        if self._master is not None:
            os.close(self._master)
            self._master = None

    def write(self, data: bytes) -> None:
        """Send `data` to the driver as the reader would, all of it."""
        if self._master is None:
            raise OSError("the simulated reader is unplugged")
        view = memoryview(data)
        while view:
            view = view[os.write(self._master, view) :]

    async def send(self, data: bytes, *, byte_delay_s: float = 0.0) -> None:
        """Send `data`, optionally one byte at a time with a pause between bytes."""
        if byte_delay_s <= 0:
            self.write(data)
            return
        for byte in data:
            self.write(bytes([byte]))
            await asyncio.sleep(byte_delay_s)

    async def present(
        self,
        uid: str,
        protocol: SerialCardProtocol = "rdm6300",
        *,
        repeats: int = 1,
        interval_s: float = RDM6300_REPEAT_S,
    ) -> None:
        """A card held on the reader: its frame `repeats` times, `interval_s` apart."""
        data = frame(uid, protocol)
        for i in range(repeats):
            if i:
                await asyncio.sleep(interval_s)
            self.write(data)

    def close(self) -> None:
        """Unplug for good."""
        self.unplug()

    def __enter__(self) -> PtyPort:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
