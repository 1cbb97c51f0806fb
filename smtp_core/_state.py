"""The server's states and every rule that moves between them, as tables.

Rule 1: the engine emits at most one event that needs a reply at a time; until the application
sends that reply (``Pending`` says what it answers), ``next_event()`` returns PAUSED.
Rule 2: a positive reply moves the state as ON_POSITIVE says; a negative reply leaves it alone
unless ON_NEGATIVE says otherwise (a refused BDAT chunk ends the transaction, for instance).
Rule 3: a 221 to QUIT, or a 421 at any time, closes the session.
Rule 4: a command not in ACCEPTS for the current state is refused before it reaches the
application (503, or whatever the RFC asks for that pair), with its bytes still consumed.
"""

from __future__ import annotations

import enum

from ._errors import LocalProtocolError

__all__ = [
    "ACCEPTS",
    "ON_NEGATIVE",
    "ON_POSITIVE",
    "Pending",
    "ServerState",
    "is_positive",
    "next_state",
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


S = ServerState
P = Pending

_ANYTIME = frozenset({"NOOP", "VRFY", "EXPN", "HELP", "QUIT", "RSET"})
_HELLO = frozenset({"HELO", "EHLO", "LHLO"})

ACCEPTS: dict[ServerState, frozenset[str]] = {
    S.REFUSED: frozenset({"QUIT"}),
    S.INITIAL: _ANYTIME | _HELLO | {"STARTTLS"},
    S.READY: _ANYTIME | _HELLO | {"MAIL", "AUTH", "STARTTLS"},
    S.MAIL: _ANYTIME | _HELLO | {"RCPT"},
    S.RCPT: _ANYTIME | _HELLO | {"RCPT", "DATA", "BDAT"},
    S.CHUNKING: _ANYTIME | _HELLO | {"BDAT"},
}

ON_POSITIVE: dict[ServerState, dict[Pending, ServerState]] = {
    S.GREETING: {P.GREETING: S.INITIAL},
    S.REFUSED: {},
    S.INITIAL: {P.HELLO: S.READY, P.STARTTLS: S.INITIAL},
    S.READY: {
        P.HELLO: S.READY,
        P.MAIL: S.MAIL,
        P.RESET: S.READY,
        P.AUTH_CHALLENGE: S.AUTH,
        P.AUTH_CREDENTIALS: S.READY,
        P.STARTTLS: S.INITIAL,
    },
    S.MAIL: {P.HELLO: S.READY, P.RCPT: S.RCPT, P.RESET: S.READY},
    S.RCPT: {
        P.HELLO: S.READY,
        P.RCPT: S.RCPT,
        P.DATA: S.DATA,
        P.BDAT: S.CHUNKING,
        P.BDAT_LAST: S.READY,
        P.RESET: S.READY,
    },
    S.CHUNKING: {P.HELLO: S.READY, P.BDAT: S.CHUNKING, P.BDAT_LAST: S.READY, P.RESET: S.READY},
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


def next_state(state: ServerState, pending: Pending, positive: bool) -> ServerState:
    """Rules 2 and 3: where a reply to ``pending`` in ``state`` leads."""
    if pending is P.QUIT:
        return S.CLOSED
    table = ON_POSITIVE if positive else ON_NEGATIVE
    return table.get(state, {}).get(pending, state)
