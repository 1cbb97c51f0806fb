"""Every (ServerState, command) pair of the server engine, walked one by one.

The grids below are written by hand from RFC 5321 §4.1.4 / §3.1, RFC 3030, RFC 3207 and
RFC 4954, not computed from the engine's tables; a test then checks that they agree with
``ACCEPTS`` in smtp_core/_state.py, and that they cover every state and every verb, so a new
state or command cannot slip in untested.
"""

from __future__ import annotations

import pytest

from smtp_core import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    DataChunk,
    EndOfData,
    Event,
    InvalidCommand,
    LocalProtocolError,
    LoginMechanism,
    PlainMechanism,
    RemoteProtocolError,
    Reply,
    ServerConfig,
    ServerConnection,
    ServerState,
)
from smtp_core._server import _COMMANDS
from smtp_core._state import ACCEPTS

S = ServerState
# STARTTLS offered, AUTH offered over plaintext, so neither is refused for want of TLS.
SMTP = ServerConfig(
    starttls=True, auth_mechanisms=(PlainMechanism, LoginMechanism), auth_require_tls=False
)
LMTP = ServerConfig(lmtp=True)

# One well-formed line per verb: only the state decides how it is answered.
LINES = {
    "HELO": "HELO client.example",
    "EHLO": "EHLO client.example",
    "LHLO": "LHLO client.example",
    "MAIL": "MAIL FROM:<a@example.org>",
    "RCPT": "RCPT TO:<b@example.net>",
    "DATA": "DATA",
    "BDAT": "BDAT 0 LAST",
    "RSET": "RSET",
    "NOOP": "NOOP",
    "VRFY": "VRFY bob",
    "EXPN": "EXPN staff",
    "HELP": "HELP",
    "QUIT": "QUIT",
    "STARTTLS": "STARTTLS",
    "AUTH": "AUTH LOGIN",
    "FROB": "FROB",  # not a command at all
}

# How to reach each state from a fresh, greeted connection (default replies throughout).
SETUP = {
    S.REFUSED: [],  # greeted with 554 instead of 220
    S.INITIAL: [],
    S.READY: ["EHLO c"],
    S.MAIL: ["EHLO c", "MAIL FROM:<a@example.org>"],
    S.RCPT: ["EHLO c", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>"],
    S.CHUNKING: ["EHLO c", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "BDAT 0"],
    S.DATA: ["EHLO c", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "DATA"],
    S.AUTH: ["EHLO c", "AUTH PLAIN"],
}

# A cell is either a refusal code (an InvalidCommand, enhanced code 5.5.1, state unchanged) or
# "Event code STATE": the event, its default reply's code, and the state that reply leads to.
GRID = """
verb     | REFUSED         | INITIAL              | READY
HELO     | 503             | Hello 250 READY      | Hello 250 READY
EHLO     | 503             | Hello 250 READY      | Hello 250 READY
LHLO     | 500             | 500                  | 500
MAIL     | 503             | 503                  | MailFrom 250 MAIL
RCPT     | 503             | 503                  | 503
DATA     | 503             | 503                  | 503
BDAT     | 503             | 503                  | 503
RSET     | 503             | Reset 250 INITIAL    | Reset 250 READY
NOOP     | 503             | Noop 250 INITIAL     | Noop 250 READY
VRFY     | 503             | Verify 252 INITIAL   | Verify 252 READY
EXPN     | 503             | Expand 502 INITIAL   | Expand 502 READY
HELP     | 503             | Help 214 INITIAL     | Help 214 READY
QUIT     | Quit 221 CLOSED | Quit 221 CLOSED      | Quit 221 CLOSED
STARTTLS | 503             | StartTLS 220 INITIAL | StartTLS 220 INITIAL
AUTH     | 503             | 503                  | AuthChallenge 334 AUTH
FROB     | 500             | 500                  | 500
"""

TRANSACTION_GRID = """
verb     | MAIL            | RCPT                | CHUNKING
HELO     | Hello 250 READY | Hello 250 READY     | Hello 250 READY
EHLO     | Hello 250 READY | Hello 250 READY     | Hello 250 READY
LHLO     | 500             | 500                 | 500
MAIL     | 503             | 503                 | 503
RCPT     | RcptTo 250 RCPT | RcptTo 250 RCPT     | 503
DATA     | 554             | StartData 354 DATA  | 503
BDAT     | 554             | BdatChunk 250 READY | BdatChunk 250 READY
RSET     | Reset 250 READY | Reset 250 READY     | Reset 250 READY
NOOP     | Noop 250 MAIL   | Noop 250 RCPT       | Noop 250 CHUNKING
VRFY     | Verify 252 MAIL | Verify 252 RCPT     | Verify 252 CHUNKING
EXPN     | Expand 502 MAIL | Expand 502 RCPT     | Expand 502 CHUNKING
HELP     | Help 214 MAIL   | Help 214 RCPT       | Help 214 CHUNKING
QUIT     | Quit 221 CLOSED | Quit 221 CLOSED     | Quit 221 CLOSED
STARTTLS | 503             | 503                 | 503
AUTH     | 503             | 503                 | 503
FROB     | 500             | 500                 | 500
"""

# In LMTP mode (RFC 2033 §4.1) LHLO takes the place of HELO and EHLO, which are unknown.
LMTP_GRID = """
verb | REFUSED | INITIAL         | READY           | MAIL
HELO | 500     | 500             | 500             | 500
EHLO | 500     | 500             | 500             | 500
LHLO | 503     | Hello 250 READY | Hello 250 READY | Hello 250 READY
"""

LMTP_TRANSACTION_GRID = """
verb | RCPT            | CHUNKING
HELO | 500             | 500
EHLO | 500             | 500
LHLO | Hello 250 READY | Hello 250 READY
"""

# Where a negative answer (4xx) to the default event leads, when it is not "stay where you
# are" (Rule 2 of _state.py): a refused BDAT chunk ends the transaction (RFC 3030).
ON_REFUSAL = {(S.RCPT, "BDAT"): S.READY, (S.CHUNKING, "BDAT"): S.READY}


def parse_grid(text: str) -> dict[tuple[ServerState, str], str]:
    rows = [[cell.strip() for cell in line.split("|")] for line in text.strip().splitlines()]
    states = [ServerState[name] for name in rows[0][1:]]
    return {
        (state, row[0]): cell
        for row in rows[1:]
        for state, cell in zip(states, row[1:], strict=True)
    }


SMTP_CELLS = parse_grid(GRID) | parse_grid(TRANSACTION_GRID)
LMTP_CELLS = parse_grid(LMTP_GRID) | parse_grid(LMTP_TRANSACTION_GRID)


def greeted(config: ServerConfig, state: ServerState) -> ServerConnection:
    """A connection driven into ``state`` by the SETUP lines, answered with default replies."""
    conn = ServerConnection(config)
    if state is S.REFUSED:
        conn.send(Reply(554, "No service", "5.7.1"))
    else:
        conn.send(Reply(220, "mx.example ESMTP"))
    for line in SETUP[state]:
        if config.lmtp:
            line = line.replace("EHLO", "LHLO")
        conn.receive_data(line.encode() + b"\r\n")
        event = conn.next_event()
        assert not isinstance(event, InvalidCommand), (state, line, event)
        conn.send(event.default_reply)  # type: ignore[union-attr]
    assert conn.state is state
    assert conn.next_event() is NEED_DATA
    return conn


def command(conn: ServerConnection, verb: str) -> Event:
    conn.receive_data(LINES[verb].encode() + b"\r\n")
    event = conn.next_event()
    assert not isinstance(event, type(NEED_DATA)), (verb, event)
    return event


def check_cell(config: ServerConfig, state: ServerState, verb: str, cell: str) -> None:
    conn = greeted(config, state)
    event = command(conn, verb)
    words = cell.split()
    if len(words) == 1:  # refused before reaching the application
        assert isinstance(event, InvalidCommand), event
        assert event.line == LINES[verb].encode()
        assert (event.default_reply.code, event.default_reply.enhanced) == (int(words[0]), "5.5.1")
        assert conn.next_event() is PAUSED  # a refusal needs its reply too
        with pytest.raises(LocalProtocolError):  # and only a negative one fits
            conn.send(Reply(250, "OK"))
        conn.send(event.default_reply)
        assert conn.state is state
        return
    name, code, after = words
    assert type(event).__name__ == name, event
    reply: Reply = event.default_reply  # type: ignore[union-attr]
    assert reply.code == int(code)
    assert conn.next_event() is PAUSED
    conn.send(reply)
    assert conn.state is ServerState[after]
    if after == "CLOSED":
        assert isinstance(conn.next_event(), ConnectionClosed)


@pytest.mark.parametrize(
    ("state", "verb"), list(SMTP_CELLS), ids=[f"{s.name}-{v}" for s, v in SMTP_CELLS]
)
def test_command_in_state(state: ServerState, verb: str) -> None:
    check_cell(SMTP, state, verb, SMTP_CELLS[state, verb])


@pytest.mark.parametrize(
    ("state", "verb"), list(LMTP_CELLS), ids=[f"{s.name}-{v}" for s, v in LMTP_CELLS]
)
def test_lmtp_hello_in_state(state: ServerState, verb: str) -> None:
    check_cell(LMTP, state, verb, LMTP_CELLS[state, verb])


@pytest.mark.parametrize(
    ("state", "verb"),
    [key for key, cell in SMTP_CELLS.items() if len(cell.split()) == 3 and "Quit" not in cell],
    ids=lambda value: value.name if isinstance(value, ServerState) else value,
)
def test_refused_answer_in_state(state: ServerState, verb: str) -> None:
    """Rule 2: a 4xx to the event leaves the state alone, except where ON_REFUSAL says."""
    conn = greeted(SMTP, state)
    command(conn, verb)
    conn.send(Reply(451, "Try again later", "4.3.0"))
    assert conn.state is ON_REFUSAL.get((state, verb), state)


def test_grids_cover_every_state_and_verb() -> None:
    walked = {state for state, _ in SMTP_CELLS} | {S.PROXY, S.GREETING, S.DATA, S.AUTH, S.CLOSED}
    assert walked == set(ServerState)
    assert set(LINES) - {"FROB"} == set(_COMMANDS)
    assert {verb for _, verb in SMTP_CELLS} == set(LINES)


@pytest.mark.parametrize(("cells", "lmtp"), [(SMTP_CELLS, False), (LMTP_CELLS, True)])
def test_grids_agree_with_accepts(cells: dict[tuple[ServerState, str], str], lmtp: bool) -> None:
    """A command reaches the application exactly when ACCEPTS lists it for the state (and the
    mode knows the verb at all: LHLO only in LMTP, HELO/EHLO only in SMTP)."""
    unknown = {"FROB"} | ({"HELO", "EHLO"} if lmtp else {"LHLO"})
    for (state, verb), cell in cells.items():
        reaches = len(cell.split()) == 3
        assert reaches == (verb in ACCEPTS[state] and verb not in unknown), (state, verb, cell)


# --- the states where a line is not a command ---------------------------------------------


@pytest.mark.parametrize("verb", list(LINES))
def test_proxy_state_takes_no_command(verb: str) -> None:
    """Waiting for a PROXY header, an SMTP command means the peer is no proxy: drop it."""
    conn = ServerConnection(SMTP, proxy_protocol=True)
    assert conn.state is S.PROXY
    conn.receive_data(LINES[verb].encode() + b"\r\n")
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.reply_hint is None  # the PROXY spec: close without a word
    assert conn.state is S.CLOSED
    assert isinstance(conn.next_event(), ConnectionClosed)


@pytest.mark.parametrize("verb", list(LINES))
def test_greeting_state_holds_commands_until_greeted(verb: str) -> None:
    """An early talker's command waits for the greeting, then is served as in INITIAL."""
    conn = ServerConnection(SMTP)
    conn.receive_data(LINES[verb].encode() + b"\r\n")
    assert conn.state is S.GREETING
    assert conn.next_event() is PAUSED
    assert conn.next_event() is PAUSED
    conn.send(Reply(220, "mx.example ESMTP"))
    event = conn.next_event()
    expected = SMTP_CELLS[S.INITIAL, verb].split()[0]
    name = "InvalidCommand" if expected.isdigit() else expected
    assert type(event).__name__ == name


@pytest.mark.parametrize("verb", list(LINES))
def test_data_state_takes_every_line_as_content(verb: str) -> None:
    conn = greeted(SMTP, S.DATA)
    conn.receive_data(LINES[verb].encode() + b"\r\n")
    content = b""
    while (event := conn.next_event()) is not NEED_DATA:
        assert isinstance(event, DataChunk), event
        content += event.data
    assert conn.state is S.DATA
    conn.receive_data(b".\r\n")
    while isinstance(event := conn.next_event(), DataChunk):
        content += event.data
    assert isinstance(event, EndOfData) and event.reject is None
    assert content == LINES[verb].encode() + b"\r\n"


@pytest.mark.parametrize("verb", list(LINES))
def test_auth_state_takes_every_line_as_a_sasl_response(verb: str) -> None:
    """Inside AUTH PLAIN a command line is the client's response: it is not base64 of
    ``authzid NUL user NUL password``, so the exchange fails with 501 5.5.2 and the line,
    which may hold a secret, is not repeated."""
    conn = greeted(SMTP, S.AUTH)
    event = command(conn, verb)
    assert isinstance(event, InvalidCommand)
    assert (event.default_reply.code, event.default_reply.enhanced) == (501, "5.5.2")
    assert event.line == b"<redacted>"
    conn.send(event.default_reply)
    assert conn.state is S.READY and not conn.authenticated


@pytest.mark.parametrize("verb", list(LINES))
def test_closed_state_ignores_everything(verb: str) -> None:
    conn = greeted(SMTP, S.READY)
    conn.send(command(conn, "QUIT").default_reply)  # type: ignore[union-attr]
    assert conn.state is S.CLOSED
    conn.receive_data(LINES[verb].encode() + b"\r\n")
    assert isinstance(conn.next_event(), ConnectionClosed)
    with pytest.raises(LocalProtocolError):
        conn.send(Reply(250, "OK"))


# --- EOF, 421 and stray replies in every state ----------------------------------------------


def _in_state(state: ServerState) -> ServerConnection:
    if state is S.PROXY:
        return ServerConnection(SMTP, proxy_protocol=True)
    if state is S.GREETING:
        return ServerConnection(SMTP)
    if state is S.CLOSED:
        conn = greeted(SMTP, S.READY)
        conn.send(Reply(421, "Shutting down", "4.3.2"))
        return conn
    return greeted(SMTP, state)


@pytest.mark.parametrize("state", list(ServerState), ids=lambda s: s.name)
def test_eof_in_state(state: ServerState) -> None:
    conn = _in_state(state)
    conn.receive_data(b"")
    if state is S.GREETING:
        assert conn.next_event() is PAUSED  # the greeting is still due
        conn.send(Reply(220, "hi"))
    assert isinstance(conn.next_event(), ConnectionClosed)
    assert conn.state is S.CLOSED


@pytest.mark.parametrize("state", list(ServerState), ids=lambda s: s.name)
def test_421_closes_in_state(state: ServerState) -> None:
    conn = _in_state(state)
    assert conn.send(Reply(421, "Shutting down", "4.3.2")) == b"421 4.3.2 Shutting down\r\n"
    assert conn.state is S.CLOSED
    assert isinstance(conn.next_event(), ConnectionClosed)


@pytest.mark.parametrize(
    "state", [s for s in ServerState if s is not S.GREETING], ids=lambda s: s.name
)
def test_reply_with_nothing_pending_in_state(state: ServerState) -> None:
    conn = _in_state(state)
    with pytest.raises(LocalProtocolError):
        conn.send(Reply(250, "OK", "2.0.0"))
    assert conn.state is state


@pytest.mark.parametrize(
    "state", [S.REFUSED, S.INITIAL, S.READY, S.MAIL, S.RCPT, S.CHUNKING], ids=lambda s: s.name
)
@pytest.mark.parametrize("line", [b"BDAT", b"BDAT x", b"BDAT -1", b"BDAT 5 LAST now"])
def test_bdat_without_a_size_is_fatal_in_every_command_state(
    state: ServerState, line: bytes
) -> None:
    """Without a byte count the chunk's end is unknown, whatever the state: 501, then close."""
    conn = greeted(SMTP, state)
    conn.receive_data(line + b"\r\nNOOP\r\n")
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    hint = info.value.reply_hint
    assert hint is not None and (hint.code, hint.enhanced) == (501, "5.5.4")
    assert conn.send(hint).startswith(b"501 5.5.4 ")
    assert isinstance(conn.next_event(), ConnectionClosed)
