"""LMTP into Dovecot: the private Dovecot of tests/dovecot.py as a real peer, spoken to by the
project's clients in LMTP mode and by hand over its unix socket."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import BinaryIO

import anyio
import pytest

import smtp_anyio
import smtp_sync
from smtp_core import SendResult

from .dovecot import Dovecot, running_dovecot

MESSAGE = (
    b"From: alice@example.org\r\nTo: bob@example.com\r\nSubject: into Dovecot\r\n"
    b"Message-ID: <lmtp-1@example.org>\r\n\r\nHello over LMTP.\r\n"
)

#: recipient -> (reply to RCPT, reply after the data, or None when RCPT was refused)
OUTCOMES = {
    "bob@example.com": ("250 2.1.5", "250 2.0.0"),
    "nobody@example.com": ("550 5.1.1", None),  # unknown user: refused at RCPT
    "alice@example.com": ("250 2.1.5", "250 2.0.0"),
    "carol@example.com": ("250 2.1.5", "552 5.2.2"),  # over quota: refused after the data
    "dave@example.com": ("250 2.1.5", "451 4.2.0"),  # no Maildir: a temporary failure
}


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    """A private Dovecot for this test (skipped without it; failed in CI)."""
    with running_dovecot() as server:
        yield server


def _code(reply: object) -> str:
    return f"{reply.code} {reply.enhanced}"  # type: ignore[attr-defined]


def _send(kind: str, dovecot: Dovecot) -> SendResult:
    """MESSAGE to every recipient of OUTCOMES, with the client of ``kind`` in LMTP mode."""
    options = {"tls": "none", "lmtp": True, "timeout": 30.0}
    envelope = {"mail_from": "alice@example.org", "rcpt_tos": list(OUTCOMES)}
    if kind == "sync":
        with smtp_sync.connect(dovecot.host, dovecot.port, **options) as client:  # type: ignore[arg-type]
            return client.send_message(MESSAGE, **envelope)  # type: ignore[arg-type]

    async def main() -> SendResult:
        async with smtp_anyio.connect(dovecot.host, dovecot.port, **options) as client:  # type: ignore[arg-type]
            return await client.send_message(MESSAGE, **envelope)  # type: ignore[arg-type]

    return anyio.run(main, backend=kind)


def test_client_speaks_lmtp_to_dovecot(kind: str, dovecot: Dovecot) -> None:
    """LHLO, MAIL, a RCPT each (the unknown user refused with Dovecot's 550 5.1.1), DATA, and
    one reply per accepted recipient after it; the message lands in the Maildirs."""
    result = _send(kind, dovecot)
    seen = {
        r.address: (_code(r.rcpt_reply), None if r.data_reply is None else _code(r.data_reply))
        for r in result.recipients
    }
    assert seen == OUTCOMES
    assert set(result.accepted) == {"bob@example.com", "alice@example.com"}
    assert len(result.data_replies) == 4  # one per recipient accepted at RCPT, in order
    for user in ("bob", "alice"):
        (stored,) = dovecot.messages(user)
        assert b"Subject: into Dovecot" in stored
        assert b"Message-ID: <lmtp-1@example.org>" in stored
        assert b"Hello over LMTP." in stored
    assert dovecot.messages("carol") == []
    assert dovecot.messages("dave") == []


def _read_reply(reader: BinaryIO) -> list[bytes]:
    """One reply, every line of it."""
    lines: list[bytes] = []
    while True:
        line = reader.readline()
        assert line, f"the connection closed after {lines!r}"
        lines.append(line.rstrip(b"\r\n"))
        if line[3:4] != b"-":
            return lines


#: the conversation by hand: what we write (nothing: one more reply to read), how the reply starts
UNIX_CONVERSATION = [
    (b"", b"220 "),
    (b"LHLO client.example.org\r\n", b"250 PIPELINING"),
    (b"MAIL FROM:<alice@example.org>\r\n", b"250 2.1.0"),
    (b"RCPT TO:<bob@example.com>\r\n", b"250 2.1.5"),
    (b"RCPT TO:<nobody@example.com>\r\n", b"550 5.1.1 <nobody@example.com> User doesn't exist"),
    (b"RCPT TO:<carol@example.com>\r\n", b"250 2.1.5"),
    (b"DATA\r\n", b"354 "),
    (MESSAGE + b".\r\n", b"250 2.0.0 <bob@example.com> "),  # one reply per recipient, in order
    (b"", b"552 5.2.2 <carol@example.com> Quota exceeded"),
    (b"QUIT\r\n", b"221 "),
]


def test_raw_lmtp_over_the_unix_socket(dovecot: Dovecot) -> None:
    """LHLO/MAIL/RCPT/DATA by hand over the unix socket: the unknown user is refused at RCPT,
    and after the data each accepted recipient gets its own reply."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(dovecot.socket_path))
        reader = sock.makefile("rb")
        for command, expected in UNIX_CONVERSATION:
            if command:
                sock.sendall(command)
            reply = _read_reply(reader)
            assert reply[-1].startswith(expected), (command, reply)
    (stored,) = dovecot.messages("bob")
    assert b"Hello over LMTP." in stored
    assert dovecot.messages("carol") == []


def test_stopped_dovecot_refuses_connections_and_starts_again(dovecot: Dovecot) -> None:
    """``stop`` ends the instance (its port refuses connections); ``start`` brings it back on
    the same port and socket, as the retry tests need."""
    port = dovecot.port
    dovecot.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((dovecot.host, port), timeout=10).close()
    dovecot.start()
    assert dovecot.port == port
    with socket.create_connection((dovecot.host, port), timeout=10) as sock:
        assert sock.makefile("rb").readline().startswith(b"220 ")
