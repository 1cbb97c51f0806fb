"""Every (ServerState, command) pair of the server engine, walked one by one.

The grids below are written by hand from RFC 5321 §4.1.4 / §3.1, RFC 3030, RFC 3207 and
RFC 4954, not computed from the engine's tables; a test then checks that they agree with
``ACCEPTS`` and ``REFUSALS`` in smtp_core/_state.py, and that they cover every state and every
verb, so a new state or command cannot slip in untested. The signals (PROXY header, close) and
the end of a transaction, the other rules of that file, are walked below them.
"""

from __future__ import annotations

import ast
import enum
import importlib.util
import inspect
from pathlib import Path

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
    _state,
)
from smtp_core._server import _COMMANDS
from smtp_core._state import (
    ACCEPTS,
    ON_NEGATIVE,
    ON_POSITIVE,
    ON_SIGNAL,
    REFUSALS,
    TRANSACTION_STATES,
    VERBS,
    Pending,
    Signal,
)

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


# --- Rule 4: the refusals table, every (state, verb) pair -----------------------------------

# The exact reply to each command a state refuses ("-": the state accepts the command).
REFUSAL_TEXTS = {
    "refused": "503 5.5.1 Service refused: only QUIT is allowed",
    "hello": "503 5.5.1 Send HELO/EHLO first",
    "mail": "503 5.5.1 Need MAIL command first",
    "nested": "503 5.5.1 Nested MAIL command",
    "no-rcpt": "554 5.5.1 No valid recipients",
    "in-tx": "503 5.5.1 Not allowed during a mail transaction",
    "bdat": "503 5.5.1 A BDAT transaction is open: send BDAT ... LAST or RSET first",
}
REFUSAL_GRID = """
verb     | REFUSED | INITIAL | READY | MAIL    | RCPT   | CHUNKING
HELO     | refused | -       | -     | -       | -      | -
EHLO     | refused | -       | -     | -       | -      | -
LHLO     | refused | -       | -     | -       | -      | -
MAIL     | refused | hello   | -     | nested  | nested | bdat
RCPT     | refused | hello   | mail  | -       | -      | bdat
DATA     | refused | hello   | mail  | no-rcpt | -      | bdat
BDAT     | refused | hello   | mail  | no-rcpt | -      | -
RSET     | refused | -       | -     | -       | -      | -
NOOP     | refused | -       | -     | -       | -      | -
VRFY     | refused | -       | -     | -       | -      | -
EXPN     | refused | -       | -     | -       | -      | -
HELP     | refused | -       | -     | -       | -      | -
QUIT     | -       | -       | -     | -       | -      | -
STARTTLS | refused | -       | -     | in-tx   | in-tx  | bdat
AUTH     | refused | hello   | -     | in-tx   | in-tx  | bdat
"""
REFUSAL_CELLS = parse_grid(REFUSAL_GRID)


def test_refusal_grid_covers_every_command_state_and_verb() -> None:
    assert {state for state, _ in REFUSAL_CELLS} == set(ACCEPTS) == set(REFUSALS)
    assert {verb for _, verb in REFUSAL_CELLS} == VERBS == set(_COMMANDS)


@pytest.mark.parametrize(
    ("state", "verb"), list(REFUSAL_CELLS), ids=[f"{s.name}-{v}" for s, v in REFUSAL_CELLS]
)
def test_refusals_table_in_state(state: ServerState, verb: str) -> None:
    """Each pair is either accepted or refused by the table, never both; a refused command gets
    the table's reply, byte for byte, end to end (LHLO asked of an LMTP engine, where it is a
    command at all)."""
    name = REFUSAL_CELLS[state, verb]
    refusal = REFUSALS[state].get(verb)
    assert (verb in ACCEPTS[state]) == (name == "-") == (refusal is None)
    if refusal is None:
        return
    conn = greeted(LMTP if verb == "LHLO" else SMTP, state)
    event = command(conn, verb)
    assert isinstance(event, InvalidCommand), event
    assert event.default_reply == refusal
    assert conn.send(event.default_reply) == REFUSAL_TEXTS[name].encode() + b"\r\n"
    assert conn.state is state


# --- Rule 5: what moves the state besides a reply -------------------------------------------


@pytest.mark.parametrize("state", list(ServerState), ids=lambda s: s.name)
def test_signals_in_state(state: ServerState) -> None:
    """A PROXY header is read only in PROXY (then the greeting is due); the connection closes
    from every state. A signal the table does not list for a state is the engine's own bug."""
    assert ON_SIGNAL[Signal.CLOSED][state] is S.CLOSED
    conn = _in_state(state)
    machine = conn._machine
    if state is S.PROXY:
        machine.signal(Signal.PROXY_HEADER)
        assert (conn.state, conn.pending_replies) == (S.GREETING, 1)
    else:
        assert state not in ON_SIGNAL[Signal.PROXY_HEADER]
        with pytest.raises(LocalProtocolError):
            machine.signal(Signal.PROXY_HEADER)
        assert conn.state is state
    machine.signal(Signal.CLOSED)
    assert (conn.state, conn.pending_replies) == (S.CLOSED, 0)


def test_only_the_state_module_assigns_a_state() -> None:
    """h11's discipline: the engine reads its state and asks _state.py to move it; it never
    assigns the state, what is pending or the transaction count itself."""
    tree = ast.parse(inspect.getsource(inspect.getmodule(ServerConnection)))  # type: ignore[arg-type]
    owned = {"state", "_state", "pending", "_pending", "transactions_ended"}
    assigned = [
        f"line {node.lineno}: .{target.attr}"
        for node in ast.walk(tree)
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Attribute) and target.attr in owned
    ]
    assert assigned == []


# --- Rule 6: where a mail transaction ends ----------------------------------------------------

TX = "EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"

# (id, bytes from the client, events answered 451 instead of their default reply, transactions
# ended, a transaction still open afterwards)
ENDINGS = [
    ("end-of-data", TX + "DATA\r\nhi\r\n.\r\n", set(), 1, False),
    ("end-of-data-refused", TX + "DATA\r\nhi\r\n.\r\n", {"EndOfData"}, 1, False),
    ("bdat-last", TX + "BDAT 2 LAST\r\nhi", set(), 1, False),
    ("bdat-last-refused", TX + "BDAT 2 LAST\r\nhi", {"BdatChunk"}, 1, False),
    ("bdat-chunk", TX + "BDAT 2\r\nhi", set(), 0, True),
    ("bdat-chunk-refused", TX + "BDAT 2\r\nhi", {"BdatChunk"}, 1, False),
    ("rset", TX + "RSET\r\n", set(), 1, False),
    ("rset-refused", TX + "RSET\r\n", {"Reset"}, 0, True),
    ("rset-outside", "EHLO c\r\nRSET\r\n", set(), 0, False),
    ("ehlo", TX + "EHLO again\r\n", set(), 1, False),
    ("ehlo-refused", TX + "EHLO again\r\n", {"Hello"}, 0, True),
    ("ehlo-outside", "EHLO c\r\nEHLO again\r\n", set(), 0, False),
    ("mail-refused", "EHLO c\r\nMAIL FROM:<a@example.org>\r\n", {"MailFrom"}, 0, False),
    ("rcpt-refused", TX, {"RcptTo"}, 0, True),
    ("data-refused", TX + "DATA\r\n", {"StartData"}, 0, True),
    ("refused-command", TX + "MAIL FROM:<c@example.org>\r\n", set(), 0, True),
    ("starttls", "EHLO c\r\nSTARTTLS\r\n", set(), 0, False),
    ("auth", "EHLO c\r\nAUTH PLAIN AGEAYg==\r\n", set(), 0, False),
    ("two", TX + "DATA\r\nhi\r\n.\r\n" + TX[8:] + "BDAT 1 LAST\r\nx", set(), 2, False),
    ("quit", TX + "QUIT\r\n", set(), 0, False),  # the connection's end ends everything
]


@pytest.mark.parametrize(
    ("data", "refuse", "ended", "open_after"), [e[1:] for e in ENDINGS], ids=[e[0] for e in ENDINGS]
)
def test_transactions_ended_in_every_way(
    data: str, refuse: set[str], ended: int, open_after: bool
) -> None:
    """The engine counts each transaction that ends with the connection still open, once:
    the session forgets its envelope (and aborts step handlers) on exactly that signal."""
    conn = greeted(SMTP, S.INITIAL)
    conn.receive_data(data.encode())
    while (event := conn.next_event()) is not NEED_DATA and not isinstance(event, ConnectionClosed):
        assert not isinstance(event, InvalidCommand) or event.default_reply.code == 503, event
        reply = getattr(event, "default_reply", None)
        if reply is None:
            continue
        name = type(event).__name__
        if name in refuse and not (name == "Hello" and conn.hello is None):  # not the first
            reply = Reply(451, "Try again later", "4.3.0")
        conn.send(reply)
    assert conn.transactions_ended == ended
    assert conn.in_transaction is open_after


def test_state_diagram_in_the_docs_is_drawn_from_the_tables() -> None:
    """docs/engine.md shows docs/state_diagram.py's output; after changing a table, run
    ``python docs/state_diagram.py --write``."""
    path = Path(__file__).resolve().parents[2] / "docs" / "state_diagram.py"
    spec = importlib.util.spec_from_file_location("state_diagram", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = module.PAGE.read_text(encoding="utf-8")
    assert module.current(page) == module.block()
    for state in ServerState:
        assert state.name in module.diagram()


# --- the fast paths of the state tables (issue 15) ---------------------------------------


@pytest.mark.parametrize("enum_class", [ServerState, Pending, Signal], ids=lambda c: c.__name__)
def test_members_hash_by_identity(enum_class: type[enum.Enum]) -> None:
    """The tables are keyed by members; their hash is object's (C-level), not Enum's
    Python-level hash of the name, and each member still finds its own entry only."""
    table = {member: member.name for member in enum_class}
    for member in enum_class:
        assert hash(member) == object.__hash__(member)
        assert table[member] == member.name
    assert "READY" not in table  # a member is not its name


@pytest.mark.parametrize(
    ("alias", "enum_class"), [(_state.S, ServerState), (_state.P, Pending)], ids=["S", "P"]
)
def test_fast_aliases_are_the_members(alias: object, enum_class: type[enum.Enum]) -> None:
    """S and P (what the engine reads members through) hold exactly the enum's members."""
    assert vars(alias) == dict(enum_class.__members__)
    for name, member in enum_class.__members__.items():
        assert getattr(alias, name) is member


@pytest.mark.parametrize("pending", [Pending.MAIL, Pending.RCPT, Pending.DATA, Pending.OTHER])
def test_mail_rcpt_data_and_noop_never_end_a_transaction(pending: Pending) -> None:
    """Rule 6 for the commands the Session answers without checking for a transaction's end
    (smtp_core/_session.py, ``_converse``): no reply to them, positive or negative, leads
    from a transaction state back to READY."""
    for table in (ON_POSITIVE, ON_NEGATIVE):
        for state in TRANSACTION_STATES:
            assert table.get(state, {}).get(pending, state) is not ServerState.READY
