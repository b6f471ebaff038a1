"""A small read-only HTTP/1.1 listener on the daemon's loop, for the monitoring
endpoints (`[metrics]`, `[web]`).

Contract:
- One request per connection (`Connection: close`), its head at most
  MAX_REQUEST_BYTES, read within REQUEST_TIMEOUT_S; the whole exchange (the
  answer computed and written too) within EXCHANGE_TIMEOUT_S, so a client that
  neither asks nor reads, or a page stuck on a busy store, frees its socket.
- At most MAX_CONNECTIONS at once: one more is closed unanswered, so a flood
  of connections costs the gateway at most that many sockets (the serial
  ports, the database and the MQTT connection need descriptors too) and
  denies monitoring only. The first refusal is logged at WARNING
  (`{name}_connections_refused`), repeats summarised once a minute, the end
  at INFO (`{name}_connections_accepted`, when a connection finds no other).
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

from drivers.retry import FailureLog
from gatewayd.services.component import Heartbeat

log = structlog.get_logger(__name__)

# Retry a port that could not be bound (taken by another process) this often.
LISTEN_RETRY_S = 30.0
# A client that does not finish its request within this is dropped.
REQUEST_TIMEOUT_S = 5.0
EXCHANGE_TIMEOUT_S = 15.0
# Longest request head read: these endpoints take one short GET.
MAX_REQUEST_BYTES = 8192
# Connections served at once: a few people and a scraper need a handful.
MAX_CONNECTIONS = 32
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
        self.open_connections = 0
        self._refusals = FailureLog(log, f"{name}_connections_refused",
                                    recovered=f"{name}_connections_accepted",
                                    listen=f"{host}:{port}", limit=MAX_CONNECTIONS)

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
        if self.open_connections >= MAX_CONNECTIONS:
            self._refusals.failed()
            writer.transport.abort()
            return
        if self.open_connections == 0:
            # Nobody else connected: a flood is over. Not sooner: under a flood a slot
            # that frees and is taken again must not end and begin a run each time.
            self._refusals.ok()
        self.open_connections += 1
        try:
            async with asyncio.timeout(EXCHANGE_TIMEOUT_S):
                await self._exchange(reader, writer)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        finally:
            self.open_connections -= 1
            writer.close()
            try:
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
            except TimeoutError:
                writer.transport.abort()  # a client that does not read: its socket goes now
            except ConnectionError:
                pass

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read one request, write its answer."""
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            request = await reader.readuntil(b"\r\n\r\n")
        method, _, rest = request.partition(b" ")
        response = await self._answer(method, rest.split(b" ", 1)[0].split(b"?", 1)[0])
        head = "".join(f"{k}: {v}\r\n" for k, v in response.headers)
        writer.write((f"HTTP/1.1 {response.status}\r\nContent-Type: {response.content_type}\r\n"
                      f"Content-Length: {len(response.body)}\r\n{head}Connection: close\r\n\r\n"
                      ).encode() + (b"" if method == b"HEAD" else response.body))
        await writer.drain()

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
