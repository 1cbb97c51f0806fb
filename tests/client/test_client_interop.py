"""Our clients (anyio on asyncio and trio, and the blocking one) against servers nobody here
wrote: aiosmtpd in a thread (STARTTLS, AUTH, SMTPUTF8, implicit TLS; no PIPELINING, no
CHUNKING: lock-step) and Postfix's smtp-sink as a subprocess (PIPELINING, AUTH, DSN, LMTP, and
switches to refuse, drop or stall any command). smtp-sink's dump files show the bytes it got."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AiosmtpdServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from smtp_core import (
    AuthenticationFailed,
    LoginClient,
    MessageRefused,
    PlainClient,
    RecipientsRefused,
    Reply,
    SenderRefused,
    SMTPConnectionError,
    SMTPError,
    SMTPNotSupported,
    SMTPTimeout,
)
from tests.clients import client, free_port
from tests.servers import TLS
from tests.tools import needs, require

SENDER = "alice@example.org"
MESSAGE = b"From: alice@example.org\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\n.dot\r\nbye\r\n"


# --- aiosmtpd ----------------------------------------------------------------------------


class Recorder:
    """An aiosmtpd handler: keeps each message; refuses nobody@ at RCPT, drops the connection
    at RCPT drop@, refuses a message whose subject is "spam"."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes, list[str]]] = []

    async def handle_RCPT(
        self,
        server: AiosmtpdServer,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 No such user"
        if address.startswith("drop@"):
            assert server.transport is not None
            server.transport.close()
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(
        self, server: AiosmtpdServer, session: Session, envelope: Envelope
    ) -> str:
        content = envelope.original_content
        assert isinstance(content, bytes) and envelope.mail_from is not None
        if b"Subject: spam" in content:
            return "554 5.7.1 Looks like spam"
        self.messages.append(
            (envelope.mail_from, list(envelope.rcpt_tos), content, envelope.mail_options)
        )
        return "250 2.0.0 Accepted"


def check_login(
    server: AiosmtpdServer, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    good = isinstance(data, LoginPassword) and (data.login, data.password) == (b"alice", b"pw")
    return AuthResult(success=good, handled=False)


@contextmanager
def aiosmtpd(handler: Recorder, **options: Any) -> Iterator[int]:
    """A Controller on 127.0.0.1 (it cannot bind port 0: it connects to its own port to check
    it is up, so a free port is picked, and picked again if someone took it meanwhile)."""
    for attempt in range(5):
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port, **options)
        try:
            controller.start()
        except (OSError, RuntimeError):
            if attempt == 4:
                raise
            continue
        try:
            yield port
        finally:
            controller.stop()
        return


def test_aiosmtpd_lock_step_partial_failure_and_reuse(kind: str) -> None:
    """No PIPELINING offered: one command per round trip. Bcc is not sent."""
    handler = Recorder()
    message = EmailMessage()
    message["From"] = "Alice <alice@example.org>"
    message["To"] = "bob@example.com, nobody@example.com"
    message["Bcc"] = "carol@example.com"
    message["Subject"] = "hello"
    message.set_content("Hi.\n.dot\n")
    with aiosmtpd(handler) as port, client(kind, port) as smtp:
        assert smtp.extensions is not None and not smtp.extensions.pipelining
        before = smtp.round_trips
        first = smtp.send_message(message)
        assert smtp.round_trips - before == 6  # MAIL, 3 RCPT, DATA, the message
        second = smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["dave@example.com"])
        with pytest.raises(RecipientsRefused):
            smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["nobody@example.com"])
        with pytest.raises(MessageRefused) as spam:
            smtp.send_message(
                b"Subject: spam\r\n\r\nbuy\r\n", mail_from=SENDER, rcpt_tos=["b@example.com"]
            )
        assert spam.value.reply == Reply(554, "Looks like spam", "5.7.1")
        smtp.send_message(MESSAGE, mail_from="", rcpt_tos=["erin@example.com"])  # a bounce
    assert first.accepted.keys() == {"bob@example.com", "carol@example.com"}
    assert first.refused == {"nobody@example.com": Reply(550, "No such user", "5.1.1")}
    assert second.reply == Reply(250, "Accepted", "2.0.0")
    (from1, to1, content1, _), (from2, to2, content2, _), (from3, _, _, _) = handler.messages
    assert (from1, to1) == ("alice@example.org", ["bob@example.com", "carol@example.com"])
    assert b"Bcc" not in content1 and b"\r\n.dot\r\n" in content1
    assert (from2, to2, content2) == (SENDER, ["dave@example.com"], MESSAGE)
    assert from3 == "<>"


@pytest.mark.parametrize("how", ["tuple", "PLAIN", "LOGIN"])
def test_aiosmtpd_starttls_and_auth(kind: str, tls: TLS, how: str) -> None:
    handler = Recorder()
    options = {
        "tls_context": tls.server,
        "require_starttls": True,
        "authenticator": check_login,
        "auth_require_tls": True,
    }
    auth: Any = {"tuple": ("alice", "pw"), "PLAIN": PlainClient("alice", "pw")}.get(
        how
    ) or LoginClient("alice", "pw")
    with aiosmtpd(handler, **options) as port:
        with client(kind, port, tls="starttls", ssl_context=tls.client, auth=auth) as smtp:
            assert smtp.tls_active and smtp.authenticated
            smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["bob@example.com"])
        with pytest.raises(AuthenticationFailed) as failed:
            with client(kind, port, tls="starttls", ssl_context=tls.client, auth=("alice", "nope")):
                pass
        assert failed.value.reply.code == 535
    assert [m[2] for m in handler.messages] == [MESSAGE]


def test_aiosmtpd_smtputf8(kind: str) -> None:
    handler = Recorder()
    message = EmailMessage()
    message["From"] = "Jürgen <jürgen@example.org>"
    message["To"] = "José <josé@example.com>"
    message["Subject"] = "Grüße"
    message.set_content("Schöne Grüße\n")
    with aiosmtpd(handler, enable_SMTPUTF8=True) as port, client(kind, port) as smtp:
        smtp.send_message(message)
    [(sender, rcpts, content, options)] = handler.messages
    assert (sender, rcpts) == ("jürgen@example.org", ["josé@example.com"])
    assert "SMTPUTF8" in options and "BODY=8BITMIME" in options
    assert "Subject: Grüße\r\n".encode() in content


def test_aiosmtpd_implicit_tls(kind: str, tls: TLS) -> None:
    handler = Recorder()
    with aiosmtpd(handler, ssl_context=tls.server) as port:
        with client(kind, port, tls="implicit", ssl_context=tls.client) as smtp:
            assert smtp.tls_active
            smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["bob@example.com"])
    assert [m[2] for m in handler.messages] == [MESSAGE]


def test_aiosmtpd_drops_the_connection_mid_transaction(kind: str) -> None:
    with aiosmtpd(Recorder()) as port, client(kind, port) as smtp:
        with pytest.raises(
            SMTPConnectionError, match="closed the connection before the reply to RCPT"
        ):
            smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["drop@example.com"])
        with pytest.raises(SMTPConnectionError, match="the connection is closed"):
            smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["bob@example.com"])


def test_aiosmtpd_ten_mib(kind: str) -> None:
    handler = Recorder()
    line = b"." + b"y" * 76 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (10 * 1024 * 1024 // len(line))
    with aiosmtpd(handler) as port, client(kind, port) as smtp:
        smtp.send_message(body, mail_from=SENDER, rcpt_tos=["bob@example.com"])
    [(_, _, content, options)] = handler.messages
    assert content == body and f"SIZE={len(body)}" in options


# --- Postfix smtp-sink -------------------------------------------------------------------


needs_sink = needs("smtp-sink")


class Sink:
    """One smtp-sink process; ``dumps()`` reads the messages it captured (``-d``)."""

    def __init__(self, port: int, directory: Path, process: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.directory = directory
        self.process = process

    def dumps(self) -> list[bytes]:
        return [
            p.read_bytes()
            for p in sorted(self.directory.iterdir(), key=lambda p: p.stat().st_mtime_ns)
        ]


@contextmanager
def smtp_sink(*options: str) -> Iterator[Sink]:
    """smtp-sink on 127.0.0.1:<free port>, dumping each transaction into a scratch directory,
    stopped (and only it) when the block ends. As root it must drop to an unprivileged user,
    who must be able to write the dumps."""
    binary = require("smtp-sink")
    directory = Path(tempfile.mkdtemp(prefix="smtp-sink-"))
    directory.chmod(0o777)
    user = ["-u", "nobody"] if os.geteuid() == 0 and _has_user("nobody") else []
    port = free_port()
    process = subprocess.Popen(
        [binary, *user, *options, "-d", f"{directory}/m.", f"127.0.0.1:{port}", "16"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    _, err = process.communicate()
                    raise AssertionError(f"smtp-sink did not start: {err!r}") from None
                time.sleep(0.02)
        yield Sink(port, directory, process)
    finally:
        process.terminate()
        try:
            process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
        shutil.rmtree(directory, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def dumped(dump: bytes) -> tuple[dict[str, list[str]], bytes]:
    """smtp-sink's headers (X-Mail-Args, X-Rcpt-Args...) and the message as it arrived; the
    dump writes LF line ends and adds one empty line."""
    lines = dump.split(b"\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(b"Received: "))
    fields: dict[str, list[str]] = {}
    for line in lines[:start]:
        name, _, value = line.decode().partition(": ")
        fields.setdefault(name, []).append(value)
    end = start + 1
    while lines[end].startswith(b"\t"):
        end += 1
    body = b"\n".join(lines[end:])
    assert body.endswith(b"\n\n")
    return fields, body[:-1].replace(b"\n", b"\r\n")


@needs_sink
def test_smtp_sink_pipelining_auth_and_dump(kind: str) -> None:
    with smtp_sink() as sink:
        for auth in (PlainClient("alice", "pw"), LoginClient("alice", "pw")):
            with client(kind, sink.port, tls="none", auth=auth) as smtp:
                assert smtp.authenticated and smtp.extensions is not None
                assert smtp.extensions.pipelining and not smtp.extensions.chunking
                before = smtp.round_trips
                result = smtp.send_message(
                    MESSAGE, mail_from=SENDER, rcpt_tos=["b@example.com", "c@example.com"]
                )
                assert smtp.round_trips - before == 2  # MAIL+RCPT+RCPT+DATA, then the message
                smtp.send_message(
                    "Grüße\r\n".encode(), mail_from=SENDER, rcpt_tos=["d@example.com"]
                )
        dumps = [dumped(d) for d in sink.dumps()]
    assert result.accepted.keys() == {"b@example.com", "c@example.com"}
    by_rcpts = {tuple(fields["X-Rcpt-Args"]): (fields, content) for fields, content in dumps}
    assert len(dumps) == 4 and len(by_rcpts) == 2  # the same two messages, twice
    fields, content = by_rcpts[("<b@example.com>", "<c@example.com>")]
    assert fields["X-Mail-Args"] == ["<alice@example.org>"]
    assert content == MESSAGE
    fields, content = by_rcpts[("<d@example.com>",)]
    assert fields["X-Mail-Args"] == ["<alice@example.org> BODY=8BITMIME"]
    assert content == "Grüße\r\n".encode()


@needs_sink
def test_smtp_sink_lock_step_and_helo(kind: str) -> None:
    """-p: no PIPELINING; -f EHLO: EHLO refused, so HELO, and no extension at all."""
    with smtp_sink("-p") as sink, client(kind, sink.port, tls="none") as smtp:
        before = smtp.round_trips
        smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["b@example.com", "c@example.com"])
        assert smtp.round_trips - before == 5
    with smtp_sink("-f", "EHLO") as sink, client(kind, sink.port, tls="none") as smtp:
        assert smtp.extensions is not None and smtp.extensions.keywords == {}
        with pytest.raises(SMTPNotSupported, match="8BITMIME"):
            smtp.send_message(b"caf\xc3\xa9\r\n", mail_from=SENDER, rcpt_tos=["b@example.com"])
        smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["b@example.com"])
        fields, content = dumped(sink.dumps()[0])
    assert content == MESSAGE and fields["X-Client-Proto"] == ["SMTP"]


@needs_sink
def test_smtp_sink_lmtp(kind: str) -> None:
    with smtp_sink("-L") as sink, client(kind, sink.port, tls="none", lmtp=True) as smtp:
        result = smtp.send_message(
            MESSAGE, mail_from=SENDER, rcpt_tos=["b@example.com", "c@example.com"]
        )
        [(fields, content)] = [dumped(d) for d in sink.dumps()]
    assert len(result.data_replies) == 2  # one reply per recipient
    assert result.accepted.keys() == {"b@example.com", "c@example.com"}
    assert fields["X-Client-Proto"] == ["LMTP"] and content == MESSAGE


REFUSALS = [
    # (smtp-sink options, exception, reply code class)
    (("-f", "MAIL"), SenderRefused, 5),
    (("-f", "RCPT"), RecipientsRefused, 5),
    (("-r", "RCPT"), RecipientsRefused, 4),
    (("-f", "DATA"), MessageRefused, 5),
    (("-f", "."), MessageRefused, 5),
    (("-r", "."), MessageRefused, 4),
]


@needs_sink
@pytest.mark.parametrize(
    ("options", "error", "klass"), REFUSALS, ids=[" ".join(c[0]) for c in REFUSALS]
)
def test_smtp_sink_refusals(
    kind: str, options: tuple[str, ...], error: type[SMTPError], klass: int
) -> None:
    with smtp_sink(*options) as sink, client(kind, sink.port, tls="none") as smtp:
        for _ in range(2):  # and the connection stays usable
            with pytest.raises(error) as refused:
                smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["b@example.com"])
            assert refused.value.reply is not None and refused.value.reply.code // 100 == klass
        assert smtp.noop().code == 250


DROPS = [
    (("-q", "DATA"), "closed the connection before the reply to DATA", None),
    (("-q", "."), "closed the connection before the reply to the message", None),
    (("-Q", "RCPT"), "closed the session: 421", 421),
]


@needs_sink
@pytest.mark.parametrize(("options", "message", "code"), DROPS, ids=[" ".join(c[0]) for c in DROPS])
def test_smtp_sink_drops_the_connection(
    kind: str, options: tuple[str, ...], message: str, code: int | None
) -> None:
    with smtp_sink(*options) as sink, client(kind, sink.port, tls="none") as smtp:
        with pytest.raises(SMTPConnectionError, match=message) as dropped:
            smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["b@example.com"])
        assert (dropped.value.reply.code if dropped.value.reply else None) == code


@needs_sink
def test_smtp_sink_stalls(kind: str) -> None:
    """-w 10: ten seconds before the reply to DATA (smtp-sink holds the pipelined replies to
    MAIL and RCPT back with it); the client gives up after 0.3. Had it waited for the reply,
    the message would have gone through: the timeout itself shows it did not wait."""
    with smtp_sink("-w", "10") as sink, client(kind, sink.port, tls="none", timeout=0.3) as smtp:
        with pytest.raises(
            SMTPTimeout, match=r"waiting for the reply to MAIL timed out after 0\.3 s"
        ):
            smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["b@example.com"])


@needs_sink
def test_smtp_sink_ten_mib(kind: str) -> None:
    line = b"." + b"z" * 76 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (10 * 1024 * 1024 // len(line)) + b".\r\n"
    with smtp_sink() as sink, client(kind, sink.port, tls="none") as smtp:
        smtp.send_message(body, mail_from=SENDER, rcpt_tos=["b@example.com"])
        [(_, content)] = [dumped(d) for d in sink.dumps()]
    assert content == body
