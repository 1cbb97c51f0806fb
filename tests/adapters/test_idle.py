"""Idle connections on live servers: a full server with the default cap still serves a fresh
client (W5), and on asyncio an idle connection waits with no task (``TransportConnection.park``)
yet is served, timed, evicted and stopped as before."""

from __future__ import annotations

import asyncio
import smtplib
from typing import Any

import anyio
import pytest

from smtp_anyio import Server
from smtp_core import Router, ServerConfig
from tests.adapters.test_limits import MESSAGE, idle_connections, reply, send_message, wait_until
from tests.servers import Collect, raise_file_limit, running


@pytest.fixture
def router(box: Collect) -> Router[Any]:
    router: Router[Any] = Router()
    router.add("*@example.com", box)
    return router


@pytest.fixture(autouse=True)
def _enough_file_descriptors() -> None:
    """1000 connections are 2000 sockets in this process (both ends)."""
    raise_file_limit()


def test_1000_idle_connections_at_the_default_cap_leave_room_for_a_fresh_client(
    kind: str, router: Router[Any], box: Collect
) -> None:
    """The issue's W5-fresh: the default ``max_connections`` (1000) all taken by idle clients
    (50 from each of 20 addresses: the default per-client limit), and a fresh client from
    another address still sends its message; the idle connection that waited longest makes
    room (421 4.4.2), the others are still served."""
    sources = [f"127.0.1.{10 + n // 50}" for n in range(1000)]
    with running(kind, router) as server:
        assert server.admission.limits.max_connections == 1000
        with idle_connections(server.port, sources) as socks:
            wait_until(lambda: server.admission.open == 1000)
            send_message(server.port, source="127.0.2.1")
            assert reply(socks[0]) == b"421 4.4.2 Server busy, closing idle connection"
            for sock in socks[1::100]:
                sock.sendall(b"NOOP\r\n")
                assert reply(sock)[:3] == b"250"
        assert server.metrics.connections_evicted == 1
    assert box.contents == [MESSAGE]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _read_reply(stream: Any) -> bytes:
    """The final line of the next reply (the tests send one command at a time)."""
    data = b""
    while True:
        data += await stream.receive()
        lines = data.split(b"\r\n")
        if len(lines) > 1 and lines[-2][3:4] == b" ":
            return lines[-2]


@pytest.mark.anyio
async def test_idle_connections_wait_with_no_task_on_asyncio(
    anyio_backend: str, router: Router[Any], box: Collect
) -> None:
    """After EHLO, 20 connections wait for their clients: on asyncio none of them holds a task
    (about 1.5 KiB each: the task, its coroutine frames and a future; W5). Each is served
    when its client speaks again, a message included (a task runs the async-or-thread
    handler, then the connection waits without it again), and times out as before."""
    config = ServerConfig(command_timeout=5.0)  # room for a slow start on a loaded machine
    async with Server(router, port=0, config=config) as server:
        tasks_before = len(asyncio.all_tasks()) if anyio_backend == "asyncio" else 0
        streams = []
        try:
            for _ in range(20):
                stream = await anyio.connect_tcp("127.0.0.1", server.port)
                streams.append(stream)
                assert (await _read_reply(stream))[:3] == b"220"
                await stream.send(b"EHLO c.example\r\n")
                assert (await _read_reply(stream))[:3] == b"250"
            if anyio_backend == "asyncio":
                assert len(asyncio.all_tasks()) == tasks_before
            for stream in streams[:3]:
                for command, code in [
                    (b"MAIL FROM:<a@example.org>\r\n", b"250"),
                    (b"RCPT TO:<b@example.com>\r\n", b"250"),
                    (b"DATA\r\n", b"354"),
                    (MESSAGE + b".\r\n", b"250"),
                    (b"NOOP\r\n", b"250"),
                ]:
                    await stream.send(command)
                    assert (await _read_reply(stream))[:3] == code
            if anyio_backend == "asyncio":
                assert len(asyncio.all_tasks()) == tasks_before
            timed_out = await _read_reply(streams[-1])  # nobody spoke on it since EHLO
            assert timed_out == b"421 4.4.2 Timeout, closing connection"
        finally:
            for stream in streams:
                await stream.aclose()
    assert box.contents == [MESSAGE] * 3


def test_a_stop_ends_an_idle_transaction_that_waits_with_no_task(
    kind: str, router: Router[Any]
) -> None:
    """A client inside a transaction that goes quiet while the server stops: the stop waits
    ``shutdown_timeout`` for it, then closes it and drops the transaction (on asyncio the
    connection waits with no task, so the stop must end it without one to cancel)."""
    with running(kind, router, shutdown_timeout=0.3) as server:
        client = smtplib.SMTP("127.0.0.1", server.port, timeout=10)
        client.ehlo("c.example")
        assert client.mail("a@example.org")[0] == 250
        assert client.rcpt("b@example.com")[0] == 250
    wait_until(lambda: not server._sessions)
    with pytest.raises((smtplib.SMTPServerDisconnected, OSError)):
        client.noop()
        client.noop()  # the first may still read a 421
    client.close()
    assert server.admission.open == 0
