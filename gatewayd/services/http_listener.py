"""A small read-only HTTP/1.1 listener on the daemon's loop, for the monitoring
endpoints (`[metrics]`, `[web]`).

Contract:
- One request per connection (`Connection: close`), its head at most
  MAX_REQUEST_BYTES, read within REQUEST_TIMEOUT_S.
- GET and HEAD only: any other method is answered 405 with `Allow: GET, HEAD`,
  so nothing reached through it can change the gateway.
- `routes` maps a path (query string ignored) to an async function returning
  a `Response`; other paths are 404. A route that raises answers 500 and is
  logged (`{name}_request_failed`); the listener goes on.
- Monitoring never stops the gateway: a port that cannot be bound is logged
  (`{name}_listen_failed`, the first at WARNING, repeats at DEBUG) and retried
  every LISTEN_RETRY_S.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import structlog

from gatewayd.services.component import Heartbeat

log = structlog.get_logger(__name__)

# Retry a port that could not be bound (taken by another process) this often.
LISTEN_RETRY_S = 30.0
# A client that does not finish its request within this is dropped.
REQUEST_TIMEOUT_S = 5.0
# Longest request head read: these endpoints take one short GET.
MAX_REQUEST_BYTES = 8192
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Response:
    body: bytes
    content_type: str = TEXT
    status: str = "200 OK"
    headers: tuple[tuple[str, str], ...] = ()


Route = Callable[[], Awaitable[Response]]


class HttpListener:
    """Serves `routes` on host:port until closed; `name` names its log events."""

    def __init__(self, name: str, host: str, port: int, routes: Mapping[bytes, Route]) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.routes = routes
        self.server: asyncio.Server | None = None

    async def serve(self, heartbeat: Heartbeat) -> None:
        """Bind (retrying while the port is taken), then answer until cancelled."""
        failures = 0
        while self.server is None:
            try:
                self.server = await asyncio.start_server(
                    self._serve, self.host, self.port, limit=MAX_REQUEST_BYTES)
            except OSError as e:
                failures += 1
                (log.warning if failures == 1 else log.debug)(
                    f"{self.name}_listen_failed", listen=f"{self.host}:{self.port}", error=str(e),
                    retry_in_s=LISTEN_RETRY_S)
                await asyncio.sleep(LISTEN_RETRY_S)
        log.info(f"{self.name}_listening", listen=f"{self.host}:{self.port}")
        heartbeat.beat()
        await self.server.serve_forever()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                request = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = request.partition(b" ")
            response = await self._answer(method, rest.split(b" ", 1)[0].split(b"?", 1)[0])
            head = "".join(f"{k}: {v}\r\n" for k, v in response.headers)
            writer.write((f"HTTP/1.1 {response.status}\r\nContent-Type: {response.content_type}\r\n"
                          f"Content-Length: {len(response.body)}\r\n{head}Connection: close\r\n\r\n"
                          ).encode() + (b"" if method == b"HEAD" else response.body))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _answer(self, method: bytes, path: bytes) -> Response:
        if method not in (b"GET", b"HEAD"):
            return Response(b"read only: GET and HEAD\n", status="405 Method Not Allowed",
                            headers=(("Allow", "GET, HEAD"),))
        route = self.routes.get(path)
        if route is None:
            return Response(b"not found\n", status="404 Not Found")
        try:
            return await route()
        except Exception as e:  # one failing page must not take the listener down
            log.exception(f"{self.name}_request_failed", path=path.decode(errors="replace"))
            return Response(f"{e}\n".encode(), status="500 Internal Server Error")


class ListeningComponent:
    """A supervisor component that is its `listener`: nothing to start, serve, close."""

    name: str
    listener: HttpListener
    heartbeat_s: float | None = None  # event-driven: it only answers requests

    async def start(self) -> None:
        return None

    async def run(self, heartbeat: Heartbeat) -> None:
        await self.listener.serve(heartbeat)

    async def shutdown(self) -> None:
        await self.listener.close()
