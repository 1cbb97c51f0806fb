"""ClientSession's steps with a scripted server, for what no live server here can be made to
do: a 354 after every RCPT was refused, an endless SASL exchange, a refused STARTTLS, bytes
injected after the 220 to STARTTLS, malformed replies. The live tests cover the rest."""

from __future__ import annotations

from collections import deque
from typing import TypeVar

import pytest

from smtp_core import (
    AuthenticationFailed,
    ClientSession,
    ClientState,
    Command,
    OutgoingMessage,
    RecipientsRefused,
    SenderRefused,
    SMTPConnectionError,
    SMTPNotSupported,
    SMTPRefused,
    SMTPTimeout,
    XOAuth2Client,
)
from smtp_core.adapter import Read, Steps, WrapTLS, Write

T = TypeVar("T")
EHLO = b"250-mx.example\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 AUTH PLAIN XOAUTH2\r\n"
MESSAGE = OutgoingMessage("a@x.org", ("b@y.com", "c@y.com"), b"Subject: t\r\n\r\nhi\r\n")


class Wire:
    """The server's side, scripted: one chunk per read (b"" once they run out), and a log of
    what the client did: ("C", bytes written), ("S", bytes read), ("TLS",)."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = deque(chunks)
        self.log: list[tuple[str, ...] | tuple[str, bytes]] = []
        self.timeouts: list[float] = []

    def run(self, steps: Steps[T]) -> T:
        value: bytes | None = None
        while True:
            try:
                step = steps.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            value = None
            if isinstance(step, Write):
                self.log.append(("C", step.data))
            elif isinstance(step, Read):
                value = self.chunks.popleft() if self.chunks else b""
                self.timeouts.append(step.timeout)
                self.log.append(("S", value))
            else:
                assert isinstance(step, WrapTLS)
                self.log.append(("TLS",))

    @property
    def written(self) -> bytes:
        return b"".join(entry[1] for entry in self.log if entry[0] == "C")  # type: ignore[misc]


def opened(wire: Wire, **options: object) -> ClientSession:
    session = ClientSession(server="mx", tls="none", **options)  # type: ignore[arg-type]
    wire.run(session.open("[192.0.2.1]"))
    return session


def test_pipelined_all_refused_but_354() -> None:
    """A server that says 354 although it accepted nobody: the data is ended at once with a
    lone dot (no content goes out), which ends the transaction, and the error says why."""
    wire = Wire(
        b"220 mx\r\n",
        EHLO,
        b"250 ok\r\n550 no b\r\n550 no c\r\n354 go\r\n",
        b"554 no valid recipients\r\n",
    )
    session = opened(wire)
    with pytest.raises(RecipientsRefused) as refused:
        wire.run(session.send(MESSAGE))
    assert wire.written.endswith(b"DATA\r\n.\r\n")
    assert b"hi" not in wire.written
    assert set(refused.value.result.refused) == {"b@y.com", "c@y.com"}
    assert session.conn.state is ClientState.READY and session.usable


def test_pipelined_sender_refused_reads_every_reply() -> None:
    wire = Wire(b"220 mx\r\n", EHLO, b"550 5.7.1 no\r\n503 5.5.1 no MAIL\r\n503 no\r\n554 no\r\n")
    session = opened(wire)
    with pytest.raises(SenderRefused) as refused:
        wire.run(session.send(MESSAGE))
    assert str(refused.value) == "mx refused the sender: 550 5.7.1 no"
    assert session.conn.outstanding == () and session.conn.state is ClientState.READY
    assert session.round_trips == 3  # greeting, EHLO, the envelope


def test_starttls_refused_opportunistic_goes_on_required_fails() -> None:
    replies = (b"220 mx\r\n", EHLO, b"454 4.7.0 TLS not available\r\n")
    wire = Wire(*replies)
    session = ClientSession(tls="opportunistic")
    wire.run(session.open("[192.0.2.1]"))
    assert not session.tls_active and ("TLS",) not in wire.log
    wire = Wire(*replies)
    with pytest.raises(SMTPRefused) as refused:
        wire.run(ClientSession(tls="starttls").open("[192.0.2.1]"))
    assert refused.value.command is Command.STARTTLS and refused.value.temporary


def test_bytes_after_the_220_to_starttls_are_dropped() -> None:
    """RFC 3207 §4.2: a reply injected behind the 220 must not answer the EHLO inside TLS."""
    injected = b"220 2.0.0 go ahead\r\n250-evil\r\n250 AUTH PLAIN\r\n"
    wire = Wire(b"220 mx\r\n", EHLO, injected, b"250-mx.example\r\n250 AUTH XOAUTH2\r\n")
    session = ClientSession(tls="starttls")
    wire.run(session.open("[192.0.2.1]"))
    assert [entry[0] for entry in wire.log[-4:]] == ["S", "TLS", "C", "S"]  # no read before TLS
    assert session.tls_active and session.extensions is not None
    assert session.extensions.auth == ("XOAUTH2",)


def test_endless_sasl_challenges_are_cancelled() -> None:
    chunks = [b"220 mx\r\n", EHLO] + [b"334 \r\n"] * 11 + [b"501 5.7.0 cancelled\r\n"]
    wire = Wire(*chunks)
    session = ClientSession(tls="none", auth=XOAuth2Client("a", "token"))
    with pytest.raises(AuthenticationFailed) as failed:
        wire.run(session.open("[192.0.2.1]"))
    assert failed.value.reply.code == 501
    assert wire.written.endswith(b"\r\n*\r\n")


def test_greeting_421_and_broken_replies() -> None:
    wire = Wire(b"421 4.3.2 busy\r\n")
    with pytest.raises(SMTPConnectionError) as busy:
        wire.run(ClientSession().open("[192.0.2.1]"))
    assert busy.value.reply is not None and busy.value.reply.code == 421
    wire = Wire(b"220 mx\r\n", b"hello there\r\n")
    session = ClientSession()
    with pytest.raises(SMTPConnectionError, match="broke the protocol: malformed reply line"):
        wire.run(session.open("[192.0.2.1]"))
    with pytest.raises(SMTPConnectionError, match="the connection is closed"):
        session.check_usable()


def test_closed_before_the_greeting() -> None:
    with pytest.raises(SMTPConnectionError, match="closed the connection before the greeting"):
        Wire().run(ClientSession(server="mx").open("[192.0.2.1]"))


def test_rfc_timeouts_when_timeout_is_none() -> None:
    wire = Wire(b"220 mx\r\n", EHLO, b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", b"250 queued\r\n")
    session = opened(wire, timeout=None)
    wire.run(session.send(MESSAGE))
    assert wire.timeouts == [300.0, 300.0, 300.0, 600.0]  # RFC 5321 §4.5.3.2
    wire = Wire(b"220 mx\r\n", EHLO)
    opened(wire, timeout=7.5)
    assert wire.timeouts == [7.5, 7.5]


def test_io_error_messages() -> None:
    wire = Wire(b"220 mx\r\n", EHLO, b"250 ok\r\n")
    session = opened(wire)
    steps = session.send(MESSAGE)
    step = steps.send(None)
    assert isinstance(step, Write)
    step = steps.send(None)
    assert isinstance(step, Read)
    error = session.io_error(step, TimeoutError())
    assert isinstance(error, SMTPTimeout)
    assert str(error) == "mx: waiting for the reply to MAIL timed out after 60 s"
    assert str(session.io_error(WrapTLS(5), OSError("boom"))) == str(error)  # the first one stays
    fresh = ClientSession(server="mx")
    assert str(fresh.io_error(WrapTLS(5), OSError("bad cert"))) == (
        "mx: the TLS handshake failed: bad cert"
    )


def test_refused_mail_forgets_the_last_recipients() -> None:
    """Engine fix: accepted_recipients used to keep the previous transaction's recipients when
    the next MAIL was refused."""
    wire = Wire(
        b"220 mx\r\n",
        EHLO,
        b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n",
        b"250 queued\r\n",
        b"550 5.7.1 not you\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n554 5.5.1 no RCPT\r\n",
    )
    session = opened(wire)
    wire.run(session.send(MESSAGE))
    assert session.conn.accepted_recipients == ("b@y.com", "c@y.com")
    with pytest.raises(SenderRefused):
        wire.run(session.send(MESSAGE))
    assert session.conn.accepted_recipients == ()


UTF8_EHLO = b"250-mx.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"


@pytest.mark.filterwarnings("error::DeprecationWarning")
def test_the_session_declares_smtputf8_itself() -> None:
    """SMTPUTF8 for a non-ASCII address is the session's choice, in send() and in the step
    mail(): the engine is handed a declared parameter and never has to add it (which it
    still does, with a DeprecationWarning, for callers of the old engine API)."""
    wire = Wire(b"220 mx\r\n", UTF8_EHLO, b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 queued\r\n")
    session = opened(wire)
    message = OutgoingMessage("jörg@x.org", ("b@y.com",), b"Subject: t\r\n\r\nhi\r\n")
    wire.run(session.send(message))
    assert "MAIL FROM:<jörg@x.org> SMTPUTF8\r\n".encode() in wire.written
    wire = Wire(b"220 mx\r\n", UTF8_EHLO, b"250 ok\r\n")
    session = opened(wire)
    assert wire.run(session.mail("jörg@x.org")).code == 250
    assert wire.written.endswith("MAIL FROM:<jörg@x.org> SMTPUTF8\r\n".encode())


def test_the_session_refuses_what_the_server_lacks() -> None:
    """SIZE too small, no SMTPUTF8: SMTPNotSupported from the session, nothing written."""
    wire = Wire(b"220 mx\r\n", b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 10\r\n")
    session = opened(wire)
    before = wire.written
    with pytest.raises(SMTPNotSupported, match=r"larger than mx takes \(SIZE 10\)"):
        wire.run(session.send(OutgoingMessage("a@x.org", ("b@y.com",), b"x" * 11)))
    with pytest.raises(SMTPNotSupported, match="SMTPUTF8"):
        wire.run(session.send(OutgoingMessage("jörg@x.org", ("b@y.com",), b"hi\r\n")))
    with pytest.raises(SMTPNotSupported, match="SMTPUTF8"):
        wire.run(session.mail("jörg@x.org"))
    assert wire.written == before
