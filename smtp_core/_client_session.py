"""ClientSession: what a client does with a ClientConnection, written once for both adapters.

Each operation (``open``, ``send``, ``noop``, ``quit``) is a generator that yields the I/O it
needs, psycopg style: ``Write(data)``, ``Read()`` (send back the bytes read, ``b""`` at the end
of the stream) and ``WrapTLS()`` (start the handshake on the same connection). Every step names
its timeout. The adapters (smtp_anyio, smtp_sync) only carry the steps out, and turn their I/O
errors into ``SMTPConnectionError`` or ``SMTPTimeout`` with ``io_error``; every protocol
decision is taken here: greeting, EHLO (HELO when refused), STARTTLS as the TLS mode says, AUTH,
pipelining (MAIL, every RCPT and DATA in one write), BDAT when offered, SIZE, 8BITMIME and
SMTPUTF8 as the message needs them, LMTP's reply per recipient, RSET after a failed transaction.

Errors: a refusal is an ``SMTPRefused`` (``SenderRefused``, ``RecipientsRefused``,
``MessageRefused``, ``AuthenticationFailed``) carrying the server's reply, and the connection
stays usable; a capability the server lacks is ``SMTPNotSupported``, raised before anything is
written; a lost or broken connection, a 421, or a timeout is ``SMTPConnectionError`` and ends
the session.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal, TypeAlias, TypeVar

import attrs

from ._client import ClientConnection, ClientState, Command, Extensions, Response
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import NEED_DATA, ConnectionClosed, MailParams, RcptParams, Reply
from ._message import OutgoingMessage, prepare_message
from ._sasl import ClientMechanism, LoginClient, PlainClient

if TYPE_CHECKING:
    from email.message import Message  # email.utils imports socket: not at run time

__all__ = [
    "AuthenticationFailed",
    "ClientAuth",
    "ClientBase",
    "ClientSession",
    "ClientStep",
    "MessageRefused",
    "Read",
    "RecipientResult",
    "RecipientsRefused",
    "SMTPConnectionError",
    "SMTPError",
    "SMTPNotSupported",
    "SMTPRefused",
    "SMTPTimeout",
    "SendResult",
    "SenderRefused",
    "Steps",
    "TLSMode",
    "TLS_MODES",
    "WrapTLS",
    "Write",
    "address_literal",
    "format_reply",
]

TLSMode: TypeAlias = Literal["none", "starttls", "implicit", "opportunistic"]
TLS_MODES: tuple[TLSMode, ...] = ("none", "starttls", "implicit", "opportunistic")
ClientAuth: TypeAlias = "tuple[str, str] | ClientMechanism"

#: With PIPELINING and CHUNKING, a message up to this size goes in the same write as MAIL and
#: RCPT (one round trip); a larger one waits for the RCPT replies, so a refused transaction
#: does not cost the whole upload (RFC 3030 servers read and drop a refused chunk).
PIPELINED_BDAT_LIMIT = 128 * 1024
_MAX_SASL_ROUNDS = 10
_DEFAULT_IO_TIMEOUT = 300.0  #: with timeout=None: connecting, TLS, writing
_QUIT_TIMEOUT = 10.0  #: the reply to QUIT is a courtesy: never wait long for it


def format_reply(reply: Reply) -> str:
    """``550 5.1.1 No such user here``: one line, for messages and the command line."""
    words = [str(reply.code), reply.enhanced or "", " ".join(filter(None, reply.lines))]
    return " ".join(word for word in words if word)


# --- errors -------------------------------------------------------------------------------


class SMTPError(Exception):
    """Base of what the clients raise; ``reply`` is the server's reply when there is one."""

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class SMTPConnectionError(SMTPError):
    """No session: the connection or the TLS handshake failed, the server closed the
    connection (or said 421), or it broke the protocol. The client cannot be used again."""


class SMTPTimeout(SMTPConnectionError):
    """The server did not answer (or take our bytes) in time; the connection is dropped."""


class SMTPNotSupported(SMTPError):
    """The server lacks what is needed (STARTTLS, an AUTH mechanism, SMTPUTF8, 8BITMIME, a
    SIZE big enough). Raised before anything is written: the connection stays usable."""


class SMTPRefused(SMTPError):
    """The server refused a command; ``reply`` says why. ``temporary`` is true for 4xx."""

    reply: Reply

    def __init__(self, message: str, reply: Reply, command: Command) -> None:
        super().__init__(f"{message}: {format_reply(reply)}", reply)
        self.command = command

    @property
    def temporary(self) -> bool:
        return 400 <= self.reply.code < 500


class AuthenticationFailed(SMTPRefused):
    """AUTH was refused (535 5.7.8 and the like)."""


class SenderRefused(SMTPRefused):
    """MAIL FROM was refused: nothing was sent to anyone."""


class RecipientsRefused(SMTPRefused):
    """Every RCPT TO was refused; ``result.refused`` has each recipient's reply."""

    def __init__(self, message: str, reply: Reply, command: Command, result: SendResult):
        super().__init__(message, reply, command)
        self.result = result


class MessageRefused(SMTPRefused):
    """DATA, the end of data or BDAT was refused for every accepted recipient (in LMTP: each
    recipient refused it); ``result`` has each recipient's reply."""

    def __init__(self, message: str, reply: Reply, command: Command, result: SendResult):
        super().__init__(message, reply, command)
        self.result = result


# --- results ------------------------------------------------------------------------------


@attrs.frozen
class RecipientResult:
    """What happened to one recipient."""

    address: str
    rcpt_reply: Reply  #: the reply to RCPT TO
    #: the reply that took (or refused) the message for this recipient: in SMTP the one reply
    #: after the data, shared; in LMTP this recipient's own; None when RCPT was refused
    data_reply: Reply | None = None

    @property
    def reply(self) -> Reply:
        """The reply that decided: the data reply, or the RCPT refusal."""
        return self.data_reply or self.rcpt_reply

    @property
    def accepted(self) -> bool:
        return self.data_reply is not None and 200 <= self.data_reply.code < 300


@attrs.frozen
class SendResult:
    """The outcome of one message, recipient by recipient (returned when at least one
    recipient got the message; otherwise the same value is on the exception)."""

    mail_from: str
    recipients: tuple[RecipientResult, ...]
    mail_reply: Reply
    #: the replies after the content: one in SMTP, one per accepted recipient in LMTP; the
    #: refusal of DATA when that ended the transaction; empty when it ended before
    data_replies: tuple[Reply, ...] = ()

    @property
    def accepted(self) -> dict[str, Reply]:
        """Recipient -> the reply that accepted the message for it."""
        return {r.address: r.reply for r in self.recipients if r.accepted}

    @property
    def refused(self) -> dict[str, Reply]:
        """Recipient -> the reply that refused it (to RCPT, or after the data)."""
        return {r.address: r.reply for r in self.recipients if not r.accepted}

    @property
    def reply(self) -> Reply:
        """The last reply of the transaction (for SMTP: the final reply to the message)."""
        return self.data_replies[-1] if self.data_replies else self.mail_reply


# --- steps --------------------------------------------------------------------------------


@attrs.frozen
class Write:
    """Send these bytes, all of them, within ``timeout`` seconds."""

    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} octets>")
    timeout: float


@attrs.frozen
class Read:
    """Receive what is there (at least one byte, or ``b""`` at the end of the stream)."""

    timeout: float


@attrs.frozen
class WrapTLS:
    """Do the TLS handshake on the connection now (STARTTLS was accepted)."""

    timeout: float


ClientStep: TypeAlias = Write | Read | WrapTLS
_T = TypeVar("_T")
Steps: TypeAlias = Generator[ClientStep, "bytes | None", _T]

_WHAT = {
    Command.CONNECT: "the greeting",
    Command.END_OF_DATA: "the reply to the message",
    Command.BDAT_LAST: "the reply to the message",
}


def address_literal(ip: str) -> str:
    """The EHLO name for an address (RFC 5321 §4.1.3): ``[192.0.2.1]``, ``[IPv6:2001:db8::1]``."""
    ip = ip.partition("%")[0]  # an IPv6 zone is local to us
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


def _check_name(name: str) -> str:
    if not name or not name.isascii() or not name.isprintable() or any(c in name for c in " \t="):
        raise ValueError(f"local_hostname must be one ASCII word, not {name!r}")
    return name


def _mechanism(auth: ClientAuth | None) -> ClientAuth | None:
    if auth is None or isinstance(auth, ClientMechanism):
        return auth
    if isinstance(auth, tuple) and len(auth) == 2 and all(isinstance(p, str) for p in auth):
        return auth
    raise TypeError("auth is a (username, password) tuple or a ClientMechanism")


class ClientSession:
    """One client connection's conversation, without I/O (see the module docstring).

    ``tls``: ``"starttls"`` (required: ``SMTPNotSupported`` when not offered),
    ``"opportunistic"`` (upgrade when offered), ``"implicit"`` (the adapter starts TLS before
    the greeting, RFC 8314) or ``"none"``. ``auth``: ``(username, password)`` (PLAIN, else
    LOGIN, whichever the server offers) or a ``ClientMechanism``; credentials are never sent
    without TLS unless ``tls="none"`` says so. ``timeout``: seconds for each step; ``None``
    waits for replies as long as RFC 5321 §4.5.3.2 says (5 min, 10 after the data).
    """

    def __init__(
        self,
        *,
        tls: TLSMode = "opportunistic",
        auth: ClientAuth | None = None,
        local_hostname: str | None = None,
        lmtp: bool = False,
        timeout: float | None = 60.0,
        server: str = "the server",
    ) -> None:
        if tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {', '.join(TLS_MODES)}, not {tls!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive or None, not {timeout!r}")
        self.tls: TLSMode = tls
        self.auth = _mechanism(auth)
        self.local_hostname = None if local_hostname is None else _check_name(local_hostname)
        self.timeout = timeout
        self.server = server
        self.conn = ClientConnection(lmtp=lmtp)
        self.tls_active = tls == "implicit"
        #: how often the client waited for the server after writing: the cost pipelining saves
        self.round_trips = 0
        self._written = True  # the connection itself asks for the greeting
        self._started = self._ready = False
        self._failure: SMTPError | None = None

    # --- what the adapters look at ---

    @property
    def extensions(self) -> Extensions | None:
        return self.conn.extensions

    @property
    def io_timeout(self) -> float:
        """Seconds for connecting, the TLS handshake and each write."""
        return self.timeout if self.timeout is not None else _DEFAULT_IO_TIMEOUT

    @property
    def usable(self) -> bool:
        return self._ready and self._failure is None

    def abort(self, reason: SMTPError | None = None) -> SMTPError:
        """The connection is gone (or was abandoned mid-step): no more I/O. Returns the error
        later calls raise."""
        if self._failure is None:
            self._failure = reason or SMTPConnectionError(
                f"{self.server}: the connection was abandoned in the middle of a command"
            )
        self._ready = False
        return self._failure

    def io_error(self, step: ClientStep, error: BaseException) -> SMTPError:
        """The adapter's I/O failed while carrying out ``step``: the error to raise."""
        if isinstance(step, Read):
            outstanding = self.conn.outstanding
            if outstanding:
                doing = "waiting for " + _WHAT.get(outstanding[0], f"the reply to {outstanding[0]}")
            else:
                doing = "reading"
        elif isinstance(step, WrapTLS):
            doing = "the TLS handshake"
        else:
            doing = "sending"
        if isinstance(error, TimeoutError):
            return self.abort(
                SMTPTimeout(f"{self.server}: {doing} timed out after {step.timeout:g} s")
            )
        detail = str(error) or str(error.__cause__ or "") or type(error).__name__
        return self.abort(SMTPConnectionError(f"{self.server}: {doing} failed: {detail}"))

    def check_usable(self) -> None:
        if self._failure is not None:
            raise SMTPConnectionError(f"the connection is closed ({self._failure})")
        if not self._ready:
            raise SMTPConnectionError("the client is not connected")

    # --- the operations ---

    def open(self, default_hostname: str) -> Steps[None]:
        """Greeting, EHLO, STARTTLS and EHLO again (as ``tls`` says), AUTH (with ``auth``).

        ``default_hostname`` names us when ``local_hostname`` was not given (the adapter passes
        the address literal of its end of the connection, which needs no DNS)."""
        if self._started:
            raise RuntimeError("open() runs once per session")
        self._started = True
        name = self.local_hostname or _check_name(default_hostname)
        greeting = yield from self._response()
        if not greeting.reply.is_positive:
            raise SMTPRefused(f"{self.server} refused the session", greeting.reply, Command.CONNECT)
        yield from self._hello(name)
        if self.tls in ("starttls", "opportunistic"):
            yield from self._starttls(name)
        if self.auth is not None:
            yield from self._authenticate(self.auth)
        self._ready = True

    def send(
        self,
        message: OutgoingMessage,
        mail_params: MailParams | None = None,
        rcpt_params: RcptParams | Mapping[str, RcptParams] | None = None,
    ) -> Steps[SendResult]:
        """One transaction. Returns the per-recipient result when at least one recipient took
        the message; raises ``SenderRefused``, ``RecipientsRefused`` or ``MessageRefused``
        (with that result) when none did. The connection is ready for the next message."""
        self.check_usable()
        conn = self.conn
        if conn.state is not ClientState.READY:
            yield from self._abandon()
        ext = conn.extensions or Extensions()
        params = self._mail_params(message, mail_params, ext)
        per_rcpt = [
            rcpt_params.get(a) if isinstance(rcpt_params, Mapping) else rcpt_params
            for a in message.rcpt_tos
        ]
        if any(p is not None and (p.notify or p.orcpt) for p in per_rcpt) and not ext.dsn:
            raise SMTPNotSupported(f"{self.server} does not offer DSN (NOTIFY=, ORCPT=)")
        content = message.content
        chunking = ext.chunking
        responses: list[Response] = []
        content_sent = False
        if ext.pipelining:
            try:
                out = self.write_envelope(
                    conn, message.mail_from, message.rcpt_tos, params, per_rcpt, data=not chunking
                )
            except LocalProtocolError as exc:  # all or nothing: nothing was written
                raise SMTPNotSupported(f"{self.server}: {exc}") from None
            if chunking and len(content) <= PIPELINED_BDAT_LIMIT:
                out += conn.bdat(content, last=True)
                content_sent = True
            yield from self._write(out)
            responses += yield from self._replies()
        else:
            try:
                mail = conn.mail(message.mail_from, params)
            except LocalProtocolError as exc:  # nothing written
                raise SMTPNotSupported(f"{self.server}: {exc}") from None
            yield from self._write(mail)
            responses.append((yield from self._response()))
            if responses[0].reply.is_positive:
                for address, rcpt in zip(message.rcpt_tos, per_rcpt, strict=True):
                    yield from self._write(conn.rcpt(address, rcpt))
                    responses.append((yield from self._response()))

        mail_reply = responses[0].reply
        rcpts = [r for r in responses if r.command is Command.RCPT]
        if not mail_reply.is_positive:
            yield from self._abandon()
            raise SenderRefused(f"{self.server} refused the sender", mail_reply, Command.MAIL)
        if not conn.accepted_recipients:
            yield from self._abandon()
            result = _result(message, mail_reply, rcpts, [], lmtp=conn.lmtp)
            last = rcpts[-1].reply
            raise RecipientsRefused(
                f"{self.server} refused every recipient", last, Command.RCPT, result
            )

        finals: list[Response]
        if content_sent:
            finals = [r for r in responses if r.command is Command.BDAT_LAST]
        elif chunking:
            yield from self._write(conn.bdat(content, last=True))
            finals = yield from self._replies()
        else:
            if not ext.pipelining:
                yield from self._write(conn.data())
                responses.append((yield from self._response()))
            go_ahead = responses[-1]
            if go_ahead.reply.code != 354:
                yield from self._abandon()
                result = _result(message, mail_reply, rcpts, [go_ahead], lmtp=False)
                raise MessageRefused(
                    f"{self.server} refused DATA", go_ahead.reply, Command.DATA, result
                )
            yield from self._write(conn.send_message_data(content))
            finals = yield from self._replies()
        result = _result(message, mail_reply, rcpts, finals, lmtp=conn.lmtp)
        if not result.accepted:
            yield from self._abandon()
            reply = next((r.reply for r in result.recipients if r.data_reply), result.reply)
            command = finals[-1].command if finals else Command.END_OF_DATA
            raise MessageRefused(f"{self.server} refused the message", reply, command, result)
        return result

    # --- one transaction in step (a proxy): each command on its own, each reply handed back ---

    def mail(self, address: str, params: MailParams | None = None) -> Steps[Reply]:
        """MAIL FROM on its own, for a proxy that forwards each command as it arrives; a refusal
        is returned as the reply, not raised. A transaction still open is reset first.
        ``SMTPNotSupported`` (nothing written) when a parameter needs what is not offered."""
        self.check_usable()
        if self.conn.state is not ClientState.READY:
            yield from self._abandon()
        if not address.isascii() and not (params and params.smtputf8):
            params = attrs.evolve(params or MailParams(), smtputf8=True)  # RFC 6531 §3.4
        try:
            data = self.conn.mail(address, params)
        except LocalProtocolError as exc:
            raise SMTPNotSupported(f"{self.server}: {exc}") from None
        yield from self._write(data)
        return (yield from self._response()).reply

    def rcpt(self, address: str, params: RcptParams | None = None) -> Steps[Reply]:
        """RCPT TO on its own (after ``mail``); the reply, whatever it is."""
        self.check_usable()
        try:
            data = self.conn.rcpt(address, params)
        except LocalProtocolError as exc:
            raise SMTPNotSupported(f"{self.server}: {exc}") from None
        yield from self._write(data)
        return (yield from self._response()).reply

    def data(self, chunks: Iterable[bytes]) -> Steps[list[Reply]]:
        """The content of the transaction ``mail`` and ``rcpt`` opened, streamed from ``chunks``:
        BDAT (a chunk each) when the server offers CHUNKING, else DATA, dot-stuffed as it goes.
        Returns the reply to the content, or one per accepted recipient (LMTP). When DATA or
        a BDAT chunk is refused before the end, that reply is the only one and the transaction
        is reset. Content the server cannot take (8-bit without 8BITMIME) is found only as it
        streams: the connection is then abandoned and ``SMTPNotSupported`` raised."""
        self.check_usable()
        conn = self.conn
        try:
            if (conn.extensions or Extensions()).chunking:
                return (yield from self._bdat_stream(chunks))
            yield from self._write(conn.data())
            go_ahead = yield from self._response()
            if go_ahead.reply.code != 354:
                yield from self._abandon()
                return [go_ahead.reply]
            stream = conn.message_data()
            for chunk in chunks:
                out = stream.feed(chunk)
                if out:
                    yield from self._write(out)
            yield from self._write(stream.end())
        except LocalProtocolError as exc:
            raise self.abort(SMTPNotSupported(f"{self.server}: {exc}")) from None
        return [response.reply for response in (yield from self._replies())]

    def _bdat_stream(self, chunks: Iterable[bytes]) -> Steps[list[Reply]]:
        conn = self.conn
        pending = iter(chunks)
        chunk = next(pending, b"")
        while True:
            following = next(pending, None)
            if following is None:
                yield from self._write(conn.bdat(chunk, last=True))
                return [response.reply for response in (yield from self._replies())]
            yield from self._write(conn.bdat(chunk))
            response = yield from self._response()
            if not response.reply.is_positive:
                yield from self._abandon()
                return [response.reply]
            chunk = following

    def reset(self) -> Steps[Reply]:
        """RSET: abandon the transaction (a proxy's client went away, or it starts over)."""
        self.check_usable()
        yield from self._replies()
        yield from self._write(self.conn.rset())
        return (yield from self._response()).reply

    def noop(self) -> Steps[Reply]:
        self.check_usable()
        yield from self._write(self.conn.noop())
        response = yield from self._response()
        return response.reply

    def quit(self) -> Steps[None]:
        """QUIT, when the connection is in a state to say it; a no-op otherwise. A server that
        closes without answering is fine: the session is over either way."""
        self._ready = False
        if self._failure is not None or self.conn.outstanding:
            return
        try:
            data = self.conn.quit()
        except LocalProtocolError:
            return
        yield from self._write(data)
        with contextlib.suppress(SMTPConnectionError):
            yield from self._response(limit=_QUIT_TIMEOUT)

    # --- the steps of open ---

    def _hello(self, name: str) -> Steps[None]:
        yield from self._write(self.conn.ehlo(name))
        response = yield from self._response()
        if response.reply.is_positive:
            return
        if self.conn.lmtp or response.reply.code < 500:
            raise SMTPRefused(
                f"{self.server} refused {response.command}", response.reply, response.command
            )
        yield from self._write(self.conn.helo(name))  # RFC 5321 §3.2: an SMTP server without ESMTP
        response = yield from self._response()
        if not response.reply.is_positive:
            raise SMTPRefused(f"{self.server} refused HELO", response.reply, Command.HELO)

    def _starttls(self, name: str) -> Steps[None]:
        ext = self.conn.extensions
        if ext is None or not ext.starttls:
            if self.tls == "starttls":
                raise SMTPNotSupported(
                    f"{self.server} does not offer STARTTLS (tls='starttls' requires it)"
                )
            return
        yield from self._write(self.conn.starttls())
        response = yield from self._response()
        if response.reply.code != 220:
            if self.tls == "starttls":
                raise SMTPRefused(
                    f"{self.server} refused STARTTLS", response.reply, Command.STARTTLS
                )
            return  # opportunistic: go on without TLS, as RFC 3207 §4.1 allows
        yield WrapTLS(self.io_timeout)
        self.tls_active = True
        yield from self._hello(name)

    def _authenticate(self, auth: ClientAuth) -> Steps[None]:
        if not self.tls_active and self.tls != "none":
            raise SMTPNotSupported(
                f"{self.server} did not offer STARTTLS: credentials are not sent in clear "
                "text (pass tls='none' to allow it)"
            )
        offered = (self.conn.extensions or Extensions()).auth
        if isinstance(auth, ClientMechanism):
            mechanism = auth
        elif "PLAIN" in offered:
            mechanism = PlainClient(*auth)
        else:
            mechanism = LoginClient(*auth)
        if mechanism.name.upper() not in offered:
            ext = self.conn.extensions
            if not offered and not self.tls_active and ext is not None and ext.starttls:
                # The usual cause: servers offer AUTH only inside TLS (RFC 8314), and
                # tls="none" never asked for it.
                raise SMTPNotSupported(
                    f"{self.server} offers AUTH only after STARTTLS, and tls='none' (--tls none)"
                    " does not start TLS: use tls='starttls' or the default 'opportunistic'"
                )
            what = " ".join(offered) or "no AUTH"
            raise SMTPNotSupported(
                f"{self.server} does not offer AUTH {mechanism.name} (it offers {what})"
            )
        yield from self._write(self.conn.auth(mechanism))
        response = yield from self._response()
        rounds = 0
        while response.reply.code == 334:  # a challenge: answer it, or give up after many
            rounds += 1
            if rounds > _MAX_SASL_ROUNDS + 1:
                raise self.abort(SMTPConnectionError(f"{self.server} never ends AUTH"))
            if rounds > _MAX_SASL_ROUNDS:
                yield from self._write(self.conn.auth_cancel())
            else:
                yield from self._write(self.conn.auth_respond())
            response = yield from self._response()
        if not 200 <= response.reply.code < 300:
            raise AuthenticationFailed(
                f"{self.server} refused AUTH {mechanism.name}", response.reply, Command.AUTH
            )

    # --- the session's choices, for any ClientConnection ---

    @staticmethod
    def mail_params_for(
        extensions: Extensions | None,
        content: bytes,
        mail_from: str,
        rcpt_tos: Iterable[str] = (),
        params: MailParams | None = None,
    ) -> MailParams:
        """The MAIL parameters a message needs on a server that offered ``extensions``: SIZE
        when offered, BODY=8BITMIME for 8-bit content, SMTPUTF8 for non-ASCII addresses; what
        ``params`` already says is kept. ``LocalProtocolError`` when the server lacks one."""
        ext = extensions or Extensions()
        params = params or MailParams()
        if params.size is None and ext.size is not None:
            params = attrs.evolve(params, size=len(content))
        if params.body is None and not content.isascii():
            if not ext.eightbitmime:
                raise LocalProtocolError(
                    "the server does not offer 8BITMIME, and the message has 8-bit octets"
                )
            params = attrs.evolve(params, body="8BITMIME")
        return _smtputf8_if_needed(ext, params, (mail_from, *rcpt_tos))

    @staticmethod
    def write_envelope(
        conn: ClientConnection,
        mail_from: str,
        rcpt_tos: Sequence[str],
        mail_params: MailParams | None = None,
        rcpt_params: RcptParams | Sequence[RcptParams | None] | None = None,
        *,
        content: bytes | None = None,
        data: bool = True,
    ) -> bytes:
        """MAIL, every RCPT and DATA for one write on ``conn`` (RFC 2920 pipelining).

        ``rcpt_params`` is one value for all recipients or one per recipient. With ``content``
        the MAIL parameters come from ``mail_params_for``; without, a non-ASCII address still
        gets SMTPUTF8. ``data=False`` leaves DATA out (to follow with BDAT). The replies then
        arrive in order; refused recipients are just not in ``conn.accepted_recipients``. All
        or nothing: if a command is refused (``LocalProtocolError``), none is written.
        """
        if not (conn.extensions or Extensions()).pipelining:
            raise LocalProtocolError(
                "the server does not offer PIPELINING: send MAIL, RCPT and DATA one by one"
            )
        if isinstance(rcpt_tos, str):
            raise LocalProtocolError("rcpt_tos is a sequence of addresses, not one string")
        if not rcpt_tos:
            raise LocalProtocolError("write_envelope needs at least one recipient")
        if rcpt_params is None or isinstance(rcpt_params, RcptParams):
            per_rcpt: Sequence[RcptParams | None] = [rcpt_params] * len(rcpt_tos)
        else:
            per_rcpt = rcpt_params
            if len(per_rcpt) != len(rcpt_tos):
                raise LocalProtocolError("rcpt_params has not one entry per recipient")
        if content is not None:
            mail_params = ClientSession.mail_params_for(
                conn.extensions, content, mail_from, rcpt_tos, mail_params
            )
        else:
            mail_params = _smtputf8_if_needed(
                conn.extensions or Extensions(), mail_params or MailParams(), (mail_from, *rcpt_tos)
            )
        with conn.all_or_nothing():
            out = [conn.mail(mail_from, mail_params)]
            out += [conn.rcpt(a, p) for a, p in zip(rcpt_tos, per_rcpt, strict=True)]
            if data:
                out.append(conn.data())
        return b"".join(out)

    # --- the steps of send ---

    def _mail_params(
        self, message: OutgoingMessage, given: MailParams | None, ext: Extensions
    ) -> MailParams:
        """SIZE, BODY=8BITMIME, SMTPUTF8 as the message needs them; refuse what is lacking."""
        content = message.content
        if ext.size and len(content) > ext.size:
            raise SMTPNotSupported(
                f"the message ({len(content)} octets) is larger than {self.server} takes "
                f"(SIZE {ext.size})"
            )
        try:
            params = self.mail_params_for(ext, content, message.mail_from, message.rcpt_tos, given)
        except LocalProtocolError as exc:
            raise SMTPNotSupported(f"{self.server}: {exc}") from None
        if not params.smtputf8 and ext.smtputf8 and message.utf8_headers:
            params = attrs.evolve(params, smtputf8=True)  # RFC 6532 headers: say so when we can
        return params

    def _abandon(self) -> Steps[None]:
        """After a failed transaction: read what is outstanding, end an empty DATA, RSET."""
        conn = self.conn
        yield from self._replies()
        if conn.state is ClientState.DATA:  # 354 although no recipient was accepted
            yield from self._write(conn.send_message_data(b""))
            yield from self._replies()
        if conn.state in (ClientState.MAIL, ClientState.RCPT, ClientState.CHUNKING):
            yield from self._write(conn.rset())
            yield from self._replies()

    # --- reading and writing ---

    def _write(self, data: bytes) -> Steps[None]:
        self._written = True
        yield Write(data, self.io_timeout)

    def _replies(self) -> Steps[list[Response]]:
        """Every reply outstanding, in order."""
        responses = []
        while self.conn.outstanding:
            responses.append((yield from self._response()))
        return responses

    def _response(self, limit: float | None = None) -> Steps[Response]:
        """The next reply; reading as often as it takes (each read within ``limit`` too)."""
        while True:
            pending = self.conn.outstanding
            try:
                event = self.conn.next_event()
            except RemoteProtocolError as exc:
                raise self.abort(
                    SMTPConnectionError(f"{self.server} broke the protocol: {exc}")
                ) from None
            if isinstance(event, Response):
                closed = self.conn.state is ClientState.CLOSED
                if closed and event.command is not Command.QUIT:
                    raise self.abort(
                        SMTPConnectionError(
                            f"{self.server} closed the session: {format_reply(event.reply)}",
                            event.reply,
                        )
                    )
                return event
            if isinstance(event, ConnectionClosed):
                waiting = _WHAT.get(pending[0], f"the reply to {pending[0]}") if pending else ""
                raise self.abort(
                    SMTPConnectionError(
                        f"{self.server} closed the connection"
                        + (f" before {waiting}" if waiting else "")
                    )
                )
            assert event is NEED_DATA
            if self._written:
                self.round_trips += 1
                self._written = False
            timeout = self.timeout
            if timeout is None:
                timeout = self.conn.reply_timeout or _DEFAULT_IO_TIMEOUT
            data = yield Read(timeout if limit is None else min(timeout, limit))
            assert data is not None
            self.conn.receive_data(data)


def _smtputf8_if_needed(
    ext: Extensions, params: MailParams, addresses: Iterable[str]
) -> MailParams:
    """SMTPUTF8 declared when an address is not ASCII (RFC 6531 §3.4), if the server offers it."""
    if params.smtputf8 or all(a.isascii() for a in addresses):
        return params
    if not ext.smtputf8:
        raise LocalProtocolError("the server does not offer SMTPUTF8, and an address is not ASCII")
    return attrs.evolve(params, smtputf8=True)


def _result(
    message: OutgoingMessage,
    mail_reply: Reply,
    rcpts: Sequence[Response],
    finals: Sequence[Response],
    *,
    lmtp: bool,
) -> SendResult:
    by_recipient = {r.argument: r.reply for r in finals} if lmtp else {}
    shared = finals[0].reply if finals and not lmtp else None
    recipients = []
    for response in rcpts:
        address = response.argument or ""
        data_reply = None
        if response.reply.is_positive:
            data_reply = by_recipient.get(address) if lmtp else shared
        recipients.append(RecipientResult(address, response.reply, data_reply))
    return SendResult(
        message.mail_from, tuple(recipients), mail_reply, tuple(r.reply for r in finals)
    )


class ClientBase:
    """What the anyio and the blocking client share: their options, checked once, the
    ClientSession that takes every decision, and what it knows. The adapters add the
    connection and carry out the session's steps over it. ``ssl_context`` is only kept here
    for the adapter (an ``ssl.SSLContext``; this module does no TLS)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: TLSMode,
        ssl_context: object | None,
        auth: ClientAuth | None,
        timeout: float | None,
        local_hostname: str | None,
        lmtp: bool,
    ) -> None:
        if ssl_context is not None and tls == "none":
            raise ValueError("ssl_context given, but tls='none'")
        self.host, self.port = host, port
        self._session = ClientSession(
            tls=tls,
            auth=auth,
            local_hostname=local_hostname,
            lmtp=lmtp,
            timeout=timeout,
            server=f"{host}:{port}",
        )

    @property
    def extensions(self) -> Extensions | None:
        """What the server offered in its last EHLO/LHLO reply."""
        return self._session.extensions

    @property
    def tls_active(self) -> bool:
        return self._session.tls_active

    @property
    def authenticated(self) -> bool:
        return self._session.conn.authenticated

    @property
    def round_trips(self) -> int:
        """How often the client has waited for the server after writing (pipelining saves)."""
        return self._session.round_trips

    def _send_steps(
        self,
        message: Message | bytes,
        mail_from: str | None,
        rcpt_tos: Iterable[str] | None,
        mail_params: MailParams | None,
        rcpt_params: RcptParams | Mapping[str, RcptParams] | None,
    ) -> Steps[SendResult]:
        """The steps that send ``message`` (see the adapters' ``send_message``)."""
        binary = mail_params is not None and mail_params.body == "BINARYMIME"
        outgoing = prepare_message(message, mail_from=mail_from, rcpt_tos=rcpt_tos, binary=binary)
        return self._session.send(outgoing, mail_params, rcpt_params)
