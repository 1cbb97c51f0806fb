"""Our clients against our own servers over real sockets: the anyio client on asyncio and on
trio (each against the anyio server on the same backend) and the blocking client against the
blocking server. One scenario table, every kind; what the server stored is checked byte for
byte, and the protocol trace shows what the client chose (BDAT or DATA)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from functools import partial
from typing import Any

import anyio
import pytest

import smtp_anyio
from smtp_core import (
    AuthenticationFailed,
    Command,
    Credentials,
    Envelope,
    LoginClient,
    LoginMechanism,
    MessageRefused,
    PlainClient,
    PlainMechanism,
    Policy,
    RcptParams,
    RecipientsRefused,
    Reject,
    Reply,
    Router,
    SenderRefused,
    ServerConfig,
    SessionInfo,
    SMTPConnectionError,
    SMTPNotSupported,
    SMTPRefused,
    SMTPTimeout,
)
from tests.clients import client, free_port
from tests.servers import TLS, Collect, refuse, running

SENDER = "alice@example.org"
MESSAGE = b"From: alice@example.org\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"


def crash(envelope: Envelope) -> None:
    raise RuntimeError("handler bug")


def over_quota(envelope: Envelope) -> None:
    raise Reject(Reply(452, "Mailbox full", "4.2.2"))


@pytest.fixture
def router(box: Collect) -> Router[Any]:
    router: Router[Any] = Router()
    router.add("*@example.com", box)
    router.add("spam@example.net", refuse)
    router.add("crash@example.net", crash)
    router.add("full@example.net", over_quota)
    return router


def letter(**headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Alice <alice@example.org>"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message["Subject"] = "a letter"
    message.set_content("Hello.\n.a line with a leading dot\n")
    return message


@pytest.fixture
def trace(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], list[str]]]:
    """The commands in the server's protocol trace (what the client wrote, as the server read
    it), so far."""

    def commands() -> list[str]:
        lines = [r.getMessage() for r in caplog.records if r.name == "smtpmux.trace"]
        return [line.split(" C: ", 1)[1] for line in lines if " C: " in line]

    with caplog.at_level(logging.DEBUG, logger="smtpmux.trace"):
        yield commands


# --- sending -----------------------------------------------------------------------------


def test_messages_on_one_connection(kind: str, router: Router[Any], box: Collect) -> None:
    """An EmailMessage (envelope from the headers, Bcc not sent), bytes with an explicit
    envelope and bytes whose envelope comes from the headers, over one connection."""
    with running(kind, router) as server, client(kind, server.port) as smtp:
        first = smtp.send_message(
            letter(To="Bob <bob@example.com>", Cc="carol@example.com", Bcc="dave@example.com")
        )
        second = smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["erin@example.com"])
        raw = (
            b"From: a@example.org\r\nTo: x@example.com\r\nBcc: y@example.com,\r\n z@example.com\r\n"
        )
        third = smtp.send_message(raw + b"Subject: raw\r\n\r\nbody\r\n")
        assert smtp.noop().code == 250
    assert list(first.accepted) == ["bob@example.com", "carol@example.com", "dave@example.com"]
    assert first.refused == {} and first.reply.code == 250 and first.mail_from == SENDER
    assert list(second.accepted) == ["erin@example.com"]
    assert list(third.accepted) == ["x@example.com", "y@example.com", "z@example.com"]
    assert [e.rcpt_tos for e in box.envelopes] == [
        ("bob@example.com", "carol@example.com", "dave@example.com"),
        ("erin@example.com",),
        ("x@example.com", "y@example.com", "z@example.com"),
    ]
    assert len({e.session.session_id for e in box.envelopes}) == 1  # one connection
    assert b"Bcc" not in box.contents[0] and b"dave" not in box.contents[0]
    assert b"\r\n..a line with a leading dot" not in box.contents[0]  # unstuffed again
    assert b"\r\n.a line with a leading dot\r\n" in box.contents[0]
    assert box.contents[1] == MESSAGE
    assert (
        box.contents[2]
        == b"From: a@example.org\r\nTo: x@example.com\r\nSubject: raw\r\n\r\nbody\r\n"
    )


PIPELINING_CASES = [
    # (id, server options, round trips for one message to three recipients, content command)
    ("pipelined-bdat", {}, 1, "BDAT"),
    ("pipelined-data", {"chunking": False}, 2, "DATA"),
    ("lock-step-bdat", {"pipelining": False}, 5, "BDAT"),
    ("lock-step-data", {"pipelining": False, "chunking": False}, 6, "DATA"),
]


@pytest.mark.parametrize(
    ("options", "round_trips", "verb"),
    [case[1:] for case in PIPELINING_CASES],
    ids=[case[0] for case in PIPELINING_CASES],
)
def test_pipelining_and_bdat_when_offered(
    kind: str,
    router: Router[Any],
    box: Collect,
    trace: Callable[[], list[str]],
    options: dict[str, Any],
    round_trips: int,
    verb: str,
) -> None:
    """RFC 2920: MAIL, every RCPT and DATA (or BDAT LAST) in one write; without PIPELINING
    one command per round trip. BDAT is used exactly when CHUNKING is offered."""
    rcpts = ["b@example.com", "nobody@nowhere.example", "c@example.com"]
    with running(kind, router, config=ServerConfig(**options)) as server:
        with client(kind, server.port) as smtp:
            before = smtp.round_trips
            result = smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=rcpts)
            assert smtp.round_trips - before == round_trips
    assert list(result.accepted) == ["b@example.com", "c@example.com"]
    assert result.refused["nobody@nowhere.example"].code == 550
    assert box.contents == [MESSAGE]
    sent = trace()
    content_commands = [c.split()[0] for c in sent if c.split()[:1] in (["DATA"], ["BDAT"])]
    assert content_commands == [verb]
    if verb == "BDAT":
        assert f"BDAT {len(MESSAGE)} LAST" in sent


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_ten_mib_message(kind: str, router: Router[Any], box: Collect, chunking: bool) -> None:
    """10 MiB with lines that start with a dot: byte-exact at the server, SIZE declared. A
    message this big waits for the RCPT replies before its BDAT (two round trips)."""
    line = b"." + b"x" * 76 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (10 * 1024 * 1024 // len(line)) + b".\r\n..\r\n"
    with running(kind, router, config=ServerConfig(chunking=chunking)) as server:
        with client(kind, server.port) as smtp:
            before = smtp.round_trips
            result = smtp.send_message(body, mail_from=SENDER, rcpt_tos=["b@example.com"])
            assert smtp.round_trips - before == 2
    assert result.accepted.keys() == {"b@example.com"}
    assert box.contents == [body]
    assert box.envelopes[0].mail_params.size == len(body)


def test_line_ends_normalized(kind: str, router: Router[Any], box: Collect) -> None:
    """Bare LF and bare CR become CRLF, and a final CRLF is added: on both DATA and BDAT."""
    with running(kind, router) as server, client(kind, server.port) as smtp:
        smtp.send_message(
            b"Subject: lf\n\nline\n.dot\rend", mail_from=SENDER, rcpt_tos=["b@example.com"]
        )
    assert box.contents == [b"Subject: lf\r\n\r\nline\r\n.dot\r\nend\r\n"]


# --- TLS ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["starttls", "opportunistic"])
def test_starttls(kind: str, router: Router[Any], box: Collect, tls: TLS, mode: str) -> None:
    with running(kind, router, ssl_context=tls.server) as server:
        with client(kind, server.port, tls=mode, ssl_context=tls.client) as smtp:
            assert smtp.tls_active
            assert smtp.extensions is not None and not smtp.extensions.starttls  # EHLO again
            smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["b@example.com"])
    envelope = box.envelopes[0]
    assert envelope.session.tls is not None and envelope.session.tls.version in (
        "TLSv1.2",
        "TLSv1.3",
    )
    assert envelope.session.helo == "[127.0.0.1]"  # our address literal: no DNS needed


def test_implicit_tls(kind: str, router: Router[Any], box: Collect, tls: TLS) -> None:
    with running(kind, router, ssl_context=tls.server, implicit_tls=True) as server:
        with client(kind, server.port, tls="implicit", ssl_context=tls.client) as smtp:
            assert smtp.tls_active
            smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["b@example.com"])
    assert box.envelopes[0].session.tls is not None


def test_starttls_required_but_not_offered(kind: str, router: Router[Any], box: Collect) -> None:
    with running(kind, router) as server:
        with pytest.raises(SMTPNotSupported, match="does not offer STARTTLS"):
            with client(kind, server.port, tls="starttls"):
                pass
        with client(kind, server.port) as smtp:  # opportunistic: goes on in clear
            assert not smtp.tls_active
            smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["b@example.com"])
    assert box.envelopes[0].session.tls is None


def test_untrusted_certificate(kind: str, router: Router[Any], tls: TLS) -> None:
    """The default context verifies the certificate: a self-made CA is refused."""
    with running(kind, router, ssl_context=tls.server) as server:
        with pytest.raises(
            SMTPConnectionError, match=r"TLS handshake failed: .*CERTIFICATE_VERIFY"
        ):
            with client(kind, server.port, tls="starttls"):
                pass
    with running(kind, router, ssl_context=tls.server, implicit_tls=True) as server:
        with pytest.raises(SMTPConnectionError, match="CERTIFICATE_VERIFY"):
            with client(kind, server.port, tls="implicit"):
                pass


# --- AUTH --------------------------------------------------------------------------------


class Accounts(Policy):
    def authenticate(self, credentials: Credentials, info: SessionInfo) -> str | None:
        return "alice" if (credentials.username, credentials.password) == ("alice", "pw") else None


AUTH = ServerConfig(auth_mechanisms=(PlainMechanism, LoginMechanism))
AUTH_CASES: dict[str, Callable[[str], Any]] = {
    "tuple": lambda password: ("alice", password),
    "plain": lambda password: PlainClient("alice", password),
    "login": lambda password: LoginClient("alice", password),
}


@pytest.mark.parametrize("how", list(AUTH_CASES))
def test_auth(kind: str, router: Router[Any], box: Collect, tls: TLS, how: str) -> None:
    policy = Accounts(auth_required=True)
    with running(kind, router, ssl_context=tls.server, config=AUTH, policy=policy) as server:
        with client(kind, server.port, ssl_context=tls.client, auth=AUTH_CASES[how]("pw")) as smtp:
            assert smtp.authenticated
            smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["b@example.com"])
        wrong = AUTH_CASES[how]("wrong")
        with pytest.raises(AuthenticationFailed) as failed:
            with client(kind, server.port, ssl_context=tls.client, auth=wrong):
                pass
        assert failed.value.reply.code == 535 and failed.value.reply.enhanced == "5.7.8"
        with client(kind, server.port, ssl_context=tls.client) as smtp:  # no AUTH: MAIL refused
            with pytest.raises(SenderRefused) as refused:
                smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["b@example.com"])
            assert refused.value.reply.code == 530
    assert [e.session.auth_identity for e in box.envelopes] == ["alice"]


def test_no_credentials_in_clear_text(kind: str, router: Router[Any], box: Collect) -> None:
    """AUTH offered without TLS: refused by the client unless tls="none" says so."""
    config = ServerConfig(auth_mechanisms=(PlainMechanism,), auth_require_tls=False)
    with running(kind, router, config=config, policy=Accounts()) as server:
        with pytest.raises(SMTPNotSupported, match="clear text"):
            with client(kind, server.port, auth=("alice", "pw")):
                pass
        with client(kind, server.port, tls="none", auth=("alice", "pw")) as smtp:
            smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["b@example.com"])
        with pytest.raises(SMTPNotSupported, match="does not offer AUTH LOGIN"):
            with client(kind, server.port, tls="none", auth=LoginClient("alice", "pw")):
                pass
    assert box.envelopes[0].session.auth_identity == "alice"


def test_auth_only_in_tls_with_tls_none_says_so(kind: str, router: Router[Any], tls: TLS) -> None:
    """tls="none" against a server that offers AUTH only inside TLS: the error names
    STARTTLS and the fix, not the mechanism."""
    with running(kind, router, ssl_context=tls.server, config=AUTH, policy=Accounts()) as server:
        with pytest.raises(SMTPNotSupported) as refused:
            with client(kind, server.port, tls="none", auth=("alice", "pw")):
                pass
    text = str(refused.value)
    assert "offers AUTH only after STARTTLS" in text and "tls='starttls'" in text, text
    assert "AUTH LOGIN" not in text


# --- refusals ----------------------------------------------------------------------------


def test_refusals_leave_the_connection_usable(kind: str, router: Router[Any], box: Collect) -> None:
    with running(kind, router) as server, client(kind, server.port) as smtp:
        with pytest.raises(RecipientsRefused) as nobody:
            smtp.send_message(
                MESSAGE, mail_from=SENDER, rcpt_tos=["x@nowhere.example", "y@nowhere.example"]
            )
        assert set(nobody.value.result.refused) == {"x@nowhere.example", "y@nowhere.example"}
        assert nobody.value.reply.code == 550 and not nobody.value.temporary
        with pytest.raises(MessageRefused) as spam:
            smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["spam@example.net"])
        assert spam.value.reply == Reply(554, "Spam, go away", "5.7.1")
        assert spam.value.result.refused == {"spam@example.net": spam.value.reply}
        with pytest.raises(MessageRefused) as crashed:
            smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["crash@example.net"])
        assert crashed.value.temporary and crashed.value.reply.code == 451
        result = smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["b@example.com"])
        assert result.accepted.keys() == {"b@example.com"}
    assert box.contents == [MESSAGE]


def test_capabilities_checked_before_writing(kind: str, router: Router[Any], box: Collect) -> None:
    """SIZE, SMTPUTF8, 8BITMIME and DSN the server lacks: refused before anything is sent,
    and the connection goes on."""
    config = ServerConfig(max_message_size=2000, smtputf8=False, eightbitmime=False, dsn=False)
    with running(kind, router, config=config) as server, client(kind, server.port) as smtp:
        with pytest.raises(SMTPNotSupported, match=r"larger than .* \(SIZE 2000\)"):
            smtp.send_message(MESSAGE + b"x" * 2000, mail_from=SENDER, rcpt_tos=["b@example.com"])
        with pytest.raises(SMTPNotSupported, match="SMTPUTF8"):
            smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["jösé@example.com"])
        with pytest.raises(SMTPNotSupported, match="8BITMIME"):
            smtp.send_message(
                MESSAGE + "Grüße\r\n".encode(), mail_from=SENDER, rcpt_tos=["b@example.com"]
            )
        with pytest.raises(SMTPNotSupported, match="DSN"):
            smtp.send_message(
                MESSAGE,
                mail_from=SENDER,
                rcpt_tos=["b@example.com"],
                rcpt_params=RcptParams(notify=("FAILURE",)),
            )
        smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["b@example.com"])
    assert box.contents == [MESSAGE]
    assert box.envelopes[0].mail_params.size == len(MESSAGE)


def test_smtputf8_and_8bitmime(kind: str, router: Router[Any], box: Collect) -> None:
    international = letter(To="Jösé <jösé@example.com>")
    international.replace_header("Subject", "Grüße")
    with running(kind, router) as server, client(kind, server.port) as smtp:
        smtp.send_message(international)
        smtp.send_message(
            MESSAGE + "Grüße\r\n".encode(), mail_from=SENDER, rcpt_tos=["b@example.com"]
        )
    first, second = box.envelopes
    assert first.rcpt_tos == ("jösé@example.com",) and first.mail_params.smtputf8
    assert "To: Jösé <jösé@example.com>\r\n".encode() in box.contents[0]  # RFC 6532: raw UTF-8
    assert second.mail_params.body == "8BITMIME" and not second.mail_params.smtputf8
    assert box.contents[1].endswith("Grüße\r\n".encode())


def test_dsn_parameters(kind: str, router: Router[Any], box: Collect) -> None:
    with running(kind, router) as server, client(kind, server.port) as smtp:
        smtp.send_message(
            MESSAGE,
            mail_from=SENDER,
            rcpt_tos=["b@example.com", "c@example.com"],
            rcpt_params={"c@example.com": RcptParams(notify=("SUCCESS", "FAILURE"))},
        )
    assert [p.notify for p in box.envelopes[0].rcpt_params] == [None, ("SUCCESS", "FAILURE")]


# --- LMTP --------------------------------------------------------------------------------


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_lmtp_reply_per_recipient(
    kind: str, router: Router[Any], box: Collect, chunking: bool
) -> None:
    config = ServerConfig(lmtp=True, chunking=chunking)
    rcpts = ["b@example.com", "full@example.net", "nobody@nowhere.example", "crash@example.net"]
    with (
        running(kind, router, config=config) as server,
        client(kind, server.port, lmtp=True) as smtp,
    ):
        result = smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=rcpts)
        with pytest.raises(MessageRefused) as none:
            smtp.send_message(
                MESSAGE, mail_from=SENDER, rcpt_tos=["spam@example.net", "full@example.net"]
            )
    assert [r.address for r in result.recipients] == rcpts
    assert result.accepted == {"b@example.com": Reply(250, "OK: message accepted", "2.0.0")}
    assert result.refused["full@example.net"] == Reply(452, "Mailbox full", "4.2.2")
    assert result.refused["nobody@nowhere.example"].code == 550  # at RCPT time
    assert result.refused["crash@example.net"].code == 451
    assert len(result.data_replies) == 3  # one per recipient accepted at RCPT
    assert {a: r.code for a, r in none.value.result.refused.items()} == {
        "spam@example.net": 554,
        "full@example.net": 452,
    }
    assert box.contents == [MESSAGE]


# --- the connection failing --------------------------------------------------------------


def test_server_closes_the_session(kind: str, router: Router[Any]) -> None:
    """The server's idle timeout: 421 and close. The next send says so, and the one after."""
    config = ServerConfig(command_timeout=0.3)
    with running(kind, router, config=config) as server, client(kind, server.port) as smtp:
        smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["b@example.com"])
        deadline = time.monotonic() + 30  # the server says when it closed: no guessed sleep
        while server.metrics.connections_open and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.metrics.connections_open == 0
        with pytest.raises(SMTPConnectionError) as closed:
            smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["b@example.com"])
        assert closed.value.reply is not None and closed.value.reply.code == 421
        with pytest.raises(SMTPConnectionError, match="the connection is closed"):
            smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["b@example.com"])


def test_timeout_waiting_for_the_reply(kind: str, box: Collect) -> None:
    release = threading.Event()

    def slow(envelope: Envelope) -> None:
        release.wait(10)

    router: Router[Any] = Router()
    router.add("slow@example.com", slow)
    try:
        with running(kind, router) as server, client(kind, server.port, timeout=0.3) as smtp:
            # the handler answers only after release: a timeout is the only way out of here
            with pytest.raises(SMTPTimeout, match="waiting for the reply to the message timed out"):
                smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["slow@example.com"])
            release.set()
            with pytest.raises(SMTPConnectionError, match="closed"):
                smtp.noop()
    finally:
        release.set()


def test_nobody_listening(kind: str) -> None:
    with pytest.raises(SMTPConnectionError, match=r"cannot connect to 127\.0\.0\.1:"):
        with client(kind, free_port()):
            pass


def test_greeting_refused(kind: str, router: Router[Any]) -> None:
    class Closed(Policy):
        def on_connect(self, info: SessionInfo) -> Reply:
            return Reply(554, "No SMTP service here", "5.3.2")

    with running(kind, router, policy=Closed()) as server:
        with pytest.raises(SMTPRefused) as refused:
            with client(kind, server.port):
                pass
    assert refused.value.command is Command.CONNECT and refused.value.reply.code == 554


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="tls must be one of"):
        smtp_anyio.connect("127.0.0.1", 25, tls="always")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tls='none'"):
        smtp_anyio.connect("127.0.0.1", 25, tls="none", ssl_context=TLS().client)
    with pytest.raises(TypeError, match="auth"):
        smtp_anyio.connect("127.0.0.1", 25, auth="alice:pw")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="local_hostname"):
        smtp_anyio.connect("127.0.0.1", 25, local_hostname="my host")
    with pytest.raises(ValueError, match="timeout"):
        smtp_anyio.connect("127.0.0.1", 25, timeout=0)


# --- native anyio tests: server and client on one event loop ------------------------------


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
async def test_concurrent_tasks_share_one_connection(router: Router[Any], box: Collect) -> None:
    """send_message holds a lock: tasks sending over one client take turns."""
    async with smtp_anyio.Server(router, port=0) as server:
        async with smtp_anyio.connect("127.0.0.1", server.port) as smtp:
            async with anyio.create_task_group() as group:
                for n in range(5):
                    send = partial(
                        smtp.send_message, mail_from=SENDER, rcpt_tos=[f"u{n}@example.com"]
                    )
                    group.start_soon(send, MESSAGE)
    assert sorted(e.rcpt_tos[0] for e in box.envelopes) == [f"u{n}@example.com" for n in range(5)]


@pytest.mark.anyio
async def test_cancelled_send_closes_the_client(box: Collect) -> None:
    release = anyio.Event()

    async def slow(envelope: Envelope) -> None:
        await release.wait()

    router: Router[Any] = Router()
    router.add("slow@example.com", slow)
    router.add("*@example.com", box)
    async with smtp_anyio.Server(router, port=0, shutdown_timeout=1) as server:
        async with smtp_anyio.connect("127.0.0.1", server.port) as smtp:
            with anyio.move_on_after(0.2) as scope:
                await smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["slow@example.com"])
            assert scope.cancelled_caught
            with pytest.raises(SMTPConnectionError, match="abandoned"):
                await smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=["b@example.com"])
        release.set()
    assert box.envelopes == []


@pytest.mark.parametrize("refused", ["<<b@example.com>>", "<b@example.com", "b@example.com>"])
def test_addresses_in_one_pair_of_angle_brackets(
    kind: str, router: Router[Any], box: Collect, refused: str
) -> None:
    """As smtplib: ``"<b@example.com>"`` is sent as ``b@example.com``. Other brackets are a
    ValueError before anything is written, and the connection stays usable."""
    with running(kind, router) as server, client(kind, server.port) as smtp:
        with pytest.raises(ValueError, match="angle brackets"):
            smtp.send_message(MESSAGE, mail_from=SENDER, rcpt_tos=[refused])
        result = smtp.send_message(MESSAGE, mail_from=f"<{SENDER}>", rcpt_tos=["<b@example.com>"])
        assert list(result.accepted) == ["b@example.com"]
    [envelope] = box.envelopes
    assert (envelope.mail_from, envelope.rcpt_tos) == (SENDER, ("b@example.com",))
