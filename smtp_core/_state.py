"""The server's states and every rule that moves between them, as tables.

Rule 1: the engine emits at most one event that needs a reply at a time; until the application
sends that reply (``Pending`` says what it answers), ``next_event()`` returns PAUSED.
Rule 2: a positive reply moves the state as ON_POSITIVE says; a negative reply leaves it alone
unless ON_NEGATIVE says otherwise (a refused BDAT chunk ends the transaction, for instance).
Rule 3: a 221 to QUIT (ON_POSITIVE), or a 421 at any time (Signal.CLOSED), closes the session.
Rule 4: a command not in ACCEPTS for the current state is refused before it reaches the
application with the reply REFUSALS names for that pair (503, or whatever the RFC asks for),
with its bytes still consumed.
Rule 5: what is not a reply moves the state only as ON_SIGNAL says: the PROXY header read,
the connection closed (EOF, a 421, framing broken beyond recovery).
Rule 6: a reply that leads from a transaction state (TRANSACTION_STATES) back to READY ends the
mail transaction: end of data, RSET, a new HELO/EHLO, a refused BDAT chunk. The engine counts
them (``transactions_ended``) so the session forgets its envelope exactly when the engine does.

ServerMachine holds the state and carries out these rules; nothing else assigns a state
(h11's discipline: a state changed outside this file is a state a reader cannot find).
"""

from __future__ import annotations

import enum
import types
from typing import cast

from ._errors import LocalProtocolError
from ._events import Reply

__all__ = [
    "ACCEPTS",
    "ON_NEGATIVE",
    "ON_POSITIVE",
    "ON_SIGNAL",
    "REFUSALS",
    "TRANSACTION_STATES",
    "VERBS",
    "Pending",
    "ServerMachine",
    "ServerState",
    "Signal",
    "is_positive",
]


class ServerState(enum.Enum):
    PROXY = "PROXY"  #: waiting for the PROXY protocol header
    GREETING = "GREETING"  #: waiting for the application's greeting
    REFUSED = "REFUSED"  #: greeted with 554: only QUIT is served (RFC 5321 §3.1)
    INITIAL = "INITIAL"  #: waiting for EHLO/HELO/LHLO (also right after STARTTLS)
    READY = "READY"  #: greeted, no transaction
    MAIL = "MAIL"  #: MAIL accepted, no recipient yet
    RCPT = "RCPT"  #: at least one recipient accepted
    DATA = "DATA"  #: reading DATA content up to CRLF.CRLF
    CHUNKING = "CHUNKING"  #: between BDAT chunks of one message (RFC 3030)
    AUTH = "AUTH"  #: inside a SASL exchange: lines are responses, not commands
    CLOSED = "CLOSED"

    # Members are singletons compared by identity; Enum's own __hash__ hashes the name in
    # Python code, once per table lookup on the path of every command and reply (as the
    # client's ClientState).
    __hash__ = object.__hash__


class Pending(enum.Enum):
    """What the reply the engine waits for will answer."""

    GREETING = "GREETING"
    HELLO = "HELLO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"  # the 354 go-ahead
    END_OF_DATA = "END_OF_DATA"
    BDAT = "BDAT"
    BDAT_LAST = "BDAT_LAST"
    RESET = "RESET"
    AUTH_CHALLENGE = "AUTH_CHALLENGE"
    AUTH_CREDENTIALS = "AUTH_CREDENTIALS"
    STARTTLS = "STARTTLS"
    QUIT = "QUIT"
    OTHER = "OTHER"  # NOOP, VRFY, EXPN, HELP
    INVALID = "INVALID"  # an InvalidCommand: only 4xx/5xx

    __hash__ = object.__hash__  # as ServerState's


class Signal(enum.Enum):
    """What moves the state without being a reply (Rule 5)."""

    PROXY_HEADER = "PROXY_HEADER"  #: the PROXY header was read: the greeting is due
    CLOSED = "CLOSED"  #: EOF, a 421 sent, or framing broken beyond recovery

    __hash__ = object.__hash__  # as ServerState's


# Python 3.11's EnumType defines __getattr__, so reading a member off an enum class
# (``ServerState.READY``) takes CPython's slow attribute hook, a method-wrapper call of about
# 1,500 machine instructions: as much as a dozen table lookups (3.12 dropped that
# __getattr__). The engine's hot paths read the very same members through these plain
# namespaces instead, typed as the enums; tests/engine/test_engine_states.py pins them.
S = cast("type[ServerState]", types.SimpleNamespace(**ServerState.__members__))
P = cast("type[Pending]", types.SimpleNamespace(**Pending.__members__))

_ANYTIME = frozenset({"NOOP", "VRFY", "EXPN", "HELP", "QUIT", "RSET"})
_HELLO = frozenset({"HELO", "EHLO", "LHLO"})
#: every command verb the engine knows
VERBS = _ANYTIME | _HELLO | {"MAIL", "RCPT", "DATA", "BDAT", "STARTTLS", "AUTH"}

ACCEPTS: dict[ServerState, frozenset[str]] = {
    S.REFUSED: frozenset({"QUIT"}),
    S.INITIAL: _ANYTIME | _HELLO | {"STARTTLS"},
    S.READY: _ANYTIME | _HELLO | {"MAIL", "AUTH", "STARTTLS"},
    S.MAIL: _ANYTIME | _HELLO | {"RCPT"},
    S.RCPT: _ANYTIME | _HELLO | {"RCPT", "DATA", "BDAT"},
    S.CHUNKING: _ANYTIME | _HELLO | {"BDAT"},
}


def _r(code: int, text: str) -> Reply:
    return Reply(code, text, "5.5.1")


R_HELLO_FIRST = _r(503, "Send HELO/EHLO first")
R_MAIL_FIRST = _r(503, "Need MAIL command first")
R_NESTED_MAIL = _r(503, "Nested MAIL command")
R_NO_RECIPIENTS = _r(554, "No valid recipients")  # RFC 5321 §3.3: DATA without a recipient
R_IN_TRANSACTION = _r(503, "Not allowed during a mail transaction")  # AUTH: RFC 4954 §4
R_AFTER_BDAT = _r(503, "A BDAT transaction is open: send BDAT ... LAST or RSET first")
R_REFUSED = _r(503, "Service refused: only QUIT is allowed")  # RFC 5321 §3.1


def _all_but(state: ServerState, reply: Reply) -> dict[str, Reply]:
    return dict.fromkeys(sorted(VERBS - ACCEPTS[state]), reply)


#: Rule 4: the reply to each command a state does not accept (every other pair is in ACCEPTS).
REFUSALS: dict[ServerState, dict[str, Reply]] = {
    S.REFUSED: _all_but(S.REFUSED, R_REFUSED),
    S.INITIAL: _all_but(S.INITIAL, R_HELLO_FIRST),
    S.READY: {"RCPT": R_MAIL_FIRST, "DATA": R_MAIL_FIRST, "BDAT": R_MAIL_FIRST},
    S.MAIL: {
        "MAIL": R_NESTED_MAIL,
        "DATA": R_NO_RECIPIENTS,
        "BDAT": R_NO_RECIPIENTS,
        "AUTH": R_IN_TRANSACTION,
        "STARTTLS": R_IN_TRANSACTION,
    },
    S.RCPT: {"MAIL": R_NESTED_MAIL, "AUTH": R_IN_TRANSACTION, "STARTTLS": R_IN_TRANSACTION},
    S.CHUNKING: _all_but(S.CHUNKING, R_AFTER_BDAT),
}

ON_POSITIVE: dict[ServerState, dict[Pending, ServerState]] = {
    S.GREETING: {P.GREETING: S.INITIAL},
    S.REFUSED: {P.QUIT: S.CLOSED},
    S.INITIAL: {P.HELLO: S.READY, P.STARTTLS: S.INITIAL, P.QUIT: S.CLOSED},
    S.READY: {
        P.HELLO: S.READY,
        P.MAIL: S.MAIL,
        P.RESET: S.READY,
        P.AUTH_CHALLENGE: S.AUTH,
        P.AUTH_CREDENTIALS: S.READY,
        P.STARTTLS: S.INITIAL,  # RFC 3207 §4.2: forget the client's HELO, start over
        P.QUIT: S.CLOSED,
    },
    S.MAIL: {P.HELLO: S.READY, P.RCPT: S.RCPT, P.RESET: S.READY, P.QUIT: S.CLOSED},
    S.RCPT: {
        P.HELLO: S.READY,
        P.RCPT: S.RCPT,
        P.DATA: S.DATA,
        P.BDAT: S.CHUNKING,
        P.BDAT_LAST: S.READY,
        P.RESET: S.READY,
        P.QUIT: S.CLOSED,
    },
    S.CHUNKING: {
        P.HELLO: S.READY,
        P.BDAT: S.CHUNKING,
        P.BDAT_LAST: S.READY,
        P.RESET: S.READY,
        P.QUIT: S.CLOSED,
    },
    S.DATA: {P.END_OF_DATA: S.READY},
    S.AUTH: {P.AUTH_CHALLENGE: S.AUTH, P.AUTH_CREDENTIALS: S.READY},
}

ON_NEGATIVE: dict[ServerState, dict[Pending, ServerState]] = {
    S.GREETING: {P.GREETING: S.REFUSED},
    S.DATA: {P.END_OF_DATA: S.READY},
    S.RCPT: {P.BDAT: S.READY, P.BDAT_LAST: S.READY},
    S.CHUNKING: {P.BDAT: S.READY, P.BDAT_LAST: S.READY},
    S.AUTH: {P.AUTH_CHALLENGE: S.READY, P.AUTH_CREDENTIALS: S.READY, P.INVALID: S.READY},
}

#: Rule 5: the states each signal may come in, and where it leads.
ON_SIGNAL: dict[Signal, dict[ServerState, ServerState]] = {
    Signal.PROXY_HEADER: {S.PROXY: S.GREETING},
    Signal.CLOSED: dict.fromkeys(ServerState, S.CLOSED),
}

#: Rule 6: the states of an open mail transaction
TRANSACTION_STATES = frozenset({S.MAIL, S.RCPT, S.DATA, S.CHUNKING})

# The positive codes each pending command may get; any 4xx/5xx is a negative answer.
_POSITIVE_CODES: dict[Pending, frozenset[int]] = {
    P.GREETING: frozenset({220}),
    P.HELLO: frozenset({250}),
    P.MAIL: frozenset({250}),
    P.RCPT: frozenset({250, 251}),
    P.DATA: frozenset({354}),
    P.END_OF_DATA: frozenset({250}),
    P.BDAT: frozenset({250}),
    P.BDAT_LAST: frozenset({250}),
    P.RESET: frozenset({250}),
    P.AUTH_CHALLENGE: frozenset({334}),
    P.AUTH_CREDENTIALS: frozenset({235}),
    P.STARTTLS: frozenset({220}),
    P.QUIT: frozenset({221}),
    P.OTHER: frozenset({211, 214, 250, 251, 252}),
    P.INVALID: frozenset(),
}
_NO_NEGATIVE = frozenset({P.QUIT})


def is_positive(pending: Pending, code: int) -> bool:
    """Classify a reply to ``pending``; raise LocalProtocolError if it fits no answer."""
    if code in _POSITIVE_CODES[pending]:
        return True
    if 400 <= code < 600 and pending not in _NO_NEGATIVE:
        if pending is P.GREETING and code != 554:
            raise LocalProtocolError("a greeting is 220, 554 or 421")
        return False
    raise LocalProtocolError(f"reply {code} does not answer {pending.name}")


class ServerMachine:
    """The server's state, the reply it waits for and the transactions it ended: the only
    code that changes them, each change by one of the rules above (h11's ConnectionState)."""

    __slots__ = ("pending", "state", "transactions_ended")

    def __init__(self, *, proxy_protocol: bool) -> None:
        self.state = S.PROXY if proxy_protocol else S.GREETING
        #: what the reply the engine waits for answers (Rule 1); None: no reply is due
        self.pending: Pending | None = None if proxy_protocol else P.GREETING
        self.transactions_ended = 0  #: Rule 6

    def expect(self, pending: Pending) -> None:
        """Rule 1: an event that needs a reply went out; the next one waits for its answer."""
        self.pending = pending

    def answer(self, positive: bool) -> bool:
        """Rules 2, 3 and 6: the pending command got its (last) reply; move the state.
        True when that reply ended the mail transaction."""
        pending = self.pending
        assert pending is not None
        self.pending = None
        before = self.state
        moves = (ON_POSITIVE if positive else ON_NEGATIVE).get(before)
        after = self.state = before if moves is None else moves.get(pending, before)
        if after is S.READY and before in TRANSACTION_STATES:
            self.transactions_ended += 1
            return True
        return False

    def signal(self, signal: Signal) -> None:
        """Rule 5: a change that is not a reply; nothing is pending after it but a greeting."""
        after = ON_SIGNAL[signal].get(self.state)
        if after is None:
            raise LocalProtocolError(f"{signal.name} cannot happen in state {self.state.name}")
        self.state = after
        self.pending = P.GREETING if after is S.GREETING else None
