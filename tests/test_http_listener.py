"""The monitoring listener ([metrics], [web]) against hostile clients on real sockets:
a flood of idle connections and a client that never reads cost the gateway a bounded
number of sockets, and monitoring comes back once they go."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator

import pytest
import structlog

from gatewayd.services import http_listener
from gatewayd.services.component import Heartbeat
from gatewayd.services.http_listener import MAX_CONNECTIONS, HttpListener, Response

BIG = b"x" * (8 << 20)  # far more than the socket buffers hold


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _page() -> Response:
    return Response(b"ok\n")


async def _big() -> Response:
    return Response(BIG)


@pytest.fixture
async def listener() -> AsyncIterator[HttpListener]:
    server = HttpListener("web", "127.0.0.1", free_port(), {b"/": _page, b"/big": _big})
    task = asyncio.create_task(server.serve(Heartbeat("web", None)))
    for _ in range(100):
        if server.server is not None:
            break
        await asyncio.sleep(0.02)
    try:
        yield server
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.close()


async def get(port: int, path: str = "/") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def answer_or_nothing(port: int) -> bytes:
    """The answer; b"" for a connection closed or reset unanswered."""
    try:
        return await get(port)
    except ConnectionError:
        return b""


async def until(condition: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.05)


async def test_a_flood_of_idle_connections_holds_a_bounded_number_of_sockets(
        listener: HttpListener) -> None:
    fds_before = open_fds()
    idle: list[asyncio.StreamWriter] = []
    with structlog.testing.capture_logs() as logs:
        try:
            for _ in range(MAX_CONNECTIONS):   # connected, never asking
                idle.append((await asyncio.open_connection("127.0.0.1", listener.port))[1])
            await until(lambda: listener.open_connections == MAX_CONNECTIONS)
            # One more is closed unanswered: monitoring is denied, the gateway is not.
            assert await answer_or_nothing(listener.port) == b""
            # A held slot freed and taken again in the flood: still one run of refusals.
            idle.pop().close()
            await until(lambda: listener.open_connections == MAX_CONNECTIONS - 1)
            idle.append((await asyncio.open_connection("127.0.0.1", listener.port))[1])
            await until(lambda: listener.open_connections == MAX_CONNECTIONS)
            assert await answer_or_nothing(listener.port) == b""
            for _ in range(200):
                with contextlib.suppress(ConnectionError):
                    (await asyncio.open_connection("127.0.0.1", listener.port))[1].close()
            await asyncio.sleep(0.2)
            # Ours: the idle clients' ends and the listener's ends (at most the bound).
            assert open_fds() - fds_before <= 2 * MAX_CONNECTIONS + 4
        finally:
            for writer in idle:
                writer.close()
        await until(lambda: listener.open_connections == 0)
        assert (await get(listener.port)).startswith(b"HTTP/1.1 200")
    events = [e["event"] for e in logs]
    assert "web_connections_refused" in events
    assert events.count("web_connections_refused") == 1   # repeats summarised, not each
    assert "web_connections_accepted" in events


async def test_a_client_that_never_reads_is_dropped(listener: HttpListener,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_listener, "EXCHANGE_TIMEOUT_S", 0.5)
    fds_before = open_fds()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", listener.port))
    try:
        await asyncio.get_running_loop().sock_sendall(sock, b"GET /big HTTP/1.1\r\n\r\n")
        await until(lambda: listener.open_connections == 1)
        # 8 MiB it never reads: the listener gives up on it and frees its socket
        # (only the client's own end is left open).
        await until(lambda: listener.open_connections == 0, timeout=5.0)
        await until(lambda: open_fds() <= fds_before + 1, timeout=5.0)
        assert (await get(listener.port)).startswith(b"HTTP/1.1 200")
    finally:
        sock.close()
