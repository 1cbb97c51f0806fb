"""smtp_core/_logtext.py: peers written one way, TLS failures in words (never empty, no repr)."""

from __future__ import annotations

import ssl

import anyio
import pytest
import trustme

from smtp_core import format_host_port
from smtp_core._logtext import plural
from smtp_core.adapter import describe_tls_failure


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [
        ("127.0.0.1", 25, "127.0.0.1:25"),
        ("::1", 38603, "[::1]:38603"),
        ("2001:db8::7", 587, "[2001:db8::7]:587"),
        ("mail.example.com", 465, "mail.example.com:465"),
    ],
)
def test_format_host_port(host: str, port: int, text: str) -> None:
    assert format_host_port(host, port) == text


@pytest.mark.parametrize(
    ("count", "text"), [(0, "0 recipients"), (1, "1 recipient"), (2, "2 recipients")]
)
def test_plural(count: int, text: str) -> None:
    assert plural(count, "recipient") == text


def handshake_failure(client_bytes: bytes) -> ssl.SSLError:
    """The error a real server-side handshake raises when a client sends ``client_bytes``."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = context.wrap_bio(incoming, outgoing, server_side=True)
    incoming.write(client_bytes)
    with pytest.raises(ssl.SSLError) as failed:
        server.do_handshake()
    return failed.value


def broken_by(cause: BaseException) -> anyio.BrokenResourceError:
    try:
        raise anyio.BrokenResourceError from cause
    except anyio.BrokenResourceError as broken:
        return broken


CLOSED = "the client closed the connection during the handshake"
FAILURES: list[tuple[str, BaseException, str]] = [
    (
        "plain-smtp-on-tls-port",
        handshake_failure(b"EHLO client.example\r\n"),
        "the client did not start TLS (plain SMTP on a TLS port?)",
    ),
    (
        "http-on-tls-port",
        handshake_failure(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        "the client sent an HTTP request",
    ),
    ("anyio-end-of-stream", anyio.EndOfStream(), CLOSED),
    ("anyio-broken-by-reset", broken_by(ConnectionResetError(104, "reset")), CLOSED),
    ("anyio-broken", anyio.BrokenResourceError(), "the connection broke during the handshake"),
    ("reset", ConnectionResetError(104, "Connection reset by peer"), CLOSED),
    ("ssl-eof", ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), CLOSED),
    ("timeout", TimeoutError(), "the client did not complete the handshake in time"),
    ("unknown-empty", RuntimeError(), "RuntimeError"),
    ("unknown", ValueError("odd"), "ValueError: odd"),
]


@pytest.mark.parametrize(("case", "failure", "text"), FAILURES, ids=[f[0] for f in FAILURES])
def test_describe_tls_failure(case: str, failure: BaseException, text: str) -> None:
    assert describe_tls_failure(failure) == text
