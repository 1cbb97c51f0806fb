"""The client engine driven by scripted server bytes: replies, guards, pipelining, LMTP, SASL."""

# mypy narrows ``conn.state`` after one comparison and cannot know a reply moved it since.
# mypy: disable-error-code="comparison-overlap"

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable, Sequence

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_core._client import (
    ClientConnection,
    ClientState,
    Command,
    Extensions,
    Response,
)
from smtp_core._client_session import ClientSession
from smtp_core._errors import LocalProtocolError, RemoteProtocolError
from smtp_core._events import NEED_DATA, ConnectionClosed, MailParams, RcptParams, Reply
from smtp_core._sasl import ClientMechanism, LoginClient, PlainClient, XOAuth2Client

S = ClientState
C = Command
# the session layer's choices, written for any ClientConnection
write_envelope = ClientSession.write_envelope
mail_params_for = ClientSession.mail_params_for

FULL = (
    "PIPELINING",
    "SIZE 1000000",
    "8BITMIME",
    "SMTPUTF8",
    "CHUNKING",
    "BINARYMIME",
    "DSN",
    "STARTTLS",
    "REQUIRETLS",
    "ENHANCEDSTATUSCODES",
    "AUTH PLAIN LOGIN XOAUTH2",
)
NO_PIPELINING = tuple(cap for cap in FULL if cap != "PIPELINING")
Event = Response | ConnectionClosed


# --- helpers ------------------------------------------------------------------------------


def multiline(code: int, *lines: str) -> bytes:
    out = b""
    for i, line in enumerate(lines):
        sep = "-" if i < len(lines) - 1 else " "
        out += f"{code}{sep}{line}\r\n".encode()
    return out


def ehlo_reply(*caps: str) -> bytes:
    return multiline(250, "mx.example.com greets client.example", *caps)


def drain(conn: ClientConnection) -> list[Event]:
    """Every event the buffered bytes give, up to NEED_DATA (or ConnectionClosed)."""
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        assert isinstance(event, Response | ConnectionClosed)
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events


def answer(conn: ClientConnection, data: bytes) -> list[Event]:
    conn.receive_data(data)
    return drain(conn)


def greeted(*caps: str, lmtp: bool = False) -> ClientConnection:
    conn = ClientConnection(lmtp=lmtp)
    answer(conn, b"220 mx.example.com ESMTP\r\n")
    conn.ehlo("client.example")
    [event] = answer(conn, ehlo_reply(*caps))
    assert isinstance(event, Response) and event.reply.code == 250
    assert conn.state is S.READY
    return conn


def step(conn: ClientConnection, out: bytes, data: bytes) -> list[Event]:
    """One command written (its bytes ignored) and the server's answer read."""
    assert out
    return answer(conn, data)


def in_transaction(*caps: str, params: MailParams | None = None) -> ClientConnection:
    conn = greeted(*caps)
    step(conn, conn.mail("alice@example.com", params), b"250 2.1.0 OK\r\n")
    step(conn, conn.rcpt("bob@example.com"), b"250 2.1.5 OK\r\n")
    assert conn.state is S.RCPT
    return conn


def in_data(*caps: str, params: MailParams | None = None) -> ClientConnection:
    conn = in_transaction(*caps, params=params)
    step(conn, conn.data(), b"354 End data with <CR><LF>.<CR><LF>\r\n")
    assert conn.state is S.DATA
    return conn


def resp(
    command: Command,
    argument: str | None,
    code: int,
    *lines: str,
    enhanced: str | None = None,
    extensions: Extensions | None = None,
) -> Response:
    return Response(command, argument, Reply(code, lines or ("",), enhanced), extensions)


# --- greeting -----------------------------------------------------------------------------


def test_greeting_220() -> None:
    conn = ClientConnection()
    assert conn.state is S.GREETING
    assert conn.outstanding == (C.CONNECT,)
    assert conn.next_event() is NEED_DATA
    events = answer(conn, b"220-mx.example.com ESMTP\r\n220 no UCE\r\n")
    assert events == [resp(C.CONNECT, None, 220, "mx.example.com ESMTP", "no UCE")]
    assert conn.state is S.INITIAL
    assert conn.outstanding == ()
    assert conn.extensions is None


def test_greeting_554_leaves_only_quit() -> None:
    conn = ClientConnection()
    [event] = answer(conn, b"554 5.7.1 go away\r\n")
    assert event == resp(C.CONNECT, None, 554, "go away", enhanced="5.7.1")
    assert conn.state is S.REFUSED
    with pytest.raises(LocalProtocolError):
        conn.ehlo("client.example")
    assert conn.quit() == b"QUIT\r\n"
    assert answer(conn, b"221 bye\r\n")[0] == resp(C.QUIT, None, 221, "bye")
    assert conn.state is S.CLOSED


def test_greeting_421_closes() -> None:
    conn = ClientConnection()
    answer(conn, b"421 4.3.2 busy\r\n")
    assert conn.state is S.CLOSED
    conn.receive_data(b"")
    assert drain(conn) == [ConnectionClosed()]


def test_nothing_before_the_greeting() -> None:
    conn = ClientConnection()
    with pytest.raises(LocalProtocolError, match="greeting"):
        conn.ehlo("client.example")


# --- EHLO ---------------------------------------------------------------------------------


def test_ehlo_writes_and_parses() -> None:
    conn = ClientConnection()
    answer(conn, b"220 mx.example.com ESMTP\r\n")
    assert conn.ehlo("client.example") == b"EHLO client.example\r\n"
    assert conn.outstanding == (C.EHLO,)
    [event] = answer(conn, ehlo_reply("PIPELINING", "SIZE 1000"))
    assert isinstance(event, Response)
    assert event.command is C.EHLO and event.argument == "client.example"
    assert event.extensions is conn.extensions
    assert conn.extensions is not None and conn.extensions.pipelining
    assert conn.extensions.size == 1000
    assert conn.extensions.domain == "mx.example.com"


EHLO_CASES = [
    ("nothing", [], {}),
    ("size", ["SIZE 35882577"], {"size": 35882577}),
    ("size without limit", ["SIZE"], {"size": 0}),
    ("size zero", ["SIZE 0"], {"size": 0}),
    ("size garbage", ["SIZE lots"], {"size": 0}),
    ("auth", ["AUTH PLAIN LOGIN"], {"auth": ("PLAIN", "LOGIN")}),
    ("auth lower case", ["auth plain xoauth2"], {"auth": ("PLAIN", "XOAUTH2")}),
    (
        "auth= merged",
        ["AUTH=LOGIN PLAIN", "AUTH PLAIN CRAM-MD5"],
        {"auth": ("LOGIN", "PLAIN", "CRAM-MD5")},
    ),
    ("pipelining", ["PIPELINING"], {"pipelining": True}),
    ("chunking", ["CHUNKING"], {"chunking": True}),
    ("binarymime", ["BINARYMIME"], {"binarymime": True}),
    ("8bitmime", ["8BITMIME"], {"eightbitmime": True}),
    ("smtputf8", ["SMTPUTF8"], {"smtputf8": True}),
    ("dsn", ["DSN"], {"dsn": True}),
    ("starttls", ["STARTTLS"], {"starttls": True}),
    ("requiretls", ["REQUIRETLS"], {"requiretls": True}),
    ("enhanced", ["ENHANCEDSTATUSCODES"], {"enhanced_status_codes": True}),
    ("lower-case keyword", ["pipelining"], {"pipelining": True}),
    ("bad lines skipped", ["", "?x", "-NO", "PIPELINING"], {"pipelining": True}),
    (
        "everything",
        list(FULL),
        {
            "pipelining": True,
            "size": 1000000,
            "eightbitmime": True,
            "smtputf8": True,
            "chunking": True,
            "binarymime": True,
            "dsn": True,
            "starttls": True,
            "requiretls": True,
            "enhanced_status_codes": True,
            "auth": ("PLAIN", "LOGIN", "XOAUTH2"),
        },
    ),
]


@pytest.mark.parametrize(
    ("caps", "fields"), [c[1:] for c in EHLO_CASES], ids=[c[0] for c in EHLO_CASES]
)
def test_ehlo_capabilities(caps: list[str], fields: dict[str, object]) -> None:
    conn = greeted(*caps)
    expected = Extensions(domain="mx.example.com", **fields)  # type: ignore[arg-type]
    got = conn.extensions
    assert got is not None
    for name in [f.name for f in attrs.fields(Extensions)]:
        if name != "keywords":
            assert getattr(got, name) == getattr(expected, name), name


def test_ehlo_raw_keywords() -> None:
    conn = greeted("X-EXPS GSSAPI NTLM", "SIZE 10", "AUTH=LOGIN", "AUTH PLAIN", "8bitmime")
    assert conn.extensions is not None
    assert dict(conn.extensions.keywords) == {
        "X-EXPS": ("GSSAPI", "NTLM"),
        "SIZE": ("10",),
        "AUTH": ("LOGIN", "PLAIN"),
        "8BITMIME": (),
    }
    hash(conn.extensions)  # frozen values stay hashable


def test_ehlo_refused_then_helo() -> None:
    conn = ClientConnection()
    answer(conn, b"220 old.example\r\n")
    conn.ehlo("client.example")
    [event] = answer(conn, b"502 unrecognized command\r\n")
    assert isinstance(event, Response) and event.extensions is None
    assert conn.state is S.INITIAL and conn.extensions is None
    assert conn.helo("client.example") == b"HELO client.example\r\n"
    [event] = answer(conn, b"250 old.example\r\n")
    assert isinstance(event, Response) and event.extensions == Extensions()
    assert conn.state is S.READY and conn.extensions == Extensions()


def test_second_ehlo_resets_transaction() -> None:
    conn = in_transaction(*NO_PIPELINING)
    step(conn, conn.ehlo("client.example"), ehlo_reply("SIZE 5"))
    assert conn.state is S.READY
    assert conn.accepted_recipients == ()
    assert conn.extensions is not None and conn.extensions.size == 5


# --- reply parsing ------------------------------------------------------------------------

REPLY_CASES = [
    ("plain", b"250 OK\r\n", Reply(250, "OK")),
    ("no text", b"250\r\n", Reply(250, "")),
    ("empty text", b"250 \r\n", Reply(250, "")),
    ("bare LF", b"250 OK\n", Reply(250, "OK")),
    ("enhanced", b"250 2.1.0 Sender OK\r\n", Reply(250, "Sender OK", "2.1.0")),
    ("enhanced only", b"250 2.0.0\r\n", Reply(250, "", "2.0.0")),
    ("enhanced three digits", b"550 5.123.456 x\r\n", Reply(550, "x", "5.123.456")),
    ("class mismatch kept", b"250 5.1.1 odd\r\n", Reply(250, "5.1.1 odd")),
    ("leading zero kept", b"250 2.01.0 odd\r\n", Reply(250, "2.01.0 odd")),
    ("no space after code kept", b"250 2.1.0x\r\n", Reply(250, "2.1.0x")),
    ("3xx never enhanced", b"354 3.0.0 go\r\n", Reply(354, "3.0.0 go")),
    (
        "multi-line",
        b"550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n",
        Reply(550, ("first", "second", "third"), "5.7.1"),
    ),
    (
        "multi-line, code on the first only",
        b"550-5.7.1 first\r\n550 more\r\n",
        Reply(550, ("first", "more"), "5.7.1"),
    ),
    ("empty continuation", b"250-\r\n250 end\r\n", Reply(250, ("", "end"))),
    ("utf-8 text", "250 grüße\r\n".encode(), Reply(250, "grüße")),
    ("not utf-8", b"250 caf\xe9\r\n", Reply(250, "caf\ufffd")),
]


@pytest.mark.parametrize(
    ("data", "expected"), [c[1:] for c in REPLY_CASES], ids=[c[0] for c in REPLY_CASES]
)
@pytest.mark.parametrize("how", ["whole", "byte by byte", "with trailing data"])
def test_reply_parsing(data: bytes, expected: Reply, how: str) -> None:
    conn = greeted("PIPELINING") if expected.code != 354 else in_transaction()
    command = C.NOOP if expected.code != 354 else C.DATA
    conn.noop() if command is C.NOOP else conn.data()
    if how == "whole":
        events = answer(conn, data)
    elif how == "byte by byte":
        events = []
        for i in range(len(data)):
            events += answer(conn, data[i : i + 1])
    else:
        events = answer(conn, data + b"421 4.")  # the start of the next reply stays buffered
    assert events == [Response(command, None, expected)]


MALFORMED = [
    ("text", b"hello\r\n"),
    ("two digits", b"25 OK\r\n"),
    ("four digits", b"2500 OK\r\n"),
    ("bad separator", b"250_OK\r\n"),
    ("letter after code", b"250x\r\n"),
    ("1xx", b"150 OK\r\n"),
    ("6xx", b"650 OK\r\n"),
    ("0xx", b"050 OK\r\n"),
    ("empty line", b"\r\n"),
    ("leading space", b" 250 OK\r\n"),
    ("codes disagree", b"250-first\r\n251 second\r\n"),
    ("class disagrees", b"220-first\r\n554 second\r\n"),
]


@pytest.mark.parametrize("data", [c[1] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_reply(data: bytes) -> None:
    conn = ClientConnection()
    conn.receive_data(data)
    with pytest.raises(RemoteProtocolError) as info:
        drain(conn)
    assert info.value.reply_hint is None
    assert conn.state is S.ERROR
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.quit()


def test_reply_line_too_long_while_incomplete() -> None:
    conn = ClientConnection()
    conn.receive_data(b"220 " + b"x" * 2044)  # 2048 octets, no line end yet: still fine
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"x")
    with pytest.raises(RemoteProtocolError, match="line"):
        conn.next_event()


def test_reply_line_too_long_complete() -> None:
    conn = ClientConnection(max_reply_line=100)
    conn.receive_data(b"220 " + b"x" * 100 + b"\r\n")
    with pytest.raises(RemoteProtocolError, match="line"):
        conn.next_event()


def test_reply_line_at_the_limit() -> None:
    conn = ClientConnection(max_reply_line=100)
    [event] = answer(conn, b"220 " + b"x" * 94 + b"\r\n")
    assert isinstance(event, Response) and len(event.reply.lines[0]) == 94


def test_multiline_reply_too_big() -> None:
    conn = ClientConnection()
    line = b"220-" + b"x" * 1000 + b"\r\n"
    conn.receive_data(line * 70)
    with pytest.raises(RemoteProtocolError, match="reply longer"):
        drain(conn)


def test_multiline_reply_too_big_while_incomplete() -> None:
    conn = ClientConnection(max_reply_size=200)
    conn.receive_data(b"220-" + b"x" * 150 + b"\r\n")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"220-" + b"x" * 60)
    with pytest.raises(RemoteProtocolError, match="reply longer"):
        conn.next_event()


def test_size_limit_counts_per_reply() -> None:
    conn = ClientConnection(max_reply_size=120)
    answer(conn, b"220-" + b"x" * 80 + b"\r\n220 ok\r\n")
    conn.ehlo("client.example")
    [event] = answer(conn, multiline(250, "x" * 80, "PIPELINING"))
    assert isinstance(event, Response) and event.extensions is not None


def test_unsolicited_reply_is_an_error() -> None:
    conn = greeted()
    conn.receive_data(b"250 surprise\r\n")
    with pytest.raises(RemoteProtocolError, match="no command"):
        conn.next_event()


def test_unsolicited_421_closes() -> None:
    conn = greeted()
    [event] = answer(conn, b"421 4.4.2 idle too long\r\n")
    assert event == resp(C.UNSOLICITED, None, 421, "idle too long", enhanced="4.4.2")
    assert conn.state is S.CLOSED
    with pytest.raises(LocalProtocolError):
        conn.noop()


@pytest.mark.parametrize(
    ("make", "data"),
    [
        (lambda c: c.mail("a@example.com"), b"354 go on\r\n"),
        (lambda c: c.noop(), b"334 eA==\r\n"),
        (lambda c: c.rset(), b"354 what\r\n"),
    ],
    ids=["354 to MAIL", "334 to NOOP", "354 to RSET"],
)
def test_reply_that_fits_no_answer(make: Callable[[ClientConnection], bytes], data: bytes) -> None:
    conn = greeted()
    make(conn)
    conn.receive_data(data)
    with pytest.raises(RemoteProtocolError, match="cannot answer"):
        conn.next_event()


def test_250_to_data_is_an_error() -> None:
    conn = in_transaction()
    conn.data()
    conn.receive_data(b"250 OK\r\n")
    with pytest.raises(RemoteProtocolError, match="cannot answer DATA"):
        conn.next_event()


def test_eof_mid_reply() -> None:
    conn = greeted()
    conn.noop()
    conn.receive_data(b"250-almost\r\n250 th")
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle of a reply"):
        conn.next_event()


def test_eof_while_idle() -> None:
    conn = greeted()
    conn.receive_data(b"")
    assert drain(conn) == [ConnectionClosed()]
    assert conn.state is S.CLOSED
    assert conn.next_event() == ConnectionClosed()
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"more")


def test_eof_with_outstanding_command() -> None:
    conn = greeted()
    conn.noop()
    conn.receive_data(b"")
    assert drain(conn) == [ConnectionClosed()]
    assert conn.outstanding == ()


PIPELINED_REPLIES = (
    multiline(250, "2.1.0 sender", "2.1.0 is fine")
    + b"250 2.1.5 first ok\r\n"
    + multiline(550, "5.1.1 no such user", "5.1.1 really")
    + b"250 2.1.5 third ok\r\n"
    + multiline(354, "go ahead", "end with <CRLF>.<CRLF>")
)


def pipelined_conn() -> ClientConnection:
    conn = greeted(*FULL)
    write_envelope(conn, "a@example.com", ["b@example.com", "c@example.com", "d@example.com"])
    return conn


def feed_pieces(conn: ClientConnection, pieces: Sequence[bytes]) -> list[Event]:
    events: list[Event] = []
    for piece in pieces:
        if piece:  # b"" would mean EOF
            events += answer(conn, piece)
    return events


WHOLE_EVENTS = feed_pieces(pipelined_conn(), [PIPELINED_REPLIES])


def test_pipelined_replies_whole() -> None:
    assert [
        resp(C.MAIL, "a@example.com", 250, "sender", "is fine", enhanced="2.1.0"),
        resp(C.RCPT, "b@example.com", 250, "first ok", enhanced="2.1.5"),
        resp(C.RCPT, "c@example.com", 550, "no such user", "really", enhanced="5.1.1"),
        resp(C.RCPT, "d@example.com", 250, "third ok", enhanced="2.1.5"),
        resp(C.DATA, None, 354, "go ahead", "end with <CRLF>.<CRLF>"),
    ] == WHOLE_EVENTS


def test_pipelined_replies_byte_by_byte() -> None:
    conn = pipelined_conn()
    pieces = [PIPELINED_REPLIES[i : i + 1] for i in range(len(PIPELINED_REPLIES))]
    assert feed_pieces(conn, pieces) == WHOLE_EVENTS


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(PIPELINED_REPLIES)), max_size=12))
def test_pipelined_replies_any_split(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(PIPELINED_REPLIES)]
    pieces = [PIPELINED_REPLIES[a:b] for a, b in itertools.pairwise(bounds)]
    conn = pipelined_conn()
    assert feed_pieces(conn, pieces) == WHOLE_EVENTS
    assert conn.state is S.DATA


EHLO_BYTES = ehlo_reply(*FULL)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, len(EHLO_BYTES)), max_size=8))
def test_ehlo_reply_any_split(cuts: list[int]) -> None:
    conn = ClientConnection()
    answer(conn, b"220 hi\r\n")
    conn.ehlo("client.example")
    bounds = [0, *sorted(cuts), len(EHLO_BYTES)]
    events = feed_pieces(conn, [EHLO_BYTES[a:b] for a, b in itertools.pairwise(bounds)])
    assert len(events) == 1
    assert conn.extensions == greeted(*FULL).extensions


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_fuzz_only_remote_protocol_error_escapes(data: bytes, eof: bool) -> None:
    for conn in (ClientConnection(), pipelined_conn()):
        try:
            conn.receive_data(data)
            if eof:
                conn.receive_data(b"")
            for _ in range(100):
                event = conn.next_event()
                if event is NEED_DATA or isinstance(event, ConnectionClosed):
                    break
        except RemoteProtocolError as exc:
            assert exc.reply_hint is None


# --- a whole transaction, lock-step -------------------------------------------------------


def test_lock_step_transaction() -> None:
    conn = greeted("8BITMIME", "SIZE 1000", "ENHANCEDSTATUSCODES")
    assert conn.mail("alice@example.com", MailParams(size=42)) == (
        b"MAIL FROM:<alice@example.com> SIZE=42\r\n"
    )
    assert conn.state is S.READY and conn.outstanding == (C.MAIL,)
    with pytest.raises(LocalProtocolError, match="PIPELINING"):
        conn.rcpt("bob@example.com")
    answer(conn, b"250 2.1.0 OK\r\n")
    assert conn.state is S.MAIL
    with pytest.raises(LocalProtocolError, match="not allowed in state MAIL"):
        conn.data()
    assert conn.rcpt("bob@example.com") == b"RCPT TO:<bob@example.com>\r\n"
    [event] = answer(conn, b"250 2.1.5 OK\r\n")
    assert event == resp(C.RCPT, "bob@example.com", 250, "OK", enhanced="2.1.5")
    assert conn.state is S.RCPT and conn.accepted_recipients == ("bob@example.com",)
    assert conn.data() == b"DATA\r\n"
    assert conn.reply_timeout == 120.0
    answer(conn, b"354 go\r\n")
    assert conn.state is S.DATA
    assert conn.send_message_data(b"Subject: x\n\nhi\n") == b"Subject: x\r\n\r\nhi\r\n.\r\n"
    assert conn.reply_timeout == 600.0
    [event] = answer(conn, b"250 2.0.0 queued as 1234\r\n")
    assert event == resp(C.END_OF_DATA, None, 250, "queued as 1234", enhanced="2.0.0")
    assert conn.state is S.READY
    assert conn.reply_timeout is None
    assert conn.quit() == b"QUIT\r\n"
    [event] = answer(conn, b"221 2.0.0 bye\r\n")
    assert conn.state is S.CLOSED
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"trailing junk after 221\r\n")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert conn.next_event() == ConnectionClosed()


def test_replies_in_every_state() -> None:
    """A refusal leaves the state alone; RSET and NOOP work in the middle of a transaction."""
    conn = greeted(*NO_PIPELINING)
    step(conn, conn.mail("a@example.com"), b"451 4.3.0 try later\r\n")
    assert conn.state is S.READY
    step(conn, conn.mail("a@example.com"), b"250 OK\r\n")
    step(conn, conn.rcpt("x@example.com"), b"550 5.1.1 unknown\r\n")
    assert conn.state is S.MAIL
    step(conn, conn.noop(), b"250 OK\r\n")
    assert conn.state is S.MAIL
    step(conn, conn.vrfy("bob"), b"252 2.5.2 cannot verify\r\n")
    step(conn, conn.rcpt("y@example.com"), b"250 OK\r\n")
    step(conn, conn.data(), b"451 4.3.0 not now\r\n")
    assert conn.state is S.RCPT
    step(conn, conn.data(), b"354 go\r\n")
    step(conn, conn.send_message_data(b"x"), b"554 5.6.0 rejected\r\n")
    assert conn.state is S.READY
    step(conn, conn.mail("a@example.com"), b"250 OK\r\n")
    step(conn, conn.rset(), b"250 OK\r\n")
    assert conn.state is S.READY
    step(conn, conn.rset(), b"250 OK\r\n")
    assert conn.state is S.READY


def test_421_in_the_middle_drops_the_rest() -> None:
    conn = pipelined_conn()
    events = answer(conn, b"250 OK\r\n421 4.3.2 shutting down\r\n250 ignored\r\n")
    assert [e.reply.code for e in events if isinstance(e, Response)] == [250, 421]
    assert conn.state is S.CLOSED
    assert conn.outstanding == ()
    conn.receive_data(b"")
    assert drain(conn) == [ConnectionClosed()]


# --- pipelining ---------------------------------------------------------------------------


def test_send_envelope_bytes() -> None:
    conn = greeted(*FULL)
    out = write_envelope(
        conn,
        "a@example.com",
        ["b@example.com", "c@example.com"],
        MailParams(ret="HDRS"),
        [RcptParams(notify=("FAILURE",)), None],
        content=b"Subject: hi\r\n\r\nhello\r\n",
    )
    assert out == (
        b"MAIL FROM:<a@example.com> SIZE=22 RET=HDRS\r\n"
        b"RCPT TO:<b@example.com> NOTIFY=FAILURE\r\n"
        b"RCPT TO:<c@example.com>\r\n"
        b"DATA\r\n"
    )
    assert conn.outstanding == (C.MAIL, C.RCPT, C.RCPT, C.DATA)
    with pytest.raises(LocalProtocolError, match="reply to DATA"):
        conn.rset()


def test_pipelined_partial_failure() -> None:
    conn = pipelined_conn()
    answer(conn, PIPELINED_REPLIES)
    assert conn.state is S.DATA
    assert conn.accepted_recipients == ("b@example.com", "d@example.com")
    assert conn.send_message_data(b"hi") == b"hi\r\n.\r\n"
    [event] = answer(conn, b"250 2.0.0 queued\r\n")
    assert isinstance(event, Response) and event.command is C.END_OF_DATA
    assert conn.state is S.READY


def test_pipelined_all_refused_data_refused() -> None:
    conn = pipelined_conn()
    events = answer(
        conn,
        b"250 OK\r\n550 no\r\n550 no\r\n550 no\r\n554 5.5.1 Error: no valid recipients\r\n",
    )
    assert [e.reply.code for e in events if isinstance(e, Response)] == [250, 550, 550, 550, 554]
    assert conn.state is S.MAIL
    assert conn.accepted_recipients == ()
    with pytest.raises(LocalProtocolError):
        conn.send_message_data(b"hi")
    assert conn.rset() == b"RSET\r\n"
    answer(conn, b"250 OK\r\n")
    assert conn.state is S.READY


def test_pipelined_all_refused_but_354_sends_only_the_dot() -> None:
    conn = pipelined_conn()
    answer(conn, b"250 OK\r\n550 no\r\n550 no\r\n550 no\r\n354 go ahead anyway\r\n")
    assert conn.state is S.DATA and conn.accepted_recipients == ()
    assert conn.send_message_data(b"the secret message\r\n") == b".\r\n"
    [event] = answer(conn, b"554 5.5.1 no valid recipients\r\n")
    assert isinstance(event, Response) and event.command is C.END_OF_DATA
    assert conn.state is S.READY


def test_pipelined_mail_failure_then_rcpt_503() -> None:
    conn = pipelined_conn()
    answer(conn, b"550 5.7.1 sender refused\r\n503 5.5.1 need MAIL\r\n503 x\r\n503 x\r\n503 x\r\n")
    assert conn.state is S.READY
    assert conn.outstanding == ()


def test_pipelining_allows_mail_after_end_of_data() -> None:
    conn = pipelined_conn()
    answer(conn, PIPELINED_REPLIES)
    out = conn.send_message_data(b"one") + write_envelope(conn, "a@example.com", ["b@example.com"])
    assert out.endswith(b"DATA\r\n")
    assert conn.outstanding == (C.END_OF_DATA, C.MAIL, C.RCPT, C.DATA)
    answer(conn, b"250 queued\r\n250 OK\r\n250 OK\r\n354 go\r\n")
    assert conn.state is S.DATA
    assert conn.accepted_recipients == ("b@example.com",)


def test_lock_step_after_end_of_data_without_pipelining() -> None:
    conn = in_data(*NO_PIPELINING)
    conn.send_message_data(b"x")
    with pytest.raises(LocalProtocolError, match="PIPELINING"):
        conn.mail("a@example.com")


@pytest.mark.parametrize(
    "last",
    [
        lambda c: c.noop(),
        lambda c: c.vrfy("bob"),
        lambda c: c.ehlo("client.example"),
        lambda c: c.data(),
    ],
    ids=["NOOP", "VRFY", "EHLO", "DATA"],
)
def test_group_enders(last: Callable[[ClientConnection], bytes]) -> None:
    conn = greeted(*FULL)
    write_envelope(conn, "a@example.com", ["b@example.com"], data=False)
    last(conn)
    with pytest.raises(LocalProtocolError, match="RFC 2920"):
        conn.rset()


def test_rcpt_before_mail_even_pipelined() -> None:
    conn = greeted(*FULL)
    with pytest.raises(LocalProtocolError, match="state READY"):
        conn.rcpt("b@example.com")


def test_send_envelope_is_all_or_nothing() -> None:
    conn = greeted(*FULL)
    with pytest.raises(LocalProtocolError, match="CR, LF"):
        write_envelope(conn, "a@example.com", ["b@example.com", "evil\r\nRSET@example.com"])
    assert conn.outstanding == ()
    assert write_envelope(conn, "a@example.com", ["b@example.com"]).startswith(b"MAIL")


def test_send_envelope_smtputf8_for_recipients() -> None:
    conn = greeted(*FULL)
    out = write_envelope(conn, "a@example.com", ["jürgen@example.com"])
    assert out.startswith(b"MAIL FROM:<a@example.com> SMTPUTF8\r\n")
    assert "RCPT TO:<jürgen@example.com>".encode() in out


def test_send_envelope_argument_checks() -> None:
    conn = greeted(*FULL)
    with pytest.raises(LocalProtocolError, match="at least one"):
        write_envelope(conn, "a@example.com", [])
    with pytest.raises(LocalProtocolError, match="sequence"):
        write_envelope(conn, "a@example.com", "b@example.com")
    with pytest.raises(LocalProtocolError, match="one entry per"):
        write_envelope(conn, "a@example.com", ["b@example.com"], rcpt_params=[None, None])


# --- STARTTLS -----------------------------------------------------------------------------


def test_starttls_drops_injected_bytes() -> None:
    conn = greeted("STARTTLS", "PIPELINING", "AUTH PLAIN")
    assert conn.starttls() == b"STARTTLS\r\n"
    # a man in the middle appends a reply to the 220, hoping it answers our next EHLO
    conn.receive_data(b"220 2.0.0 Ready to start TLS\r\n250-evil.example\r\n")
    conn.receive_data(b"250 AUTH NONE\r\n")
    events = drain(conn)
    assert events == [resp(C.STARTTLS, None, 220, "Ready to start TLS", enhanced="2.0.0")]
    assert conn.state is S.INITIAL
    assert conn.extensions is None
    with pytest.raises(LocalProtocolError):
        conn.mail("a@example.com")
    # the adapter does the handshake; what follows came through TLS
    conn.ehlo("client.example")
    [event] = answer(conn, ehlo_reply("AUTH PLAIN LOGIN"))
    assert isinstance(event, Response) and event.reply.lines[0].startswith("mx.example.com")
    assert conn.extensions is not None and conn.extensions.auth == ("PLAIN", "LOGIN")
    with pytest.raises(LocalProtocolError, match="already"):
        conn.starttls()


def test_starttls_refused() -> None:
    conn = greeted("STARTTLS")
    step(conn, conn.starttls(), b"454 4.7.0 TLS not available\r\n")
    assert conn.state is S.READY
    assert conn.extensions is not None and conn.extensions.starttls


# --- LMTP ---------------------------------------------------------------------------------


def test_lmtp_one_reply_per_recipient() -> None:
    conn = ClientConnection(lmtp=True)
    answer(conn, b"220 lmtp.example LMTP\r\n")
    assert conn.ehlo("client.example") == b"LHLO client.example\r\n"
    [event] = answer(conn, ehlo_reply("PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME"))
    assert isinstance(event, Response) and event.command is C.LHLO
    assert event.extensions is not None and event.extensions.pipelining
    write_envelope(conn, "a@example.com", ["b@example.com", "c@example.com", "d@example.com"])
    answer(conn, b"250 OK\r\n250 OK\r\n550 5.1.1 no\r\n250 OK\r\n354 go\r\n")
    conn.send_message_data(b"hello\r\n")
    assert conn.outstanding == (C.END_OF_DATA,)
    [first] = answer(conn, b"250 2.1.5 b delivered\r\n")
    assert first == resp(C.END_OF_DATA, "b@example.com", 250, "b delivered", enhanced="2.1.5")
    assert conn.outstanding == (C.END_OF_DATA,)
    [second] = answer(conn, b"452 4.2.2 d over quota\r\n")
    assert second == resp(C.END_OF_DATA, "d@example.com", 452, "d over quota", enhanced="4.2.2")
    assert conn.outstanding == ()
    assert conn.state is S.READY


def test_lmtp_bdat_pipelined() -> None:
    """The recipients are counted when the first reply to BDAT LAST arrives, not when sent."""
    conn = greeted("PIPELINING", "CHUNKING", lmtp=True)
    out = write_envelope(conn, "a@example.com", ["b@example.com", "c@example.com"], data=False)
    out += conn.bdat(b"hello\r\n", last=True)
    assert out.endswith(b"BDAT 7 LAST\r\nhello\r\n")
    events = answer(conn, b"250 OK\r\n550 no\r\n250 OK\r\n250 c delivered\r\n")
    assert events[-1] == resp(C.BDAT_LAST, "c@example.com", 250, "c delivered")
    assert conn.outstanding == ()
    assert conn.state is S.READY


def test_lmtp_has_no_helo() -> None:
    conn = ClientConnection(lmtp=True)
    answer(conn, b"220 lmtp\r\n")
    with pytest.raises(LocalProtocolError, match="LHLO"):
        conn.helo("client.example")


def test_smtp_end_of_data_single_reply() -> None:
    conn = pipelined_conn()
    answer(conn, PIPELINED_REPLIES)
    conn.send_message_data(b"x")
    [event] = answer(conn, b"250 OK\r\n")
    assert isinstance(event, Response) and event.argument is None
    assert conn.outstanding == ()


# --- BDAT ---------------------------------------------------------------------------------


def test_bdat_chunks() -> None:
    conn = in_transaction(*NO_PIPELINING)
    assert conn.bdat(b"Subject: x\r\n") == b"BDAT 12\r\nSubject: x\r\n"
    [event] = answer(conn, b"250 2.0.0 12 octets\r\n")
    assert event == resp(C.BDAT, "12", 250, "12 octets", enhanced="2.0.0")
    assert conn.state is S.CHUNKING
    with pytest.raises(LocalProtocolError):
        conn.data()
    assert conn.bdat(b".\r\n", last=True) == b"BDAT 3 LAST\r\n.\r\n"
    [event] = answer(conn, b"250 2.0.0 queued\r\n")
    assert isinstance(event, Response) and event.command is C.BDAT_LAST
    assert event.argument == "3 LAST"
    assert conn.state is S.READY


def test_bdat_refused_ends_the_transaction() -> None:
    conn = in_transaction(*NO_PIPELINING)
    step(conn, conn.bdat(b"x"), b"552 5.3.4 too big\r\n")
    assert conn.state is S.READY
    with pytest.raises(LocalProtocolError):
        conn.bdat(b"y", last=True)


def test_bdat_pipelined_chunks() -> None:
    conn = greeted(*FULL)
    out = write_envelope(conn, "a@example.com", ["b@example.com"], data=False)
    out += conn.bdat(b"aa") + conn.bdat(b"bb", last=True)
    assert out.endswith(b"BDAT 2\r\naaBDAT 2 LAST\r\nbb")
    answer(conn, b"250 OK\r\n250 OK\r\n250 OK\r\n250 OK\r\n")
    assert conn.state is S.READY


def test_binarymime_needs_bdat() -> None:
    conn = in_transaction(*FULL, params=MailParams(body="BINARYMIME"))
    with pytest.raises(LocalProtocolError, match="BDAT"):
        conn.data()
    assert conn.bdat(b"\x00\xff\r", last=True) == b"BDAT 3 LAST\r\n\x00\xff\r"


# --- dot-stuffing -------------------------------------------------------------------------

STUFFING = [
    ("empty", b"", b".\r\n"),
    ("no final CRLF", b"hi", b"hi\r\n.\r\n"),
    ("final CRLF kept", b"hi\r\n", b"hi\r\n.\r\n"),
    ("leading dot", b".hi\r\n", b"..hi\r\n.\r\n"),
    ("only a dot", b".", b"..\r\n.\r\n"),
    ("dot line inside", b"a\r\n.\r\nb", b"a\r\n..\r\nb\r\n.\r\n"),
    ("two dots", b"..\r\n", b"...\r\n.\r\n"),
    ("dot at the end", b"a\r\n.", b"a\r\n..\r\n.\r\n"),
    ("dot inside a line", b"a.b\r\n", b"a.b\r\n.\r\n"),
    ("bare LF", b"a\nb\n", b"a\r\nb\r\n.\r\n"),
    ("bare LF dot", b"a\n.b\n", b"a\r\n..b\r\n.\r\n"),
    ("LF.LF smuggling", b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
    ("bare CR", b"a\rb", b"a\r\nb\r\n.\r\n"),
    ("CR then CRLF", b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),
    ("CR.CR smuggling", b"a\r.\rb", b"a\r\n..\r\nb\r\n.\r\n"),
    ("LF CR", b"a\n\rb", b"a\r\n\r\nb\r\n.\r\n"),
    ("empty lines", b"\r\n\r\n", b"\r\n\r\n.\r\n"),
]


@pytest.mark.parametrize(
    ("content", "wire"), [c[1:] for c in STUFFING], ids=[c[0] for c in STUFFING]
)
def test_dot_stuffing(content: bytes, wire: bytes) -> None:
    conn = in_data()
    assert conn.send_message_data(content) == wire


def unstuff(wire: bytes) -> bytes:
    """A server's reading, line by line: the slow, obviously right model."""
    assert wire.endswith(b".\r\n")
    body = wire[:-3]
    assert body == b"" or body.endswith(b"\r\n")
    lines = body.split(b"\r\n")[:-1]
    assert all(b"\r" not in line and b"\n" not in line for line in lines)
    assert b"." not in lines
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"a", b"..", b"\r\n.\r\n"])).map(
        b"".join
    )
)
def test_dot_stuffing_round_trip(content: bytes) -> None:
    conn = in_data()
    wire = conn.send_message_data(content)
    normal = content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if normal and not normal.endswith(b"\r\n"):
        normal += b"\r\n"
    assert unstuff(wire) == normal
    assert wire.count(b"\r\n.\r\n") + wire.startswith(b".\r\n") == 1


# --- parameters ---------------------------------------------------------------------------

MAIL_PARAMS = [
    ("none", None, b""),
    ("size", MailParams(size=1000), b" SIZE=1000"),
    ("body 7bit", MailParams(body="7BIT"), b" BODY=7BIT"),
    ("body 8bit", MailParams(body="8BITMIME"), b" BODY=8BITMIME"),
    ("body binary", MailParams(body="BINARYMIME"), b" BODY=BINARYMIME"),
    ("smtputf8", MailParams(smtputf8=True), b" SMTPUTF8"),
    ("ret", MailParams(ret="HDRS"), b" RET=HDRS"),
    ("envid", MailParams(envid="QQ314159"), b" ENVID=QQ314159"),
    ("envid xtext", MailParams(envid="a+b=c d"), b" ENVID=a+2Bb+3Dc+20d"),
    ("auth null", MailParams(auth="<>"), b" AUTH=<>"),
    ("auth xtext", MailParams(auth="joe+x@example.com"), b" AUTH=joe+2Bx@example.com"),
    ("requiretls", MailParams(requiretls=True), b" REQUIRETLS"),
    (
        "extra",
        MailParams(extra=(("mt-priority", "3"), ("HOLDFOR", None))),
        b" MT-PRIORITY=3 HOLDFOR",
    ),
    (
        "all in order",
        MailParams(
            size=10,
            body="8BITMIME",
            smtputf8=True,
            ret="FULL",
            envid="id",
            auth="<>",
            requiretls=True,
        ),
        b" SIZE=10 BODY=8BITMIME SMTPUTF8 RET=FULL ENVID=id AUTH=<> REQUIRETLS",
    ),
]


@pytest.mark.parametrize(
    ("params", "suffix"), [c[1:] for c in MAIL_PARAMS], ids=[c[0] for c in MAIL_PARAMS]
)
def test_mail_params(params: MailParams | None, suffix: bytes) -> None:
    conn = greeted(*FULL)
    assert conn.mail("a@example.com", params) == b"MAIL FROM:<a@example.com>" + suffix + b"\r\n"


def test_null_reverse_path() -> None:
    assert greeted().mail("") == b"MAIL FROM:<>\r\n"


def test_non_ascii_sender_adds_smtputf8() -> None:
    """Deprecated (a session-level choice): one more release, then the engine refuses it."""
    conn = greeted(*FULL)
    with pytest.warns(DeprecationWarning, match="MailParams\\(smtputf8=True\\)"):
        out = conn.mail("jürgen@example.com")
    assert out == "MAIL FROM:<jürgen@example.com> SMTPUTF8\r\n".encode()
    declared = greeted(*FULL).mail("jürgen@example.com", MailParams(smtputf8=True))
    assert declared == out


def test_deprecated_envelope_methods_delegate() -> None:
    """ClientConnection.send_envelope and mail_params_for moved to the session layer; the old
    names still work for one release, warn, and write exactly what the new ones write."""
    old, new = greeted(*FULL), greeted(*FULL)
    args = ("a@example.com", ["jürgen@example.com"], MailParams(ret="HDRS"))
    with pytest.warns(DeprecationWarning, match=r"ClientSession\.write_envelope"):
        written = old.send_envelope(*args, content=b"caf\xc3\xa9", data=False)
    assert written == write_envelope(new, *args, content=b"caf\xc3\xa9", data=False)
    assert written.startswith(b"MAIL FROM:<a@example.com> SIZE=5 BODY=8BITMIME SMTPUTF8 RET=HDRS")
    assert old.outstanding == new.outstanding == (C.MAIL, C.RCPT)
    with pytest.warns(DeprecationWarning, match=r"ClientSession\.mail_params_for"):
        params = old.mail_params_for(b"x", "a@example.com")
    assert params == mail_params_for(old.extensions, b"x", "a@example.com") == MailParams(size=1)
    with pytest.warns(DeprecationWarning), pytest.raises(LocalProtocolError, match="8BITMIME"):
        greeted("PIPELINING").send_envelope("a@example.com", ["b@example.com"], content=b"\xff")


RCPT_PARAMS = [
    ("notify", RcptParams(notify=("SUCCESS", "FAILURE")), b" NOTIFY=SUCCESS,FAILURE"),
    ("notify never", RcptParams(notify=("NEVER",)), b" NOTIFY=NEVER"),
    (
        "orcpt",
        RcptParams(orcpt=("rfc822", "bob+x@example.com")),
        b" ORCPT=rfc822;bob+2Bx@example.com",
    ),
    (
        "both",
        RcptParams(notify=("DELAY",), orcpt=("rfc822", "b@example.com")),
        b" NOTIFY=DELAY ORCPT=rfc822;b@example.com",
    ),
    ("extra", RcptParams(extra=(("RRVS", "2014-04-03T23:01:00Z"),)), b" RRVS=2014-04-03T23:01:00Z"),
]


@pytest.mark.parametrize(
    ("params", "suffix"), [c[1:] for c in RCPT_PARAMS], ids=[c[0] for c in RCPT_PARAMS]
)
def test_rcpt_params(params: RcptParams, suffix: bytes) -> None:
    conn = greeted(*FULL)
    conn.mail("a@example.com")
    assert conn.rcpt("b@example.com", params) == b"RCPT TO:<b@example.com>" + suffix + b"\r\n"


def test_mail_params_for() -> None:
    conn = greeted(*FULL)
    assert mail_params_for(conn.extensions, b"plain\r\n", "a@example.com") == MailParams(size=7)
    assert mail_params_for(conn.extensions, b"caf\xc3\xa9", "a@example.com") == MailParams(
        size=5, body="8BITMIME"
    )
    assert mail_params_for(conn.extensions, b"x", "a@example.com", ["ü@example.com"]) == MailParams(
        size=1, smtputf8=True
    )
    kept = MailParams(size=99, body="BINARYMIME", ret="FULL")
    assert mail_params_for(conn.extensions, b"\xff", "a@example.com", (), kept) == kept
    assert mail_params_for(greeted().extensions, b"plain", "a@example.com") == MailParams()


def test_mail_params_for_refuses() -> None:
    conn = greeted("PIPELINING")
    with pytest.raises(LocalProtocolError, match="8BITMIME"):
        mail_params_for(conn.extensions, b"caf\xc3\xa9", "a@example.com")
    with pytest.raises(LocalProtocolError, match="SMTPUTF8"):
        mail_params_for(conn.extensions, b"x", "a@example.com", ["ü@example.com"])
    with pytest.raises(LocalProtocolError, match="8BITMIME"):
        write_envelope(conn, "a@example.com", ["b@example.com"], content=b"\xff")
    assert conn.outstanding == ()


def test_8bit_content_declared_by_send_envelope() -> None:
    conn = greeted(*FULL)
    out = write_envelope(conn, "a@example.com", ["b@example.com"], content=b"caf\xc3\xa9\r\n")
    assert out.startswith(b"MAIL FROM:<a@example.com> SIZE=7 BODY=8BITMIME\r\n")
    answer(conn, b"250 OK\r\n250 OK\r\n354 go\r\n")
    assert conn.send_message_data(b"caf\xc3\xa9\r\n") == b"caf\xc3\xa9\r\n.\r\n"


# --- guards -------------------------------------------------------------------------------

Action = Callable[[ClientConnection], object]


def at_ready(*caps: str) -> Callable[[], ClientConnection]:
    return lambda: greeted(*caps)


def at_rcpt(*caps: str, params: MailParams | None = None) -> Callable[[], ClientConnection]:
    return lambda: in_transaction(*caps, params=params)


def at_data(*caps: str) -> Callable[[], ClientConnection]:
    return lambda: in_data(*caps)


def without(*names: str) -> tuple[str, ...]:
    return tuple(c for c in FULL if c.split()[0] not in names)


def ehlo_outstanding() -> ClientConnection:
    conn = ClientConnection()
    answer(conn, b"220 hi\r\n")
    conn.ehlo("client.example")
    return conn


def authenticated() -> ClientConnection:
    conn = greeted(*FULL)
    step(conn, conn.auth(PlainClient("u", "p")), b"235 2.7.0 OK\r\n")
    return conn


def quit_answered() -> ClientConnection:
    conn = greeted(*FULL)
    step(conn, conn.quit(), b"221 bye\r\n")
    return conn


GUARDS: list[tuple[str, Callable[[], ClientConnection], Action, str]] = [
    ("MAIL before EHLO reply", ehlo_outstanding, lambda c: c.mail("a@example.com"), "EHLO"),
    ("MAIL before EHLO", lambda: ClientConnection(), lambda c: c.mail("a@example.com"), "greeting"),
    (
        "RCPT before MAIL reply, no pipelining",
        at_ready(*NO_PIPELINING),
        lambda c: (c.mail("a@example.com"), c.rcpt("b@example.com")),
        "PIPELINING",
    ),
    (
        "send_envelope without pipelining",
        at_ready(*NO_PIPELINING),
        lambda c: write_envelope(c, "a@example.com", ["b@example.com"]),
        "PIPELINING",
    ),
    ("STARTTLS not offered", at_ready(*without("STARTTLS")), lambda c: c.starttls(), "STARTTLS"),
    (
        "AUTH not offered",
        at_ready(*without("AUTH")),
        lambda c: c.auth(PlainClient("u", "p")),
        "offers: none",
    ),
    (
        "AUTH mechanism not listed",
        at_ready("AUTH PLAIN"),
        lambda c: c.auth(LoginClient("u", "p")),
        "AUTH LOGIN",
    ),
    ("AUTH twice", authenticated, lambda c: c.auth(PlainClient("u", "p")), "already"),
    (
        "AUTH in a transaction",
        at_rcpt(*FULL),
        lambda c: c.auth(PlainClient("u", "p")),
        "state RCPT",
    ),
    ("auth_respond outside AUTH", at_ready(*FULL), lambda c: c.auth_respond(), "state READY"),
    ("BDAT without CHUNKING", at_rcpt(*without("CHUNKING")), lambda c: c.bdat(b"x"), "CHUNKING"),
    (
        "BINARYMIME not offered",
        at_ready(*without("BINARYMIME")),
        lambda c: c.mail("a@example.com", MailParams(body="BINARYMIME")),
        "BINARYMIME",
    ),
    (
        "BODY=8BITMIME not offered",
        at_ready(*without("8BITMIME")),
        lambda c: c.mail("a@example.com", MailParams(body="8BITMIME")),
        "8BITMIME",
    ),
    (
        "SMTPUTF8 not offered",
        at_ready(*without("SMTPUTF8")),
        lambda c: c.mail("a@example.com", MailParams(smtputf8=True)),
        "SMTPUTF8",
    ),
    (
        "non-ASCII sender without SMTPUTF8",
        at_ready(*without("SMTPUTF8")),
        lambda c: c.mail("jürgen@example.com"),
        "SMTPUTF8",
    ),
    (
        "non-ASCII recipient, MAIL without SMTPUTF8",
        at_ready(*FULL),
        lambda c: (c.mail("a@example.com"), c.rcpt("jürgen@example.com")),
        "SMTPUTF8",
    ),
    (
        "RET without DSN",
        at_ready(*without("DSN")),
        lambda c: c.mail("a@example.com", MailParams(ret="FULL")),
        "DSN",
    ),
    (
        "ENVID without DSN",
        at_ready(*without("DSN")),
        lambda c: c.mail("a@example.com", MailParams(envid="x")),
        "DSN",
    ),
    (
        "NOTIFY without DSN",
        at_ready(*without("DSN")),
        lambda c: (c.mail("a@example.com"), c.rcpt("b@example.com", RcptParams(notify=("NEVER",)))),
        "DSN",
    ),
    (
        "ORCPT without DSN",
        at_ready(*without("DSN")),
        lambda c: (
            c.mail("a@example.com"),
            c.rcpt("b@example.com", RcptParams(orcpt=("rfc822", "b@example.com"))),
        ),
        "DSN",
    ),
    (
        "NOTIFY=NEVER with others",
        at_ready(*FULL),
        lambda c: (
            c.mail("a@example.com"),
            c.rcpt("b@example.com", RcptParams(notify=("NEVER", "DELAY"))),
        ),
        "NEVER",
    ),
    (
        "REQUIRETLS not offered",
        at_ready(*without("REQUIRETLS")),
        lambda c: c.mail("a@example.com", MailParams(requiretls=True)),
        "REQUIRETLS",
    ),
    (
        "SIZE not offered",
        at_ready(*without("SIZE")),
        lambda c: c.mail("a@example.com", MailParams(size=10)),
        "SIZE",
    ),
    (
        "SIZE over the limit",
        at_ready(*FULL),
        lambda c: c.mail("a@example.com", MailParams(size=1000001)),
        "exceeds",
    ),
    (
        "SIZE over the limit via content",
        at_ready(*FULL),
        lambda c: write_envelope(c, "a@example.com", ["b@example.com"], content=b"x" * 1000001),
        "exceeds",
    ),
    (
        "AUTH= without AUTH",
        at_ready(*without("AUTH")),
        lambda c: c.mail("a@example.com", MailParams(auth="<>")),
        "AUTH",
    ),
    (
        "DATA with BINARYMIME",
        at_rcpt(*FULL, params=MailParams(body="BINARYMIME")),
        lambda c: c.data(),
        "BDAT",
    ),
    (
        "8-bit data undeclared",
        at_data(*FULL),
        lambda c: c.send_message_data(b"caf\xc3\xa9"),
        "8BITMIME",
    ),
    ("8-bit BDAT undeclared", at_rcpt(*FULL), lambda c: c.bdat(b"\xff"), "8BITMIME"),
    ("CRLF in sender", at_ready(*FULL), lambda c: c.mail("a@example.com>\r\nRSET"), "CR, LF"),
    (
        "CRLF in recipient",
        at_ready(*FULL),
        lambda c: (c.mail("a@example.com"), c.rcpt("b@x\r\nDATA")),
        "CR, LF",
    ),
    ("brackets around address", at_ready(*FULL), lambda c: c.mail("<a@example.com>"), "brackets"),
    ("empty recipient", at_ready(*FULL), lambda c: (c.mail(""), c.rcpt("")), "needs an address"),
    ("CRLF in EHLO name", at_ready(*FULL), lambda c: c.ehlo("x\r\nMAIL FROM:<>"), "word"),
    ("space in EHLO name", at_ready(*FULL), lambda c: c.ehlo("two words"), "word"),
    ("empty EHLO name", at_ready(*FULL), lambda c: c.ehlo(""), "word"),
    ("CRLF in VRFY", at_ready(*FULL), lambda c: c.vrfy("bob\r\nQUIT"), "CR, LF"),
    ("empty VRFY", at_ready(*FULL), lambda c: c.vrfy(""), "argument"),
    ("non-ASCII VRFY without SMTPUTF8", at_ready(), lambda c: c.vrfy("jürgen"), "SMTPUTF8"),
    (
        "bad extra param",
        at_ready(*FULL),
        lambda c: c.mail("a@example.com", MailParams(extra=(("X", "a b"),))),
        "word",
    ),
    ("DATA twice", at_data(*FULL), lambda c: c.data(), "state DATA"),
    (
        "message data twice",
        at_data(*FULL),
        lambda c: (c.send_message_data(b"x"), c.send_message_data(b"y")),
        "state READY",
    ),
    ("commands after QUIT", quit_answered, lambda c: c.noop(), "state CLOSED"),
    ("QUIT while QUIT outstanding", at_ready(*FULL), lambda c: (c.quit(), c.quit()), "QUIT"),
    ("STARTTLS in a transaction", at_rcpt(*FULL), lambda c: c.starttls(), "state RCPT"),
]


@pytest.mark.parametrize(
    ("make", "action", "match"), [g[1:] for g in GUARDS], ids=[g[0] for g in GUARDS]
)
def test_guard(make: Callable[[], ClientConnection], action: Action, match: str) -> None:
    conn = make()
    before = conn.state
    with pytest.raises(LocalProtocolError, match=match):
        action(conn)
    assert conn.state is before


# --- every (state, command) pair ----------------------------------------------------------


def make_in_state(state: ClientState) -> ClientConnection:
    conn = ClientConnection()
    if state is S.GREETING:
        return conn
    if state is S.REFUSED:
        answer(conn, b"554 no\r\n")
        return conn
    if state is S.INITIAL:
        answer(conn, b"220 hi\r\n")
        return conn
    if state is S.READY:
        return greeted(*FULL)
    if state is S.MAIL:
        conn = greeted(*FULL)
        step(conn, conn.mail("a@example.com"), b"250 OK\r\n")
        return conn
    if state is S.RCPT:
        return in_transaction(*FULL)
    if state is S.DATA:
        return in_data(*FULL)
    if state is S.CHUNKING:
        conn = in_transaction(*FULL)
        step(conn, conn.bdat(b"x"), b"250 OK\r\n")
        return conn
    if state is S.AUTH:
        conn = greeted(*FULL)
        step(conn, conn.auth(LoginClient("u", "p")), b"334 VXNlcm5hbWU6\r\n")
        return conn
    if state is S.CLOSED:
        return quit_answered()
    assert state is S.ERROR
    conn = greeted(*FULL)
    conn.receive_data(b"nonsense\r\n")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    return conn


ACTIONS: dict[str, Action] = {
    "EHLO": lambda c: c.ehlo("client.example"),
    "HELO": lambda c: c.helo("client.example"),
    "MAIL": lambda c: c.mail("a@example.com"),
    "RCPT": lambda c: c.rcpt("b@example.com"),
    "DATA": lambda c: c.data(),
    "END_OF_DATA": lambda c: c.send_message_data(b"x"),
    "BDAT": lambda c: c.bdat(b"x"),
    "BDAT_LAST": lambda c: c.bdat(b"x", last=True),
    "RSET": lambda c: c.rset(),
    "NOOP": lambda c: c.noop(),
    "VRFY": lambda c: c.vrfy("bob"),
    "STARTTLS": lambda c: c.starttls(),
    "AUTH": lambda c: c.auth(PlainClient("u", "p")),
    "AUTH_RESPOND": lambda c: c.auth_respond(),
    "AUTH_CANCEL": lambda c: c.auth_cancel(),
    "QUIT": lambda c: c.quit(),
}
#: What each action writes: the exact command, so a method that writes another verb fails.
WRITES: dict[str, bytes] = {
    "EHLO": b"EHLO client.example\r\n",
    "HELO": b"HELO client.example\r\n",
    "MAIL": b"MAIL FROM:<a@example.com>\r\n",
    "RCPT": b"RCPT TO:<b@example.com>\r\n",
    "DATA": b"DATA\r\n",
    "END_OF_DATA": b"x\r\n.\r\n",
    "BDAT": b"BDAT 1\r\nx",
    "BDAT_LAST": b"BDAT 1 LAST\r\nx",
    "RSET": b"RSET\r\n",
    "NOOP": b"NOOP\r\n",
    "VRFY": b"VRFY bob\r\n",
    "STARTTLS": b"STARTTLS\r\n",
    "AUTH": b"AUTH PLAIN AHUAcA==\r\n",  # base64 of NUL u NUL p (RFC 4616)
    "AUTH_RESPOND": b"dQ==\r\n",  # the LOGIN user name "u", after "334 Username:"
    "AUTH_CANCEL": b"*\r\n",  # RFC 4954 §4
    "QUIT": b"QUIT\r\n",
}
ANYTIME = {"RSET", "NOOP", "VRFY", "QUIT"}
HELLOS = {"EHLO", "HELO"}
EXPECTED_ALLOWED: dict[ClientState, set[str]] = {
    S.GREETING: set(),
    S.REFUSED: {"QUIT"},
    S.INITIAL: ANYTIME | HELLOS,
    S.READY: ANYTIME | HELLOS | {"MAIL", "STARTTLS", "AUTH"},
    S.MAIL: ANYTIME | HELLOS | {"RCPT"},
    S.RCPT: ANYTIME | HELLOS | {"RCPT", "DATA", "BDAT", "BDAT_LAST"},
    S.DATA: {"END_OF_DATA"},
    S.CHUNKING: {"BDAT", "BDAT_LAST", "RSET", "NOOP", "QUIT"},
    S.AUTH: {"AUTH_RESPOND", "AUTH_CANCEL"},
    S.CLOSED: set(),
    S.ERROR: set(),
}


@pytest.mark.parametrize("state", list(ClientState), ids=[s.name for s in ClientState])
@pytest.mark.parametrize("verb", list(ACTIONS))
def test_every_state_and_command(state: ClientState, verb: str) -> None:
    conn = make_in_state(state)
    assert conn.state is state
    if verb in EXPECTED_ALLOWED[state]:
        out = ACTIONS[verb](conn)
        assert out == WRITES[verb]
        assert conn.outstanding
    else:
        with pytest.raises(LocalProtocolError):
            ACTIONS[verb](conn)
        assert conn.state is state


# --- SASL ---------------------------------------------------------------------------------


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_auth_plain_success() -> None:
    conn = greeted(*FULL)
    out = conn.auth(PlainClient("user", "secret"))
    assert out == b"AUTH PLAIN " + b64(b"\0user\0secret") + b"\r\n"
    [event] = answer(conn, b"235 2.7.0 Authentication successful\r\n")
    assert event == resp(C.AUTH, "PLAIN", 235, "Authentication successful", enhanced="2.7.0")
    assert conn.state is S.READY and conn.authenticated


def test_auth_plain_failure_then_retry() -> None:
    conn = greeted(*FULL)
    step(conn, conn.auth(PlainClient("user", "wrong")), b"535 5.7.8 Bad credentials\r\n")
    assert conn.state is S.READY and not conn.authenticated
    step(conn, conn.auth(PlainClient("user", "secret")), b"235 2.7.0 OK\r\n")
    assert conn.authenticated


def test_auth_plain_server_asks_anyway() -> None:
    conn = greeted(*FULL)
    conn.auth(PlainClient("user", "secret", authzid="boss"))
    answer(conn, b"334 \r\n")
    assert conn.auth_respond() == b64(b"boss\0user\0secret") + b"\r\n"


def test_auth_login_flow() -> None:
    conn = greeted(*FULL)
    assert conn.auth(LoginClient("user", "secret")) == b"AUTH LOGIN\r\n"
    [event] = answer(conn, b"334 " + b64(b"Username:") + b"\r\n")
    assert event == resp(C.AUTH, "LOGIN", 334, "VXNlcm5hbWU6")
    assert conn.state is S.AUTH
    with pytest.raises(LocalProtocolError):
        conn.noop()
    assert conn.auth_respond() == b64(b"user") + b"\r\n"
    with pytest.raises(LocalProtocolError):
        conn.auth_respond()  # its reply is outstanding
    answer(conn, b"334 " + b64(b"Password:") + b"\r\n")
    assert conn.auth_respond() == b64(b"secret") + b"\r\n"
    [event] = answer(conn, b"235 2.7.0 OK\r\n")
    assert isinstance(event, Response) and event.command is C.AUTH
    assert conn.state is S.READY and conn.authenticated


def test_auth_login_failure() -> None:
    conn = greeted(*FULL)
    conn.auth(LoginClient("user", "wrong"))
    answer(conn, b"334 VXNlcm5hbWU6\r\n")
    conn.auth_respond()
    answer(conn, b"334 UGFzc3dvcmQ6\r\n")
    conn.auth_respond()
    [event] = answer(conn, b"535 5.7.8 Authentication credentials invalid\r\n")
    assert isinstance(event, Response) and event.reply.code == 535
    assert conn.state is S.READY and not conn.authenticated


def test_auth_xoauth2_failure() -> None:
    conn = greeted(*FULL)
    out = conn.auth(XOAuth2Client("user@example.com", "tok"))
    assert out == b"AUTH XOAUTH2 " + b64(b"user=user@example.com\x01auth=Bearer tok\x01\x01") + (
        b"\r\n"
    )
    error = b64(b'{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}')
    [event] = answer(conn, b"334 " + error + b"\r\n")
    assert isinstance(event, Response) and event.reply.code == 334
    assert conn.auth_respond() == b"\r\n"
    answer(conn, b"535 5.7.8 Username and Password not accepted\r\n")
    assert conn.state is S.READY and not conn.authenticated


def test_auth_xoauth2_success() -> None:
    conn = greeted(*FULL)
    step(conn, conn.auth(XOAuth2Client("user@example.com", "tok")), b"235 2.7.0 Accepted\r\n")
    assert conn.authenticated


def test_auth_cancel() -> None:
    conn = greeted(*FULL)
    conn.auth(LoginClient("user", "secret"))
    answer(conn, b"334 VXNlcm5hbWU6\r\n")
    assert conn.auth_cancel() == b"*\r\n"
    [event] = answer(conn, b"501 5.7.0 Authentication cancelled\r\n")
    assert event == resp(C.AUTH, "LOGIN", 501, "Authentication cancelled", enhanced="5.7.0")
    assert conn.state is S.READY and not conn.authenticated


def test_auth_bad_challenge_is_cancelled() -> None:
    conn = greeted(*FULL)
    conn.auth(LoginClient("user", "secret"))
    answer(conn, b"334 not base64!\r\n")
    assert conn.auth_respond() == b"*\r\n"


class EmptyInitial(ClientMechanism):
    name = "EXTERNAL"

    def initial_response(self) -> bytes | None:
        return b""

    def respond(self, challenge: bytes) -> bytes:
        return b""


def test_auth_empty_initial_response() -> None:
    conn = greeted("AUTH EXTERNAL")
    assert conn.auth(EmptyInitial()) == b"AUTH EXTERNAL =\r\n"


def test_starttls_forgets_authentication() -> None:
    conn = authenticated()
    step(conn, conn.starttls(), b"220 go\r\n")
    assert not conn.authenticated


# --- odds and ends ------------------------------------------------------------------------


def test_command_compares_as_string() -> None:
    assert Command.MAIL == "MAIL"
    assert Command.END_OF_DATA == "END_OF_DATA"


def test_reply_timeouts() -> None:
    conn = ClientConnection()
    assert conn.reply_timeout == 300.0
    answer(conn, b"220 hi\r\n")
    assert conn.reply_timeout is None


def test_rset_before_ehlo_keeps_initial() -> None:
    conn = ClientConnection()
    answer(conn, b"220 hi\r\n")
    step(conn, conn.rset(), b"250 OK\r\n")
    assert conn.state is S.INITIAL
