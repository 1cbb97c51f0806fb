"""LMTP into Dovecot: the private Dovecot of tests/dovecot.py as a real peer, spoken to by the
project's clients in LMTP mode and by hand over its unix socket."""

from __future__ import annotations

import re
import smtplib
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, BinaryIO

import anyio
import pytest

import smtp_anyio
import smtp_sync
from smtp_core import (
    Envelope,
    MailParams,
    RcptParams,
    Reject,
    Reply,
    Router,
    SendResult,
    ServerConfig,
    SessionInfo,
    StepStart,
)
from smtp_sync._forward import LMTPForward, forward_target
from smtp_sync._step import fan_out
from tests.dovecot import Dovecot, running_dovecot
from tests.servers import Collect, running

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
        with sock.makefile("rb") as reader:
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
        with sock.makefile("rb") as reader:  # closed, or the socket stays open until GC
            assert reader.readline().startswith(b"220 ")
            sock.sendall(b"QUIT\r\n")
            assert reader.readline().startswith(b"221 ")


# --- lmtp:// and lmtp+unix:// targets, end to end: smtplib -> our server -> Dovecot ---------


def _target_text(dovecot: Dovecot, transport: str) -> str:
    if transport == "unix":
        return f"lmtp+unix://{dovecot.socket_path}"
    return f"lmtp://{dovecot.host}:{dovecot.port}"


@pytest.fixture(params=["tcp", "unix"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _router(text: str) -> Router[Any]:
    router: Router[Any] = Router()
    router.add("*@example.com", forward_target(text))
    return router


def _message(message_id: str, body: bytes = b"Hello from smtplib.\r\n") -> bytes:
    return (
        b"From: sender@example.org\r\nTo: bob@example.com\r\nSubject: routed\r\n"
        + f"Message-ID: <{message_id}@example.org>\r\n\r\n".encode()
        + body
    )


def test_routed_message_lands_in_bobs_maildir(kind: str, transport: str, dovecot: Dovecot) -> None:
    """*@example.com -> lmtp(+unix)://: smtplib gets 250 only once Dovecot saved it; bob's
    Maildir has it, with our Received line (naming the transaction id) on top."""
    with running(kind, _router(_target_text(dovecot, transport))) as server:
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            client.ehlo("client.example.org")
            client.mail("sender@example.org")
            assert client.rcpt("bob@example.com")[0] == 250
            code, text = client.data(_message("routed-1"))
    assert code == 250, text
    (stored,) = dovecot.messages("bob")
    assert b"Message-ID: <routed-1@example.org>" in stored
    assert b"Hello from smtplib." in stored
    dovecots, ours = stored.split(b"\nReceived: ")[1:3]  # Dovecot's line on top, then ours
    assert b"with LMTP" in dovecots
    assert re.match(rb"from client.example.org \(\[127.0.0.1\]\)\s+by \S+ \(smtpmux\)", ours)
    assert re.search(rb"with ESMTP id [0-9a-f]+-1\b", ours), ours[:200]


def test_unknown_user_is_refused_at_our_rcpt(kind: str, transport: str, dovecot: Dovecot) -> None:
    """Dovecot's 550 5.1.1 is our answer to that RCPT; the others of the message get it."""
    with running(kind, _router(_target_text(dovecot, transport))) as server:
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            client.ehlo("client.example.org")
            client.mail("sender@example.org")
            code, text = client.rcpt("nobody@example.com")
            assert (code, text.split()[0]) == (550, b"5.1.1"), text
            assert b"nobody@example.com" in text
            assert client.rcpt("alice@example.com")[0] == 250
            assert client.data(_message("refused-1"))[0] == 250
    assert len(dovecot.messages("alice")) == 1
    assert dovecot.messages("bob") == []


def test_dovecot_down_is_451_and_a_retry_delivers_once(kind: str, dovecot: Dovecot) -> None:
    """Down: 451 4.4.1 at RCPT (the sender keeps the message); up again: the retry delivers
    it, once."""
    dovecot.stop()
    with running(kind, _router(_target_text(dovecot, "tcp"))) as server:
        message = _message("retry-1")
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                client.sendmail("sender@example.org", ["bob@example.com"], message)
            code, text = refused.value.recipients["bob@example.com"]
            assert (code, text.split()[0]) == (451, b"4.4.1"), text
        dovecot.start()
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            assert client.sendmail("sender@example.org", ["bob@example.com"], message) == {}
    (stored,) = dovecot.messages("bob")
    assert b"Message-ID: <retry-1@example.org>" in stored


#: recipients -> our one SMTP reply after the data; who has the message afterwards
AFTER_DATA = [
    pytest.param(["bob", "alice"], 250, "2.0.0", {"bob", "alice"}, id="all-accepted"),
    # carol is over quota (552 5.2.2 after the data): the permanent refusal answers for all;
    # bob has the message although our sender is told 552 (a bounce too many, never a
    # recipient reported delivered that was refused)
    pytest.param(["bob", "carol"], 552, "5.2.2", {"bob"}, id="permanent-for-one"),
    # dave fails temporarily (Dovecot's 451 4.2.0, ours 451 4.4.1 quoting it): temporary wins,
    # the sender retries all; bob gets the message again then (the same Message-ID, and our
    # transaction id in the Received line, let him see it)
    pytest.param(["bob", "dave", "carol"], 451, "4.4.1", {"bob"}, id="temporary-for-one"),
]


@pytest.mark.parametrize(("users", "code", "enhanced", "delivered"), AFTER_DATA)
def test_per_recipient_answers_after_data_on_smtp(
    kind: str,
    dovecot: Dovecot,
    users: list[str],
    code: int,
    enhanced: str,
    delivered: set[str],
) -> None:
    """Dovecot answers each recipient after the data; SMTP has one reply: 250 only when every
    recipient took it, else the first temporary failure, else the permanent one."""
    with running(kind, _router(_target_text(dovecot, "tcp"))) as server:
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            client.ehlo("client.example.org")
            client.mail("sender@example.org")
            for user in users:
                assert client.rcpt(f"{user}@example.com")[0] == 250
            got, text = client.data(_message(f"after-data-{'-'.join(users)}"))
    assert (got, text.split()[0].decode()) == (code, enhanced), text
    assert {user for user in users if dovecot.messages(user)} == delivered
    for user in delivered:
        assert len(dovecot.messages(user)) == 1


def test_our_lmtp_server_passes_each_answer_through(kind: str, dovecot: Dovecot) -> None:
    """When we speak LMTP ourselves, every recipient gets Dovecot's own answer, in order."""
    config = ServerConfig(lmtp=True)
    with running(kind, _router(_target_text(dovecot, "unix")), config=config) as server:
        with smtp_sync.connect("127.0.0.1", server.port, lmtp=True, tls="none") as client:
            rcpt_tos = [f"{user}@example.com" for user in ("bob", "nobody", "carol", "dave")]
            result = client.send_message(
                _message("lmtp-through"), mail_from="sender@example.org", rcpt_tos=rcpt_tos
            )
    seen = {r.address.split("@")[0]: _code(r.reply) for r in result.recipients}
    assert seen == {
        "bob": "250 2.0.0",
        "nobody": "550 5.1.1",
        "carol": "552 5.2.2",
        "dave": "451 4.4.1",  # a 4xx upstream is 451 4.4.1 quoting it, as for smtp://
    }
    assert len(dovecot.messages("bob")) == 1


def test_large_message_is_streamed_intact(dovecot: Dovecot) -> None:
    """A 5 MiB message (spooled to a file by our server) arrives byte for byte: dots at line
    starts, long and 8-bit lines."""
    lines = [b"." * (i % 5) + b"line %d \xc3\xa9" % i + b"x" * (i % 900) for i in range(12000)]
    body = b"\r\n".join(lines) + b"\r\n"
    assert len(body) > 5 * 1024 * 1024
    message = _message("large-1", body)
    with running("sync", _router(_target_text(dovecot, "tcp"))) as server:
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            assert client.sendmail("s@example.org", ["bob@example.com"], message) == {}
    (stored,) = dovecot.messages("bob")
    assert stored.endswith(body.replace(b"\r\n", b"\n"))  # Maildir files have LF line ends


def test_lmtp_server_without_chunking_gets_dot_stuffed_data(box: Collect) -> None:
    """A peer that offers no CHUNKING (our own LMTP server, switched off) gets DATA, dot-stuffed
    as it streams: lines of dots and a 3 MiB message (spooled) arrive exactly."""
    body = b"".join(b"." * (i % 3) + b"line %d\r\n" % i for i in range(300000)) + b".\r\n"
    message = _message("no-chunking", body)
    peer_router: Router[Any] = Router()
    peer_router.add("*@*", box)
    peer_config = ServerConfig(lmtp=True, chunking=False, max_message_size=None)
    with smtp_sync.Server(peer_router, port=0, config=peer_config) as peer:
        with running("sync", _router(f"lmtp://127.0.0.1:{peer.port}")) as server:
            with smtplib.SMTP("127.0.0.1", server.port) as client:
                assert client.sendmail("s@example.org", ["bob@example.com"], message) == {}
    (content,) = box.contents
    head, _, rest = content.partition(b"\r\nFrom: ")
    assert head.startswith(b"Received: from ")  # our line, then the message as sent
    assert b"From: " + rest == message


class _RefuseBob:
    """A step target that refuses bob at RCPT and takes everyone else (and the message)."""

    def __repr__(self) -> str:
        return "refuse-bob"

    def begin(self, start: StepStart) -> _RefuseBob:
        return self

    def recipient(self, address: str, params: RcptParams) -> Reply | None:
        return Reply(550, "Not bob", "5.7.1") if address.startswith("bob@") else None

    def deliver(self, envelope: Envelope) -> None:
        return None

    def abort(self) -> None:
        return None


def test_fan_out_refusal_after_dovecot_took_the_recipient(kind: str, dovecot: Dovecot) -> None:
    """In a fan-out, Dovecot accepts bob and the next target refuses him: our client hears 550
    for bob, and Dovecot must not deliver to him (the LMTP transaction starts over with only
    the recipients we accepted)."""
    router: Router[Any] = Router()
    router.add(
        "*@example.com", fan_out([forward_target(_target_text(dovecot, "tcp")), _RefuseBob()])
    )
    with running(kind, router) as server:
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            refused = client.sendmail(
                "s@example.org", ["alice@example.com", "bob@example.com"], _message("fan-out")
            )
    assert refused == {"bob@example.com": (550, b"5.7.1 Not bob")}
    assert len(dovecot.messages("alice")) == 1
    assert dovecot.messages("bob") == []


def test_dovecot_gone_before_the_data_is_451_and_a_retry_delivers_once(
    kind: str, dovecot: Dovecot
) -> None:
    """Dovecot accepted bob at RCPT and stops before our data: the data gets 451 4.4.1 (the
    sender keeps the message); once it is back, the retry delivers exactly one copy."""
    message = _message("gone-1")
    with running(kind, _router(_target_text(dovecot, "unix"))) as server:
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            client.ehlo("client.example.org")
            client.mail("sender@example.org")
            assert client.rcpt("bob@example.com")[0] == 250
            dovecot.stop()
            code, text = client.data(message)
            assert (code, text.split()[0]) == (451, b"4.4.1"), text
            dovecot.start()
            assert client.sendmail("sender@example.org", ["bob@example.com"], message) == {}
    (stored,) = dovecot.messages("bob")
    assert b"Message-ID: <gone-1@example.org>" in stored


# --- the target strings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical", "where"),
    [
        ("lmtp://127.0.0.1:24", "lmtp://127.0.0.1:24", "127.0.0.1:24"),
        ("lmtp://mail.example.com", "lmtp://mail.example.com:24", "mail.example.com:24"),
        ("lmtp://[::1]:2424?timeout=5", "lmtp://[::1]:2424?timeout=5", "[::1]:2424"),
        ("lmtp+unix:///run/dovecot/lmtp", "lmtp+unix:///run/dovecot/lmtp", "/run/dovecot/lmtp"),
        (
            "lmtp+unix:///var/spool/postfix/private/dovecot-lmtp?helo=mx.example.com",
            "lmtp+unix:///var/spool/postfix/private/dovecot-lmtp?helo=mx.example.com",
            "/var/spool/postfix/private/dovecot-lmtp",
        ),
    ],
)
def test_lmtp_target_strings(text: str, canonical: str, where: str) -> None:
    target = forward_target(text)
    assert isinstance(target, LMTPForward)
    assert (repr(target), target.where, target.tls) == (canonical, where, "none")
    assert repr(forward_target(repr(target))) == canonical  # the canonical form reads back


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lmtp://", "no host"),
        ("lmtp://h:0x", "port must be a number"),
        ("lmtp://h/path", "HOST:PORT"),
        ("lmtp://bob:pw@h", "no user or password"),
        ("lmtp://h?tls=starttls", "unknown option 'tls'"),
        ("lmtp://h?timeout=never", "timeout= is a number"),
        ("lmtp+unix://run/dovecot/lmtp", "absolute path of the socket after three slashes"),
        ("lmtp+unix:relative", "absolute path"),
        ("lmtp+unix:///" + "d/" * 60 + "lmtp", "at most 107 octets"),
    ],
)
def test_bad_lmtp_target_strings(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        forward_target(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("users", "refusal", "delivered"),
    [
        (["bob", "alice"], None, {"bob", "alice"}),
        (["bob", "nobody"], "550 5.1.1", set()),  # refused at RCPT: nothing is sent
        (["bob", "carol"], "552 5.2.2", {"bob"}),  # refused after the data by one recipient
        (["bob", "dave", "carol"], "451 4.4.1", {"bob"}),  # a temporary refusal wins
    ],
)
def test_lmtp_target_as_a_plain_handler(
    dovecot: Dovecot, users: list[str], refusal: str | None, delivered: set[str]
) -> None:
    """Called with a whole Envelope (by code that does not know step handlers), the target runs
    the transaction at once: it returns when every recipient took the message, else raises
    Reject with the first temporary refusal, else the first permanent one."""
    target = forward_target(_target_text(dovecot, "unix"))
    envelope = Envelope(
        mail_from="sender@example.org",
        rcpt_tos=tuple(f"{user}@example.com" for user in users),
        content=_message("plain"),
        mail_params=MailParams(),
        rcpt_params=tuple(RcptParams() for _ in users),
        session=SessionInfo("plain1", "mx.example.com", extended=True),
        received_at=datetime.now(UTC),
        transaction_id="plain1-1",
    )
    if refusal is None:
        target(envelope)
    else:
        with pytest.raises(Reject) as refused:
            target(envelope)
        assert _code(refused.value.reply) == refusal
    assert {user for user in ("alice", "bob") if dovecot.messages(user)} == delivered


@pytest.mark.parametrize("end", ["rset", "hang-up"])
def test_transaction_ended_before_the_data_delivers_nothing(
    kind: str, dovecot: Dovecot, end: str
) -> None:
    """RSET, or our client hanging up, after Dovecot accepted bob: the LMTP transaction is
    abandoned (QUIT), bob gets nothing; the next transaction delivers as usual."""
    with running(kind, _router(_target_text(dovecot, "tcp"))) as server:
        client = smtplib.SMTP("127.0.0.1", server.port)
        client.ehlo("client.example.org")
        client.mail("sender@example.org")
        assert client.rcpt("bob@example.com")[0] == 250
        if end == "rset":
            assert client.rset()[0] == 250
            client.quit()
        else:
            client.close()
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            assert client.sendmail("s@example.org", ["alice@example.com"], _message("next")) == {}
    assert dovecot.messages("bob") == []
    assert len(dovecot.messages("alice")) == 1
    # the LMTP transaction was ended by our QUIT, not by a dropped connection
    assert dovecot.logged("Logged out (state=RCPT TO)"), dovecot.log()
