"""Session: one connection's orchestration, written once for every adapter.

It owns a ServerConnection, answers what needs no decision, asks the Policy and the Router,
assembles Envelopes and hands the adapter Actions to carry out: write bytes, upgrade to TLS,
call a hook or a handler, spool content, close. The adapter feeds bytes with ``receive_data``
and reports each outcome with ``resolve``; neither step does I/O here.

The conversation is one generator (``_converse``) that yields the questions it needs answered;
replies produced on the way are batched into one ``Send`` per round (RFC 2920 §3.1).
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Awaitable, Callable, Generator, Iterable
from datetime import datetime
from typing import Any, Protocol, TypeAlias, cast

import attrs

from ._address import normalize_domain
from ._admission import R_EVICTED, Admission
from ._admission import R_STOPPING as R_SHUTTING_DOWN
from ._client_session import format_reply
from ._config import ServerConfig
from ._envelope import Envelope, SessionInfo, TLSInfo
from ._errors import RemoteProtocolError
from ._events import (
    NEED_DATA,
    AuthChallenge,
    AuthCredentials,
    BdatChunk,
    ConnectionClosed,
    Credentials,
    DataChunk,
    EndOfData,
    Event,
    Hello,
    InvalidCommand,
    MailFrom,
    MailParams,
    Noop,
    ProxyHeader,
    RcptParams,
    RcptTo,
    Reply,
    Sentinel,
    StartData,
    StartTLS,
)
from ._lockout import AuthLockout
from ._logtext import describe_tls_failure, fields_logger, format_host_port, plural
from ._metrics import Metrics
from ._router import Router
from ._sasl import LoginMechanism, PlainMechanism
from ._server import ServerConnection
from ._state import S, ServerState
from ._trace import ProtocolTrace

__all__ = [
    "AbortStep",
    "Action",
    "Authenticate",
    "BeginStep",
    "Call",
    "CheckRecipient",
    "Close",
    "Connect",
    "Deliver",
    "Handler",
    "HandlerCall",
    "Policy",
    "Reject",
    "Send",
    "Session",
    "Spool",
    "StepCall",
    "StepHandler",
    "StepRecipient",
    "StepStart",
    "StepTransaction",
    "UpgradeToTLS",
    "WaitEnd",
    "combined_refusal",
    "count_handshake",
]

log = fields_logger("smtpmux.session")  # its records take their fields in one step

Handler: TypeAlias = Callable[[Envelope], "Awaitable[None] | None"]

R_TOO_MANY_RECIPIENTS = Reply(452, "Too many recipients", "4.5.3")
R_NO_ROUTE = Reply(550, "No such user here", "5.1.1")
R_RELAY_DENIED = Reply(550, "Relaying denied", "5.7.1")
R_AUTH_REQUIRED = Reply(530, "Authentication required", "5.7.0")
R_AUTH_OK = Reply(235, "Authentication successful", "2.7.0")
R_AUTH_FAILED = Reply(535, "Authentication credentials invalid", "5.7.8")
R_HANDLER_FAILED = Reply(451, "Local error in processing, try again later", "4.3.0")
R_TOO_MANY_ERRORS = Reply(421, "Too many errors, closing connection", "4.7.0")
R_TOO_MANY_AUTH_FAILURES = Reply(421, "Too many failed logins, closing connection", "4.7.0")
R_AUTH_LOCKED_OUT = Reply(421, "Too many failed logins from your address, try again later", "4.7.0")
R_ACCEPTED = Reply(250, "OK: message accepted", "2.0.0")
R_TIMEOUT = Reply(421, "Timeout, closing connection", "4.4.2")


class WaitEnd(enum.Enum):
    """Why an adapter's wait for the client ended without bytes; ``Session.wait_ended`` says
    what that means (one answer for every adapter)."""

    TIMED_OUT = "timed out"  #: the session's ``timeout`` ran out
    INTERRUPTED = "interrupted"  #: woken early: the server is stopping, or evicts the session


def count_handshake(
    metrics: Metrics,
    outcome: object,
    logger: logging.Logger,
    failed: str,
    *args: object,
    extra: dict[str, Any] | None = None,
) -> bool:
    """Count a TLS handshake (implicit TLS or STARTTLS) and log a failure in words: one rule
    for every listener. ``failed`` is the log message; its last ``%s`` is the reason."""
    if isinstance(outcome, TLSInfo):
        metrics.add(tls_handshakes=1)
        return True
    metrics.add(tls_failures=1)
    reason = describe_tls_failure(outcome) if isinstance(outcome, BaseException) else repr(outcome)
    logger.info(failed, *args, reason, extra=extra)
    return False


class Reject(Exception):
    """Raised by a handler (or a hook) to refuse with a reply of its choosing."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


# --- actions: what the adapter carries out ---------------------------------------------------


class Action:
    """Something the adapter does for the session."""


@attrs.frozen
class Send(Action):
    """Write these bytes (all replies of one round, in order)."""

    data: bytes


@attrs.frozen
class UpgradeToTLS(Action):
    """Start the TLS handshake now; resolve with the TLSInfo, or an exception if it failed."""


@attrs.frozen
class Spool(Action):
    """Append ``data`` to the spool file; ``start``: begin a new file (drop the last one)."""

    data: bytes
    start: bool = False


@attrs.frozen
class Close(Action):
    """Close the connection (after writing any Send that came before)."""


class Call(Action):
    """Call ``function(*args)`` (awaiting it if it is a coroutine) and resolve with its result,
    or with the exception it raised. One rule covers every hook and handler."""

    function: Callable[..., Any]
    args: tuple[Any, ...]


@attrs.frozen
class Connect(Call):
    function: Callable[..., Any]
    args: tuple[SessionInfo]


@attrs.frozen
class Authenticate(Call):
    function: Callable[..., Any]
    args: tuple[Credentials, SessionInfo] = attrs.field(repr=lambda a: f"({a[0].username!r}, ...)")


@attrs.frozen
class CheckRecipient(Call):
    function: Callable[..., Any]
    args: tuple[SessionInfo, str]


class HandlerCall(Call):
    """A call into a handler (a delivery, or a step of a step handler): it may block on the
    network or the disk, so an async adapter runs a plain function in a worker thread."""


@attrs.frozen
class Deliver(HandlerCall):
    """Call the handler with the envelope. ``spooled``: replace ``content`` by the spool file.
    For a step handler the function is its transaction's ``deliver``."""

    function: Callable[..., Any]
    args: tuple[Envelope]
    spooled: bool = False

    @property
    def envelope(self) -> Envelope:
        return self.args[0]


# --- step handlers: a handler that takes part in the transaction as it happens ----------------


@attrs.frozen
class StepStart:
    """What a step handler learns when the first recipient is routed to it in a transaction."""

    mail_from: str
    mail_params: MailParams
    session: SessionInfo
    #: the ``transaction_id`` the delivered Envelope will carry
    transaction_id: str


class StepTransaction(Protocol):
    """One transaction of a step handler; each method may be ``async def`` under smtp_anyio.

    The Session calls ``recipient`` for each recipient routed to it, then exactly one of
    ``deliver`` (after the end of data, when at least one recipient was accepted) or ``abort``
    (the transaction ended any other way: RSET, EHLO, a refused message, a dropped connection,
    a timeout, the server stopping).
    """

    def recipient(self, address: str, params: RcptParams) -> Reply | Awaitable[Reply | None] | None:
        """A 2xx (or None) accepts; any other reply is our RCPT answer (or raise Reject)."""

    def deliver(
        self, envelope: Envelope
    ) -> Reply | list[Reply] | Awaitable[Reply | list[Reply] | None] | None:
        """None accepts; a Reply for every recipient, or one per recipient in order (LMTP)."""

    def abort(self) -> Awaitable[None] | None:
        """Forget the transaction (e.g. RSET upstream); nothing is delivered."""


class StepHandler(Protocol):
    """A handler asked at RCPT time: any object with ``begin`` (a plain callable is not)."""

    def begin(self, start: StepStart) -> StepTransaction | Awaitable[StepTransaction]:
        """Open a transaction (e.g. connect upstream and send MAIL); raise Reject to refuse
        this and every further recipient routed here in this transaction."""


class StepCall(HandlerCall):
    """A call into a step handler (see StepHandler)."""


@attrs.frozen
class BeginStep(StepCall):
    function: Callable[..., Any]
    args: tuple[StepStart]


@attrs.frozen
class StepRecipient(StepCall):
    function: Callable[..., Any]
    args: tuple[str, RcptParams]


@attrs.frozen
class AbortStep(StepCall):
    function: Callable[..., Any]
    args: tuple[()] = ()


# --- policy ----------------------------------------------------------------------------------


def _relay_domains(domains: Iterable[str] | None) -> frozenset[str] | None:
    """Relay domains in the form the check compares: normalised once, when they are set."""
    if domains is None:
        return None
    if isinstance(domains, str):
        raise TypeError("relay_domains is a collection of domains, not one string")
    return frozenset(normalize_domain(domain) for domain in domains)


@attrs.define
class Policy:
    """The decisions a server makes about its clients. Subclass and override the hooks (sync
    or ``async def``); the limits are plain fields."""

    max_recipients: int | None = 100  #: more RCPTs get 452 4.5.3
    max_errors: int | None = 20  #: invalid commands before 421 and close
    spool_threshold: int = 1024 * 1024  #: content beyond this goes to a file
    auth_required: bool = False  #: MAIL before AUTH gets 530 5.7.0 (submission servers)
    #: None: any routed address is addressable; IDNA-normalised (``normalize_domain``) when set
    relay_domains: frozenset[str] | None = attrs.field(default=None, converter=_relay_domains)
    #: failed AUTHs on one connection; the next AUTH gets 421 4.7.0 and close, unchecked
    max_auth_failures: int | None = 3
    #: failed AUTHs per client address across connections (None: not counted)
    auth_lockout: AuthLockout | None = None

    def on_connect(self, info: SessionInfo) -> Reply | Awaitable[Reply | None] | None:
        """Return a reply to greet with instead of the default 220 (554 refuses service)."""
        return None

    def authenticate(
        self, credentials: Credentials, info: SessionInfo
    ) -> str | Awaitable[str | None] | None:
        """Return the authenticated identity, or None to refuse. The default lets nobody in."""
        return None

    def addressable(self, info: SessionInfo, address: str) -> bool | Awaitable[bool]:
        """May this client send to ``address`` (already known to route)? This is relay control:
        with ``relay_domains`` set, unauthenticated clients reach only those domains."""
        if self.relay_domains is None or info.auth_identity is not None:
            return True
        try:
            return normalize_domain(address.rpartition("@")[2]) in self.relay_domains
        except ValueError:  # not IDNA: the engine refuses such an address before it gets here
            return False


def _offering_auth(config: ServerConfig, policy: Policy) -> ServerConfig:
    """The config a Session runs with: ``auth_mechanisms=None`` (the default) becomes PLAIN and
    LOGIN when the policy overrides ``authenticate`` (so a policy that can check passwords is
    asked), and no AUTH otherwise. Decided here, for every adapter; a server's SessionFactory
    decides it once per listener, so its Sessions get a config that needs nothing more."""
    if config.auth_mechanisms is not None:
        return config
    authenticates = getattr(policy.authenticate, "__func__", None) is not Policy.authenticate
    mechanisms = (PlainMechanism, LoginMechanism) if authenticates else ()
    return attrs.evolve(config, auth_mechanisms=mechanisms)


# --- the session -----------------------------------------------------------------------------

_Question: TypeAlias = "Action | Sentinel"


@attrs.define
class _Recipient:
    address: str
    params: RcptParams
    handler: Handler


@attrs.define(eq=False)
class _Step:
    """A step handler's part in the current transaction: its transaction, or why it refused."""

    transaction: Any = None
    refusal: Reply | None = None


class Session:
    """One connection's conversation. Start with ``start()``; then ``receive_data`` and
    ``resolve`` each return the next Actions. ``timeout`` is the wait that applies now."""

    #: one per connection: slots instead of a __dict__ (the W5 idle-connection memory)
    __slots__ = (
        "_auth_failures",
        "_clock",
        "_closed",
        "_content",
        "_conversation",
        "_errors",
        "_inline_addressable",
        "_mail",
        "_mail_at",
        "_out",
        "_recipients",
        "_size",
        "_spooled",
        "_steps",
        "_trace",
        "_transactions",
        "_waiting",
        "admission",
        "config",
        "conn",
        "info",
        "metrics",
        "policy",
        "router",
    )

    def __init__(
        self,
        router: Router[Handler],
        *,
        clock: Callable[[], datetime],
        session_id: str,
        config: ServerConfig | None = None,
        policy: Policy | None = None,
        peer: tuple[str, int] | None = None,
        tls: TLSInfo | None = None,
        proxy_protocol: bool = False,
        metrics: Metrics | None = None,
        admission: Admission[Any] | None = None,
    ) -> None:
        config = _offering_auth(config or ServerConfig(), policy or Policy())  # AUTH by policy
        self.config = config
        self.admission = admission  #: the server's limits: under stress, waits are shorter
        self.metrics = metrics if metrics is not None else Metrics()
        self.conn = ServerConnection(
            self.config, tls=tls is not None, proxy_protocol=proxy_protocol
        )
        self.router = router
        self.policy = policy or Policy()
        self.info = SessionInfo(session_id, self.config.hostname, peer=peer, tls=tls)
        self._clock = clock
        self._trace = ProtocolTrace(self.conn, session_id)
        self._out = bytearray()
        self._waiting: Action | None = None
        self._transactions = 0
        self._errors = 0
        self._auth_failures = 0
        self._conversation = self._converse()
        self._closed = False
        self._mail: MailFrom | None = None
        self._mail_at: datetime | None = None  #: when MAIL was accepted, for the log line
        self._recipients: list[_Recipient] = []
        self._content: list[bytes] = []
        self._size = 0
        self._spooled = False
        #: step handlers begun in this transaction (by the handler's id); each entry is
        #: delivered or aborted exactly once, then removed
        self._steps: dict[int, _Step] = {}
        # The default relay check is a pure function: run it here instead of asking the
        # adapter for a round trip per recipient. An overridden hook is always asked.
        hook = getattr(self.policy.addressable, "__func__", None)
        self._inline_addressable = hook is Policy.addressable

    @property
    def timeout(self) -> float:
        admission = self.admission
        if admission is None:
            return self.conn.timeout
        return admission.timeout(self.conn.timeout)

    @property
    def tls_timeout(self) -> float:
        """How long a STARTTLS handshake may take (shorter under stress, too)."""
        admission, seconds = self.admission, self.config.tls_handshake_timeout
        return seconds if admission is None else admission.timeout(seconds)

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> list[Action]:
        """The first Actions: the PROXY header wait, the connect hook, or the greeting."""
        metrics = self.metrics
        with metrics.lock:  # as metrics.add(...), without its keyword loop (once per connection)
            metrics.connections += 1
            metrics.connections_open += 1
        return self._advance(None)

    def receive_data(self, data: bytes) -> list[Action]:
        """Feed bytes read from the client (``b""`` at EOF)."""
        if self._closed:
            return []
        if self._waiting is not None:
            raise RuntimeError("resolve the pending action before feeding more data")
        metrics = self.metrics
        with metrics.lock:
            metrics.bytes_received += len(data)
        if self._trace.enabled:
            self._trace.received(data)
        self.conn.receive_data(data)
        return self._advance(None)

    def expire(self) -> list[Action]:
        """The client kept us waiting past ``timeout``: 421 4.4.2 and close."""
        return self._abandon(R_TIMEOUT)

    def shut_down(self) -> list[Action]:
        """The server is stopping: 421 4.3.2 and close (call between transactions)."""
        return self._abandon(R_SHUTTING_DOWN)

    def evict(self) -> list[Action]:
        """The full server closes this idle session for a newcomer: 421 4.4.2 and close."""
        return self._abandon(R_EVICTED)

    @property
    def in_transaction(self) -> bool:
        """A MAIL transaction is open: a graceful stop lets it finish first."""
        return self.conn.in_transaction

    def wait_ended(self, why: WaitEnd, *, stopping: bool, evicted: bool = False) -> list[Action]:
        """A wait for the client ended without its bytes: the Actions that follows from it.

        An eviction wins (the slot is promised to a newcomer: 421 4.4.2); then a stopping
        server (421 4.3.2, whether the wait was woken or ran out: the client should hear
        that the server is going away, as every other session a stop ends does); then the
        session's own timeout (421 4.4.2). Woken for neither: [] (wait again)."""
        if evicted:
            return self.evict()
        if stopping:
            return self.shut_down()
        if why is WaitEnd.TIMED_OUT:
            return self.expire()
        return []

    def server_stopping(self) -> list[Action]:
        """Between rounds, when the server stops: 421 4.3.2 and close, unless a transaction is
        open ([]: a graceful stop lets it finish)."""
        if self.conn.in_transaction:
            return []
        return self.shut_down()

    def discard_before_tls(self, data: bytes) -> None:
        """Bytes an adapter read after the 220 to STARTTLS but before the handshake: plaintext
        a man in the middle may have injected, never commands (RFC 3207 §4.2, CVE-2011-0411).
        Dropped here, counted with what the engine dropped from its own buffer."""
        if not data:
            return
        self.conn.plaintext_discarded += len(data)
        metrics = self.metrics
        with metrics.lock:
            metrics.bytes_received += len(data)
        log.info(
            "discarded %d octets sent before the TLS handshake", len(data), extra=self._log_extra
        )

    def drop(self) -> list[Action]:
        """The connection is over, however it ended (our Close, a failed write, an error, a
        cancelled task): call this once, before closing the socket, and carry out the Calls it
        returns (resolving each as usual). They abort the step transactions still open, each
        exactly once; with none (always, for plain handlers) this returns []."""
        self._mark_closed()
        if not self._steps:
            return []
        self._conversation.close()
        self._waiting = None
        self._conversation = self._end_steps()
        return self._advance(None)

    def _abandon(self, reply: Reply) -> list[Action]:
        if self._closed:
            return []
        self._mark_closed()
        self._waiting = None
        self._conversation.close()
        log.info("closing: %s", reply.text, extra=self._log_extra)
        data = self.conn.send(reply)
        if self._trace.enabled:
            self._trace.sent(data)
        return [Send(data), Close()]

    def resolve(self, action: Action, result: object) -> list[Action]:
        """Report the outcome of the Call or UpgradeToTLS ``action``; get the next Actions."""
        if action is not self._waiting:
            raise RuntimeError(f"{action!r} is not the action the session waits for")
        self._waiting = None
        return self._advance(result)

    def _advance(self, value: object) -> list[Action]:
        """Run the conversation until it needs bytes or an answer; spooling needs neither."""
        actions: list[Action] = []
        send = self._conversation.send
        while True:
            try:
                question = send(value)
            except StopIteration:
                question = Close()
            if question.__class__ is not Spool:
                break
            value = None
            actions.append(question)
        out = self._out
        if out:
            data = bytes(out)
            out.clear()
            if self._trace.enabled:
                self._trace.sent(data)
            actions.append(Send(data))
        if isinstance(question, Action):
            actions.append(question)
            if isinstance(question, Close):
                self._mark_closed()
            else:
                self._waiting = question
        return actions

    def _mark_closed(self) -> None:
        if not self._closed:
            self._closed = True
            metrics = self.metrics
            with metrics.lock:
                metrics.connections_open -= 1

    # --- the conversation ----------------------------------------------------------------

    def _reply(self, reply: Reply) -> None:
        if reply.code >= 400:
            self.metrics.reject(reply.code)
        self._out += self.conn.send(reply)

    def _converse(self) -> Generator[_Question, object, None]:
        if self.conn.state is ServerState.PROXY:
            header = yield from self._next_event()
            if not isinstance(header, ProxyHeader):
                return
            self._proxy(header)
        if log.isEnabledFor(logging.INFO):  # no address text nor fields for --quiet
            peer = self.info.peer
            shown = format_host_port(*peer) if peer else "an unknown peer"
            log.info("connection from %s", shown, extra=self._log_extra)
        greeting = yield Connect(self.policy.on_connect, (self.info,))
        if not isinstance(greeting, Reply):
            if isinstance(greeting, BaseException):
                log.error("on_connect hook failed", exc_info=greeting, extra=self._log_extra)
            greeting = _greeting(self.config.hostname)
        self._reply(greeting)
        if greeting.code != 220 and greeting.code != 554:
            return
        # The loop every command and every piece of content passes through: the common events
        # are answered right here, without a generator per event; the rest go to _handle.
        conn = self.conn
        threshold = self.policy.spool_threshold
        ended = conn.transactions_ended
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError as exc:
                self._protocol_error(exc)
                return
            if event is NEED_DATA:
                yield NEED_DATA
                continue
            if isinstance(event, DataChunk):
                data = event.data
                if self._spooled or self._size + len(data) > threshold:
                    yield from self._collect(data)
                else:
                    self._content.append(data)
                    self._size += len(data)
                continue  # content never changes the state
            # MAIL, RCPT, DATA's go-ahead and NOOP never end a transaction, whatever their
            # reply (Rule 6: none leads from a transaction state back to READY), and the
            # Session answers none of them with a 421 (which closes the engine; next_event
            # would report that anyway): so they skip the two checks at the end of the loop.
            if isinstance(event, RcptTo) and self._inline_addressable:
                step = self._rcpt_to_now(event)
                if step is not None:
                    yield from self._step_recipient(event, step)
                continue
            if isinstance(event, MailFrom):
                self._mail_from(event)
                continue
            if isinstance(event, (StartData, Noop)):
                self._reply(event.default_reply)
                continue
            if isinstance(event, EndOfData):  # one generator less than through _handle
                yield from self._end_of_data(event)
            elif isinstance(event, Sentinel):
                raise AssertionError("PAUSED: the session answers every event before the next")
            elif isinstance(event, ConnectionClosed):
                return
            else:
                yield from self._handle(event)
            if conn.transactions_ended != ended:  # the engine ended the transaction: so do we
                ended = conn.transactions_ended
                self._reset_transaction()
                if self._steps:  # begun but not delivered (RSET, EHLO, refused content...)
                    yield from self._end_steps()
            if conn.state is S.CLOSED:  # S: the fast alias of ServerState (see _state)
                return

    def _protocol_error(self, exc: RemoteProtocolError) -> None:
        log.info("protocol error: %s", exc, extra=self._log_extra)
        if exc.reply_hint is not None:
            self._out += self.conn.send(exc.reply_hint)

    def _next_event(self) -> Generator[_Question, object, Event]:
        while True:
            try:
                event = self.conn.next_event()
            except RemoteProtocolError as exc:
                self._protocol_error(exc)
                return ConnectionClosed()
            if event is NEED_DATA:
                yield NEED_DATA
                continue
            if isinstance(event, Sentinel):
                raise AssertionError("PAUSED: the session answers every event before the next")
            return event

    def _handle(self, event: Event) -> Generator[_Question, object, None]:
        """Every event but the common ones _converse answers itself (content, MAIL, DATA,
        NOOP, the end of data, and RCPT under the default relay check)."""
        if isinstance(event, Hello):
            self._reply(event.default_reply)
            if self.conn.hello is event:
                self.info = _with_hello(self.info, event)
        elif isinstance(event, RcptTo):
            yield from self._rcpt_to(event)
        elif isinstance(event, (EndOfData, BdatChunk)):
            yield from self._end_of_data(event)
        elif isinstance(event, AuthCredentials):
            yield from self._authenticate(event)
        elif isinstance(event, AuthChallenge):
            self._reply(self._auth_refusal() or event.default_reply)
        elif isinstance(event, StartTLS):
            yield from self._start_tls(event)
        elif isinstance(event, InvalidCommand):
            self._invalid(event)
        elif isinstance(event, (ProxyHeader, ConnectionClosed, DataChunk, MailFrom)):
            raise AssertionError(f"{event!r} is handled by the conversation itself")
        else:  # Verify, Expand, Help, Reset, Quit
            self._reply(event.default_reply)

    def _mail_from(self, event: MailFrom) -> None:
        if self.policy.auth_required and not self.conn.authenticated:
            self._reply(R_AUTH_REQUIRED)
            return
        self._reply(event.default_reply)
        self._mail = event
        if log.isEnabledFor(logging.INFO):  # the adapter's clock: the session reads none
            self._mail_at = self._clock()

    def _route(self, event: RcptTo) -> Handler | None:
        """The recipient's handler, or None after refusing it (too many, or no route)."""
        limit = self.policy.max_recipients
        if limit is not None and len(self._recipients) >= limit:
            self._reply(R_TOO_MANY_RECIPIENTS)
            return None
        handler = self.router.route(event.address)
        if handler is None:
            log.info("no route for <%s>", event.address, extra=self._log_extra)
            self._reply(R_NO_ROUTE)
        return handler

    def _rcpt_to(self, event: RcptTo) -> Generator[_Question, object, None]:
        handler = self._route(event)
        if handler is None:
            return
        allowed = yield CheckRecipient(self.policy.addressable, (self.info, event.address))
        if self._add_recipient(event, handler, allowed):
            yield from self._step_recipient(event, handler)

    def _rcpt_to_now(self, event: RcptTo) -> Handler | None:
        """RCPT with the default (pure) relay check: no round trip through the adapter.
        Returns a step handler that still has to be asked (see ``_step_recipient``)."""
        handler = self._route(event)
        if handler is not None and self._add_recipient(
            event, handler, self.policy.addressable(self.info, event.address)
        ):
            return handler
        return None

    def _add_recipient(self, event: RcptTo, handler: Handler, allowed: object) -> bool:
        """Accept the recipient of a plain handler, or refuse it; True: ``handler`` is a step
        handler, which answers for the recipient itself."""
        if isinstance(allowed, Reject):
            self._reply(allowed.reply)
            return False
        if allowed is not True:
            if isinstance(allowed, BaseException):
                log.error("addressable hook failed", exc_info=allowed, extra=self._log_extra)
                self._reply(R_HANDLER_FAILED)
            else:
                log.info("relaying to <%s> denied", event.address, extra=self._log_extra)
                self._reply(R_RELAY_DENIED)
            return False
        if getattr(handler, "begin", None) is not None:
            return True
        self._reply(event.default_reply)
        self._recipients.append(_Recipient(event.address, event.params, handler))
        return False

    def _step_recipient(
        self, event: RcptTo, handler: Handler
    ) -> Generator[_Question, object, None]:
        """Ask a step handler about a recipient; its first one in this transaction opens the
        handler's transaction. A handler that failed to begin refuses the rest the same way,
        without being asked again (an unreachable upstream costs one timeout, not one each)."""
        step = self._steps.get(id(handler))
        if step is None:
            assert self._mail is not None
            step = self._steps[id(handler)] = _Step()
            start = StepStart(
                self._mail.address,
                self._mail.params,
                self.info,
                f"{self.info.session_id}-{self._transactions + 1}",  # as _deliver numbers it
            )
            begun = yield BeginStep(cast(StepHandler, handler).begin, (start,))
            if isinstance(begun, BaseException) or not all(
                hasattr(begun, name) for name in ("recipient", "deliver", "abort")
            ):
                step.refusal = self._step_refusal("begin", begun)
            else:
                step.transaction = begun
        if step.transaction is None:
            assert step.refusal is not None
            self._reply(step.refusal)
            return
        answer = yield StepRecipient(step.transaction.recipient, (event.address, event.params))
        if answer is None or (isinstance(answer, Reply) and 200 <= answer.code < 300):
            accepted = answer if isinstance(answer, Reply) and answer.code in (250, 251) else None
            self._reply(accepted or event.default_reply)
            self._recipients.append(_Recipient(event.address, event.params, handler))
        else:
            self._reply(self._step_refusal("recipient", answer))

    def _step_refusal(self, step: str, outcome: object) -> Reply:
        """The reply for a step that did not accept: its 4xx/5xx reply (a 421 becomes 451, so
        one target cannot close our connection) or Reject; anything else is a failure."""
        if isinstance(outcome, Reject):
            outcome = outcome.reply
        if isinstance(outcome, Reply) and 400 <= outcome.code < 600:
            if outcome.code == 421:
                return attrs.evolve(outcome, code=451)
            return outcome
        if isinstance(outcome, BaseException):
            log.error("step handler's %s failed", step, exc_info=outcome, extra=self._log_extra)
        else:
            log.error("step handler's %s returned %r", step, outcome, extra=self._log_extra)
        return R_HANDLER_FAILED

    def _end_steps(self) -> Generator[_Question, object, None]:
        """Abort every step transaction still open. Each is forgotten only once its abort was
        carried out, so a connection dropped in between still aborts it (``drop``), once."""
        steps = self._steps
        while steps:
            key = next(iter(steps))
            transaction = steps[key].transaction
            if transaction is not None:
                outcome = yield AbortStep(transaction.abort)
                if isinstance(outcome, BaseException):
                    log.error(
                        "step handler's abort failed", exc_info=outcome, extra=self._log_extra
                    )
            del steps[key]

    def _collect(self, data: bytes) -> Generator[_Question, object, None]:
        if self._spooled:
            yield Spool(data)
            return
        self._content.append(data)
        self._size += len(data)
        if self._size > self.policy.spool_threshold:
            self._spooled = True
            yield Spool(b"".join(self._content), start=True)
            self._content.clear()

    def _end_of_data(self, event: EndOfData | BdatChunk) -> Generator[_Question, object, None]:
        if isinstance(event, BdatChunk) and not event.last:
            self._reply(event.default_reply)  # one reply per chunk, LMTP too
            return
        replies = [event.reject] * len(self._recipients) if event.reject else None
        if replies is None:
            replies = yield from self._deliver()
        if self.info.lmtp:
            for reply in replies:
                self._reply(reply)
            final = min(replies, key=lambda r: r.code)  # accepted if any recipient accepted it
        else:
            final = _combined(replies)
            self._reply(final)
        self._account(event.size, final, replies)

    def _account(self, size: int, final: Reply, replies: list[Reply]) -> None:
        """Count and log one finished transaction, in one line: sender, recipients, outcome,
        size and the time from MAIL to the final reply (by the adapter's clock)."""
        assert self._mail is not None
        accepted = sum(r.code < 400 for r in replies)
        metrics = self.metrics
        with metrics.lock:
            if final.code < 400:
                metrics.transactions_accepted += 1
                metrics.message_bytes += size
                metrics.recipients_accepted += accepted
            else:
                metrics.transactions_refused += 1
        if not log.isEnabledFor(logging.INFO):
            return
        rcpt_tos = [r.address for r in self._recipients]
        count = plural(len(rcpt_tos), "recipient")
        if final.code < 400 and accepted < len(rcpt_tos):  # LMTP: some recipients refused
            count = f"{accepted} of {count} accepted"
        duration = 0.0
        if self._mail_at is not None:  # a clock set back counts as no time, not less
            duration = max(0.0, (self._clock() - self._mail_at).total_seconds())
        reply = format_reply(final)
        sender = self._mail.address
        extra = self._log_extra  # a new dict each time: the transaction's fields join it
        extra["mail_from"] = sender
        extra["rcpt_tos"] = rcpt_tos
        extra["accepted"] = accepted
        extra["size"] = size
        extra["reply_code"] = final.code
        extra["reply"] = reply
        extra["duration"] = round(duration, 6)
        log.info(
            "message from <%s> to %s: %s; %d octets, %s, %.3f s",
            sender,
            f"<{'>, <'.join(rcpt_tos)}>" if rcpt_tos else "",  # <a>, <b>: one join, no generator
            reply,
            size,
            count,
            duration,
            extra=extra,
        )

    def _deliver(self) -> Generator[_Question, object, list[Reply]]:
        """Call each handler once with its recipients; one reply per recipient, in order."""
        assert self._mail is not None
        self._transactions += 1
        recipients = self._recipients
        groups: dict[int, list[int]] = {}
        first = recipients[0].handler if recipients else None
        if first is not None and all(r.handler is first for r in recipients):
            groups[id(first)] = list(range(len(recipients)))  # one handler: as the loop would
        else:
            for index, recipient in enumerate(recipients):
                groups.setdefault(id(recipient.handler), []).append(index)
        content: bytes = b"" if self._spooled else b"".join(self._content)
        replies: list[Reply] = [R_ACCEPTED] * len(self._recipients)
        received_at = self._clock()
        for indexes in groups.values():
            chosen = recipients if len(groups) == 1 else [recipients[i] for i in indexes]
            envelope = Envelope(
                mail_from=self._mail.address,
                rcpt_tos=tuple(r.address for r in chosen),
                content=content,
                mail_params=self._mail.params,
                rcpt_params=tuple(r.params for r in chosen),
                session=self.info,
                received_at=received_at,
                transaction_id=f"{self.info.session_id}-{self._transactions}",  # an Atom
            )
            handler = chosen[0].handler
            step = self._steps.get(id(handler)) if self._steps else None
            if step is not None:
                function = step.transaction.deliver
                outcome = yield Deliver(function, (envelope,), spooled=self._spooled)
                del self._steps[id(handler)]  # delivered: never aborted
                for i, reply in zip(indexes, self._step_outcome(outcome, envelope), strict=True):
                    replies[i] = reply
                continue
            outcome = yield Deliver(handler, (envelope,), spooled=self._spooled)
            reply = self._outcome(outcome, envelope)
            for i in indexes:
                replies[i] = reply
        return replies

    def _step_outcome(self, outcome: object, envelope: Envelope) -> list[Reply]:
        """One reply per recipient of a step transaction's ``deliver``: None accepts all; a
        Reply or Reject answers for all; a list answers one by one (an LMTP target)."""
        count = len(envelope.rcpt_tos)
        if isinstance(outcome, list) and outcome and all(isinstance(r, Reply) for r in outcome):
            if len(outcome) == count:
                return [self._delivered(r, envelope) for r in outcome]
            outcome = ValueError(f"deliver gave {len(outcome)} replies for {count} recipients")
        if isinstance(outcome, Reply):
            return [self._delivered(outcome, envelope)] * count
        if isinstance(outcome, Reject):
            outcome = Reject(self._step_refusal("deliver", outcome))
        if outcome is None or isinstance(outcome, BaseException):
            return [self._outcome(outcome, envelope)] * count
        return [self._outcome(TypeError(f"deliver returned {outcome!r}"), envelope)] * count

    def _delivered(self, reply: Reply, envelope: Envelope) -> Reply:
        if reply.code == 250:
            return reply
        if 200 <= reply.code < 300:
            return R_ACCEPTED
        return self._outcome(Reject(self._step_refusal("deliver", reply)), envelope)

    def _outcome(self, outcome: object, envelope: Envelope) -> Reply:
        # What the transaction's one line (see _account) cannot say: which handler refused and
        # why, and a handler's traceback.
        if isinstance(outcome, Reject):
            log.debug(
                "handler refused %s: %s",
                ", ".join(f"<{address}>" for address in envelope.rcpt_tos),
                outcome.reply.text,
                extra=self._log_extra,
            )
            return outcome.reply
        if isinstance(outcome, BaseException):
            log.error(
                "handler failed for %s",
                ", ".join(f"<{address}>" for address in envelope.rcpt_tos),
                exc_info=outcome,
                extra=self._log_extra,
            )
            return R_HANDLER_FAILED
        return R_ACCEPTED

    def _auth_refusal(self) -> Reply | None:
        """421 4.7.0 instead of another AUTH step once this connection, or this client's
        address, has failed too often: decided before any password is checked, so a guesser
        costs no hashing."""
        limit = self.policy.max_auth_failures
        if limit is not None and self._auth_failures >= limit:
            return R_TOO_MANY_AUTH_FAILURES
        lockout, address = self.policy.auth_lockout, self._address
        if lockout is not None and address is not None:
            now = self._clock().timestamp()
            if lockout.locked(address, now):
                lockout.failed(address, now)  # still guessing: stays locked out
                log.info("AUTH refused: too many failures from %s", address, extra=self._log_extra)
                return R_AUTH_LOCKED_OUT
        return None

    @property
    def _address(self) -> str | None:
        """The client's address (after a PROXY header: the real client's)."""
        return self.info.peer[0] if self.info.peer else None

    def _authenticate(self, event: AuthCredentials) -> Generator[_Question, object, None]:
        refusal = self._auth_refusal()
        if refusal is not None:
            self._reply(refusal)
            return
        identity = yield Authenticate(self.policy.authenticate, (event.credentials, self.info))
        if isinstance(identity, str):
            self.metrics.add(auth_successes=1)
            self._reply(R_AUTH_OK)
            self.info = attrs.evolve(self.info, auth_identity=identity)
            log.info("authenticated as %s", identity, extra=self._log_extra)
            return
        if isinstance(identity, BaseException) and not isinstance(identity, Reject):
            log.error("authenticate hook failed", exc_info=identity, extra=self._log_extra)
            self._reply(Reply(454, "Temporary authentication failure", "4.7.0"))
        else:
            self._auth_failed(identity.reply if isinstance(identity, Reject) else R_AUTH_FAILED)
        self.metrics.add(auth_failures=1)
        log.info("authentication failed for %r", event.credentials.username, extra=self._log_extra)

    def _auth_failed(self, reply: Reply) -> None:
        """Answer a refused login, counted: per connection, towards ``max_errors``, and per
        client address. A temporary refusal (4xx) counts only as an error."""
        self._errors += 1
        if reply.code >= 500:
            self._auth_failures += 1
            lockout, address = self.policy.auth_lockout, self._address
            if lockout is not None and address is not None:
                lockout.failed(address, self._clock().timestamp())
        limit = self.policy.max_errors
        self._reply(R_TOO_MANY_ERRORS if limit is not None and self._errors > limit else reply)

    def _start_tls(self, event: StartTLS) -> Generator[_Question, object, None]:
        self._reply(event.default_reply)
        tls = yield UpgradeToTLS()
        failed = "TLS handshake failed: %s"
        if not count_handshake(self.metrics, tls, log, failed, extra=self._log_extra):
            yield Close()
            return
        assert isinstance(tls, TLSInfo)
        self.info = attrs.evolve(self.info, tls=tls, helo=None, auth_identity=None)

    def _invalid(self, event: InvalidCommand) -> None:
        self._errors += 1
        limit = self.policy.max_errors
        if limit is not None and self._errors > limit:
            self._reply(R_TOO_MANY_ERRORS)
            return
        self._reply(event.default_reply)

    def _proxy(self, header: ProxyHeader) -> None:
        peer = header.source if header.command == "PROXY" else self.info.peer
        self.info = attrs.evolve(self.info, proxy=header, peer=peer)

    def _reset_transaction(self) -> None:
        self._mail = None
        self._mail_at = None
        self._recipients = []
        self._content = []
        self._size = 0
        self._spooled = False

    @property
    def _log_extra(self) -> dict[str, Any]:
        """Structured fields on every record: who, over what, as whom (never secrets)."""
        info = self.info
        return {
            "session_id": info.session_id,
            "peer": info.peer,
            "tls": info.tls.version if info.tls else None,
            "auth_identity": info.auth_identity,
        }


@functools.lru_cache(maxsize=64)
def _greeting(hostname: str) -> Reply:
    """The default 220: one Reply object per name, so its bytes come from the engine's cache
    by identity (``_format``) instead of being rendered for every connection."""
    return Reply(220, f"{hostname} ESMTP smtpmux")


def _with_hello(info: SessionInfo, hello: Hello) -> SessionInfo:
    """``attrs.evolve(info, helo=..., extended=..., lmtp=...)`` written out: evolve reads
    every field through attrs' introspection, a cost paid on every connection. A test
    (tests/session/test_session_edges.py) holds it equal to evolve for every field."""
    return SessionInfo(
        info.session_id,
        info.hostname,
        peer=info.peer,
        helo=hello.name,
        extended=hello.extended,
        lmtp=hello.lmtp,
        tls=info.tls,
        auth_identity=info.auth_identity,
        proxy=info.proxy,
    )


def combined_refusal(replies: Iterable[Reply]) -> Reply | None:
    """One refusal for several answers (recipients, or the targets of a fan-out): the first
    temporary one (so that the sender retries), else the first permanent one; None when every
    answer accepted."""
    failures = [reply for reply in replies if reply.code >= 400]
    return next((r for r in failures if r.code < 500), failures[0]) if failures else None


def _combined(replies: list[Reply]) -> Reply:
    """SMTP has one reply for all recipients: success only if every handler accepted."""
    if len(replies) == 1:  # its own refusal, or the acceptance: what the rule below gives
        return replies[0]
    refusal = combined_refusal(replies)
    if refusal is not None:
        return refusal
    return replies[0] if replies else R_ACCEPTED
