"""Session edges a transcript cannot show: timeouts, shutdown, EOF mid-message, broken framing,
hooks that fail, PROXY, STARTTLS, and what reaches the logs."""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest

from smtp_core import (
    Credentials,
    Envelope,
    Hello,
    LoginMechanism,
    Metrics,
    PlainMechanism,
    Policy,
    ProxyHeader,
    Reject,
    Reply,
    Router,
    ServerConfig,
    Session,
    SessionInfo,
    TLSInfo,
    encode_proxy_header,
    run_transcript,
)
from smtp_core._session import _greeting, _with_hello
from smtp_core.adapter import (
    Action,
    Authenticate,
    CheckRecipient,
    Close,
    Connect,
    Deliver,
    Send,
    Spool,
    UpgradeToTLS,
)

NOW = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
SECRET = "correct horse battery staple"


class Box:
    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    def __call__(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)


class Runner:
    """Drive a Session by hand: carry out its Actions like an adapter, keep what it wrote."""

    def __init__(self, router: Router[Any], **options: Any) -> None:
        options.setdefault("peer", ("198.51.100.7", 50000))
        options.setdefault("clock", lambda: NOW)
        self.session = Session(router, session_id="S1", **options)
        self.written = bytearray()
        self.closed = False
        self.calls: list[Action] = []
        self.spool = bytearray()
        self.results: dict[type[Action], object] = {}
        self.run(self.session.start())

    def run(self, actions: list[Action]) -> None:
        queue = list(actions)
        while queue:
            action = queue.pop(0)
            if isinstance(action, Send):
                self.written += action.data
            elif isinstance(action, Close):
                self.closed = True
            elif isinstance(action, Spool):
                if action.start:
                    self.spool.clear()
                self.spool += action.data
            elif isinstance(action, UpgradeToTLS):
                queue[:0] = self.session.resolve(action, TLSInfo("TLSv1.3", "TLS_AES_128_GCM"))
            else:
                self.calls.append(action)
                result = self.results.get(type(action))
                if result is None:
                    try:
                        result = action.function(*action.args)  # type: ignore[attr-defined]
                    except Exception as exc:
                        result = exc
                queue[:0] = self.session.resolve(action, result)

    def feed(self, data: bytes) -> None:
        self.run(self.session.receive_data(data))

    def codes(self) -> list[str]:
        """Each final reply line as "code enhanced"."""
        out = []
        for line in bytes(self.written).decode().split("\r\n"):
            if line[3:4] == " ":
                out.append(" ".join(line.split(" ")[:2]))
        return out


@pytest.fixture
def box() -> Box:
    return Box()


@pytest.fixture
def router(box: Box) -> Router[Any]:
    router: Router[Any] = Router()
    router.add("*@example.com", box)
    return router


TRANSACTION = b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"


def test_expire_sends_421_timeout_and_closes(router: Router[Any]) -> None:
    runner = Runner(router)
    runner.feed(b"EHLO c\r\n")
    assert runner.session.timeout == 300.0
    runner.run(runner.session.expire())
    assert runner.codes()[-1] == "421 4.4.2" and runner.closed
    assert runner.session.expire() == [] and runner.session.receive_data(b"NOOP\r\n") == []


def test_data_timeout_applies_inside_data(router: Router[Any]) -> None:
    runner = Runner(router)
    runner.feed(TRANSACTION)
    assert runner.session.in_transaction and runner.session.timeout == 180.0


def test_shut_down_sends_421_4_3_2(router: Router[Any]) -> None:
    runner = Runner(router)
    runner.run(runner.session.shut_down())
    assert runner.codes() == ["220 localhost", "421 4.3.2"]
    assert runner.closed


def test_eof_mid_data_delivers_nothing(router: Router[Any], box: Box) -> None:
    runner = Runner(router)
    runner.feed(TRANSACTION + b"Subject: half\r\n\r\nbody that never ")
    runner.feed(b"")
    assert runner.closed and box.envelopes == []


def test_oversize_message_delivers_nothing(router: Router[Any], box: Box) -> None:
    runner = Runner(router, config=ServerConfig(max_message_size=50))
    runner.feed(TRANSACTION + b"x" * 40 + b"\r\n" + b"y" * 40 + b"\r\n.\r\nQUIT\r\n")
    assert runner.codes()[-2:] == ["552 5.3.4", "221 2.0.0"]
    assert box.envelopes == [] and not any(isinstance(c, Deliver) for c in runner.calls)


def test_bdat_without_size_gets_501_and_close(router: Router[Any], box: Box) -> None:
    runner = Runner(router)
    runner.feed(b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@example.com>\r\nBDAT LAST\r\n")
    assert runner.codes()[-1] == "501 5.5.4" and runner.closed and box.envelopes == []


def test_bdat_spooled_message(router: Router[Any], box: Box) -> None:
    runner = Runner(router, policy=Policy(spool_threshold=100))
    chunk = b"z" * 150
    runner.feed(
        b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@example.com>\r\n"
        + b"BDAT 150\r\n"
        + chunk
        + b"BDAT 150 LAST\r\n"
        + chunk
    )
    assert runner.codes()[-2:] == ["250 2.0.0", "250 2.0.0"]
    deliver = next(c for c in runner.calls if isinstance(c, Deliver))
    assert deliver.spooled and bytes(runner.spool) == chunk * 2


class Hooks(Policy):
    def __init__(self, **failures: BaseException | object) -> None:
        super().__init__()
        self.failures = failures

    def _maybe(self, name: str, default: Any) -> Any:
        outcome = self.failures.get(name, default)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def on_connect(self, info: SessionInfo) -> Any:
        return self._maybe("on_connect", None)

    def authenticate(self, credentials: Credentials, info: SessionInfo) -> Any:
        return self._maybe("authenticate", None)

    def addressable(self, info: SessionInfo, address: str) -> Any:
        return self._maybe("addressable", True)


AUTH = ServerConfig(auth_mechanisms=(PlainMechanism, LoginMechanism), auth_require_tls=False)
PLAIN = base64.b64encode(f"\0alice\0{SECRET}".encode()).decode()


@pytest.mark.parametrize(
    ("hook", "outcome", "command", "expected"),
    [
        ("on_connect", RuntimeError("db down"), b"", "220"),
        ("on_connect", Reply(421, "Busy", "4.3.2"), b"", "421 4.3.2"),
        ("addressable", RuntimeError("db down"), b"RCPT TO:<b@example.com>\r\n", "451 4.3.0"),
        ("addressable", False, b"RCPT TO:<b@example.com>\r\n", "550 5.7.1"),
        (
            "addressable",
            Reject(Reply(450, "Greylisted", "4.7.1")),
            b"RCPT TO:<b@example.com>\r\n",
            "450 4.7.1",
        ),
        (
            "authenticate",
            RuntimeError("ldap down"),
            f"AUTH PLAIN {PLAIN}\r\n".encode(),
            "454 4.7.0",
        ),
        (
            "authenticate",
            Reject(Reply(535, "Locked", "5.7.8")),
            f"AUTH PLAIN {PLAIN}\r\n".encode(),
            "535 5.7.8",
        ),
        ("authenticate", "alice", f"AUTH PLAIN {PLAIN}\r\n".encode(), "235 2.7.0"),
    ],
    ids=lambda v: v if isinstance(v, str) and " " not in v else None,
)
def test_hook_outcomes(
    router: Router[Any], hook: str, outcome: object, command: bytes, expected: str
) -> None:
    runner = Runner(router, config=AUTH, policy=Hooks(**{hook: outcome}))
    if command:
        runner.feed(b"EHLO c\r\nMAIL FROM:<a@x.org>\r\n" if b"RCPT" in command else b"EHLO c\r\n")
        runner.feed(command)
    assert runner.codes()[-1].startswith(expected)


def test_greeting_421_closes(router: Router[Any]) -> None:
    runner = Runner(router, policy=Hooks(on_connect=Reply(421, "Busy", "4.3.2")))
    assert runner.closed


def test_secrets_never_reach_logs_or_reprs(
    router: Router[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    runner = Runner(router, config=AUTH, policy=Hooks(authenticate=None))
    login_user = base64.b64encode(b"alice").decode()
    login_password = base64.b64encode(SECRET.encode()).decode()
    runner.feed(f"EHLO c\r\nAUTH PLAIN {PLAIN}\r\n".encode())
    runner.feed(f"AUTH LOGIN {login_user}\r\n".encode())
    runner.feed(f"{login_password}\r\n".encode())
    assert runner.codes().count("535 5.7.8") == 2
    authenticate = [c for c in runner.calls if isinstance(c, Authenticate)]
    assert len(authenticate) == 2
    assert authenticate[0].args[0].password == SECRET
    for text in [caplog.text, *map(repr, runner.calls)]:
        assert SECRET not in text and PLAIN not in text and login_password not in text


def test_proxy_header_names_the_real_client(router: Router[Any], box: Box) -> None:
    header = ProxyHeader(2, "PROXY", "TCP4", ("203.0.113.9", 41000), ("192.0.2.25", 25))
    runner = Runner(router, proxy_protocol=True)
    assert runner.written == b""  # nothing before the header
    runner.feed(encode_proxy_header(header) + TRANSACTION + b"hi\r\n.\r\n")
    (envelope,) = box.envelopes
    assert envelope.peer == ("203.0.113.9", 41000) and envelope.session.proxy == header
    assert b"[203.0.113.9]" in envelope.received_header()
    connect = next(c for c in runner.calls if isinstance(c, Connect))
    assert connect.args[0].peer == ("203.0.113.9", 41000)


def test_malformed_proxy_header_closes_silently(router: Router[Any]) -> None:
    runner = Runner(router, proxy_protocol=True)
    runner.feed(b"EHLO not-a-proxy\r\n")
    assert runner.closed and runner.written == b""


def test_starttls_resets_and_marks_the_envelope(router: Router[Any], box: Box) -> None:
    result = run_transcript(
        """
S: 220 *
C: EHLO c
S: 250 *
C: STARTTLS
S: 220 *
C: MAIL FROM:<a@x.org>
S: 503 5.5.1 *
C: EHLO c
S: 250 *
C: MAIL FROM:<a@x.org>
S: 250 *
C: RCPT TO:<b@example.com>
S: 250 *
C: DATA
S: 354 *
C: hi
C: .
S: 250 2.0.0 *
""",
        router,
        config=ServerConfig(starttls=True),
    )
    (envelope,) = result.deliveries
    assert envelope.protocol() == "ESMTPS" and envelope.session.tls is not None
    assert b"using TLSv1.3" in envelope.received_header()


def test_check_recipient_not_called_for_unrouted(router: Router[Any]) -> None:
    runner = Runner(router)
    runner.feed(b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@nowhere.example>\r\n")
    assert runner.codes()[-1] == "550 5.1.1"
    assert not any(isinstance(c, CheckRecipient) for c in runner.calls)


def test_metrics_count_what_happened(router: Router[Any], box: Box) -> None:
    metrics = Metrics()
    auth = ServerConfig(
        auth_mechanisms=(PlainMechanism,), auth_require_tls=False, max_message_size=100
    )
    runner = Runner(router, config=auth, policy=Hooks(authenticate="alice"), metrics=metrics)
    script = (
        f"EHLO c\r\nAUTH PLAIN {PLAIN}\r\n".encode()
        + TRANSACTION
        + b"hello\r\n.\r\n"
        + b"MAIL FROM:<a@x.org>\r\nRCPT TO:<nobody@nowhere.example>\r\n"
        + b"RCPT TO:<b@example.com>\r\nDATA\r\n"
        + b"z" * 200
        + b"\r\n.\r\nQUIT\r\n"
    )
    runner.feed(script)
    assert runner.closed
    assert metrics.connections == 1 and metrics.connections_open == 0
    assert metrics.bytes_received == len(script)
    assert (metrics.transactions_accepted, metrics.transactions_refused) == (1, 1)
    assert metrics.message_bytes == 7 and metrics.recipients_accepted == 1
    assert metrics.auth_successes == 1 and metrics.rejects == {550: 1, 552: 1}
    text = metrics.render_prometheus()
    assert "# TYPE smtpmux_connections_open gauge\nsmtpmux_connections_open 0\n" in text
    assert 'smtpmux_rejects_total{code="552"} 1\n' in text
    assert "smtpmux_transactions_accepted_total 1\n" in text


def test_transaction_log_is_structured(
    router: Router[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smtpmux.session")
    runner = Runner(router)
    runner.feed(TRANSACTION + b"hello\r\n.\r\n")
    (record,) = [r for r in caplog.records if r.getMessage().startswith("message from")]
    assert record.__dict__["session_id"] == "S1" and record.__dict__["size"] == 7
    assert record.__dict__["reply_code"] == 250
    assert record.__dict__["peer"] == ("198.51.100.7", 50000)


class Ticking:
    """A clock that moves 1.25 s each time the session reads it: the time a transaction
    took comes from the adapter's clock, never from one the session reads itself."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1.25)
        return self.now


def refuse(envelope: Envelope) -> None:
    raise Reject(Reply(550, "Mailbox disabled", "5.2.1"))


# (id, LMTP?, recipients, the transaction's one line)
TRANSACTION_LINES = [
    (
        "one-recipient",
        False,
        ["b@example.com"],
        "message from <a@x.org> to <b@example.com>: 250 2.0.0 OK: message accepted; "
        "7 octets, 1 recipient, 2.500 s",
    ),
    (
        "two-recipients",
        False,
        ["b@example.com", "c@example.com"],
        "message from <a@x.org> to <b@example.com>, <c@example.com>: "
        "250 2.0.0 OK: message accepted; 7 octets, 2 recipients, 2.500 s",
    ),
    (
        "refused",
        False,
        ["b@example.com", "no@refused.example"],
        "message from <a@x.org> to <b@example.com>, <no@refused.example>: "
        "550 5.2.1 Mailbox disabled; 7 octets, 2 recipients, 2.500 s",
    ),
    (
        "lmtp-partly-refused",
        True,
        ["b@example.com", "no@refused.example"],
        "message from <a@x.org> to <b@example.com>, <no@refused.example>: "
        "250 2.0.0 OK: message accepted; 7 octets, 1 of 2 recipients accepted, 2.500 s",
    ),
]


@pytest.mark.parametrize(
    ("case", "lmtp", "recipients", "line"), TRANSACTION_LINES, ids=[t[0] for t in TRANSACTION_LINES]
)
def test_one_log_line_per_transaction(
    router: Router[Any],
    caplog: pytest.LogCaptureFixture,
    case: str,
    lmtp: bool,
    recipients: list[str],
    line: str,
) -> None:
    """Sender, recipients as addresses, the reply, size, count and time: in one line, no
    tuple reprs, and nothing else per transaction at INFO."""
    caplog.set_level(logging.INFO, logger="smtpmux.session")
    router.add("*@refused.example", refuse)
    runner = Runner(router, clock=Ticking(), config=ServerConfig(lmtp=lmtp))
    hello = b"LHLO c\r\n" if lmtp else b"EHLO c\r\n"
    runner.feed(hello + b"MAIL FROM:<a@x.org>\r\n")
    caplog.clear()
    for address in recipients:
        runner.feed(b"RCPT TO:<%s>\r\n" % address.encode())
    runner.feed(b"DATA\r\nhello\r\n.\r\n")
    assert [r.getMessage() for r in caplog.records] == [line]
    (record,) = caplog.records
    assert record.__dict__["mail_from"] == "a@x.org"
    assert record.__dict__["rcpt_tos"] == recipients
    assert record.__dict__["duration"] == 2.5 and record.__dict__["size"] == 7


def test_connection_line_writes_the_peer_as_host_port(
    router: Router[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smtpmux.session")
    Runner(router, peer=("2001:db8::7", 50000))
    Runner(router, peer=("198.51.100.7", 25))
    assert [r.getMessage() for r in caplog.records] == [
        "connection from [2001:db8::7]:50000",
        "connection from 198.51.100.7:25",
    ]


def test_failed_starttls_logs_the_reason(
    router: Router[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="smtpmux.session")
    session = Session(
        router, clock=lambda: NOW, session_id="S1", config=ServerConfig(starttls=True)
    )
    [connect] = session.start()
    session.resolve(connect, None)  # no on_connect verdict: the greeting
    [send, upgrade] = session.receive_data(b"EHLO c\r\nSTARTTLS\r\n")
    assert isinstance(send, Send) and isinstance(upgrade, UpgradeToTLS)
    assert session.resolve(upgrade, ConnectionResetError(104, "Connection reset by peer")) == [
        Close()
    ]
    [line] = [r.getMessage() for r in caplog.records if "TLS" in r.getMessage()]
    assert line == "TLS handshake failed: the client closed the connection during the handshake"


# --- fast paths of a connection's set-up (issue 15) ----------------------------------------

FULL_INFO = SessionInfo(
    "s1",
    "mx.example",
    peer=("192.0.2.7", 4000),
    helo="old.example",
    extended=False,
    lmtp=False,
    tls=TLSInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256"),
    auth_identity="alice",
    proxy=ProxyHeader(1, "PROXY", "TCP4", ("192.0.2.7", 4000), ("192.0.2.1", 25)),
)


@pytest.mark.parametrize(
    "hello",
    [Hello("c.example", True, False, Reply(250, "hi")), Hello("l", True, True, Reply(250, "hi"))],
    ids=["EHLO", "LHLO"],
)
def test_session_info_after_hello_is_what_evolve_gives(hello: Hello) -> None:
    """The Session's hand-written copy of SessionInfo equals attrs.evolve's, field for field;
    a field added to SessionInfo fails here until the copy carries it too."""
    assert [field.name for field in attrs.fields(SessionInfo)] == [
        "session_id",
        "hostname",
        "peer",
        "helo",
        "extended",
        "lmtp",
        "tls",
        "auth_identity",
        "proxy",
    ]
    expected = attrs.evolve(FULL_INFO, helo=hello.name, extended=hello.extended, lmtp=hello.lmtp)
    assert _with_hello(FULL_INFO, hello) == expected


def test_default_greeting_is_one_reply_per_hostname() -> None:
    """Every connection greets with the same Reply object (its bytes come from the engine's
    cache by identity), and the text names the host."""
    assert _greeting("mx.example") is _greeting("mx.example")
    assert _greeting("mx.example") == Reply(220, "mx.example ESMTP smtpmux")
    assert _greeting("other.example").text == "other.example ESMTP smtpmux"
