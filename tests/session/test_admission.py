"""smtp_core.Admission, pure: connection limits with the clock passed in, and the waits a
Session names (stress mode, the first command, TLS handshakes)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from smtp_core import (
    Admission,
    ConnectionLimits,
    ConnectionRate,
    Metrics,
    Reply,
    Router,
    ServerConfig,
    Session,
)
from smtp_core.adapter import Admitted, Send, Ticket, TurnedAway


def session(admission: Admission[Any] | None = None, **config: Any) -> Session:
    router: Router[Any] = Router()
    router.add("*@*", lambda envelope: None)
    return Session(
        router,
        clock=lambda: datetime(2026, 1, 1, tzinfo=UTC),
        session_id="test",
        config=ServerConfig(**config),
        peer=("192.0.2.1", 25),
        admission=admission,
    )


def started(admission: Admission[Any] | None = None, **config: Any) -> Session:
    """A session that has sent its greeting (the connect hook answered)."""
    new = session(admission, **config)
    [*_, connect] = new.start()
    new.resolve(connect, None)
    return new


def in_transaction() -> Session:
    new = started()
    new.receive_data(b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n")
    assert new.in_transaction
    return new


def admitted(admission: Admission[str], client: str, now: float, handle: str = "") -> Ticket[str]:
    verdict = admission.admit(client, handle or client, now)
    assert isinstance(verdict, Admitted), verdict
    return verdict.ticket


def refusal(verdict: object) -> bytes:
    assert isinstance(verdict, TurnedAway), verdict
    return verdict.data


# --- ConnectionRate.parse ----------------------------------------------------------------------

RATES = [
    ("30", ConnectionRate(30, 60.0)),
    ("30/60s", ConnectionRate(30, 60.0)),
    ("30/m", ConnectionRate(30, 60.0)),
    ("5/10s", ConnectionRate(5, 10.0)),
    ("100/1h", ConnectionRate(100, 3600.0)),
    ("2/0.5s", ConnectionRate(2, 0.5)),
]


@pytest.mark.parametrize(("text", "rate"), RATES, ids=[t for t, _ in RATES])
def test_rate_parse(text: str, rate: ConnectionRate) -> None:
    assert ConnectionRate.parse(text) == rate


@pytest.mark.parametrize("text", ["", "0", "-3", "fast", "30/", "30/60", "30/0s", "30/60d", "3.5"])
def test_rate_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="expected N or N/PERIOD"):
        ConnectionRate.parse(text)


@pytest.mark.parametrize(
    "limits",
    [
        {"max_connections": 0},
        {"max_connections_per_client": -1},
        {"stress_timeout": 0},
        {"stress_level": 0},
    ],
    ids=str,
)
def test_limits_refuse_nonsense(limits: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ConnectionLimits(**limits)


# --- per client, per rate, full ---------------------------------------------------------------


def test_per_client_cap_refuses_with_421_470_and_others_still_get_in() -> None:
    metrics = Metrics()
    admission: Admission[str] = Admission(
        ConnectionLimits(max_connections_per_client=3), metrics=metrics
    )
    tickets = [admitted(admission, "192.0.2.1", now) for now in range(3)]
    data = refusal(admission.admit("192.0.2.1", "4th", 3.0))
    assert data == b"421 4.7.0 Too many connections from your address\r\n"
    admitted(admission, "192.0.2.2", 3.0)
    admission.leave(tickets[0])
    admission.leave(tickets[0])  # twice: no harm
    admitted(admission, "192.0.2.1", 4.0)
    assert (metrics.connections_refused_per_client, metrics.rejects[421]) == (1, 1)
    assert admission.open == 4


def test_per_client_zero_is_unlimited_and_trusted_proxies_are_exempt() -> None:
    unlimited: Admission[str] = Admission(ConnectionLimits(max_connections_per_client=0))
    for now in range(200):
        admitted(unlimited, "192.0.2.1", now)
    proxied: Admission[str] = Admission(
        ConnectionLimits(max_connections_per_client=1), exempt=frozenset({"10.0.0.1"})
    )
    for now in range(5):
        admitted(proxied, "10.0.0.1", now)
    admitted(proxied, "192.0.2.1", 5.0)
    refusal(proxied.admit("192.0.2.1", "again", 6.0))


def test_rate_refuses_the_attempt_after_n_in_the_window() -> None:
    metrics = Metrics()
    rate = ConnectionRate(3, 60.0)
    admission: Admission[str] = Admission(
        ConnectionLimits(connection_rate_per_client=rate), metrics=metrics
    )
    for now in (0.0, 10.0, 20.0):
        admission.leave(admitted(admission, "192.0.2.1", now))  # closed again: rate, not count
    data = refusal(admission.admit("192.0.2.1", "4th", 30.0))
    assert data == b"421 4.7.0 Too many new connections from your address, try again later\r\n"
    admitted(admission, "192.0.2.2", 30.0)  # another address has its own count
    # Every attempt counts, refused ones too (as Postfix's anvil): the window runs from the
    # oldest of the last three attempts, so a client that keeps trying stays out.
    refusal(admission.admit("192.0.2.1", "5th", 69.9))  # last three: 10, 20, 30
    refusal(admission.admit("192.0.2.1", "6th", 79.9))  # 20, 30, 69.9
    admitted(admission, "192.0.2.1", 90.0)  # 30, 69.9, 79.9: 60 s since 30
    assert metrics.connections_refused_rate == 3


def test_rate_forgets_clients_that_went_quiet() -> None:
    admission: Admission[str] = Admission(
        ConnectionLimits(connection_rate_per_client=ConnectionRate(2, 10.0))
    )
    for number in range(1000):
        admission.leave(admitted(admission, f"192.0.2.{number % 250}/{number}", number * 0.001))
    admission.leave(admitted(admission, "198.51.100.1", 100.0))
    assert len(admission._attempts) == 1


def test_full_server_evicts_the_longest_idle_connection_outside_a_transaction() -> None:
    metrics = Metrics()
    admission: Admission[str] = Admission(
        ConnectionLimits(max_connections=3, max_connections_per_client=0), metrics=metrics
    )
    oldest, busy, newer = (admitted(admission, "192.0.2.1", now, f"c{now}") for now in range(3))
    oldest.session, busy.session, newer.session = started(), in_transaction(), started()
    busy.active_at = -10.0  # idle longest, but inside a transaction: never evicted
    for ticket in (oldest, busy, newer):
        ticket.waiting = True
    verdict = admission.admit("192.0.2.9", "c3", 3.0)
    assert isinstance(verdict, Admitted) and verdict.evict is oldest and oldest.evicted
    # The evicted one counts until it leaves, but its slot is taken already: the next
    # newcomer evicts the next idle connection, the newcomer before it is not waiting yet.
    verdict = admission.admit("192.0.2.9", "c4", 4.0)
    assert isinstance(verdict, Admitted) and verdict.evict is newer
    assert refusal(admission.admit("192.0.2.9", "c5", 5.0)) == (
        b"421 4.7.0 Too many connections, try again later\r\n"
    )
    assert (metrics.connections_evicted, metrics.connections_refused_full) == (2, 1)
    admission.leave(oldest)
    admission.leave(newer)
    assert admission.open == 3
    assert isinstance(admission.admit("192.0.2.9", "c6", 6.0), TurnedAway)  # still full


@pytest.mark.parametrize(
    "state", ["busy", "in-transaction", "no-session-yet", "closed", "evicted-already"]
)
def test_never_evicted(state: str) -> None:
    admission: Admission[str] = Admission(ConnectionLimits(max_connections=1))
    ticket = admitted(admission, "192.0.2.1", 0.0)
    ticket.waiting = state != "busy"
    if state == "in-transaction":
        ticket.session = in_transaction()
    elif state == "closed":
        ticket.session = started()
        ticket.session.receive_data(b"QUIT\r\n")
    elif state != "no-session-yet":
        ticket.session = started()
    ticket.evicted = state == "evicted-already"
    assert not ticket.idle
    if state != "evicted-already":
        assert isinstance(admission.admit("192.0.2.2", "new", 1.0), TurnedAway)


def test_stopping_refuses_with_432() -> None:
    admission: Admission[str] = Admission()
    data = refusal(admission.admit("192.0.2.1", "x", 0.0, stopping=True))
    assert data == b"421 4.3.2 Service shutting down, try again later\r\n"


def test_eviction_reply() -> None:
    idle = started()
    [send, _] = idle.evict()
    assert isinstance(send, Send)
    assert send.data == b"421 4.4.2 Server busy, closing idle connection\r\n"
    assert idle.closed


# --- the waits ------------------------------------------------------------------------------


def test_stress_mode_cuts_every_wait_above_80_percent() -> None:
    admission: Admission[str] = Admission(
        ConnectionLimits(max_connections=10, max_connections_per_client=0, stress_timeout=10.0)
    )
    tickets = [admitted(admission, "192.0.2.1", now) for now in range(7)]
    greeted = started(admission)
    greeted.receive_data(b"EHLO client.example\r\n")
    assert (greeted.timeout, greeted.tls_timeout, admission.under_stress) == (300.0, 30.0, False)
    tickets.append(admitted(admission, "192.0.2.1", 7.0))  # 8 of 10: stress
    assert admission.under_stress
    assert (greeted.timeout, greeted.tls_timeout) == (10.0, 10.0)
    assert admission.timeout(3.0) == 3.0  # shorter waits stay as they are
    greeted.receive_data(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    assert greeted.timeout == 10.0  # content too (Postfix's smtpd_timeout under stress)
    admission.leave(tickets.pop())
    assert (greeted.timeout, admission.under_stress) == (180.0, False)


def test_first_command_has_its_own_shorter_wait() -> None:
    greeted = started()
    assert greeted.timeout == 60.0
    greeted.receive_data(b"NOOP\r\n")  # not a hello yet: the short wait goes on
    assert greeted.timeout == 60.0
    greeted.receive_data(b"EHLO client.example\r\n")
    assert greeted.timeout == 300.0
    assert started(command_timeout=20.0).timeout == 20.0  # never longer than command_timeout
    assert started(first_command_timeout=5.0).timeout == 5.0


def test_first_command_wait_after_a_554_greeting() -> None:
    refused = session()
    [*_, connect] = refused.start()
    refused.resolve(connect, Reply(554, "go away", "5.7.1"))
    assert refused.timeout == 60.0


def test_tls_handshake_has_its_own_wait() -> None:
    assert session().tls_timeout == 30.0
    assert session(tls_handshake_timeout=7.5).tls_timeout == 7.5
