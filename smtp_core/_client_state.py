"""The client engine's states and every rule that moves between them, as tables.

``ClientConnection`` never assigns a state: it asks ``ClientStates`` (one per connection), and
``ClientStates`` moves only as these tables say. Two states are tracked: ``state``, what the
server's replies have confirmed, and ``projected``, the state once every command already
written has succeeded (what Rule 1 checks a new command against, so pipelined commands can be
written before the replies to the earlier ones arrive).

Rule 1: a command is written only when it fits the projected state (``ALLOWED``). Without
PIPELINING nothing is written while a reply is outstanding; with it, nothing is written after a
command that ends a group (``ENDS_GROUP``, RFC 2920 §3.1: EHLO, HELO, LHLO, DATA, VRFY, NOOP,
QUIT, STARTTLS, AUTH, and the greeting).
Rule 2: replies answer the outstanding commands in order; a reply moves the state as
``ON_REPLY`` says for (state, command, outcome), and leaves it alone otherwise.
Rule 3: a 421 answers the oldest outstanding command and ends the session, as does any reply to
QUIT (``CLOSED``); the other outstanding commands get no reply.
Rule 4: a positive reply that no answer to its command can be (``POSITIVE``: 250 to DATA, 354
to MAIL) is the server's error (``ERROR``), as are the reader's (see ``_reply_reader``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import attrs

from ._errors import LocalProtocolError

__all__ = [
    "ALLOWED",
    "ENDS_GROUP",
    "ON_REPLY",
    "POSITIVE",
    "REPLY_TIMEOUTS",
    "SASL_RESPONSE",
    "ClientState",
    "ClientStates",
    "Command",
    "Outcome",
    "next_state",
    "outcome_of",
]


class ClientState(enum.Enum):
    """Where the session stands, as far as the server's replies have confirmed."""

    GREETING = "GREETING"  #: waiting for the server's greeting
    REFUSED = "REFUSED"  #: greeted with 554 (or another refusal): only QUIT is left
    INITIAL = "INITIAL"  #: EHLO/HELO/LHLO needed (also right after STARTTLS)
    READY = "READY"  #: greeted, no transaction
    MAIL = "MAIL"  #: MAIL accepted, no recipient accepted yet
    RCPT = "RCPT"  #: at least one recipient accepted
    DATA = "DATA"  #: 354 received: send the content with ``send_message_data``
    CHUNKING = "CHUNKING"  #: between BDAT chunks of one message
    AUTH = "AUTH"  #: inside a SASL exchange: answer with ``auth_respond`` or ``auth_cancel``
    CLOSED = "CLOSED"  #: QUIT answered, 421 received or the connection closed
    ERROR = "ERROR"  #: the server broke the protocol; nothing more can be read or written

    # Members are singletons compared by identity; Enum's own __hash__ hashes the name in
    # Python code, once per table lookup on the path of every reply.
    __hash__ = object.__hash__


class Command(enum.StrEnum):
    """What a reply answers. Compares equal to its plain string (``Command.MAIL == "MAIL"``)."""

    CONNECT = "CONNECT"  #: the greeting
    EHLO = "EHLO"
    HELO = "HELO"
    LHLO = "LHLO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"  #: the 354 go-ahead (or a refusal)
    END_OF_DATA = "END_OF_DATA"  #: the final reply to a message sent after DATA
    BDAT = "BDAT"
    BDAT_LAST = "BDAT_LAST"  #: the final reply to a message sent with BDAT
    RSET = "RSET"
    NOOP = "NOOP"
    VRFY = "VRFY"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"  #: the AUTH line and every SASL response after it
    QUIT = "QUIT"
    UNSOLICITED = "UNSOLICITED"  #: a 421 that arrived while no command was outstanding


class Outcome(enum.Enum):
    """A reply code's class, as the tables see it."""

    DONE = 2  #: 2xx
    MORE = 3  #: 3xx: 354 to DATA, 334 to AUTH
    FAILED = 4  #: 4xx or 5xx

    __hash__ = object.__hash__  # as ClientState's


S = ClientState
C = Command
_DONE, _MORE, _FAILED = Outcome.DONE, Outcome.MORE, Outcome.FAILED

_HELLOS = frozenset({C.EHLO, C.HELO, C.LHLO})
_ANYTIME = frozenset({C.RSET, C.NOOP, C.VRFY, C.QUIT})
SASL_RESPONSE = "SASL response"  #: a Rule 1 key only: replies to it are reported as AUTH

#: Rule 1: what may be written in each (projected) state.
ALLOWED: dict[ClientState, frozenset[str]] = {
    S.GREETING: frozenset(),
    S.REFUSED: frozenset({C.QUIT}),
    S.INITIAL: _ANYTIME | _HELLOS,
    S.READY: _ANYTIME | _HELLOS | {C.MAIL, C.STARTTLS, C.AUTH},
    S.MAIL: _ANYTIME | _HELLOS | {C.RCPT},
    S.RCPT: _ANYTIME | _HELLOS | {C.RCPT, C.DATA, C.BDAT, C.BDAT_LAST},
    S.DATA: frozenset({C.END_OF_DATA}),
    S.CHUNKING: frozenset({C.BDAT, C.BDAT_LAST, C.RSET, C.NOOP, C.QUIT}),
    S.AUTH: frozenset({SASL_RESPONSE}),
    S.CLOSED: frozenset(),
    S.ERROR: frozenset(),
}

#: Rule 1: commands after which nothing may be written until their reply is in (RFC 2920 §3.1,
#: RFC 3207, RFC 4954). MAIL, RCPT, RSET, BDAT and the end of data may be followed.
ENDS_GROUP = frozenset(
    {C.CONNECT, C.EHLO, C.HELO, C.LHLO, C.DATA, C.VRFY, C.NOOP, C.QUIT, C.STARTTLS, C.AUTH}
)

_HELLO_DONE = {(hello, _DONE): S.READY for hello in _HELLOS}  # a new EHLO resets (5321 §4.1.4)

#: Rule 2: the only place the state moves (Rule 3 adds QUIT and 421, which end any state).
ON_REPLY: dict[ClientState, dict[tuple[Command, Outcome], ClientState]] = {
    S.GREETING: {(C.CONNECT, _DONE): S.INITIAL, (C.CONNECT, _FAILED): S.REFUSED},
    S.INITIAL: dict(_HELLO_DONE),
    S.READY: {
        **_HELLO_DONE,
        (C.MAIL, _DONE): S.MAIL,
        (C.STARTTLS, _DONE): S.INITIAL,
        (C.AUTH, _MORE): S.AUTH,
        (C.RSET, _DONE): S.READY,
    },
    S.MAIL: {
        **_HELLO_DONE,
        (C.RCPT, _DONE): S.RCPT,
        (C.RSET, _DONE): S.READY,
        # 354 although no recipient was accepted (pipelined, all refused): the client ends the
        # data at once with "." (send_message_data does), and the transaction fails.
        (C.DATA, _MORE): S.DATA,
        (C.BDAT_LAST, _DONE): S.READY,
    },
    S.RCPT: {
        **_HELLO_DONE,
        (C.DATA, _MORE): S.DATA,
        (C.BDAT, _DONE): S.CHUNKING,
        (C.BDAT, _FAILED): S.READY,  # RFC 3030 §2: a refused chunk fails the transaction
        (C.BDAT_LAST, _DONE): S.READY,
        (C.BDAT_LAST, _FAILED): S.READY,
        (C.RSET, _DONE): S.READY,
    },
    S.DATA: {(C.END_OF_DATA, _DONE): S.READY, (C.END_OF_DATA, _FAILED): S.READY},
    S.CHUNKING: {
        (C.BDAT_LAST, _DONE): S.READY,
        (C.BDAT, _FAILED): S.READY,
        (C.BDAT_LAST, _FAILED): S.READY,
        (C.RSET, _DONE): S.READY,
    },
    S.AUTH: {(C.AUTH, _MORE): S.AUTH, (C.AUTH, _DONE): S.READY, (C.AUTH, _FAILED): S.READY},
}

#: ON_REPLY flattened: one lookup per reply (the client's hot path).
_MOVES = {(s, c, o): to for s, moves in ON_REPLY.items() for (c, o), to in moves.items()}

#: Rule 4: the positive outcomes each command can get; 4xx/5xx is always a possible answer.
POSITIVE: dict[Command, frozenset[Outcome]] = {c: frozenset({_DONE}) for c in Command}
POSITIVE[C.DATA] = frozenset({_MORE})
POSITIVE[C.AUTH] = frozenset({_DONE, _MORE})

#: The outcome assumed for outstanding commands when checking what may be written next.
_HOPED: dict[Command, Outcome] = {c: next(iter(POSITIVE[c])) for c in Command}
_HOPED[C.AUTH] = _DONE

#: RFC 5321 §4.5.3.2: how long a client waits for each reply, in seconds.
REPLY_TIMEOUTS: dict[Command, float] = {c: 300.0 for c in Command}
REPLY_TIMEOUTS[C.DATA] = 120.0
REPLY_TIMEOUTS[C.END_OF_DATA] = 600.0
REPLY_TIMEOUTS[C.BDAT_LAST] = 600.0


def next_state(state: ClientState, command: Command, outcome: Outcome) -> ClientState:
    """Rules 2 and 3 for a reply that is not a 421 (a 421 closes whatever it answers)."""
    if command is C.QUIT:
        return S.CLOSED
    return _MOVES.get((state, command, outcome), state)


_BY_CLASS = {2: _DONE, 3: _MORE, 4: _FAILED, 5: _FAILED}


def outcome_of(command: Command, code: int) -> Outcome | None:
    """Rule 4: the reply code's outcome, or None when no answer to ``command`` can be it."""
    outcome = _BY_CLASS[code // 100]  # the reader lets only 2xx to 5xx through
    if outcome is not _FAILED and outcome not in POSITIVE[command]:
        return None
    return outcome


_START = next_state(S.GREETING, C.CONNECT, _HOPED[C.CONNECT])


@attrs.define(eq=False)
class ClientStates:
    """One connection's confirmed and projected states; the only code that changes them."""

    state: ClientState = S.GREETING
    projected: ClientState = _START  #: the greeting is outstanding from the start

    def check_write(self, verb: str, last: Command | None, pipelining: bool) -> None:
        """Rule 1: raise LocalProtocolError unless ``verb`` may be written now; ``last`` is the
        newest outstanding command (None when every reply is in)."""
        if last is not None:
            if last is C.CONNECT:
                raise LocalProtocolError(f"{verb} before the server's greeting")
            if not pipelining:
                raise LocalProtocolError(
                    f"{verb} while the reply to {last} is outstanding "
                    "(the server does not offer PIPELINING: one command at a time)"
                )
            if last in ENDS_GROUP:
                raise LocalProtocolError(f"{verb} before the reply to {last} (RFC 2920 §3.1)")
        if verb not in ALLOWED[self.projected]:
            raise LocalProtocolError(f"{verb} is not allowed in state {self.projected.name}")

    def written(self, command: Command) -> None:
        """A command was written: assume it succeeds (Rule 1 checks the next one against that)."""
        self.projected = next_state(self.projected, command, _HOPED[command])

    def answered(self, command: Command, outcome: Outcome) -> bool:
        """Rule 2: a reply (not a 421) to ``command`` moves the state. True when it is not the
        reply hoped for: the caller then has the projected state worked out again
        (``reproject``) from the commands still outstanding."""
        self.state = next_state(self.state, command, outcome)
        return outcome is not _HOPED[command]

    def reproject(self, later: Iterable[Command]) -> None:
        """The projected state, from the confirmed one and the commands still outstanding
        (oldest first), each assumed to succeed."""
        projected = self.state
        for following in later:
            projected = next_state(projected, following, _HOPED[following])
        self.projected = projected

    def close(self) -> None:
        """Rule 3: QUIT answered, a 421, or the end of the stream."""
        self.state = self.projected = S.CLOSED

    def fail(self) -> None:
        """Rule 4: the server broke the protocol; nothing more is read or written."""
        self.state = self.projected = S.ERROR
