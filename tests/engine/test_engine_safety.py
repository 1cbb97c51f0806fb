"""The engine's safety rules, through whole sessions: SMTP smuggling, STARTTLS command
injection, over-long lines with bounded memory, and linear work when bytes come one by one.
"""

from __future__ import annotations

import base64

import pytest

from smtp_core import (
    NEED_DATA,
    BdatChunk,
    DataChunk,
    EndOfData,
    Event,
    Hello,
    InvalidCommand,
    MailFrom,
    PlainMechanism,
    Quit,
    RcptTo,
    Reply,
    ServerConfig,
    ServerConnection,
    ServerState,
    StartData,
    StartTLS,
)
from smtp_core._server import SASL_LINE_LIMIT
from tests.helpers import Driver, assert_same_in_any_split

# --- SMTP smuggling (SEC Consult, CVE-2023-51764/51765/51766) -------------------------------

OPEN = b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
HEAD = b"Subject: x\r\n\r\nbody"
SMUGGLED = b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nevil\r\n"
# (fake end of data, what it is delivered as under bare_lf="normalize"): a bare LF becomes
# CRLF and a line "." that did not end the data is unstuffed to an empty line; a bare CR is
# content, never a line end. None of them ends the message.
SMUGGLING: list[tuple[bytes, bytes]] = [
    (b"\n.\n", b"\r\n\r\n"),
    (b"\r.\r", b"\r.\r"),
    (b"\n.\r\n", b"\r\n\r\n"),
    (b"\r\n.\n", b"\r\n\r\n"),
    (b"\r\n.\r", b"\r\n\r"),
    (b"\r.\r\n", b"\r.\r\n"),
    (b"\n.\r", b"\r\n\r"),
    (b"\r\r\n.\r\r\n", b"\r\r\n\r\r\n"),
    (b"\r\n\x00.\r\n", b"\r\n\x00.\r\n"),
    (b"\r\n.\x00\r\n", b"\r\n\x00\r\n"),
    (b"\r\n .\r\n", b"\r\n .\r\n"),
    (b"\r\n.\t\r\n", b"\r\n\t\r\n"),
]


@pytest.mark.parametrize(
    ("fake", "delivered"), SMUGGLING, ids=[repr(f)[2:-1] for f, _ in SMUGGLING]
)
@pytest.mark.parametrize("bare_lf", ["normalize", "reject"])
def test_smuggling_variant(fake: bytes, delivered: bytes, bare_lf: str) -> None:
    script = OPEN + HEAD + fake + SMUGGLED + b".\r\nQUIT\r\n"
    driver = assert_same_in_any_split(script, config=ServerConfig(bare_lf=bare_lf))
    kinds = [type(e) for e in driver.events]
    # One transaction: the smuggled MAIL/RCPT/DATA never became commands.
    assert kinds.count(MailFrom) == kinds.count(StartData) == kinds.count(EndOfData) == 1
    assert kinds.count(RcptTo) == 1
    start, end = kinds.index(StartData), kinds.index(EndOfData)
    assert set(kinds[start + 1 : end]) <= {DataChunk}
    assert isinstance(driver.events[end + 1], Quit)
    content = b"".join(e.data for e in driver.events if isinstance(e, DataChunk))
    end_event = driver.events[end]
    assert isinstance(end_event, EndOfData)
    if bare_lf == "reject" and b"\n" in fake.replace(b"\r\n", b""):
        # Postfix's smtpd_forbid_bare_newline=reject: the whole message is refused.
        assert end_event.reject is not None
        assert (end_event.reject.code, end_event.reject.enhanced) == (554, "5.6.0")
        assert driver.replies()[-2:] == [(554, "5.6.0"), (221, "2.0.0")]
        return
    assert end_event.reject is None
    assert content == HEAD + delivered + SMUGGLED
    assert driver.replies()[-2:] == [(250, "2.0.0"), (221, "2.0.0")]


@pytest.mark.parametrize("fake", [b".\n", b".\r", b".\x00\r\n"], ids=["LF", "CR", "NUL"])
def test_smuggling_at_the_start_of_data(fake: bytes) -> None:
    """The CRLF that ended DATA counts for a first line of ".", but only before CRLF."""
    driver = assert_same_in_any_split(OPEN + fake + SMUGGLED + b".\r\nQUIT\r\n")
    assert [type(e) for e in driver.events].count(MailFrom) == 1
    content = b"".join(e.data for e in driver.events if isinstance(e, DataChunk))
    assert SMUGGLED in content


def test_real_end_of_data_after_a_bare_line_end() -> None:
    """A line that ends in a bare CR or LF, followed by CRLF.CRLF, does end the data."""
    script = OPEN + b"a\r\r\n.\r\n" + OPEN[8:] + b"b\n\r\n.\r\nQUIT\r\n"
    driver = assert_same_in_any_split(script)
    ends = [e for e in driver.events if isinstance(e, EndOfData)]
    assert len(ends) == 2 and all(e.reject is None for e in ends)


def test_bdat_content_is_never_scanned_for_a_terminator() -> None:
    """RFC 3030: a BDAT chunk is counted, not parsed; CRLF.CRLF inside it is content."""
    chunk = b"a\r\n.\r\nMAIL FROM:<evil@example.org>\r\n"
    script = OPEN[:-6] + b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"QUIT\r\n"
    driver = assert_same_in_any_split(script)
    assert [type(e) for e in driver.events].count(MailFrom) == 1
    assert b"".join(e.data for e in driver.events if isinstance(e, DataChunk)) == chunk
    assert any(isinstance(e, BdatChunk) and e.last for e in driver.events)


# --- STARTTLS command injection (RFC 3207 §4.2, CVE-2011-0411) -----------------------------

TLS_AUTH = ServerConfig(
    starttls=True, auth_mechanisms=(PlainMechanism,), auth_require_tls=False, requiretls=False
)
PLAIN = b"AUTH PLAIN " + base64.b64encode(b"\0user\0secret") + b"\r\n"
INJECTED = b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.net>\r\n" + PLAIN


def accept(event: Event) -> Reply:
    if type(event).__name__ == "AuthCredentials":
        return Reply(235, "Authentication succeeded", "2.7.0")
    return event.default_reply  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "before",
    [b"", b"EHLO c\r\n", b"EHLO c\r\n" + PLAIN, b"EHLO c\r\nMAIL FROM:<a@b.org>\r\nRSET\r\n"],
    ids=["before ehlo", "after ehlo", "after auth", "after a transaction"],
)
def test_starttls_discards_pipelined_commands_and_forgets_the_session(before: bytes) -> None:
    driver = Driver(TLS_AUTH, answer=accept)
    driver.pump()
    events = driver.feed(before + b"STARTTLS\r\n" + INJECTED + b"EHLO evil\r\nPARTIAL LI")
    assert isinstance(events[-1], StartTLS)  # nothing after it became an event
    conn = driver.conn
    assert conn.plaintext_discarded == len(INJECTED + b"EHLO evil\r\nPARTIAL LI")
    assert conn.tls_active and conn.state is ServerState.INITIAL
    assert conn.hello is None and not conn.authenticated and conn.recipients == 0
    # The TLS layer now: the first bytes are the client's, sent after the handshake.
    events = driver.feed(b"MAIL FROM:<a@example.org>\r\n" + PLAIN)
    assert [e.default_reply.code for e in events if isinstance(e, InvalidCommand)] == [503, 503]
    events = driver.feed(b"EHLO c\r\n")
    hello = events[0]
    assert isinstance(hello, Hello) and "STARTTLS" not in hello.default_reply.lines
    assert driver.feed(PLAIN)[0].__class__.__name__ == "AuthCredentials"
    assert conn.authenticated
    events = driver.feed(b"STARTTLS\r\n")
    assert isinstance(events[0], InvalidCommand)
    assert (events[0].default_reply.code, events[0].default_reply.enhanced) == (503, "5.5.1")


def test_starttls_discards_bytes_that_arrive_before_the_220() -> None:
    """What is buffered when the 220 is sent is discarded, however it came in."""
    conn = ServerConnection(TLS_AUTH)
    conn.send(Reply(220, "hi"))
    conn.receive_data(b"EHLO c\r\n")
    conn.send(conn.next_event().default_reply)  # type: ignore[union-attr]
    conn.receive_data(b"STARTTLS\r\n")
    event = conn.next_event()
    assert isinstance(event, StartTLS)
    conn.receive_data(b"RSET\r\n")  # read while the application was deciding
    conn.receive_data(b"MAIL FROM:<evil@example.org>\r\n")
    conn.send(event.default_reply)
    assert conn.plaintext_discarded == len(b"RSET\r\nMAIL FROM:<evil@example.org>\r\n")
    assert conn.next_event() is NEED_DATA


def test_refused_starttls_keeps_the_session_and_its_commands() -> None:
    def refuse_tls(event: Event) -> Reply:
        if isinstance(event, StartTLS):
            return Reply(454, "TLS not available due to temporary reason", "4.7.0")
        return event.default_reply  # type: ignore[union-attr]

    driver = Driver(TLS_AUTH, answer=refuse_tls)
    driver.pump()
    driver.feed(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<a@example.org>\r\n")
    assert driver.replies() == [(250, None), (454, "4.7.0"), (250, "2.1.0")]
    conn = driver.conn
    assert conn.plaintext_discarded == 0 and not conn.tls_active
    assert conn.hello is not None and conn.state is ServerState.MAIL


# --- over-long lines: memory bounded by the limit, not by the input -------------------------

PIECE = b"x" * 65536
HUNDRED_MB = 100 * 1024 * 1024 // len(PIECE)  # pieces


def greeted(config: ServerConfig, lines: list[bytes]) -> ServerConnection:
    conn = ServerConnection(config)
    conn.send(Reply(220, "hi"))
    for line in lines:
        conn.receive_data(line)
        conn.send(conn.next_event().default_reply)  # type: ignore[union-attr]
    return conn


TRANSACTION = [b"EHLO c\r\n", b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@example.net>\r\n"]
AUTH_PLAINTEXT = ServerConfig(auth_mechanisms=(PlainMechanism,), auth_require_tls=False)


def limit_for(state: str, config: ServerConfig) -> int:
    if state == "auth":
        return SASL_LINE_LIMIT
    if state == "command":
        conn = ServerConnection(config)
        return conn._line_limit
    return 5  # DATA keeps at most a partial terminator


@pytest.mark.parametrize(
    ("state", "config", "setup", "reply"),
    [
        ("command", ServerConfig(), [], (500, "5.5.2")),
        ("command", AUTH_PLAINTEXT, [], (500, "5.5.2")),
        ("auth", AUTH_PLAINTEXT, [b"EHLO c\r\n", b"AUTH PLAIN\r\n"], (500, "5.5.6")),
        ("data", ServerConfig(), [*TRANSACTION, b"DATA\r\n"], (552, "5.3.4")),
        ("data", ServerConfig(max_message_size=None), [*TRANSACTION, b"DATA\r\n"], (500, "5.5.2")),
    ],
    ids=["command", "command with auth", "sasl response", "data", "data without size limit"],
)
def test_100_mb_line_costs_no_more_than_the_limit(
    state: str, config: ServerConfig, setup: list[bytes], reply: tuple[int, str]
) -> None:
    conn = greeted(config, setup)
    bound = limit_for(state, config)
    for _ in range(HUNDRED_MB):
        conn.receive_data(PIECE)
        while (event := conn.next_event()) is not NEED_DATA:
            assert isinstance(event, DataChunk)  # the start of the line, before it got too long
        assert len(conn._buffer) <= bound
    conn.receive_data(b"\r\n.\r\nNOOP\r\n" if state == "data" else b"\r\nNOOP\r\n")
    while isinstance(event := conn.next_event(), DataChunk):
        pass
    refusal = event.reject if isinstance(event, EndOfData) else event.default_reply  # type: ignore[union-attr]
    assert refusal is not None and (refusal.code, refusal.enhanced) == reply
    conn.send(refusal)
    assert type(conn.next_event()).__name__ == "Noop"  # the session goes on


def test_100_mb_bdat_chunk_is_streamed_not_buffered() -> None:
    conn = greeted(ServerConfig(max_message_size=None), TRANSACTION)
    conn.receive_data(b"BDAT %d LAST\r\n" % (HUNDRED_MB * len(PIECE)))
    assert conn.next_event() is NEED_DATA
    streamed = 0
    for _ in range(HUNDRED_MB):
        conn.receive_data(PIECE)
        while isinstance(event := conn.next_event(), DataChunk):
            streamed += len(event.data)
        assert len(conn._buffer) == 0
    assert streamed == HUNDRED_MB * len(PIECE)
    assert isinstance(event, BdatChunk) and event.last


def test_over_long_line_in_many_small_pieces_keeps_the_first_bytes_only() -> None:
    """The InvalidCommand names the line by its first 64 octets, not by all of it."""
    conn = greeted(ServerConfig(), [])
    conn.receive_data(b"NOOP ")
    for _ in range(200):
        conn.receive_data(b"y" * 1000)
        assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\r\n")
    event = conn.next_event()
    assert isinstance(event, InvalidCommand) and event.line == (b"NOOP " + b"y" * 1000)[:64]


# --- one byte at a time: linear work ------------------------------------------------------


class CountingBuffer(bytearray):
    """A receive buffer that counts the octets its searches may look at."""

    scanned = 0

    def find(self, sub, start=None, end=None):  # type: ignore[no-untyped-def, override]
        self.scanned += _span(len(self), start, end)
        return super().find(sub, start, end)

    def rfind(self, sub, start=None, end=None):  # type: ignore[no-untyped-def, override]
        self.scanned += _span(len(self), start, end)
        return super().rfind(sub, start, end)


def _span(size: int, start: int | None, end: int | None) -> int:
    return len(range(size)[slice(start, end)])


@pytest.mark.parametrize(
    ("config", "setup", "line"),
    [
        (ServerConfig(), [], b"NOOP " + b"x" * 500 + b"\r\n"),
        (AUTH_PLAINTEXT, [b"EHLO c\r\n", b"AUTH PLAIN\r\n"], b"A" * 12000 + b"\r\n"),
        (ServerConfig(), [*TRANSACTION, b"DATA\r\n"], (b"y" * 998 + b"\r\n") * 20 + b".\r\n"),
        (ServerConfig(), [], b"NOOP " + b"x" * 20000 + b"\r\n"),
    ],
    ids=["command", "sasl response", "data", "over-long command"],
)
def test_byte_at_a_time_scans_each_byte_a_bounded_number_of_times(
    config: ServerConfig, setup: list[bytes], line: bytes
) -> None:
    conn = greeted(config, setup)
    conn._buffer = buffer = CountingBuffer(conn._buffer)
    events: list[object] = []
    for byte in line:
        conn.receive_data(bytes([byte]))
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
            if not isinstance(event, DataChunk):
                break
        assert conn._buffer is buffer  # the buffer was kept, so the count is the whole story
    assert events and not isinstance(events[-1], DataChunk)  # the line was read to its end
    # Quadratic rescanning would look at ~len(line)**2 / 2 octets; linear work at a few per byte.
    assert buffer.scanned <= 16 * len(line), buffer.scanned


def test_counting_buffer_would_catch_a_rescan() -> None:
    """The measure works: rescanning from the start each time is quadratic in it."""
    buffer = CountingBuffer()
    for _ in range(1000):
        buffer += b"x"
        buffer.find(b"\n")
    assert buffer.scanned == 1000 * 1001 // 2
