"""Connection limits on live servers (asyncio, trio, sync) over real sockets: per client, per
rate, a full server that evicts idle connections for working ones, 300 idle connections."""

from __future__ import annotations

import contextlib
import smtplib
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from smtp_core import ConnectionLimits, ConnectionRate, Router, ServerConfig
from tests.servers import TLS, Collect, raise_file_limit, running

MESSAGE = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"


@pytest.fixture
def router(box: Collect) -> Router[Any]:
    router: Router[Any] = Router()
    router.add("*@example.com", box)
    return router


@pytest.fixture(autouse=True)
def _enough_file_descriptors() -> None:
    """300 connections are 600 sockets in this process (both ends): more than a soft limit of
    1024 leaves room for, with the rest of the suite. Raise the soft limit if we may."""
    raise_file_limit()


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A raw connection from ``source`` (any 127/8 address works on Linux's loopback)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


_unread: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def reply(sock: socket.socket) -> bytes:
    """The next final reply line (without CRLF); b"" at the end of the stream. What arrived
    after it is kept for the next call (pipelined replies come in one read)."""
    data = _unread.pop(sock, b"")
    while True:
        while b"\r\n" in data:
            line, data = data.split(b"\r\n", 1)
            if line[3:4] != b"-":
                _unread[sock] = data
                return line
        chunk = sock.recv(4096)
        if not chunk:
            return b""
        data += chunk


@contextlib.contextmanager
def idle_connections(port: int, sources: list[str]) -> Iterator[list[socket.socket]]:
    """One greeted connection from each address in ``sources``, closed on exit."""
    socks: list[socket.socket] = []
    try:
        for source in sources:
            sock = connect(port, source)
            socks.append(sock)
            assert reply(sock)[:4] == b"220 "
        yield socks
    finally:
        for sock in socks:
            sock.close()


def send_message(port: int, source: str = "127.0.0.1") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as client:
        assert client.sendmail("a@example.org", ["b@example.com"], MESSAGE) == {}


def wait_until(predicate: Any, timeout: float = 30.0) -> None:
    """Wait for a server-side state (no timing claim: the bound is only a safety net)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def idle_count(server: Any) -> int:
    return sum(ticket.idle for ticket in server.admission.tickets())


def test_per_client_limit_refuses_the_next_and_serves_another_address(
    kind: str, router: Router[Any], box: Collect
) -> None:
    """The default per-client limit (50, as Postfix's smtpd_client_connection_count_limit)."""
    with running(kind, router) as server:
        assert server.admission.limits.max_connections_per_client == 50
        with idle_connections(server.port, ["127.0.0.1"] * 50):
            with connect(server.port) as refused:
                assert reply(refused) == b"421 4.7.0 Too many connections from your address"
                assert refused.recv(10) == b""
            send_message(server.port, source="127.0.0.2")
        assert server.metrics.connections_refused_per_client == 1
        assert server.metrics.rejects[421] == 1
    assert box.contents == [MESSAGE]


def test_300_idle_connections_do_not_keep_a_working_client_out(
    kind: str, router: Router[Any], box: Collect
) -> None:
    """With the default limits: 300 idle clients (50 from each of six addresses, each at its
    per-client limit), and one more still sends a message (smtp_sync used to stop at 200)."""
    sources = [f"127.0.0.{10 + n // 50}" for n in range(300)]
    with running(kind, router) as server:
        with idle_connections(server.port, sources) as socks:
            send_message(server.port)
            for sock in socks[::50]:  # the idle ones are still there, and still served
                sock.sendall(b"NOOP\r\n")
                assert reply(sock)[:3] == b"250"
    assert box.contents == [MESSAGE]


def test_full_server_evicts_the_longest_idle_connection_but_never_a_transaction(
    kind: str, router: Router[Any], box: Collect
) -> None:
    with running(kind, router, max_connections=3) as server:
        with idle_connections(server.port, ["127.0.0.1"] * 3) as (oldest, working, newer):
            working.sendall(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\n")
            assert reply(working)[:3] == b"250" and reply(working)[:3] == b"250"
            wait_until(lambda: idle_count(server) == 2)
            # Full: the newcomer gets in, and the connection idle longest (not the one in a
            # transaction, not the newer one) is closed.
            send_message(server.port)
            assert reply(oldest) == b"421 4.4.2 Server busy, closing idle connection"
            assert oldest.recv(10) == b""
            # Now put the other idle connection in a transaction: nobody left to evict.
            newer.sendall(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\n")
            assert reply(newer)[:3] == b"250" and reply(newer)[:3] == b"250"
            wait_until(lambda: server.admission.open == 2)  # the sender and the evicted left
            with idle_connections(server.port, ["127.0.0.1"]):  # the third slot
                wait_until(lambda: idle_count(server) == 1)
                with connect(server.port) as fourth:  # evicts the idle third one
                    assert reply(fourth)[:3] == b"220"
                    wait_until(lambda: idle_count(server) == 1)
                    with connect(server.port) as fifth:  # evicts the fourth
                        assert reply(fifth)[:3] == b"220"
                        assert reply(fourth) == b"421 4.4.2 Server busy, closing idle connection"
                        fifth.sendall(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\n")
                        assert reply(fifth)[:3] == b"250" and reply(fifth)[:3] == b"250"
                        with connect(server.port) as refused:  # three transactions: full
                            assert reply(refused) == (
                                b"421 4.7.0 Too many connections, try again later"
                            )
            # The transactions go on undisturbed and deliver.
            for sock in (working, newer):
                sock.sendall(b"RCPT TO:<b@example.com>\r\nDATA\r\n")
                assert reply(sock)[:3] == b"250" and reply(sock)[:3] == b"354"
                sock.sendall(MESSAGE + b".\r\n")
                assert reply(sock)[:3] == b"250"
        assert server.metrics.connections_evicted == 3
        assert server.metrics.connections_refused_full == 1
    assert box.contents == [MESSAGE] * 3


def test_rate_limit_refuses_the_connection_after_n(kind: str, router: Router[Any]) -> None:
    limits = ConnectionLimits(connection_rate_per_client=ConnectionRate(3, 3600.0))
    with running(kind, router, limits=limits) as server:
        for _ in range(3):
            with connect(server.port) as sock:
                assert reply(sock)[:4] == b"220 "
                sock.sendall(b"QUIT\r\n")
                assert reply(sock)[:3] == b"221"
        with connect(server.port) as refused:
            assert (
                reply(refused)
                == b"421 4.7.0 Too many new connections from your address, try again later"
            )
            assert refused.recv(10) == b""
        with connect(server.port, "127.0.0.2") as other:
            assert reply(other)[:4] == b"220 "
        assert server.metrics.connections_refused_rate == 1


# --- the waits: stress mode, the first command, TLS handshakes ------------------------------

TIMED_OUT = b"421 4.4.2 Timeout, closing connection"


def test_stress_mode_shortens_the_wait_for_commands(kind: str, router: Router[Any]) -> None:
    """Two connections at most, stress from two: one connection is busy in a handler (no wait
    for the client, so it cannot time out), and the other's waits last 0.3 s instead of the
    300 s of the command timeout (the test would give up after 30 s)."""
    release = threading.Event()
    delivered: list[bool] = []

    def slow(envelope: Any) -> None:
        delivered.append(release.wait(30))

    router.add("*@slow.example", slow)
    limits = ConnectionLimits(max_connections=2, stress_level=1.0, stress_timeout=0.3)
    with running(kind, router, limits=limits) as server, connect(server.port) as busy:
        busy.sendall(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@slow.example>\r\n")
        assert [reply(busy)[:3] for _ in range(4)] == [b"220", b"250", b"250", b"250"]
        busy.sendall(b"DATA\r\n")
        assert reply(busy)[:3] == b"354"
        busy.sendall(MESSAGE + b".\r\n")  # the handler now waits for ``release``
        with connect(server.port) as idle:
            idle.sendall(b"EHLO c.example\r\n")  # at once: its first wait is short too
            assert reply(idle)[:3] == b"220" and reply(idle)[:3] == b"250"
            assert server.admission.under_stress
            assert reply(idle) == TIMED_OUT
        release.set()
        assert reply(busy)[:3] == b"250"  # the message in progress is not cut off
    assert delivered == [True]


def test_first_command_has_its_own_wait(kind: str, router: Router[Any]) -> None:
    config = ServerConfig(first_command_timeout=0.3)  # command_timeout stays 300 s
    with running(kind, router, config=config) as server:
        with idle_connections(server.port, ["127.0.0.1"]) as [silent]:
            assert reply(silent) == TIMED_OUT
            assert silent.recv(10) == b""
        with connect(server.port) as talking:
            talking.sendall(b"EHLO c.example\r\n")  # at once: waiting for it takes no time
            assert reply(talking)[:3] == b"220" and reply(talking)[:3] == b"250"
            talking.settimeout(1.0)  # the hello came: the 300 s command timeout applies
            with pytest.raises(TimeoutError):
                talking.recv(10)


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit-tls", "starttls"])
def test_tls_handshake_has_its_own_wait(
    kind: str, router: Router[Any], tls: TLS, implicit: bool
) -> None:
    """A client that starts a handshake and goes quiet is dropped after tls_handshake_timeout,
    not command_timeout (300 s; the test would give up after 30 s)."""
    config = ServerConfig(tls_handshake_timeout=0.3)
    options: dict[str, Any] = {"ssl_context": tls.server, "implicit_tls": implicit}
    with running(kind, router, config=config, **options) as server:
        with connect(server.port) as sock:
            if not implicit:
                assert reply(sock)[:4] == b"220 "
                sock.sendall(b"EHLO c.example\r\nSTARTTLS\r\n")
                assert reply(sock)[:3] == b"250" and reply(sock)[:3] == b"220"
            # silence instead of a ClientHello: the server gives up and closes
            assert _unread.pop(sock, b"") + sock.recv(100) == b""
        wait_until(lambda: server.metrics.tls_failures == 1)  # counted after the close


def test_an_idle_tls_connection_is_evicted_inside_tls(
    kind: str, router: Router[Any], tls: TLS
) -> None:
    """The 421 4.4.2 of an eviction goes through the TLS layer, not around it."""
    with running(kind, router, ssl_context=tls.server, max_connections=1) as server:
        with connect(server.port) as raw:
            raw.sendall(b"EHLO c.example\r\nSTARTTLS\r\n")
            assert reply(raw)[:3] == b"220" and reply(raw)[:3] == b"250"
            assert reply(raw)[:3] == b"220"
            with tls.client.wrap_socket(raw, server_hostname="localhost") as secure:
                secure.sendall(b"EHLO c.example\r\n")
                assert reply(secure)[:3] == b"250"
                wait_until(lambda: idle_count(server) == 1)
                with connect(server.port) as newcomer:
                    assert reply(newcomer)[:4] == b"220 "
                    assert reply(secure) == b"421 4.4.2 Server busy, closing idle connection"


def test_a_stop_reaches_an_idle_tls_session_inside_tls(
    kind: str, router: Router[Any], tls: TLS
) -> None:
    """The same path as an eviction: the stop's 421 4.3.2 goes through the TLS layer."""
    with running(kind, router, ssl_context=tls.server) as server:
        raw = connect(server.port)
        raw.sendall(b"EHLO c.example\r\nSTARTTLS\r\n")
        assert [reply(raw)[:3] for _ in range(3)] == [b"220", b"250", b"220"]
        secure = tls.client.wrap_socket(raw, server_hostname="localhost")
        secure.sendall(b"EHLO c.example\r\n")
        assert reply(secure)[:3] == b"250"
    with secure:
        assert reply(secure) == b"421 4.3.2 Service shutting down, try again later"
