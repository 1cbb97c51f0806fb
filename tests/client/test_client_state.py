"""Every (ClientState, command, outcome) triple of the client engine, walked one by one.

The grid below is written by hand from RFC 5321 §4.1.4 / §3.1, RFC 2920, RFC 3030, RFC 3207 and
RFC 4954, not computed from smtp_core/_client_state.py: one test checks the table against it for
every triple, another drives a real ``ClientConnection`` through every command it may write in
every state and every kind of reply, and a guard checks that the engine never assigns a state
itself (every change goes through ``ClientStates``).
"""

from __future__ import annotations

import ast
import inspect

import pytest

from smtp_core import _client
from smtp_core._client import ClientConnection
from smtp_core._client_state import (
    ClientState,
    ClientStates,
    Command,
    Outcome,
    next_state,
    outcome_of,
)
from smtp_core._errors import RemoteProtocolError
from tests.client.test_client import ACTIONS, EXPECTED_ALLOWED, answer, drain, make_in_state

S = ClientState
C = Command
DONE, MORE, FAILED = Outcome.DONE, Outcome.MORE, Outcome.FAILED

#: (state, command, outcome) -> the state after that reply; every other triple leaves the state
#: alone, except that any reply to QUIT closes (and so does a 421, which is not an outcome).
MOVES: dict[tuple[ClientState, Command, Outcome], ClientState] = {
    (S.GREETING, C.CONNECT, DONE): S.INITIAL,
    (S.GREETING, C.CONNECT, FAILED): S.REFUSED,  # 554 greeting: only QUIT is left
    **{
        (s, hello, DONE): S.READY  # a new EHLO also ends a transaction (RFC 5321 §4.1.4)
        for s in (S.INITIAL, S.READY, S.MAIL, S.RCPT)
        for hello in (C.EHLO, C.HELO, C.LHLO)
    },
    (S.READY, C.MAIL, DONE): S.MAIL,
    (S.READY, C.STARTTLS, DONE): S.INITIAL,  # RFC 3207: EHLO again
    (S.READY, C.AUTH, MORE): S.AUTH,
    (S.MAIL, C.RCPT, DONE): S.RCPT,
    (S.MAIL, C.RSET, DONE): S.READY,
    (S.MAIL, C.DATA, MORE): S.DATA,  # pipelined, every RCPT refused, 354 anyway: send "."
    (S.MAIL, C.BDAT_LAST, DONE): S.READY,
    (S.RCPT, C.DATA, MORE): S.DATA,
    (S.RCPT, C.BDAT, DONE): S.CHUNKING,
    (S.RCPT, C.BDAT, FAILED): S.READY,  # RFC 3030 §2: a refused chunk ends the transaction
    (S.RCPT, C.BDAT_LAST, DONE): S.READY,
    (S.RCPT, C.BDAT_LAST, FAILED): S.READY,
    (S.RCPT, C.RSET, DONE): S.READY,
    (S.DATA, C.END_OF_DATA, DONE): S.READY,
    (S.DATA, C.END_OF_DATA, FAILED): S.READY,
    (S.CHUNKING, C.BDAT_LAST, DONE): S.READY,
    (S.CHUNKING, C.BDAT_LAST, FAILED): S.READY,
    (S.CHUNKING, C.BDAT, FAILED): S.READY,
    (S.CHUNKING, C.RSET, DONE): S.READY,
    (S.AUTH, C.AUTH, MORE): S.AUTH,
    (S.AUTH, C.AUTH, DONE): S.READY,
    (S.AUTH, C.AUTH, FAILED): S.READY,
}

#: The positive replies each command can get (a 4xx/5xx can answer anything).
CAN_BE: dict[Command, set[Outcome]] = {c: {DONE, FAILED} for c in Command}
CAN_BE[C.DATA] = {MORE, FAILED}
CAN_BE[C.AUTH] = {DONE, MORE, FAILED}

TRIPLES = [(s, c, o) for s in ClientState for c in Command for o in Outcome]


@pytest.mark.parametrize(
    ("state", "command", "outcome"),
    TRIPLES,
    ids=[f"{s.name}-{c.name}-{o.name}" for s, c, o in TRIPLES],
)
def test_every_state_command_and_outcome(
    state: ClientState, command: Command, outcome: Outcome
) -> None:
    expected = S.CLOSED if command is C.QUIT else MOVES.get((state, command, outcome), state)
    assert next_state(state, command, outcome) is expected


@pytest.mark.parametrize("command", list(Command), ids=[c.name for c in Command])
@pytest.mark.parametrize("code", [220, 250, 334, 354, 421, 452, 550])
def test_which_replies_can_answer(command: Command, code: int) -> None:
    outcome = {2: DONE, 3: MORE}.get(code // 100, FAILED)
    assert outcome_of(command, code) is (outcome if outcome in CAN_BE[command] else None)


#: A reply of each outcome, as the server would send it (only the code's class matters).
REPLIES = {DONE: b"250 2.0.0 OK\r\n", MORE: b"334 VXNlcm5hbWU6\r\n", FAILED: b"550 5.0.0 no\r\n"}
#: Which command each engine method writes.
WRITES = {
    "AUTH_RESPOND": C.AUTH,
    "AUTH_CANCEL": C.AUTH,
    "END_OF_DATA": C.END_OF_DATA,
    "BDAT_LAST": C.BDAT_LAST,
}
WALK = [
    (state, verb, outcome)
    for state in ClientState
    for verb in sorted(EXPECTED_ALLOWED[state])
    for outcome in [*Outcome, None]  # None: a 421
]


@pytest.mark.parametrize(
    ("state", "verb", "outcome"),
    WALK,
    ids=[f"{s.name}-{v}-{o.name if o else '421'}" for s, v, o in WALK],
)
def test_engine_walk(state: ClientState, verb: str, outcome: Outcome | None) -> None:
    """A real connection in ``state`` writes ``verb`` and gets each kind of reply."""
    conn = make_in_state(state)
    ACTIONS[verb](conn)
    command = WRITES[verb] if verb in WRITES else C(verb)
    if outcome is None:
        answer(conn, b"421 4.3.2 closing\r\n")
        assert conn.state is S.CLOSED and conn.outstanding == ()
        return
    conn.receive_data(REPLIES[outcome])
    if outcome not in CAN_BE[command]:
        with pytest.raises(RemoteProtocolError, match="cannot answer"):
            conn.next_event()
        assert conn.state is S.ERROR
        return
    drain(conn)
    expected = S.CLOSED if command is C.QUIT else MOVES.get((state, command, outcome), state)
    assert conn.state is expected
    assert conn.outstanding == ()


def test_projected_state_follows_a_refusal() -> None:
    """MAIL, RCPT, DATA pipelined: MAIL refused, so what may be written next is READY's."""
    states = ClientStates(S.READY, S.READY)
    for command in (C.MAIL, C.RCPT, C.DATA):
        states.written(command)
    assert states.projected is S.DATA
    assert states.answered(C.MAIL, FAILED)  # not the reply hoped for
    states.reproject([C.RCPT, C.DATA])
    assert (states.state, states.projected) == (S.READY, S.READY)
    assert not states.answered(C.RSET, DONE)  # hoped for: the projection stands


def test_the_engine_never_assigns_a_state() -> None:
    """h11's discipline: only ClientStates (in _client_state.py) changes a state."""
    tree = ast.parse(inspect.getsource(_client))
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Attribute):
                    assert name.attr not in {"state", "projected", "_state", "_projected"}, (
                        ast.unparse(node)
                    )
    assert "_states" in inspect.getsource(ClientConnection.__init__)
