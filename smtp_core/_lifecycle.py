"""The server's side of every connection, decided once for all adapters: which Session a
listener builds for a client (from the listener's facts), how an implicit-TLS handshake is
counted, and the inline executor that carries out the Actions needing no await.

An adapter supplies only its way of waiting and writing (as psycopg's wait functions drive one
generator): it asks the ``SessionFactory`` for a Session, runs ``run_inline`` over the Actions,
awaits (or blocks on) the one it hands back, and reports a wait that ended without bytes with
``Session.wait_ended``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import attrs

from ._admission import Admission
from ._config import ServerConfig
from ._envelope import TLSInfo
from ._logtext import format_host_port
from ._metrics import Metrics
from ._router import Router
from ._session import (
    Action,
    Call,
    Close,
    Handler,
    Policy,
    Send,
    Session,
    Spool,
    _offering_auth,
    count_handshake,
)

__all__ = ["SessionFactory", "run_inline"]

log = logging.getLogger("smtpmux.server")

#: what ``run_inline`` hands back when ``write`` says the client is gone
_GONE = Close()


def run_inline(
    session: Session,
    actions: list[Action],
    write: Callable[[bytes], object],
    spool: Callable[[Spool], object],
    call: Callable[[Call], object] | None = None,
) -> Action | None:
    """Carry out ``actions`` as far as no await is needed: each Send through ``write`` (it
    returns False when the client is gone), each Spool through ``spool``, and each Call
    through ``call`` when the caller can call inline (a blocking server, a transcript), going
    on with the Actions its outcome leads to.

    Returns None when all is done (the session waits for the client's bytes), or the first
    Action left to the caller: UpgradeToTLS, Close, a Call (without ``call``), or a Close
    when ``write`` failed. The Session puts such an Action last, so nothing follows it.
    One loop for every server and the transcript player: it allocates nothing per round.
    """
    while True:
        for action in actions:
            kind = action.__class__
            if kind is Send:
                if write(action.data) is False:  # type: ignore[attr-defined]
                    return _GONE
            elif kind is Spool:
                spool(action)  # type: ignore[arg-type]
            elif call is not None and isinstance(action, Call):
                actions = session.resolve(action, call(action))
                break
            else:
                return action
        else:
            return None


@attrs.define(eq=False, kw_only=True)
class SessionFactory:
    """Every Session of one listener, built from the listener's facts: is a TLS context
    configured, is it implicit TLS (RFC 8314), which peers may send a PROXY header. The rules
    that follow from them live here, once: a context on a plain listener offers STARTTLS,
    PROXY is expected only from a trusted peer, AUTH is offered by the policy
    (``_offering_auth``), each session gets a fresh id from ``new_id``.

    ``serves`` tells a server whether its (reloadable) router, config, policy and trust list
    are still the ones this factory was built from.
    """

    router: Router[Handler]
    config: ServerConfig = attrs.field(factory=ServerConfig)
    policy: Policy = attrs.field(factory=Policy)
    clock: Callable[[], datetime]
    new_id: Callable[[], str]
    metrics: Metrics = attrs.field(factory=Metrics)
    admission: Admission[Any] | None = None
    tls_configured: bool = False  #: the listener has a TLS context
    implicit_tls: bool = False  #: TLS from the first byte (then no STARTTLS)
    proxy_protocol_from: frozenset[str] = frozenset()  #: peers trusted to send a PROXY header
    #: the config every Session runs with: STARTTLS and AUTH decided for the listener
    session_config: ServerConfig = attrs.field(init=False)
    _given: tuple[object, ...] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._given = (self.router, self.config, self.policy, self.proxy_protocol_from)
        config = self.config
        if self.tls_configured and not self.implicit_tls and not config.starttls:
            config = attrs.evolve(config, starttls=True)  # RFC 3207: offer what we can do
        self.session_config = _offering_auth(config, self.policy)

    def serves(
        self,
        router: Router[Handler],
        config: ServerConfig,
        policy: Policy,
        proxy_protocol_from: frozenset[str],
    ) -> bool:
        """Built from exactly these (by identity: a reload swaps the objects)?"""
        given = self._given
        return (
            given[0] is router
            and given[1] is config
            and given[2] is policy
            and given[3] is proxy_protocol_from
        )

    def __call__(self, peer: tuple[str, int] | None, tls: TLSInfo | None = None) -> Session:
        """The Session for a client at ``peer``; ``tls`` after an implicit-TLS handshake."""
        return Session(
            self.router,
            clock=self.clock,
            session_id=self.new_id(),
            config=self.session_config,
            policy=self.policy,
            peer=peer,
            tls=tls,
            proxy_protocol=peer is not None and peer[0] in self.proxy_protocol_from,
            metrics=self.metrics,
            admission=self.admission,
        )

    @property
    def handshake_timeout(self) -> float:
        """How long an implicit-TLS handshake may take (shorter under stress)."""
        seconds, admission = self.config.tls_handshake_timeout, self.admission
        return seconds if admission is None else admission.timeout(seconds)

    def handshake(self, peer: tuple[str, int] | None, outcome: object) -> TLSInfo | None:
        """An implicit-TLS handshake's outcome (TLSInfo, or the exception it raised): counted
        and logged as a STARTTLS one is; the TLSInfo to build the Session with, or None
        (close the connection)."""
        shown = format_host_port(*peer) if peer else "a client"
        if count_handshake(self.metrics, outcome, log, "TLS handshake with %s failed: %s", shown):
            assert isinstance(outcome, TLSInfo)
            return outcome
        return None
