"""smtp_core/_logtext.py: peers written one way, TLS failures in words (never empty, no repr)."""

from __future__ import annotations

import logging
import ssl
import time
import types
from typing import Any

import anyio
import pytest
import trustme

from smtp_core import format_host_port
from smtp_core._logtext import FieldsLogger, plural
from smtp_core._session import log as session_log
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


# --- FieldsLogger: a record's extra fields in one step, the same record (issue 15) -----------

#: (id, extra): what the Session logs, and the edge cases of Logger.makeRecord
EXTRAS = [
    ("none", None),
    ("empty", {}),
    ("session", {"session_id": "Ab12", "peer": ("::1", 25), "tls": None, "auth_identity": None}),
    ("transaction", {"session_id": "Ab12", "mail_from": "a@b", "rcpt_tos": ["c@d"], "size": 3}),
    ("not-a-dict", types.MappingProxyType({"session_id": "Ab12"})),
]
#: keys Logger.makeRecord refuses, with its KeyError
CLASHES = ["message", "asctime", "msg", "levelname", "created"]


def makers() -> tuple[logging.Logger, logging.Logger]:
    return FieldsLogger("smtpmux.session"), logging.Logger("smtpmux.session")


@pytest.mark.parametrize("extra", [e for _, e in EXTRAS], ids=[name for name, _ in EXTRAS])
def test_fields_logger_makes_the_record_logger_makes(
    extra: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_790_000_000.25)  # the same instant for both
    monkeypatch.setattr(time, "time_ns", lambda: 1_790_000_000_250_000_000)
    made = [
        maker.makeRecord(
            "smtpmux.session", logging.INFO, "f.py", 3, "x %s", ("y",), None, "g", extra
        )
        for maker in makers()
    ]
    assert vars(made[0]) == vars(made[1])


@pytest.mark.parametrize("key", CLASHES)
def test_fields_logger_refuses_what_logger_refuses(key: str) -> None:
    errors = []
    for maker in makers():
        with pytest.raises(KeyError) as raised:
            maker.makeRecord("n", logging.INFO, "f.py", 3, "x", (), None, extra={"a": 1, key: 2})
        errors.append(str(raised.value))
    assert errors[0] == errors[1] == repr(f"Attempt to overwrite {key!r} in LogRecord")


def test_the_session_logs_through_a_fields_logger() -> None:
    assert isinstance(session_log, FieldsLogger)
    assert logging.getLogger("smtpmux.session") is session_log
    assert type(logging.getLogger("smtpmux.someone.else")) is logging.getLoggerClass()


class Collecting(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("kind", [FieldsLogger, logging.Logger])
def test_fields_logger_hands_on_what_logger_hands_on(kind: type[logging.Logger]) -> None:
    """Its handle skips the call to filter only when there is none: filters and ``disabled``
    still count."""
    logger, handler = kind("fields.test"), Collecting()
    logger.propagate = False
    logger.addHandler(handler)
    logger.warning("plain")
    logger.addFilter(lambda made: "drop" not in made.getMessage())
    logger.warning("drop me")
    logger.warning("kept")
    logger.disabled = True
    logger.warning("disabled")
    assert handler.messages == ["plain", "kept"]
