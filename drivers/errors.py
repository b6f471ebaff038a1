"""Every exception the drivers raise, in one tree under `DriverError`.

A caller that wants any driver failure catches `DriverError`; one that wants
a kind catches its class. Data is carried as attributes, the message is for
logs. It imports nothing of the project at run time, so every driver layer can use it.

    DriverError
    ├── DeviceError            a device did not answer usefully (`device`, `message`)
    │   └── SwitchMismatch     a switch did not follow a command (`wanted`, `actual`)
    │       └── RelayRefused   a meter refused its relay command (the password)
    ├── LinkError              a request got no usable answer from the transport
    │   ├── LinkTimeout
    │   ├── LinkDown
    │   ├── LinkGarbage
    │   └── LinkNoisy
    ├── FrameError             not a valid Modbus or DL/T 645 frame (also a ValueError)
    ├── ModbusExceptionError   the device answered with an exception (`response`)
    └── ProfileError           a profile could not be loaded (`problems`)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from drivers.modbus.frames.pdu import ExceptionResponse
    from drivers.profile import ProfileProblem


class DriverError(Exception):
    """Root of every exception raised by `drivers/`."""


# ------------------------------------------------------------------ devices


class DeviceError(DriverError):
    """A device did not answer usefully. `device` names it for logs and alarms."""

    def __init__(self, device: str, message: str) -> None:
        super().__init__(f"{device}: {message}")
        self.device = device
        self.message = message


class SwitchMismatch(DeviceError):
    """A switch answered but did not follow a command: read back `actual`, not `wanted`.

    Raised by `Switch.set`; a subclass of `DeviceError`, so callers that only know
    that class still treat it as a failed command.
    """

    def __init__(self, device: str, wanted: bool, actual: bool) -> None:
        super().__init__(
            device,
            f"commanded {'on' if wanted else 'off'}, reads back {'on' if actual else 'off'}",
        )
        self.wanted = wanted
        self.actual = actual


class RelayRefused(SwitchMismatch):
    """A DL/T 645 meter refused a relay command (error bit 04: the password, its
    level or the operator code); the relay reads back `actual`."""

    def __init__(self, device: str, wanted: bool, actual: bool) -> None:
        super().__init__(device, wanted, actual)
        self.message = (f"refused the {'close' if wanted else 'trip'} command (password), "
                        f"relay reads back {'closed' if actual else 'open'}")
        self.args = (f"{device}: {self.message}",)


# ------------------------------------------------------------- Modbus link


class LinkError(DriverError):
    """A request got no usable answer from the transport."""


class LinkTimeout(LinkError):
    """No answer within the timeout."""


class LinkDown(LinkError):
    """Not connected, or the connection was lost while waiting."""


class LinkGarbage(LinkError):
    """Bytes arrived that are not a valid answer (bad framing, CRC, wrong unit)."""


class LinkNoisy(LinkError):
    """An RTU line did not fall quiet before a request (noise, or a device that babbles)."""


# ----------------------------------------------------------- Modbus frames


class FrameError(DriverError, ValueError):
    """Bytes that are not a valid Modbus or DL/T 645 frame, or do not answer the request."""


class ModbusExceptionError(DriverError):
    """The device answered with an exception response."""

    def __init__(self, response: ExceptionResponse) -> None:
        super().__init__(response.describe())
        self.response = response


# ---------------------------------------------------------------- profiles


class ProfileError(DriverError):
    """A profile could not be loaded; `problems` lists every problem found."""

    def __init__(self, problems: list[ProfileProblem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems
