"""Who may connect now: the server's connection limits, decided once for every adapter.

Postfix's anvil is the model. An adapter asks ``Admission.admit`` when a client connects and
``leave`` when it is gone; in between it marks the connection's waits (``Ticket.waiting``) and
activity (``Ticket.active_at``). The decisions, all pure (time is passed in, never read):

- a client over its rate (``connection_rate_per_client``, counted per attempt, as anvil does)
  or over its share (``max_connections_per_client``) gets 421 4.7.0;
- a full server (``max_connections``) makes room: the connection idle longest among those
  waiting for a command outside a mail transaction is closed with 421 4.4.2 and the newcomer
  is admitted; only when no connection qualifies does the newcomer get 421 4.7.0;
- above ``stress_level`` of ``max_connections`` every wait for the client (commands, content,
  TLS handshakes) is cut to ``stress_timeout``, like Postfix's stress mode.

Counts are per server (a process of ``--workers`` counts its own) and per client IP address
as the socket reports it; peers trusted to send a PROXY header are exempt from the per-client
limits, since their connections carry many clients.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections import deque
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs

from ._events import Reply
from ._metrics import Metrics
from ._server import _format

if TYPE_CHECKING:
    from ._session import Session

__all__ = [
    "R_EVICTED",
    "R_TOO_MANY_CONNECTIONS",
    "R_TOO_MANY_FROM_CLIENT",
    "R_TOO_FAST",
    "Admission",
    "Admitted",
    "ConnectionLimits",
    "ConnectionRate",
    "TurnedAway",
    "Ticket",
]

R_TOO_MANY_CONNECTIONS = Reply(421, "Too many connections, try again later", "4.7.0")
R_TOO_MANY_FROM_CLIENT = Reply(421, "Too many connections from your address", "4.7.0")
R_TOO_FAST = Reply(421, "Too many new connections from your address, try again later", "4.7.0")
R_EVICTED = Reply(421, "Server busy, closing idle connection", "4.4.2")
R_STOPPING = Reply(421, "Service shutting down, try again later", "4.3.2")

_RATE = re.compile(r"(\d+)(?:/(\d+(?:\.\d+)?)?([smh]))?")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0}

Handle = TypeVar("Handle")


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value}")


def _not_negative(_inst: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be 0 (unlimited) or more, not {value}")


@attrs.frozen
class ConnectionRate:
    """``count`` connections per ``seconds``."""

    count: int = attrs.field(validator=_positive)
    seconds: float = attrs.field(default=60.0, validator=_positive)

    @classmethod
    def parse(cls, text: str) -> ConnectionRate:
        """``30`` (per minute), ``30/60s``, ``30/m``, ``100/1h``; ValueError otherwise."""
        match = _RATE.fullmatch(text.strip())
        if match is None or int(match[1]) <= 0 or (match[2] is not None and not float(match[2])):
            raise ValueError(f"expected N or N/PERIOD (30, 30/60s, 30/m, 100/1h), got {text!r}")
        count, number, unit = int(match[1]), match[2], match[3]
        if unit is None:
            return cls(count)
        return cls(count, float(number or 1) * _UNIT[unit])

    def __str__(self) -> str:
        return f"{self.count}/{self.seconds:g}s"


@attrs.frozen
class ConnectionLimits:
    """The knobs of ``Admission``; ``0`` per client means unlimited, ``None`` rate means off."""

    max_connections: int = attrs.field(default=1000, validator=_positive)
    max_connections_per_client: int = attrs.field(default=50, validator=_not_negative)
    connection_rate_per_client: ConnectionRate | None = None
    stress_level: float = attrs.field(default=0.8, validator=_positive)  #: of max_connections
    stress_timeout: float = attrs.field(default=10.0, validator=_positive)


@attrs.define(eq=False)
class Ticket(Generic[Handle]):
    """One admitted connection, as the adapter reports it. ``handle`` is the adapter's own
    (its connection, its socket), handed back when this ticket is to be evicted."""

    client: str | None
    handle: Handle
    active_at: float  #: when the client last sent something (the adapter's clock)
    session: Session | None = None  #: set once the session exists (after implicit TLS)
    waiting: bool = False  #: the adapter waits for the client's next bytes right now
    evicted: bool = False  #: chosen to make room: close with 421 4.4.2 (``Session.evict``)

    @property
    def idle(self) -> bool:
        """May be evicted: waiting for a command, not inside a mail transaction."""
        session = self.session
        return (
            self.waiting
            and not self.evicted
            and session is not None
            and not session.closed
            and not session.in_transaction
        )


@attrs.frozen
class Admitted(Generic[Handle]):
    """Serve the connection; first close ``evict``'s (interrupt its wait), if there is one."""

    ticket: Ticket[Handle]
    evict: Ticket[Handle] | None = None


@attrs.frozen
class TurnedAway:
    """Send ``data`` (the formatted ``reply``) and close, without a session."""

    reply: Reply

    @property
    def data(self) -> bytes:
        return _format(self.reply, True)


class Admission(Generic[Handle]):
    """The connections a server holds, and whether one more may come in. One per server
    (or shared by the listeners of a process); ``lock`` for adapters that admit from one
    thread while others serve, as with ``Metrics``."""

    def __init__(
        self,
        limits: ConnectionLimits | None = None,
        *,
        metrics: Metrics | None = None,
        exempt: frozenset[str] = frozenset(),
        lock: contextlib.AbstractContextManager[object] | None = None,
    ) -> None:
        self.limits = limits = limits or ConnectionLimits()
        self.metrics = metrics if metrics is not None else Metrics()
        self.exempt = exempt  #: peers not counted per client (trusted PROXY senders)
        self.lock: contextlib.AbstractContextManager[object] = lock or contextlib.nullcontext()
        self._tickets: dict[Ticket[Handle], None] = {}  # in order of admission
        self._per_client: dict[str, int] = {}
        self._attempts: dict[str, deque[float]] = {}
        self._swept_at = -math.inf
        self._evicting = 0  # evicted tickets that have not left yet
        self._stress_at = max(1, math.ceil(limits.max_connections * limits.stress_level))
        self._stress_timeout = limits.stress_timeout

    def update(self, limits: ConnectionLimits, *, exempt: frozenset[str]) -> None:
        """New limits (a configuration reload): they apply to the next connection; the ones
        admitted stay. Call under ``lock``."""
        self.limits, self.exempt = limits, exempt
        self._stress_at = max(1, math.ceil(limits.max_connections * limits.stress_level))
        self._stress_timeout = limits.stress_timeout

    @property
    def open(self) -> int:
        """Connections admitted and not yet gone (those being evicted included)."""
        return len(self._tickets)

    @property
    def under_stress(self) -> bool:
        return len(self._tickets) - self._evicting >= self._stress_at

    def timeout(self, seconds: float) -> float:
        """A wait of ``seconds`` for the client, cut to ``stress_timeout`` under stress.
        (Asked before every read: kept to two comparisons.)"""
        if seconds > self._stress_timeout and (
            len(self._tickets) - self._evicting >= self._stress_at
        ):
            return self._stress_timeout
        return seconds

    def admit(
        self, client: str | None, handle: Handle, now: float, *, stopping: bool = False
    ) -> Admitted[Handle] | TurnedAway:
        """A client at address ``client`` connected at ``now``: may it stay?"""
        with self.lock:
            return self._admit(client, handle, now, stopping)

    def _admit(
        self, client: str | None, handle: Handle, now: float, stopping: bool
    ) -> Admitted[Handle] | TurnedAway:
        limits, metrics = self.limits, self.metrics
        if stopping:
            return TurnedAway(R_STOPPING)
        counted = client is not None and client not in self.exempt
        if counted and limits.connection_rate_per_client is not None:
            assert client is not None
            if self._too_fast(client, limits.connection_rate_per_client, now):
                metrics.add(connections_refused_rate=1)
                metrics.reject(421)
                return TurnedAway(R_TOO_FAST)
        if (
            counted
            and limits.max_connections_per_client
            and self._per_client.get(client, 0) >= limits.max_connections_per_client  # type: ignore[arg-type]
        ):
            metrics.add(connections_refused_per_client=1)
            metrics.reject(421)
            return TurnedAway(R_TOO_MANY_FROM_CLIENT)
        victim = None
        if len(self._tickets) - self._evicting >= limits.max_connections:
            victim = self._longest_idle()
            if victim is None:
                metrics.add(connections_refused_full=1)
                metrics.reject(421)
                return TurnedAway(R_TOO_MANY_CONNECTIONS)
            victim.evicted = True
            self._evicting += 1
            metrics.add(connections_evicted=1)
        ticket: Ticket[Handle] = Ticket(client if counted else None, handle, now)
        self._tickets[ticket] = None
        if ticket.client is not None:
            self._per_client[ticket.client] = self._per_client.get(ticket.client, 0) + 1
        return Admitted(ticket, victim)

    def leave(self, ticket: Ticket[Handle]) -> None:
        """The connection is closed (whatever the reason)."""
        with self.lock:
            if ticket not in self._tickets:
                return  # gone already
            del self._tickets[ticket]
            if ticket.evicted:
                self._evicting -= 1
            client = ticket.client
            if client is not None:
                left = self._per_client[client] - 1
                if left:
                    self._per_client[client] = left
                else:
                    del self._per_client[client]

    def tickets(self) -> list[Ticket[Handle]]:
        with self.lock:
            return list(self._tickets)

    def _longest_idle(self) -> Ticket[Handle] | None:
        """Eviction's choice: the longest-idle ticket that waits outside a transaction."""
        best: Ticket[Handle] | None = None
        for ticket in self._tickets:
            if ticket.idle and (best is None or ticket.active_at < best.active_at):
                best = ticket
        return best

    def _too_fast(self, client: str, rate: ConnectionRate, now: float) -> bool:
        """Record an attempt by ``client``; True if it makes more than ``rate`` in its window.
        Only the last ``rate.count`` attempts are kept, so memory stays bounded per client."""
        attempts = self._attempts.get(client)
        if attempts is None:
            self._sweep(rate, now)
            attempts = self._attempts[client] = deque(maxlen=rate.count)
        too_fast = len(attempts) == rate.count and now - attempts[0] < rate.seconds
        attempts.append(now)
        return too_fast

    def _sweep(self, rate: ConnectionRate, now: float) -> None:
        """Forget clients whose last attempt is out of the window (at most once a window)."""
        if now - self._swept_at < rate.seconds:
            return
        self._swept_at = now
        for client in [c for c, a in self._attempts.items() if now - a[-1] >= rate.seconds]:
            del self._attempts[client]
