"""smtp_anyio._connection's trio paths, pinned: SocketConnection's reads, short or filling its
buffer, hand the Session every byte in order; its peer is the stream's; the server runs trio
connections in a plain nursery that a stop still ends."""

from __future__ import annotations

import os
import select
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

import smtp_anyio
import smtp_anyio._server
from smtp_anyio._connection import Poller, SocketConnection, Watchdog
from smtp_core import Router, Session
from smtp_core.adapter import WaitEnd
from smtp_sync.adapter import SpoolFile
from tests.servers import Collect, ipv6_loopback

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "trio"  # SocketConnection serves plain TCP on trio only


class Recorder:
    """Stands in for the Session: keeps what each read fed it."""

    timeout = 30.0

    def __init__(self) -> None:
        self.reads: list[bytes] = []

    def receive_data(self, data: bytes) -> list[Any]:
        self.reads.append(data)
        return []


@asynccontextmanager
async def socket_connection(
    buffer_size: int, family: socket.AddressFamily = socket.AF_INET, client_buffer: int = 0
) -> AsyncIterator[tuple[SocketConnection, SocketStream, SocketStream]]:
    """A SocketConnection on the server side of a real TCP connection, and the client (with
    a receive buffer of ``client_buffer`` bytes, when given)."""
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    listeners = await anyio.create_tcp_listener(local_host=host, local_port=0)
    async with listeners:
        listener = listeners.listeners[0]  # one address: one listener
        port = listener.extra(SocketAttribute.local_port)
        raw_client = socket.socket(family)
        if client_buffer:
            raw_client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, client_buffer)
        raw_client.connect((host, port))  # the listener's backlog takes it at once
        client = await SocketStream.from_socket(raw_client)
        server = await listener.accept()
        raw = server.extra(SocketAttribute.raw_socket)
        buffer = memoryview(bytearray(buffer_size))
        poller = Poller()
        connection = SocketConnection(server, raw, Watchdog(), poller, buffer, lambda: False)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(poller.run)
            try:
                yield connection, server, client
            finally:
                await client.aclose()
                await connection.aclose()
                tasks.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("buffer_size", "payload"),
    [
        pytest.param(16, b"EHLO x\r\n", id="command-shorter-than-the-buffer"),
        pytest.param(16, b"0123456789abcdef", id="exactly-one-buffer"),
        pytest.param(16, os.urandom(16 * 1000 + 7), id="bulk-many-buffers"),
        pytest.param(4096, b"line\r\n..dot\r\n" * 2000 + b".\r\n", id="dot-stuffed-data"),
    ],
)
async def test_every_byte_reaches_the_session_in_order(buffer_size: int, payload: bytes) -> None:
    """Whichever way each read goes, the session gets the client's bytes, in order, then b""
    at the client's end (reads that fill the buffer take the bulk way)."""
    async with socket_connection(buffer_size) as (connection, _server, client):
        await client.send(payload)
        await client.send_eof()
        recorder = Recorder()
        session = cast(Session, recorder)
        while not recorder.reads or recorder.reads[-1]:
            assert await connection.next_actions(session, SpoolFile()) == []
    assert b"".join(recorder.reads) == payload
    assert recorder.reads[-1] == b""
    assert all(len(read) <= buffer_size for read in recorder.reads)
    if len(payload) > 2 * buffer_size:
        assert recorder.reads.count(b"") == 1
        assert sum(len(read) == buffer_size for read in recorder.reads) >= 2


async def _until(condition: Any) -> None:
    with anyio.fail_after(10):
        while not condition():
            await anyio.sleep(0.01)


async def test_rounds_that_need_no_await_do_not_wake_the_task() -> None:
    """Parked in next_actions, the task sleeps while the poller feeds the session round after
    round; it wakes at the client's end (or for an action to await)."""
    async with socket_connection(4096) as (connection, _server, client):
        recorder = Recorder()
        results: list[object] = []

        async def wait() -> None:
            results.append(await connection.next_actions(cast(Session, recorder), SpoolFile()))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(wait)
            for number in range(5):
                await anyio.sleep(0.05)  # the task has parked
                await client.send(b"NOOP %d\r\n" % number)
                await _until(lambda n=number: len(recorder.reads) == n + 1)  # type: ignore[misc]
                assert results == []
            await client.send_eof()
        assert results == [[]]
        assert recorder.reads == [b"NOOP %d\r\n" % n for n in range(5)] + [b""]


async def test_bytes_that_arrive_while_the_task_is_busy_are_read_at_its_next_wait() -> None:
    """The poller ignores a socket whose task is busy (its edge is gone by then): the task's
    next wait reads first and finds the bytes."""
    async with socket_connection(4096) as (connection, _server, client):
        recorder = Recorder()
        session = cast(Session, recorder)
        await client.send(b"EHLO x\r\n")
        assert select.select([connection.socket], [], [], 10)[0]  # arrived
        assert await connection.next_actions(session, SpoolFile()) == []
        assert recorder.reads == [b"EHLO x\r\n"]
        await client.send(b"NOOP\r\n")  # the task is "busy": not in next_actions
        await anyio.sleep(0.1)  # the poller saw the edge, and left the bytes
        with anyio.fail_after(1):
            assert await connection.next_actions(session, SpoolFile()) == []
        assert recorder.reads == [b"EHLO x\r\n", b"NOOP\r\n"]


@pytest.mark.parametrize(
    ("end", "why"),
    [
        pytest.param("interrupt", WaitEnd.INTERRUPTED, id="stop-or-eviction"),
        pytest.param("expire", WaitEnd.TIMED_OUT, id="watchdog"),
    ],
)
async def test_a_parked_wait_ends_without_bytes(end: str, why: WaitEnd) -> None:
    async with socket_connection(4096) as (connection, _server, _client):
        results: list[object] = []

        async def wait() -> None:
            results.append(await connection.next_actions(cast(Session, Recorder()), SpoolFile()))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(wait)
            await anyio.sleep(0.05)
            assert results == []
            getattr(connection, end)()
        assert results == [why]


@pytest.mark.parametrize(
    "family",
    [
        pytest.param(socket.AF_INET, id="ipv4"),
        pytest.param(
            socket.AF_INET6,
            id="ipv6",
            marks=pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback"),
        ),
    ],
)
async def test_peer_is_the_streams_remote_address(family: socket.AddressFamily) -> None:
    """SocketConnection asks the socket itself; the answer is the stream's."""
    async with socket_connection(16, family) as (connection, server, _client):
        remote = server.extra(SocketAttribute.remote_address)
        assert connection.peer == (remote[0], remote[1])


async def test_stop_ends_idle_trio_connections(router_box: tuple[Router[Any], Collect]) -> None:
    """Connection tasks live in a plain trio nursery: a stop still reaches idle sessions."""
    router, _box = router_box
    async with smtp_anyio.Server(router, port=0, shutdown_timeout=5) as server:
        clients = [await anyio.connect_tcp("127.0.0.1", server.port) for _ in range(3)]
        for client in clients:
            assert (await client.receive()).startswith(b"220")
            await client.send(b"EHLO client\r\n")
            assert b"250 " in await client.receive()
    for client in clients:
        with anyio.fail_after(10):
            assert (await client.receive()).startswith(b"421 4.3.2")
        await client.aclose()


@pytest.fixture
def router_box() -> tuple[Router[Any], Collect]:
    box = Collect()
    router: Router[Any] = Router()
    router.add("*@example.com", box)
    return router, box


@pytest.mark.parametrize(
    "has_epoll", [pytest.param(True, id="poller"), pytest.param(False, id="streams")]
)
async def test_a_message_over_trio_with_and_without_epoll(
    has_epoll: bool, router_box: tuple[Router[Any], Collect], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where there is no epoll (the Poller's), trio's plain connections run over anyio streams."""
    monkeypatch.setattr(smtp_anyio._server, "_HAS_EPOLL", has_epoll)
    router, box = router_box
    script = [
        (b"", b"220"),
        (b"EHLO client\r\n", b"250 "),
        (b"MAIL FROM:<a@example.com>\r\n", b"250 "),
        (b"RCPT TO:<b@example.com>\r\n", b"250 "),
        (b"DATA\r\n", b"354 "),
        (b"Subject: hi\r\n\r\nbody\r\n.\r\n", b"250 "),
        (b"QUIT\r\n", b"221 "),
    ]
    async with smtp_anyio.Server(router, port=0) as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as client:
            for command, expected in script:
                if command:
                    await client.send(command)
                with anyio.fail_after(10):
                    reply = await client.receive()
                assert expected in reply, (command, reply)
    assert box.contents == [b"Subject: hi\r\n\r\nbody\r\n"]


@pytest.mark.anyio
async def test_writes_the_socket_does_not_take_wait_for_flush_in_order() -> None:
    """Back-pressure: what the socket does not take at once waits, behind later writes, for
    the task's flush; a round the poller runs then wakes the task (to flush) instead of
    reading on."""
    async with socket_connection(4096, client_buffer=4096) as (connection, _server, client):
        connection.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        blob = os.urandom(1 << 20)  # far more than these socket buffers hold
        connection.write(blob)
        connection.write(b"after\r\n")
        assert connection.unflushed
        recorder = Recorder()
        results: list[object] = []

        async def wait() -> None:
            results.append(await connection.next_actions(cast(Session, recorder), SpoolFile()))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(wait)
                await anyio.sleep(0.05)  # parked
                await client.send(b"NOOP\r\n")  # a round: its write queues; the task wakes
        assert results == [[]] and recorder.reads == [b"NOOP\r\n"]
        received = bytearray()

        async def read_all() -> None:
            while len(received) < len(blob) + 7:
                received.extend(await client.receive())

        with anyio.fail_after(10):  # a flush that loses bytes: the reader waits for ever
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(read_all)
                assert await connection.flush()
        assert not connection.unflushed
        assert bytes(received) == blob + b"after\r\n"


async def test_a_connection_closes_after_its_poller_ended() -> None:
    """A forced stop may end the poller's task (closing its epoll) before a connection's task
    closes: the connection still closes its socket."""
    async with socket_connection(4096) as (connection, _server, _client):
        poller = Poller()
        connection._poller = poller
        connection._fd = poller.register(connection)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await poller.run()  # cancelled at once: its epoll closes
        await connection.aclose()
        assert connection.socket.fileno() == -1


def test_the_sync_server_reads_below_the_mmap_threshold() -> None:
    """A recv(n) above glibc's default mmap threshold (128 KiB) costs an mmap, an mremap and a
    munmap per read, however small the read: five times the CPU of a command's round."""
    from smtp_sync import _server

    assert _server._READ_SIZE <= 128 * 1024
    assert _server._BULK_READ_SIZE > _server._READ_SIZE  # only once a read came full
