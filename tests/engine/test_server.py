"""ServerConnection against the RFCs: a table of command -> reply, then whole transcripts."""

from __future__ import annotations

import base64

import pytest

from smtp_core import (
    NEED_DATA,
    AuthChallenge,
    AuthCredentials,
    BdatChunk,
    ConnectionClosed,
    Credentials,
    DataChunk,
    EndOfData,
    Event,
    Hello,
    InvalidCommand,
    LocalProtocolError,
    LoginMechanism,
    MailFrom,
    Noop,
    PlainMechanism,
    RcptTo,
    RemoteProtocolError,
    Reply,
    ServerConfig,
    ServerConnection,
    ServerState,
    StartTLS,
)
from smtp_core._server import _WIRE, _WIRE_MAX, _format, _render
from tests.helpers import Driver, assert_same_in_any_split

AUTH = ServerConfig(auth_mechanisms=(PlainMechanism, LoginMechanism))
AUTH_PLAINTEXT = ServerConfig(auth_mechanisms=(PlainMechanism,), auth_require_tls=False)
TLS_OFFERED = ServerConfig(starttls=True)
LMTP = ServerConfig(lmtp=True)
SMALL = ServerConfig(max_message_size=100)
NO_EXT = ServerConfig(
    chunking=False, dsn=False, eightbitmime=False, smtputf8=False, requiretls=False
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


GOOD_PLAIN = b64(b"\0user\0secret")


EHLO = "EHLO client.example"
MAIL = "MAIL FROM:<a@example.org>"
RCPT = "RCPT TO:<b@example.net>"
# (id, config, tls, lines before, the command, expected code, expected enhanced code)
TABLE: list[tuple[str, ServerConfig | None, bool, list[str], str, int, str | None]] = [
    # RFC 5321 §4.1.1.1 HELO/EHLO
    ("ehlo", None, False, [], EHLO, 250, None),
    ("helo", None, False, [], "HELO client.example", 250, None),
    ("ehlo lower case", None, False, [], "ehlo client.example", 250, None),
    ("ehlo without name", None, False, [], "EHLO", 501, "5.5.4"),
    ("helo without name", None, False, [], "HELO ", 501, "5.5.4"),
    ("ehlo twice", None, False, [EHLO], EHLO, 250, None),
    ("ehlo inside transaction", None, False, [EHLO, MAIL], EHLO, 250, None),
    ("lhlo in smtp", None, False, [], "LHLO client.example", 500, "5.5.1"),
    ("ehlo in lmtp", LMTP, False, [], EHLO, 500, "5.5.1"),
    ("lhlo in lmtp", LMTP, False, [], "LHLO client.example", 250, None),
    # sequence (RFC 5321 §4.1.4, §3.3)
    ("mail before ehlo", None, False, [], MAIL, 503, "5.5.1"),
    ("rcpt before mail", None, False, [EHLO], RCPT, 503, "5.5.1"),
    ("data before mail", None, False, [EHLO], "DATA", 503, "5.5.1"),
    ("data without recipient", None, False, [EHLO, MAIL], "DATA", 554, "5.5.1"),
    ("nested mail", None, False, [EHLO, MAIL], MAIL, 503, "5.5.1"),
    ("data with argument", None, False, [EHLO, MAIL, RCPT], "DATA x", 501, "5.5.4"),
    ("data", None, False, [EHLO, MAIL, RCPT], "DATA", 354, None),
    # other commands (RFC 5321 §4.1.1.5-10, §3.5.3)
    ("unknown command", None, False, [EHLO], "FROB", 500, "5.5.1"),
    ("empty line", None, False, [EHLO], "", 500, "5.5.1"),
    ("noop", None, False, [], "NOOP", 250, "2.0.0"),
    ("noop with argument", None, False, [], "NOOP hello", 250, "2.0.0"),
    ("rset", None, False, [EHLO, MAIL], "RSET", 250, "2.0.0"),
    ("rset with argument", None, False, [EHLO], "RSET x", 501, "5.5.4"),
    ("vrfy", None, False, [EHLO], "VRFY bob", 252, "2.5.2"),
    ("vrfy without argument", None, False, [EHLO], "VRFY", 501, "5.5.4"),
    ("expn", None, False, [EHLO], "EXPN staff", 502, "5.5.1"),
    ("help", None, False, [], "HELP", 214, "2.0.0"),
    ("quit", None, False, [EHLO], "QUIT", 221, "2.0.0"),
    ("quit with argument", None, False, [EHLO], "QUIT now", 501, "5.5.4"),
    ("control character", None, False, [EHLO], "NOOP\x00", 500, "5.5.2"),
    ("bare CR inside a line", None, False, [EHLO], "NOOP\rMAIL FROM:<a@b>", 500, "5.5.2"),
    # MAIL / RCPT addresses and parameters (RFC 5321 §4.1.2, 1870, 6152, 6531, 3461)
    ("mail", None, False, [EHLO], MAIL, 250, "2.1.0"),
    ("mail null path", None, False, [EHLO], "MAIL FROM:<>", 250, "2.1.0"),
    ("mail without brackets", None, False, [EHLO], "MAIL FROM:a@example.org", 501, "5.1.7"),
    ("mail syntax", None, False, [EHLO], "MAIL <a@example.org>", 501, "5.5.4"),
    ("mail size ok", None, False, [EHLO], MAIL + " SIZE=1000", 250, "2.1.0"),
    ("mail size too big", SMALL, False, [EHLO], MAIL + " SIZE=1000", 552, "5.3.4"),
    ("mail unknown param", None, False, [EHLO], MAIL + " FOO=BAR", 555, "5.5.4"),
    ("mail param after helo", None, False, ["HELO c"], MAIL + " SIZE=10", 555, "5.5.4"),
    ("mail 8bitmime", None, False, [EHLO], MAIL + " BODY=8BITMIME", 250, "2.1.0"),
    ("mail 8bitmime off", NO_EXT, False, [EHLO], MAIL + " BODY=8BITMIME", 555, "5.5.4"),
    ("mail utf8 without smtputf8", None, False, [EHLO], "MAIL FROM:<jö@example.org>", 553, "5.6.7"),
    ("mail utf8", None, False, [EHLO], "MAIL FROM:<jö@example.org> SMTPUTF8", 250, "2.1.0"),
    ("rcpt", None, False, [EHLO, MAIL], RCPT, 250, "2.1.5"),
    ("rcpt null", None, False, [EHLO, MAIL], "RCPT TO:<>", 501, "5.1.3"),
    ("rcpt postmaster", None, False, [EHLO, MAIL], "RCPT TO:<Postmaster>", 250, "2.1.5"),
    ("rcpt utf8 without smtputf8", None, False, [EHLO, MAIL], "RCPT TO:<jö@x.org>", 553, "5.6.7"),
    ("rcpt utf8", None, False, [EHLO, MAIL + " SMTPUTF8"], "RCPT TO:<jö@x.org>", 250, "2.1.5"),
    (
        "rcpt dsn",
        None,
        False,
        [EHLO, MAIL],
        RCPT + " NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@x.net",
        250,
        "2.1.5",
    ),
    ("rcpt dsn off", NO_EXT, False, [EHLO, MAIL], RCPT + " NOTIFY=NEVER", 555, "5.5.4"),
    ("rcpt syntax", None, False, [EHLO, MAIL], "RCPT <b@x>", 501, "5.5.4"),
    ("invalid utf8", None, False, [EHLO], "MAIL FROM:<\udcff@x>", 500, "5.5.2"),
    # STARTTLS (RFC 3207)
    ("starttls not offered", None, False, [EHLO], "STARTTLS", 502, "5.5.1"),
    ("starttls", TLS_OFFERED, False, [EHLO], "STARTTLS", 220, "2.0.0"),
    ("starttls before ehlo", TLS_OFFERED, False, [], "STARTTLS", 220, "2.0.0"),
    ("starttls with argument", TLS_OFFERED, False, [EHLO], "STARTTLS x", 501, "5.5.4"),
    ("starttls inside tls", TLS_OFFERED, True, [EHLO], "STARTTLS", 503, "5.5.1"),
    ("starttls in transaction", TLS_OFFERED, False, [EHLO, MAIL], "STARTTLS", 503, "5.5.1"),
    # AUTH (RFC 4954)
    ("auth not offered", None, True, [EHLO], "AUTH PLAIN", 502, "5.5.1"),
    ("auth over plaintext", AUTH, False, [EHLO], "AUTH PLAIN", 538, "5.7.11"),
    ("auth after helo", AUTH, True, ["HELO c"], "AUTH PLAIN", 503, "5.5.1"),
    ("auth before ehlo", AUTH, True, [], "AUTH PLAIN", 503, "5.5.1"),
    ("auth unknown mechanism", AUTH, True, [EHLO], "AUTH CRAM-MD5", 504, "5.5.4"),
    ("auth bad base64", AUTH, True, [EHLO], "AUTH PLAIN !!!", 501, "5.5.2"),
    ("auth malformed plain", AUTH, True, [EHLO], "AUTH PLAIN " + b64(b"nonul"), 501, "5.5.2"),
    ("auth plain challenge", AUTH, True, [EHLO], "AUTH PLAIN", 334, None),
    (
        "auth plain refused by default",
        AUTH,
        True,
        [EHLO],
        "AUTH PLAIN " + b64(b"\0u\0p"),
        535,
        "5.7.8",
    ),
    ("auth in transaction", AUTH, True, [EHLO, MAIL], "AUTH PLAIN", 503, "5.5.1"),
    ("auth plaintext allowed", AUTH_PLAINTEXT, False, [EHLO], "AUTH PLAIN", 334, None),
    # BDAT (RFC 3030)
    ("bdat before mail", None, False, [EHLO], "BDAT 0 LAST", 503, "5.5.1"),
    ("bdat without recipient", None, False, [EHLO, MAIL], "BDAT 0 LAST", 554, "5.5.1"),
    ("bdat not offered", NO_EXT, False, [EHLO, MAIL, RCPT], "BDAT 0 LAST", 502, "5.5.1"),
    ("bdat last", None, False, [EHLO, MAIL, RCPT], "BDAT 0 LAST", 250, "2.0.0"),
    ("bdat", None, False, [EHLO, MAIL, RCPT], "BDAT 0", 250, "2.0.0"),
    ("mail between chunks", None, False, [EHLO, MAIL, RCPT, "BDAT 0"], MAIL, 503, "5.5.1"),
    ("data between chunks", None, False, [EHLO, MAIL, RCPT, "BDAT 0"], "DATA", 503, "5.5.1"),
    (
        "data with binarymime",
        None,
        False,
        [EHLO, MAIL + " BODY=BINARYMIME", RCPT],
        "DATA",
        503,
        "5.5.1",
    ),
    # line length (RFC 5321 §4.5.3.1.4)
    ("command too long", None, False, [EHLO], "NOOP " + "x" * 2000, 500, "5.5.2"),
]


@pytest.mark.parametrize(
    ("config", "tls", "before", "command", "code", "enhanced"),
    [case[1:] for case in TABLE],
    ids=[case[0] for case in TABLE],
)
def test_reply_table(
    config: ServerConfig | None,
    tls: bool,
    before: list[str],
    command: str,
    code: int,
    enhanced: str | None,
) -> None:
    setup = "".join(line + "\r\n" for line in before).encode()
    driver = Driver(config, tls=tls)
    driver.pump()
    if setup:
        driver.feed(setup)
    assert len(driver.replies()) == len(before), "setup"
    assert all(200 <= c < 400 for c, _ in driver.replies()), driver.output
    done = len(driver.replies())
    # every case also holds when fed byte by byte
    data = command.encode("utf-8", "surrogateescape") + b"\r\n"
    for byte in data:
        driver.feed(bytes([byte]))
    assert driver.replies()[done:] == [(code, enhanced)]


@pytest.mark.parametrize(
    ("config", "command", "reply"),
    [
        (LMTP, EHLO, b"500 5.5.1 This is an LMTP server: use LHLO\r\n"),
        (LMTP, "helo client.example", b"500 5.5.1 This is an LMTP server: use LHLO\r\n"),
        (None, "LHLO c", b"500 5.5.1 This is an SMTP server, not LMTP: use EHLO or HELO\r\n"),
    ],
    ids=["ehlo-to-lmtp", "helo-to-lmtp", "lhlo-to-smtp"],
)
def test_greeting_of_the_other_protocol_names_the_right_one(
    config: ServerConfig | None, command: str, reply: bytes
) -> None:
    """A client speaking SMTP to an LMTP server (or the reverse) learns which greeting to use."""
    driver = Driver(config)
    driver.pump()
    driver.output.clear()
    driver.feed(command.encode() + b"\r\n")
    assert bytes(driver.output) == reply


def test_ehlo_lists_capabilities_from_config() -> None:
    driver = Driver(ServerConfig(hostname="mx.example", starttls=True, max_message_size=1000))
    driver.pump()
    (hello,) = driver.feed(b"EHLO c\r\n")
    assert isinstance(hello, Hello) and hello.extended
    assert hello.default_reply.lines == (
        "mx.example Hello c",
        "PIPELINING",
        "SIZE 1000",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "BINARYMIME",
        "DSN",
        "STARTTLS",
    )
    bare = Driver(
        NO_EXT.__class__(
            pipelining=False,
            enhanced_status_codes=False,
            chunking=False,
            dsn=False,
            eightbitmime=False,
            smtputf8=False,
            max_message_size=None,
        )
    )
    bare.pump()
    (hello,) = bare.feed(b"EHLO c\r\n")
    assert isinstance(hello, Hello)
    assert hello.default_reply.lines == ("localhost Hello c", "SIZE")


def test_auth_offered_only_inside_tls_unless_allowed() -> None:
    for config, tls, offered in [
        (AUTH, False, False),
        (AUTH, True, True),
        (AUTH_PLAINTEXT, False, True),
    ]:
        driver = Driver(config, tls=tls)
        driver.pump()
        (hello,) = driver.feed(b"EHLO c\r\n")
        assert isinstance(hello, Hello)
        assert any(line.startswith("AUTH ") for line in hello.default_reply.lines) == offered


def test_enhanced_codes_dropped_when_not_offered() -> None:
    driver = Driver(ServerConfig(enhanced_status_codes=False))
    driver.pump()
    driver.feed(b"NOOP\r\n")
    assert bytes(driver.output).endswith(b"\r\n250 OK\r\n")


# --- transcripts ----------------------------------------------------------------------------


def test_full_transaction_in_any_split() -> None:
    script = (
        b"EHLO client.example\r\nMAIL FROM:<a@example.org> SIZE=40\r\n"
        b"RCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n"
        b"Subject: hi\r\n\r\n..leading dot\r\nbare\nline\r\n.\r\nQUIT\r\n"
    )
    driver = assert_same_in_any_split(script)
    kinds = [type(e).__name__ for e in driver.events]
    assert kinds == [
        "Hello",
        "MailFrom",
        "RcptTo",
        "RcptTo",
        "StartData",
        "DataChunk",
        "EndOfData",
        "Quit",
        "ConnectionClosed",
    ]
    chunk = driver.events[5]
    assert isinstance(chunk, DataChunk)
    assert chunk.data == b"Subject: hi\r\n\r\n.leading dot\r\nbare\r\nline\r\n"
    assert [c for c, _ in driver.replies()] == [250, 250, 250, 250, 354, 250, 221]


def test_pipelined_transactions_replies_in_order() -> None:
    one = b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n"
    body = b"body\r\n.\r\n"
    script = b"EHLO c\r\n" + (one + body) * 50 + b"QUIT\r\n"
    driver = assert_same_in_any_split(script)
    codes = [c for c, _ in driver.replies()]
    assert codes == [250] + [250, 250, 354, 250] * 50 + [221]
    assert sum(isinstance(e, EndOfData) for e in driver.events) == 50


def test_paused_until_the_reply_is_sent() -> None:
    conn = ServerConnection()
    assert conn.next_event() is conn.next_event()  # PAUSED: the greeting is due
    conn.send(Reply(220, "hi"))
    conn.receive_data(b"NOOP\r\nNOOP\r\n")
    first = conn.next_event()
    assert type(first).__name__ == "Noop"
    from smtp_core import PAUSED

    assert conn.next_event() is PAUSED
    conn.send(Reply(250, "OK", "2.0.0"))
    assert type(conn.next_event()).__name__ == "Noop"


def test_reply_must_fit_the_command() -> None:
    conn = ServerConnection()
    with pytest.raises(LocalProtocolError):
        conn.send(Reply(250, "not a greeting"))
    conn.send(Reply(220, "hi"))
    with pytest.raises(LocalProtocolError):
        conn.send(Reply(250, "nothing asked"))
    conn.receive_data(b"EHLO c\r\nMAIL FROM:<a@b.org>\r\n")
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send(Reply(354, "not for EHLO"))
    conn.send(Reply(250, "hi"))
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send(Reply(250, "two\r\nlines"))
    conn.send(Reply(451, "try later", "4.3.0"))
    assert conn.state is ServerState.READY  # a refused MAIL opens no transaction


def test_invalid_command_gets_no_success() -> None:
    conn = ServerConnection()
    conn.send(Reply(220, "hi"))
    conn.receive_data(b"FROB\r\n")
    assert isinstance(conn.next_event(), InvalidCommand)
    with pytest.raises(LocalProtocolError):
        conn.send(Reply(250, "sure"))
    conn.send(Reply(500, "no", "5.5.1"))


def test_421_closes_at_any_time() -> None:
    conn = ServerConnection()
    conn.send(Reply(220, "hi"))
    assert conn.send(Reply(421, "Timeout", "4.4.2")) == b"421 4.4.2 Timeout\r\n"
    assert conn.state is ServerState.CLOSED
    assert isinstance(conn.next_event(), ConnectionClosed)


def test_554_greeting_serves_only_quit() -> None:
    driver = Driver(greeting=None)
    driver.output += driver.conn.send(Reply(554, "No service", "5.7.1"))
    driver.feed(b"EHLO c\r\nMAIL FROM:<a@b>\r\nQUIT\r\n")
    assert [c for c, _ in driver.replies()] == [554, 503, 503, 221]


def test_starttls_discards_pipelined_plaintext() -> None:
    conn = ServerConnection(TLS_OFFERED)
    conn.send(Reply(220, "hi"))
    conn.receive_data(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@x.org>\r\nRCPT TO:<v@y.org>\r\n")
    assert isinstance(conn.next_event(), Hello)
    conn.send(Reply(250, "hi"))
    assert isinstance(conn.next_event(), StartTLS)
    conn.send(Reply(220, "go ahead", "2.0.0"))
    assert conn.plaintext_discarded == len(b"MAIL FROM:<evil@x.org>\r\nRCPT TO:<v@y.org>\r\n")
    assert conn.tls_active and conn.hello is None and conn.state is ServerState.INITIAL
    assert conn.next_event() is NEED_DATA  # the injected commands are gone, not merely counted
    conn.receive_data(b"MAIL FROM:<a@b.org>\r\n")  # EHLO must come again
    event = conn.next_event()
    assert isinstance(event, InvalidCommand) and event.default_reply.code == 503
    assert event.line == b"MAIL FROM:<a@b.org>"
    conn.send(event.default_reply)
    conn.receive_data(b"EHLO c2\r\n")
    hello = conn.next_event()
    assert isinstance(hello, Hello) and hello.name == "c2"
    conn.send(hello.default_reply)
    assert conn.next_event() is NEED_DATA  # and nothing of the plaintext came back


def test_starttls_forgets_ehlo_and_offers_auth_after() -> None:
    config = ServerConfig(starttls=True, auth_mechanisms=(PlainMechanism,))
    driver = Driver(config)
    driver.pump()
    first = driver.feed(b"EHLO c\r\n")[0]
    assert isinstance(first, Hello) and "STARTTLS" in first.default_reply.lines
    assert not any(line.startswith("AUTH") for line in first.default_reply.lines)
    driver.feed(b"STARTTLS\r\n")
    second = driver.feed(b"EHLO c\r\n")[0]
    assert isinstance(second, Hello) and "STARTTLS" not in second.default_reply.lines
    assert "AUTH PLAIN" in second.default_reply.lines and "REQUIRETLS" in second.default_reply.lines


def accept_auth(event: Event) -> Reply:
    if isinstance(event, AuthCredentials):
        ok = event.credentials == Credentials("user", "secret")
        return Reply(235, "OK", "2.7.0") if ok else event.default_reply
    return event.default_reply  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("exchange", "codes"),
    [
        (f"AUTH PLAIN {GOOD_PLAIN}\r\n", [235]),
        (f"AUTH PLAIN\r\n{GOOD_PLAIN}\r\n", [334, 235]),
        ("AUTH PLAIN =\r\n", [501]),
        (f"AUTH LOGIN\r\n{b64(b'user')}\r\n{b64(b'secret')}\r\n", [334, 334, 235]),
        (f"AUTH LOGIN {b64(b'user')}\r\n{b64(b'secret')}\r\n", [334, 235]),
        (f"AUTH LOGIN\r\n{b64(b'user')}\r\n{b64(b'wrong')}\r\n", [334, 334, 535]),
        ("AUTH LOGIN\r\n*\r\n", [334, 501]),
        ("AUTH PLAIN\r\n*\r\n", [334, 501]),
        ("AUTH PLAIN\r\n%%%\r\n", [334, 501]),
        (f"AUTH PLAIN {GOOD_PLAIN}\r\nAUTH PLAIN\r\n", [235, 503]),
        ("AUTH LOGIN\r\n" + "A" * 13000 + "\r\n", [334, 500]),
    ],
    ids=[
        "plain initial",
        "plain challenge",
        "plain empty",
        "login",
        "login initial",
        "login wrong password",
        "login cancel",
        "plain cancel",
        "bad base64",
        "auth twice",
        "response too long",
    ],
)
def test_auth_exchanges(exchange: str, codes: list[int]) -> None:
    script = b"EHLO c\r\n" + exchange.encode() + b"NOOP\r\n"
    driver = assert_same_in_any_split(script, config=AUTH, tls=True, answer=accept_auth)
    assert [c for c, _ in driver.replies()] == [250, *codes, 250]
    assert driver.conn.authenticated == (codes[-1] == 235 or codes == [235, 503])


def test_sasl_secrets_never_in_invalid_command_lines() -> None:
    driver = Driver(AUTH, tls=True)
    driver.pump()
    events = driver.feed(b"EHLO c\r\nAUTH PLAIN\r\nc2VjcmV0!!\r\nAUTH PLAIN c2VjcmV0!!\r\n")
    for event in events:
        if isinstance(event, InvalidCommand):
            assert b"c2VjcmV0" not in event.line


def test_bdat_chunks_and_size() -> None:
    script = (
        b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\n"
        b"BDAT 6\r\nhello\nBDAT 8 LAST\r\n.\r\nworldQUIT\r\n"
    )
    driver = assert_same_in_any_split(script)
    data = b"".join(e.data for e in driver.events if isinstance(e, DataChunk))
    assert data == b"hello\n.\r\nworld"  # BDAT content is taken verbatim
    chunks = [e for e in driver.events if isinstance(e, BdatChunk)]
    assert [(c.size, c.last) for c in chunks] == [(6, False), (14, True)]
    assert [c for c, _ in driver.replies()] == [250, 250, 250, 250, 250, 221]


def test_bdat_refused_still_consumes_its_chunk() -> None:
    script = b"EHLO c\r\nBDAT 22\r\nMAIL FROM:<evil@x.org>NOOP\r\n"
    driver = assert_same_in_any_split(script)
    assert [c for c, _ in driver.replies()] == [250, 503, 250]
    assert not any(isinstance(e, MailFrom) for e in driver.events)


def test_bdat_oversize_refused_and_transaction_ends() -> None:
    script = (
        b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\n"
        b"BDAT 60\r\n" + b"x" * 60 + b"BDAT 60 LAST\r\n" + b"y" * 60 + b"NOOP\r\n"
    )
    driver = assert_same_in_any_split(script, config=SMALL)
    assert driver.replies() == [
        (250, None),
        (250, "2.1.0"),
        (250, "2.1.5"),
        (250, "2.0.0"),
        (552, "5.3.4"),
        (250, "2.0.0"),
    ]
    delivered = b"".join(e.data for e in driver.events if isinstance(e, DataChunk))
    assert len(delivered) <= 100


def test_bdat_without_size_is_fatal() -> None:
    conn = ServerConnection()
    conn.send(Reply(220, "hi"))
    conn.receive_data(b"EHLO c\r\nBDAT lots\r\n")
    conn.send(Reply(250, "hi")) if isinstance(conn.next_event(), Hello) else None
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.reply_hint is not None and info.value.reply_hint.code == 501


def test_oversize_data_is_refused_after_the_terminator() -> None:
    script = (
        b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n"
        + b"x" * 70
        + b"\r\n"
        + b"y" * 70
        + b"\r\n.\r\nNOOP\r\n"
    )
    driver = assert_same_in_any_split(script, config=SMALL)
    end = next(e for e in driver.events if isinstance(e, EndOfData))
    assert end.reject is not None and end.reject.code == 552
    assert [c for c, _ in driver.replies()] == [250, 250, 250, 354, 552, 250]
    assert driver.conn.state is ServerState.READY


def test_engine_refuses_success_for_a_rejected_message() -> None:
    driver = Driver(
        SMALL,
        answer=lambda e: Reply(250, "OK", "2.0.0") if isinstance(e, EndOfData) else e.default_reply,
    )  # type: ignore[union-attr]
    driver.pump()
    with pytest.raises(LocalProtocolError):
        driver.feed(
            b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n"
            + b"x" * 200
            + b"\r\n.\r\n"
        )


def test_lmtp_one_reply_per_recipient() -> None:
    answers = iter(
        [Reply(250, "ok b", "2.1.5"), Reply(452, "full", "4.2.2"), Reply(250, "ok d", "2.1.5")]
    )

    def answer(event: Event) -> Reply:
        return next(answers) if isinstance(event, EndOfData) else event.default_reply  # type: ignore[union-attr]

    conn = ServerConnection(LMTP)
    out = conn.send(Reply(220, "lmtp"))
    conn.receive_data(
        b"LHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nRCPT TO:<c@y.org>\r\n"
        b"RCPT TO:<d@y.org>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n"
    )
    while True:
        event = conn.next_event()
        if isinstance(event, ConnectionClosed):
            break
        if isinstance(event, EndOfData):
            assert conn.pending_replies == 3
            for _ in range(3):
                out += conn.send(answer(event))
        elif hasattr(event, "default_reply"):
            out += conn.send(event.default_reply)  # type: ignore[union-attr]
    codes = [line[:3] for line in out.split(b"\r\n") if line]
    assert codes[-4:] == [b"250", b"452", b"250", b"221"]


def test_over_long_line_is_skipped_with_bounded_memory() -> None:
    conn = ServerConnection()
    conn.send(Reply(220, "hi"))
    limit = conn._line_limit  # a command line and the room its extension parameters need
    for _ in range(1000):  # 100 MB without a line end
        conn.receive_data(b"x" * 100_000)
        assert conn.next_event() is NEED_DATA
        assert len(conn._buffer) <= limit  # dropped as it comes, not kept to the line's end
    conn.receive_data(b"\r\nNOOP\r\n")
    event = conn.next_event()
    assert isinstance(event, InvalidCommand) and event.default_reply.code == 500
    conn.send(event.default_reply)
    assert type(conn.next_event()).__name__ == "Noop"


def test_byte_at_a_time_is_linear() -> None:
    conn = ServerConnection()
    conn.send(Reply(220, "hi"))
    line = b"NOOP " + b"x" * 400 + b"\r\n"
    scanned = []
    for byte in line[:-2]:
        conn.receive_data(bytes([byte]))
        conn.next_event()
        scanned.append(conn._scanned)
    assert scanned == list(range(1, len(line) - 1))  # never rescans from the start


def test_bare_lf_policy_for_commands() -> None:
    normalize = Driver()
    normalize.pump()
    normalize.feed(b"EHLO c\nNOOP\n")
    assert [c for c, _ in normalize.replies()] == [250, 250]
    strict = Driver(ServerConfig(bare_lf="reject"))
    strict.pump()
    strict.feed(b"EHLO c\nNOOP\r\n")
    assert strict.replies() == [(500, "5.5.2"), (250, "2.0.0")]


def test_bare_lf_reject_in_data_delivers_nothing() -> None:
    script = b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\na\nb\r\n.\r\nNOOP\r\n"
    driver = assert_same_in_any_split(script, config=ServerConfig(bare_lf="reject"))
    assert not any(isinstance(e, DataChunk) for e in driver.events)
    assert [c for c, _ in driver.replies()] == [250, 250, 250, 354, 554, 250]


def test_client_vanishing_mid_data() -> None:
    driver = Driver()
    driver.pump()
    driver.feed(b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\npartial")
    events = driver.feed(b"")
    assert isinstance(events[-1], ConnectionClosed)
    assert not any(isinstance(e, EndOfData) for e in driver.events)


@pytest.mark.parametrize(
    ("script", "state", "timeout"),
    [
        (b"", ServerState.INITIAL, 60.0),
        (b"NOOP\r\n", ServerState.INITIAL, 60.0),
        (b"EHLO c\r\n", ServerState.READY, 300.0),
        (
            b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n",
            ServerState.DATA,
            180.0,
        ),
        (
            b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nBDAT 10\r\nabc",
            ServerState.RCPT,
            180.0,
        ),
    ],
    ids=["first command", "first command after noop", "command", "data", "bdat chunk"],
)
def test_timeout_that_applies(script: bytes, state: ServerState, timeout: float) -> None:
    driver = Driver()
    driver.pump()
    if script:
        driver.feed(script)
    assert driver.conn.state is state and driver.conn.timeout == timeout


def test_events_of_a_transaction() -> None:
    driver = Driver()
    driver.pump()
    events = driver.feed(
        b"EHLO c\r\nMAIL FROM:<@relay.example:a@x.org> BODY=8BITMIME SIZE=5\r\n"
        b'RCPT TO:<"john doe"@y.org>\r\n'
    )
    mail, rcpt = events[1], events[2]
    assert isinstance(mail, MailFrom) and mail.address == "a@x.org"
    assert mail.params.body == "8BITMIME" and mail.params.size == 5
    assert isinstance(rcpt, RcptTo) and rcpt.address == '"john doe"@y.org'


def test_auth_challenge_event_carries_334() -> None:
    driver = Driver(AUTH, tls=True)
    driver.pump()
    events = driver.feed(b"EHLO c\r\nAUTH LOGIN\r\n")
    challenge = events[-1]
    assert isinstance(challenge, AuthChallenge)
    assert challenge.default_reply == Reply(334, b64(b"Username:"))


# --- reply bytes, cached by the reply's identity (issue 15) -------------------------------

FORMAT_CASES = [
    (Reply(250, "OK", "2.0.0"), True, b"250 2.0.0 OK\r\n"),
    (Reply(250, "OK", "2.0.0"), False, b"250 OK\r\n"),
    (
        Reply(250, ("mx Hello c", "PIPELINING", "SIZE")),
        True,
        b"250-mx Hello c\r\n250-PIPELINING\r\n250 SIZE\r\n",
    ),
    (Reply(334, ""), True, b"334 \r\n"),
]


@pytest.mark.parametrize(("reply", "enhanced", "wire"), FORMAT_CASES)
def test_reply_bytes_are_the_same_from_the_cache(reply: Reply, enhanced: bool, wire: bytes) -> None:
    """The first format renders; later ones (the same object, or an equal one made anew, as
    EHLO's reply is) give the very same bytes; the other enhanced-codes setting has its own."""
    assert _format(reply, enhanced) == wire
    assert _format(reply, enhanced) == wire
    assert _format(Reply(reply.code, reply.lines, reply.enhanced), enhanced) == wire
    assert _format(reply, not enhanced) == _render(reply, not enhanced)


@pytest.mark.parametrize(
    "reply", [Reply(250, "a\r\nb"), Reply(199, "too low"), Reply(600, "too high")], ids=repr
)
def test_a_bad_reply_is_refused_every_time(reply: Reply) -> None:
    """Nothing is cached for a reply that fails its checks."""
    for _ in range(2):
        with pytest.raises(LocalProtocolError):
            _format(reply, True)


def test_reply_cache_stays_bounded() -> None:
    """Replies made per command (EHLO's, BDAT's) do not grow the cache without end."""
    replies = [Reply(250, f"{n} octets received", "2.0.0") for n in range(3 * _WIRE_MAX)]
    for reply in replies:
        assert _format(reply, True) == f"250 2.0.0 {reply.lines[0]}\r\n".encode()
    assert all(len(table) <= _WIRE_MAX for table in _WIRE)


def test_polling_an_empty_buffer_keeps_skipping_an_over_long_line() -> None:
    """next_event() on an empty buffer answers NEED_DATA at once (the end of every round);
    an over-long line being skipped across such polls is still refused once, at its end."""
    conn = ServerConnection()
    conn.send(Reply(220, "mx"))
    conn.receive_data(b"EHLO c\r\n")
    hello = conn.next_event()
    assert isinstance(hello, Hello)
    conn.send(hello.default_reply)
    for piece in (b"NOOP " + b"x" * 2000, b"y" * 10):
        assert conn.next_event() is NEED_DATA  # the buffer is empty
        conn.receive_data(piece)
        assert conn.next_event() is NEED_DATA  # skipping: the piece is dropped
    conn.receive_data(b"zz\r\nNOOP\r\n")
    refused = conn.next_event()
    assert isinstance(refused, InvalidCommand) and refused.line.startswith(b"NOOP xxx")
    assert conn.send(refused.default_reply) == b"500 5.5.2 Line too long\r\n"
    assert conn.next_event() == Noop()
