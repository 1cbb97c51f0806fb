"""The Session and the Router together, through transcripts: routing, relay, auth, limits,
handler refusal and crash, LMTP, fan-out, spooling."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest

from smtp_core import (
    AuthLockout,
    Credentials,
    Envelope,
    LoginMechanism,
    PlainMechanism,
    Policy,
    Reject,
    Reply,
    Router,
    ServerConfig,
    SessionInfo,
    TLSInfo,
    TranscriptError,
    TranscriptResult,
    run_transcript,
)


class Mailbox:
    """A handler that keeps what it gets."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.envelopes: list[Envelope] = []

    def __call__(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def __repr__(self) -> str:
        return f"Mailbox({self.name})"


def refusing(envelope: Envelope) -> None:
    raise Reject(Reply(550, "Mailbox disabled", "5.2.1"))


def crashing(envelope: Envelope) -> None:
    raise RuntimeError("disk on fire")


@pytest.fixture
def boxes() -> dict[str, Mailbox]:
    return {name: Mailbox(name) for name in ("bob", "sales", "catchall", "example")}


@pytest.fixture
def router(boxes: dict[str, Mailbox]) -> Router[Any]:
    router: Router[Any] = Router()
    router.add("bob@example.com", boxes["bob"])
    router.add("*@example.com", boxes["example"])
    router.add("sales@*", boxes["sales"])
    router.add("refuse@example.org", refusing)
    router.add("crash@example.org", crashing)
    return router


SEND = """
S: 220 *
C: EHLO client.example
S: 250 *
C: MAIL FROM:<alice@client.example>
S: 250 2.1.0 *
"""
DATA = """
C: DATA
S: 354 *
C: Subject: hi
C:
C: hello
C: .
"""


def test_routing_and_fan_out(router: Router[Any], boxes: dict[str, Mailbox]) -> None:
    script = (
        SEND
        + """
C: RCPT TO:<bob@example.com>
S: 250 2.1.5 *
C: RCPT TO:<carol@example.com>
S: 250 2.1.5 *
C: RCPT TO:<sales@elsewhere.net>
S: 250 2.1.5 *
C: RCPT TO:<nobody@elsewhere.net>
S: 550 5.1.1 *
"""
        + DATA
        + """
S: 250 2.0.0 *
C: QUIT
S: 221 *
"""
    )
    result = run_transcript(script, router)
    assert result.closed
    assert [e.rcpt_tos for e in boxes["bob"].envelopes] == [("bob@example.com",)]
    assert [e.rcpt_tos for e in boxes["example"].envelopes] == [("carol@example.com",)]
    assert [e.rcpt_tos for e in boxes["sales"].envelopes] == [("sales@elsewhere.net",)]
    envelope = boxes["bob"].envelopes[0]
    assert envelope.as_bytes() == b"Subject: hi\r\n\r\nhello\r\n"
    assert envelope.mail_from == "alice@client.example" and envelope.helo == "client.example"
    assert envelope.peer == ("192.0.2.1", 40000)


def test_received_header(router: Router[Any], boxes: dict[str, Mailbox]) -> None:
    run_transcript(
        SEND + "C: RCPT TO:<bob@example.com>\nS: 250*\n" + DATA + "S: 250*\n",
        router,
        config=ServerConfig(hostname="mx.example.com"),
    )
    header = boxes["bob"].envelopes[0].received_header()
    assert header == (
        b"Received: from client.example ([192.0.2.1]) by mx.example.com (smtpmux)\r\n"
        b"\twith ESMTP id T1-1 for <bob@example.com>; Thu, 01 Jan 2026 12:00:00 +0000\r\n"
    )


def test_relay_denied_for_unauthenticated(router: Router[Any]) -> None:
    router.add("*@*", Mailbox("relay"))
    policy = Policy(relay_domains=frozenset({"example.com"}))
    run_transcript(
        SEND
        + """
C: RCPT TO:<someone@example.com>
S: 250 2.1.5 *
C: RCPT TO:<someone@gmail.example>
S: 550 5.7.1 Relaying denied
""",
        router,
        policy=policy,
    )


RELAY_IDNA = [
    # Issue 11: relay domains and recipients compare in one form (IDNA 2008, UTS 46).
    pytest.param({"xn--bcher-kva.example"}, "a@bücher.example", "250 2.1.5 *", id="a-set-u-rcpt"),
    pytest.param({"bücher.example"}, "a@xn--bcher-kva.example", "250 2.1.5 *", id="u-set-a-rcpt"),
    pytest.param({"Bücher.Example."}, "a@BÜCHER.example", "250 2.1.5 *", id="case-and-dot"),
    pytest.param({"XN--BCHER-KVA.example"}, "a@bücher.example", "250 2.1.5 *", id="a-upper"),
    pytest.param(
        {"\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.com"},
        "a@example.com",
        "250 2.1.5 *",
        id="uts46-width",
    ),
    pytest.param({"straße.de"}, "a@xn--strae-oqa.de", "250 2.1.5 *", id="sharp-s"),
    pytest.param({"straße.de"}, "a@strasse.de", "550 5.7.1 *", id="sharp-s-is-not-ss"),
    pytest.param({"strasse.de"}, "a@straße.de", "550 5.7.1 *", id="ss-is-not-sharp-s"),
    pytest.param({"example.com"}, "a@xn--zz.example", "553 5.1.3 *", id="invalid-idna-rcpt"),
]


@pytest.mark.parametrize(("domains", "recipient", "reply"), RELAY_IDNA)
def test_relay_domains_compare_idna(
    router: Router[Any], domains: set[str], recipient: str, reply: str
) -> None:
    router.add("*@*", Mailbox("relay"))
    run_transcript(
        SEND.replace(">\nS: 250 2.1.0", "> SMTPUTF8\nS: 250 2.1.0")
        + f"C: RCPT TO:<{recipient}>\nS: {reply}\n",
        router,
        policy=Policy(relay_domains=frozenset(domains)),
    )


def test_relay_domains_are_normalised_once() -> None:
    policy = Policy(relay_domains={"Bücher.Example.", "example.com"})
    assert policy.relay_domains == frozenset({"xn--bcher-kva.example", "example.com"})
    policy.relay_domains = frozenset({"straße.de"})
    assert policy.relay_domains == frozenset({"xn--strae-oqa.de"})


@pytest.mark.parametrize("domains", [{"xn--zz.example"}, "example.com"], ids=["idna", "string"])
def test_relay_domains_refuse_what_is_not_a_domain_set(domains: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        Policy(relay_domains=domains)


class Accounts(Policy):
    def authenticate(self, credentials: Credentials, info: SessionInfo) -> str | None:
        if (credentials.username, credentials.password) == ("alice", "s3cret"):
            return "alice"
        return None


AUTH_CONFIG = ServerConfig(auth_mechanisms=(PlainMechanism, LoginMechanism))
GOOD = base64.b64encode(b"\0alice\0s3cret").decode()
BAD = base64.b64encode(b"\0alice\0guess").decode()


def test_authenticated_client_may_relay(router: Router[Any]) -> None:
    relay = Mailbox("relay")
    router.add("*@*", relay)
    policy = Accounts(relay_domains=frozenset({"example.com"}))
    from smtp_core import TLSInfo

    result = run_transcript(
        f"""
S: 220 *
C: EHLO c
S: 250 *
C: AUTH PLAIN {BAD}
S: 535 5.7.8 *
C: AUTH PLAIN {GOOD}
S: 235 2.7.0 *
C: MAIL FROM:<alice@example.com>
S: 250 *
C: RCPT TO:<friend@gmail.example>
S: 250 2.1.5 *
"""
        + DATA
        + "S: 250 2.0.0 *\n",
        router,
        policy=policy,
        config=AUTH_CONFIG,
        tls=TLSInfo("TLSv1.3", "X"),
    )
    envelope = result.deliveries[0]
    assert envelope.auth_identity == "alice"
    assert envelope.protocol() == "ESMTPSA"


def test_auth_required_before_mail(router: Router[Any]) -> None:
    run_transcript(
        """
S: 220 *
C: EHLO c
S: 250 *
C: MAIL FROM:<a@b.example>
S: 530 5.7.0 *
""",
        router,
        policy=Policy(auth_required=True),
    )


def test_auth_login_over_plaintext_refused(router: Router[Any]) -> None:
    run_transcript(
        """
S: 220 *
C: EHLO c
S: 250 *
C: AUTH LOGIN
S: 538 5.7.11 *
""",
        router,
        config=AUTH_CONFIG,
        policy=Accounts(),
    )


LOGIN_USER = base64.b64encode(b"alice").decode()
LOGIN_GUESS = base64.b64encode(b"guess").decode()
FAILED_PLAIN = f"C: AUTH PLAIN {BAD}\nS: 535 5.7.8 *\n"
FAILED_LOGIN = (
    f"C: AUTH LOGIN\nS: 334 *\nC: {LOGIN_USER}\nS: 334 *\nC: {LOGIN_GUESS}\nS: 535 5.7.8 *\n"
)
CLOSED_BY_GUESSING = "S: 421 4.7.0 Too many failed logins, closing connection"

AUTH_LIMITS = [
    # (id, policy options, the script after EHLO)
    ("third-plain-closes", {}, FAILED_PLAIN * 3 + f"C: AUTH PLAIN {GOOD}\n{CLOSED_BY_GUESSING}\n"),
    ("login-refused-at-once", {}, FAILED_LOGIN * 3 + f"C: AUTH LOGIN\n{CLOSED_BY_GUESSING}\n"),
    (
        "mixed-mechanisms",
        {"max_auth_failures": 2},
        FAILED_PLAIN + FAILED_LOGIN + f"C: AUTH LOGIN {LOGIN_USER}\n{CLOSED_BY_GUESSING}\n",
    ),
    ("success-within-limit", {}, FAILED_PLAIN * 2 + f"C: AUTH PLAIN {GOOD}\nS: 235 2.7.0 *\n"),
    ("unlimited", {"max_auth_failures": None}, FAILED_PLAIN * 5),
    (
        "counts-towards-max-errors",
        {"max_errors": 3, "max_auth_failures": None},
        "C: FROB\nS: 500 *\n"
        + FAILED_PLAIN * 2
        + f"C: AUTH PLAIN {BAD}\nS: 421 4.7.0 Too many errors*\n",
    ),
    (
        "cancel-is-an-error-not-a-failure",
        {"max_errors": 20},
        "C: AUTH LOGIN\nS: 334 *\nC: *\nS: 501 *\n" * 3 + f"C: AUTH PLAIN {GOOD}\nS: 235 *\n",
    ),
]


@pytest.mark.parametrize(
    ("options", "script"), [c[1:] for c in AUTH_LIMITS], ids=[c[0] for c in AUTH_LIMITS]
)
def test_failed_auth_limit_per_connection(
    router: Router[Any], options: dict[str, Any], script: str
) -> None:
    result = run_transcript(
        "S: 220 *\nC: EHLO c\nS: 250 *\n" + script,
        router,
        policy=Accounts(**options),
        config=AUTH_CONFIG,
        tls=TLSInfo("TLSv1.3", "X"),
    )
    assert result.closed == script.endswith(("closing connection\n", "Too many errors*\n"))


class Moody(Policy):
    """Refuses ``reject`` with its own 5xx, fails on ``crash``, lets ``alice`` in."""

    def authenticate(self, credentials: Credentials, info: SessionInfo) -> str | None:
        if credentials.password == "crash":
            raise OSError("the user database is down")
        if credentials.password == "reject":
            raise Reject(Reply(535, "Account disabled", "5.7.8"))
        return "alice" if credentials.password == "s3cret" else None


def _plain(password: str) -> str:
    return base64.b64encode(f"\0alice\0{password}".encode()).decode()


HOOK_OUTCOMES = [
    # a 454 (our fault) is an error but not a failed login; a 5xx Reject is a failed login
    (
        "hook-failure-is-not-a-failed-login",
        f"C: AUTH PLAIN {_plain('crash')}\nS: 454 4.7.0 *\n" * 4
        + f"C: AUTH PLAIN {GOOD}\nS: 235 *\n",
    ),
    (
        "reject-counts",
        f"C: AUTH PLAIN {_plain('reject')}\nS: 535 5.7.8 Account disabled\n" * 3
        + f"C: AUTH PLAIN {GOOD}\n{CLOSED_BY_GUESSING}\n",
    ),
]


@pytest.mark.parametrize("script", [c[1] for c in HOOK_OUTCOMES], ids=[c[0] for c in HOOK_OUTCOMES])
def test_what_counts_as_a_failed_login(router: Router[Any], script: str) -> None:
    run_transcript(
        "S: 220 *\nC: EHLO c\nS: 250 *\n" + script,
        router,
        policy=Moody(),
        config=AUTH_CONFIG,
        tls=TLSInfo("TLSv1.3", "X"),
    )


class CountedAccounts(Accounts):
    """Accounts that counts how often a password is actually checked."""

    checks = 0

    def authenticate(self, credentials: Credentials, info: SessionInfo) -> str | None:
        self.checks += 1
        return super().authenticate(credentials, info)


def test_failures_per_address_lock_out_auth_across_connections(router: Router[Any]) -> None:
    lockout = AuthLockout(max_failures=4, window=60)
    policy = CountedAccounts(auth_lockout=lockout)
    now = [1000.0]

    def clock() -> datetime:
        return datetime.fromtimestamp(now[0], UTC)

    def connect(script: str, peer: str = "192.0.2.1") -> TranscriptResult:
        return run_transcript(
            "S: 220 *\nC: EHLO c\nS: 250 *\n" + script,
            router,
            policy=policy,
            config=AUTH_CONFIG,
            tls=TLSInfo("TLSv1.3", "X"),
            peer=(peer, 40000),
            clock=clock,
        )

    locked = f"C: AUTH PLAIN {GOOD}\nS: 421 4.7.0 Too many failed logins from your address*\n"
    connect(FAILED_PLAIN * 2)
    connect(FAILED_PLAIN * 2)  # four failures from one address, over two connections
    assert policy.checks == 4
    assert connect(locked).closed  # the right password, but refused before it is checked
    assert connect("C: AUTH LOGIN\n" + locked.partition("\n")[2]).closed
    assert policy.checks == 4
    connect(f"C: AUTH PLAIN {GOOD}\nS: 235 *\nC: MAIL FROM:<a@b.example>\nS: 250 *\n", "192.0.2.9")
    connect("C: MAIL FROM:<a@b.example>\nS: 250 *\n")  # mail without AUTH goes on
    now[0] += 59  # each refusal counted as a failure too: still locked a window after the last
    connect(locked)
    now[0] += 60
    connect(f"C: AUTH PLAIN {GOOD}\nS: 235 *\n")


def test_lockout_table_is_bounded_and_forgets() -> None:
    lockout = AuthLockout(max_failures=2, window=10, max_addresses=3)
    for n in range(5):
        lockout.failed(f"198.51.100.{n}", float(n))
    assert len(lockout) == 3  # the two that failed least recently were dropped
    lockout.failed("198.51.100.4", 5.0)
    assert lockout.locked("198.51.100.4", 14.9)
    assert not lockout.locked("198.51.100.4", 15.0)  # ten quiet seconds: forgotten
    assert not lockout.locked("198.51.100.0", 5.0)
    lockout.failed("198.51.100.3", 3.5)
    assert lockout.locked("198.51.100.3", 13.4)  # the window runs from the last failure
    assert not lockout.locked("198.51.100.3", 13.5)


def test_max_recipients(router: Router[Any]) -> None:
    run_transcript(
        SEND
        + """
C: RCPT TO:<a@example.com>
S: 250 *
C: RCPT TO:<b@example.com>
S: 250 *
C: RCPT TO:<c@example.com>
S: 452 4.5.3 *
""",
        router,
        policy=Policy(max_recipients=2),
    )


def test_handler_rejection(router: Router[Any]) -> None:
    run_transcript(
        SEND
        + "C: RCPT TO:<refuse@example.org>\nS: 250*\n"
        + DATA
        + "S: 550 5.2.1 Mailbox disabled\nC: NOOP\nS: 250*\n",
        router,
    )


def test_handler_crash_gives_451_and_session_goes_on(
    router: Router[Any], boxes: dict[str, Mailbox]
) -> None:
    run_transcript(
        SEND
        + "C: RCPT TO:<crash@example.org>\nS: 250*\n"
        + DATA
        + "S: 451 4.3.0 *\n"
        + "C: MAIL FROM:<a@b.example>\nS: 250*\n"
        + "C: RCPT TO:<bob@example.com>\nS: 250*\n"
        + DATA
        + "S: 250 2.0.0*\n",
        router,
    )
    assert len(boxes["bob"].envelopes) == 1


def test_one_failing_handler_fails_the_smtp_transaction(
    router: Router[Any], boxes: dict[str, Mailbox]
) -> None:
    """SMTP has one reply per message: 451 when one handler fails, although the other one was
    called and took its copy. The sender retries the whole message, so bob gets it again:
    a duplicate, never a loss (LMTP answers per recipient and avoids it)."""
    result = run_transcript(
        SEND
        + "C: RCPT TO:<bob@example.com>\nS: 250*\n"
        + "C: RCPT TO:<crash@example.org>\nS: 250*\n"
        + DATA
        + "S: 451 4.3.0 *\n",
        router,
    )
    [delivered] = boxes["bob"].envelopes
    assert delivered.rcpt_tos == ("bob@example.com",)  # its own recipient, not crash@
    assert delivered.mail_from == "alice@client.example"
    assert delivered.as_bytes() == b"Subject: hi\r\n\r\nhello\r\n"
    called = sorted(e.rcpt_tos for e in result.deliveries)  # each handler once, its recipients
    assert called == [("bob@example.com",), ("crash@example.org",)]
    assert all(not box.envelopes for name, box in boxes.items() if name != "bob")


def test_lmtp_one_reply_per_recipient(router: Router[Any], boxes: dict[str, Mailbox]) -> None:
    result = run_transcript(
        """
S: 220 *
C: LHLO c
S: 250 *
C: MAIL FROM:<a@b.example>
S: 250 *
C: RCPT TO:<bob@example.com>
S: 250 *
C: RCPT TO:<refuse@example.org>
S: 250 *
C: RCPT TO:<sales@x.example>
S: 250 *
"""
        + DATA
        + """
S: 250 2.0.0 *
S: 550 5.2.1 *
S: 250 2.0.0 *
""",
        router,
        config=ServerConfig(lmtp=True),
    )
    assert len(result.deliveries) == 3
    assert boxes["bob"].envelopes[0].protocol() == "LMTP"


def test_too_many_errors_closes(router: Router[Any]) -> None:
    result = run_transcript(
        "S: 220 *\n" + "C: FROB\nS: 500 5.5.1 *\n" * 3 + "C: FROB\nS: 421 4.7.0 *\n",
        router,
        policy=Policy(max_errors=3),
    )
    assert result.closed


def test_on_connect_can_refuse(router: Router[Any]) -> None:
    class Blocklist(Policy):
        def on_connect(self, info: SessionInfo) -> Reply | None:
            return Reply(554, "Not welcome", "5.7.1")

    run_transcript(
        "S: 554 5.7.1 Not welcome\nC: EHLO c\nS: 503 *\nC: QUIT\nS: 221 *\n",
        router,
        policy=Blocklist(),
    )


def test_async_handler_runs(router: Router[Any]) -> None:
    seen = []

    async def handler(envelope: Envelope) -> None:
        seen.append(envelope.rcpt_tos)

    router.add("async@example.org", handler)
    run_transcript(SEND + "C: RCPT TO:<async@example.org>\nS: 250*\n" + DATA + "S: 250*\n", router)
    assert seen == [("async@example.org",)]


def test_large_message_is_spooled(router: Router[Any], boxes: dict[str, Mailbox]) -> None:
    body = "".join(f"C: line {i} " + "x" * 60 + "\n" for i in range(200))
    run_transcript(
        SEND
        + "C: RCPT TO:<bob@example.com>\nS: 250*\n"
        + "C: DATA\nS: 354*\n"
        + body
        + "C: .\nS: 250 2.0.0 *\n",
        router,
        policy=Policy(spool_threshold=1000),
    )
    envelope = boxes["bob"].envelopes[0]
    assert not isinstance(envelope.content, bytes)
    data = envelope.as_bytes()
    assert data.count(b"\r\n") == 200 and data.startswith(b"line 0 ")


def test_rset_forgets_recipients(router: Router[Any], boxes: dict[str, Mailbox]) -> None:
    run_transcript(
        SEND
        + "C: RCPT TO:<bob@example.com>\nS: 250*\nC: RSET\nS: 250*\n"
        + "C: MAIL FROM:<a@b.example>\nS: 250*\nC: RCPT TO:<sales@x.example>\nS: 250*\n"
        + DATA
        + "S: 250*\n",
        router,
    )
    assert boxes["bob"].envelopes == [] and len(boxes["sales"].envelopes) == 1


# (id, how the first transaction ends, whether bob got it)
ENDINGS = [
    ("delivered", DATA + "S: 250*\n", True),
    ("rset", "C: RSET\nS: 250*\n", False),
    ("ehlo", "C: EHLO again.example\nS: 250*\n", False),
    ("data-too-big", "C: DATA\nS: 354*\nC: " + "y" * 200 + "\nC: .\nS: 552 5.3.4 *\n", False),
    ("bdat-too-big", "C: BDAT 300\nC: " + "y" * 298 + "\nS: 552 5.3.4 *\n", False),
    ("bdat-last", "C: BDAT 7 LAST\nC: hello\nS: 250*\n", True),
]


@pytest.mark.parametrize(
    ("ending", "delivered"), [e[1:] for e in ENDINGS], ids=[e[0] for e in ENDINGS]
)
def test_every_end_of_a_transaction_forgets_its_envelope(
    router: Router[Any], boxes: dict[str, Mailbox], ending: str, delivered: bool
) -> None:
    """The session forgets sender, recipients and content exactly when the engine ends the
    transaction, however it ends: the next message carries nothing of the one before."""
    run_transcript(
        SEND
        + "C: RCPT TO:<bob@example.com>\nS: 250*\n"
        + ending
        + "C: MAIL FROM:<a@b.example>\nS: 250*\nC: RCPT TO:<sales@x.example>\nS: 250*\n"
        + DATA
        + "S: 250*\n",
        router,
        config=ServerConfig(max_message_size=100),
    )
    assert len(boxes["bob"].envelopes) == delivered
    [envelope] = boxes["sales"].envelopes
    assert (envelope.mail_from, envelope.rcpt_tos) == ("a@b.example", ("sales@x.example",))
    assert envelope.as_bytes() == b"Subject: hi\r\n\r\nhello\r\n"


def test_transcript_mismatch_is_reported(router: Router[Any]) -> None:
    with pytest.raises(TranscriptError, match="line 2"):
        run_transcript("S: 220 *\nS: 250 *\n", router)
    with pytest.raises(TranscriptError, match="expected '550"):
        run_transcript(SEND + "C: RCPT TO:<bob@example.com>\nS: 550 *\n", router)


GROUPING_CASES = [
    # recipients in RCPT order -> each handler call (in call order): mailbox, its recipients
    (["carol@example.com"], [("example", ("carol@example.com",))]),
    (
        ["carol@example.com", "dave@example.com", "erin@example.com"],
        [("example", ("carol@example.com", "dave@example.com", "erin@example.com"))],
    ),
    (
        ["carol@example.com", "sales@x.example", "dave@example.com"],
        [
            ("example", ("carol@example.com", "dave@example.com")),
            ("sales", ("sales@x.example",)),
        ],
    ),
    (
        ["sales@x.example", "bob@example.com", "sales@y.example"],
        [("sales", ("sales@x.example", "sales@y.example")), ("bob", ("bob@example.com",))],
    ),
]


@pytest.mark.parametrize(("recipients", "calls"), GROUPING_CASES)
def test_each_handler_is_called_once_with_its_recipients_in_order(
    router: Router[Any],
    boxes: dict[str, Mailbox],
    recipients: list[str],
    calls: list[tuple[str, tuple[str, ...]]],
) -> None:
    """One handler (the common case, taken by a shortcut) or several: one call per handler,
    in the order of each one's first recipient, its recipients in RCPT order."""
    rcpts = "".join(f"C: RCPT TO:<{address}>\nS: 250 2.1.5 *\n" for address in recipients)
    result = run_transcript(SEND + rcpts + DATA + "S: 250 2.0.0 *\n", router)
    called = [
        (name, envelope.rcpt_tos)
        for envelope in result.deliveries
        for name, box in boxes.items()
        if any(envelope is got for got in box.envelopes)
    ]
    assert called == calls
    assert [e.transaction_id for e in result.deliveries] == ["T1-1"] * len(calls)
