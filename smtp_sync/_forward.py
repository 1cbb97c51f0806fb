"""Forwarding targets: ``smtp://``, ``smtps://``, ``lmtp://`` and ``lmtp+unix://``, in step.

A transparent proxy with the project's own blocking client: the upstream MAIL goes out when
the first recipient is routed here, each RCPT as ours arrives (the upstream's answer is our
answer), and the content after our end of data (the upstream's answer is ours). Nothing is
queued, so nothing can be lost here: the client hears 250 only after the upstream said 250.

| upstream                                   | our reply                                   |
| ------------------------------------------ | ------------------------------------------- |
| unreachable, timeout, broken connection    | 451 4.4.1 (the sender retries)              |
| 4xx (greeting, EHLO, MAIL, RCPT, data)     | 451 4.4.1 with the upstream's text          |
| 5xx at RCPT or after the data              | that 5xx, as it is                          |
| 5xx at MAIL                                | that 5xx, for every recipient routed here   |
| 5xx greeting, EHLO, STARTTLS, AUTH         | 451 4.4.1 (our configuration, not the mail) |
| 250 after the data                         | that 250 (with the upstream's queue id)     |

A timeout after the content was sent is 451 too: the upstream may have taken the message, so
the sender's retry can deliver it twice (never zero times); the upstream sees the same
Message-ID and our transaction id (in the Received line we add) both times.

LMTP (RFC 2033: Dovecot's ``lmtp`` service, a mail store) goes the same way, over TCP or a unix
socket; an unknown user is refused at our RCPT with the store's own 550 5.1.1. After the data
it answers each recipient: ``LMTPTransaction.deliver`` returns those answers one per recipient,
and the Session passes them on one by one when we speak LMTP ourselves, or makes one SMTP reply
of them (250 only when every recipient took it; else the first 4xx; else the first 5xx: no
recipient that was refused is ever reported delivered; see docs/routes.md).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import attrs

from smtp_core import (
    Envelope,
    Extensions,
    MailParams,
    RcptParams,
    Reject,
    Reply,
    SMTPError,
    SMTPNotSupported,
    SMTPRefused,
    StepStart,
    TLSMode,
    combined_refusal,
    format_host_port,
)

from ._client import Client
from ._delivery import message_chunks, permanent, seconds, temporary

__all__ = ["LMTPForward", "SMTPForward", "forward_target"]

log = logging.getLogger("smtpmux.delivery")

_DEFAULT_TIMEOUT = 30.0
_TLS_CHOICES: dict[str, TLSMode] = {
    "starttls": "starttls",
    "opportunistic": "opportunistic",
    "none": "none",
}


def forward_target(text: str) -> Any:
    """The handler for a forwarding target string: the scheme picks the kind.

    ``smtp://HOST[:PORT][?OPTIONS]`` (port 25) and ``smtps://HOST[:PORT][?OPTIONS]`` (port 465,
    TLS from the first byte). Options: ``tls=starttls|opportunistic|none`` (smtp:// only;
    default opportunistic), ``cafile=PATH`` (trust this CA instead of the system's),
    ``user=NAME`` with ``password_env=VAR`` or ``password_file=PATH`` (AUTH; the password is
    never written in the target), ``timeout=SECONDS`` (each upstream step, default 30),
    ``helo=NAME`` (our EHLO name upstream).

    ``lmtp://HOST[:PORT]`` (port 24) and ``lmtp+unix:///PATH`` (an absolute path): LMTP, in
    clear text (a local socket or a trusted network); options ``timeout=`` and ``helo=`` (our
    LHLO name, by default our own host name)."""
    url = urllib.parse.urlsplit(text)
    factory = _SCHEMES.get(url.scheme.lower())
    if factory is None:
        raise ValueError(
            f"{text!r}: not a forwarding target; write smtp://HOST:PORT, smtps://HOST:PORT, "
            "lmtp://HOST:PORT or lmtp+unix:///PATH"
        )
    return factory(text, url)


def _smtp_target(text: str, url: urllib.parse.SplitResult) -> SMTPForward:
    implicit = url.scheme.lower() == "smtps"
    host, port = _host_port(text, url, 465 if implicit else 25)
    options = _options(
        text, url, {"tls", "cafile", "user", "password_env", "password_file", "timeout", "helo"}
    )
    tls: TLSMode = "implicit" if implicit else "opportunistic"
    if "tls" in options:
        if implicit:
            raise ValueError(f"{text!r}: smtps:// is TLS from the start; tls= is for smtp://")
        if options["tls"] not in _TLS_CHOICES:
            raise ValueError(f"{text!r}: tls= is starttls, opportunistic or none")
        tls = _TLS_CHOICES[options["tls"]]
    cafile = options.get("cafile")
    context = None
    if cafile is not None:
        if tls == "none":
            raise ValueError(f"{text!r}: cafile= with tls=none: no TLS to check")
        try:
            context = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"{text!r}: cannot load cafile={cafile}: {exc}") from None
    auth = _credentials(text, options)
    if auth is not None and tls == "none":
        raise ValueError(f"{text!r}: user= with tls=none would send the password in clear text")
    timeout = _timeout(text, options)
    canonical = urllib.parse.urlunsplit(
        (url.scheme.lower(), format_host_port(host, port), "", urllib.parse.urlencode(options), "")
    )
    return SMTPForward(
        canonical,
        host,
        port,
        tls=tls,
        ssl_context=context,
        auth=auth,
        timeout=timeout,
        helo=options.get("helo"),
    )


def _lmtp_target(text: str, url: urllib.parse.SplitResult) -> LMTPForward:
    options = _options(text, url, {"timeout", "helo"})
    timeout = _timeout(text, options)
    if url.scheme.lower() == "lmtp":
        host, port = _host_port(text, url, 24)  # "lmtp 24/tcp" in /etc/services
        canonical = urllib.parse.urlunsplit(
            ("lmtp", format_host_port(host, port), "", urllib.parse.urlencode(options), "")
        )
        return LMTPForward(
            canonical, host, port, tls="none", timeout=timeout, helo=options.get("helo")
        )
    if url.netloc or not url.path.startswith("/") or url.fragment:
        raise ValueError(
            f"{text!r}: write lmtp+unix:///PATH, the absolute path of the socket after three "
            "slashes (e.g. lmtp+unix:///run/dovecot/lmtp)"
        )
    path = urllib.parse.unquote(url.path)
    if len(os.fsencode(path)) > 107:  # sun_path: 108 octets with the final NUL (Linux)
        raise ValueError(f"{text!r}: a unix socket path is at most 107 octets long")
    query = urllib.parse.urlencode(options)
    canonical = f"lmtp+unix://{url.path}" + (f"?{query}" if query else "")
    return LMTPForward(
        canonical, "localhost", 0, tls="none", timeout=timeout, helo=options.get("helo"), path=path
    )


#: The forwarding schemes, each with its factory.
_SCHEMES: dict[str, Callable[[str, urllib.parse.SplitResult], Any]] = {
    "smtp": _smtp_target,
    "smtps": _smtp_target,
    "lmtp": _lmtp_target,
    "lmtp+unix": _lmtp_target,
}


# --- parsing helpers (shared by every scheme) ------------------------------------------------


def _host_port(text: str, url: urllib.parse.SplitResult, default: int) -> tuple[str, int]:
    if url.username is not None or url.password is not None:
        raise ValueError(
            f"{url.scheme}://...: no user or password before the host; write "
            "?user=NAME&password_env=VAR (or password_file=PATH)"
        )
    if url.path not in ("", "/") or url.fragment:
        raise ValueError(f"{text!r}: write {url.scheme}://HOST:PORT, with options after ?")
    try:
        host, port = url.hostname, url.port
    except ValueError:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535") from None
    if not host:
        raise ValueError(f"{text!r}: no host; write {url.scheme}://HOST:PORT")
    return host, port or default


def _timeout(text: str, options: dict[str, str]) -> float:
    if "timeout" not in options:
        return _DEFAULT_TIMEOUT
    timeout = seconds(options["timeout"])
    if timeout is None or timeout >= 3600:
        raise ValueError(f"{text!r}: timeout= is a number of seconds, e.g. timeout=30")
    return timeout


def _options(text: str, url: urllib.parse.SplitResult, known: set[str]) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(url.query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        pairs = [] if not url.query else [("", "")]
    options: dict[str, str] = {}
    for key, value in pairs:
        if key == "password":
            raise ValueError(
                f"{url.scheme}://...: no password in the target (it would show in logs and "
                "`ps`); write password_env=VAR or password_file=PATH"
            )
        if key not in known:
            raise ValueError(f"{text!r}: unknown option {key!r}; known: {', '.join(sorted(known))}")
        if key in options:
            raise ValueError(f"{text!r}: {key}= given twice")
        if not value:
            raise ValueError(f"{text!r}: {key}= needs a value")
        options[key] = value
    return options


def _credentials(text: str, options: dict[str, str]) -> tuple[str, str] | None:
    user = options.get("user")
    env, file = options.get("password_env"), options.get("password_file")
    if user is None:
        if env or file:
            raise ValueError(f"{text!r}: a password without user=NAME")
        return None
    if (env is None) == (file is None):
        raise ValueError(f"{text!r}: user= needs password_env=VAR or password_file=PATH (one)")
    if env is not None:
        password = os.environ.get(env)
        if not password:
            raise ValueError(f"{text!r}: the environment variable {env} is not set")
        return user, password
    assert file is not None
    try:
        lines = Path(file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{text!r}: cannot read password_file={file}: {exc}") from None
    if not lines or not lines[0]:
        raise ValueError(f"{text!r}: password_file={file} is empty (the first line is used)")
    return user, lines[0]


# --- replies ---------------------------------------------------------------------------------


# Our client hears what happened, not where: the upstream's address stays in our log.


def _unavailable(why: str) -> Reply:
    """The upstream could not be reached, or went away: the sender retries."""
    return temporary(f"Upstream unavailable, try again later ({why})").reply


def _passed_on(reply: Reply) -> Reply:
    """An upstream's refusal as ours: a 5xx as it is; any 4xx (and anything odd) is 451
    4.4.1 quoting it, so the sender retries."""
    if 500 <= reply.code < 600:
        return reply if reply.enhanced else attrs.evolve(reply, enhanced="5.0.0")
    return temporary(f"Upstream said: {reply.code} {reply.text}".strip()).reply


def _answer_to_data(reply: Reply) -> Reply:
    """An upstream's answer after the data (for one recipient, over LMTP), as ours: a 250
    with its text (Dovecot's "<bob@example.com> ID Saved", a queue id) and an enhanced code."""
    if reply.code == 250:
        return reply if reply.enhanced else attrs.evolve(reply, enhanced="2.0.0")
    if 200 <= reply.code < 300:
        return Reply(250, f"Upstream said: {reply.text}", "2.0.0")
    return _passed_on(reply)


def _error_text(exc: SMTPError) -> str:
    """What went wrong with our client, for a reply: the upstream's refusal, or the error."""
    reply = getattr(exc, "reply", None)
    if isinstance(exc, SMTPRefused) and isinstance(reply, Reply):
        return f"{reply.code} {reply.text}"
    return str(exc).split(": ", 1)[-1] or type(exc).__name__


#: What the message needs that the upstream lacks (SMTPNotSupported): permanent refusals.
_NOT_SUPPORTED = (
    ("8BITMIME", 554, "5.6.3"),  # RFC 6152: conversion needed, not offered
    ("SMTPUTF8", 553, "5.6.7"),  # RFC 6531 §3.5
    ("REQUIRETLS", 550, "5.7.30"),  # RFC 8689 §5
    ("SIZE", 552, "5.3.4"),  # RFC 1870
)


# --- the handler -----------------------------------------------------------------------------


@attrs.define(eq=False, repr=False)
class SMTPForward:
    """Forward in step to an SMTP server (a StepHandler): one upstream connection per
    transaction, opened at the first recipient, closed after the data or on abort."""

    canonical: str
    host: str
    port: int
    tls: TLSMode = "opportunistic"
    ssl_context: ssl.SSLContext | None = None
    auth: tuple[str, str] | None = None
    timeout: float = _DEFAULT_TIMEOUT
    helo: str | None = None
    #: what our log says we were doing when the upstream failed
    doing: ClassVar[str] = "forwarding"

    def __repr__(self) -> str:
        return self.canonical  # options name the password's source, never the password

    @property
    def where(self) -> str:
        return format_host_port(self.host, self.port)

    def _client(self, start: StepStart) -> Client:
        """A client for one transaction, not connected yet."""
        return Client(
            self.host,
            self.port,
            tls=self.tls,
            ssl_context=self.ssl_context,
            auth=self.auth,
            timeout=self.timeout,
            local_hostname=self.helo,
        )

    def begin(self, start: StepStart) -> SMTPTransaction:
        return _begin(self, self._client(start), start, SMTPTransaction)

    def __call__(self, envelope: Envelope) -> None:
        """As a plain handler (a caller that does not know steps): the whole transaction at
        once, with the same rules. Over LMTP a refusal of any recipient after the data refuses
        the message (its first temporary one, else its first permanent one)."""
        start = StepStart(
            envelope.mail_from, envelope.mail_params, envelope.session, envelope.transaction_id
        )
        transaction = self.begin(start)
        try:
            for address, params in zip(envelope.rcpt_tos, envelope.rcpt_params, strict=True):
                answer = transaction.recipient(address, params)
                if answer.code >= 400:
                    raise Reject(answer)
            outcome: Reply | list[Reply] = transaction.deliver(envelope)
        except BaseException:
            transaction.abort()
            raise
        refusal = combined_refusal(outcome if isinstance(outcome, list) else [outcome])
        if refusal is not None:
            raise Reject(refusal)


_Transaction = TypeVar("_Transaction", bound="SMTPTransaction")


def _begin(
    target: SMTPForward, client: Client, start: StepStart, kind: type[_Transaction]
) -> _Transaction:
    """Connect and send MAIL: an upstream that cannot be reached is 451 4.4.1 (the sender
    retries), a refused MAIL refuses every recipient routed here; the connection is closed on
    any failure."""
    try:
        client.open()
    except SMTPError as exc:
        client.close()
        log.warning("%s to %s: %s", target.doing, target.where, exc)
        raise Reject(_unavailable(_error_text(exc))) from None
    transaction = kind(target, client, start)
    try:
        transaction.start()
    except BaseException:
        transaction.abort()
        raise
    return transaction


class SMTPTransaction:
    """One upstream transaction, driven by our Session's steps."""

    def __init__(self, target: SMTPForward, client: Client, start: StepStart) -> None:
        self.target = target
        self.client = client
        self.start_info = start
        self.accepted: list[tuple[str, RcptParams]] = []
        self.failure: Reply | None = None  #: once the upstream is lost, every answer is this
        self.closed = False

    @property
    def where(self) -> str:
        return self.target.where

    def _lost(self, exc: SMTPError) -> Reply:
        log.warning("%s to %s: %s", self.target.doing, self.where, exc)
        self.failure = _unavailable(_error_text(exc))
        self._close()
        return self.failure

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.client.quit()  # QUIT inside a transaction abandons it (RFC 5321 §4.1.1.10)

    def _mail_params(self) -> MailParams:
        """Our client's MAIL parameters, as far as the upstream offers them: BODY, SMTPUTF8
        and REQUIRETLS must pass (refused otherwise: the message needs them), DSN's RET and
        ENVID pass when offered; AUTH= and unknown extras stay here."""
        ours = self.start_info.mail_params
        ext = self.client.extensions or Extensions()
        body = ours.body
        if body in (None, "7BIT"):  # 8BITMIME is a superset: 8-bit octets sent undeclared pass
            body = "8BITMIME" if ext.eightbitmime else None
        return MailParams(
            size=ours.size if ext.size is not None else None,
            body=body,
            smtputf8=ours.smtputf8,
            ret=ours.ret if ext.dsn else None,
            envid=ours.envid if ext.dsn else None,
            requiretls=ours.requiretls,
        )

    def start(self) -> None:
        """MAIL upstream; a refusal refuses every recipient routed here (raise Reject)."""
        try:
            reply = self.client.mail(self.start_info.mail_from, self._mail_params())
        except SMTPError as exc:
            raise Reject(self._cannot_take(exc)) from None
        if reply.code >= 400:
            raise Reject(_passed_on(reply))

    def _cannot_take(self, exc: SMTPError) -> Reply:
        """SMTPNotSupported: the upstream lacks what this message needs (8BITMIME, SMTPUTF8,
        REQUIRETLS, its SIZE): permanent, as RFC 3461/6531 say; anything else is lost."""
        if isinstance(exc, SMTPNotSupported):
            log.info("%s to %s: %s", self.target.doing, self.where, exc)
            text = str(exc)
            code, enhanced = next(
                ((c, e) for word, c, e in _NOT_SUPPORTED if word in text), (554, "5.3.3")
            )
            reason = f"Upstream cannot take this message: {_error_text(exc)}"
            return permanent(reason, enhanced, code).reply
        return self._lost(exc)

    def recipient(self, address: str, params: RcptParams) -> Reply:
        if self.failure is not None:
            return self.failure
        ext = self.client.extensions or Extensions()
        upstream = RcptParams(notify=params.notify, orcpt=params.orcpt) if ext.dsn else None
        try:
            reply = self.client.rcpt(address, upstream)
        except SMTPError as exc:
            return self._cannot_take(exc)
        if reply.code < 300:
            self.accepted.append((address, params))
            return reply
        return _passed_on(reply)

    def deliver(self, envelope: Envelope) -> Reply:
        try:
            return self._deliver(envelope)
        finally:
            self._close()

    def _deliver(self, envelope: Envelope) -> Reply:
        if self.failure is not None:
            return self.failure
        wanted = list(zip(envelope.rcpt_tos, envelope.rcpt_params, strict=True))
        if [a for a, _ in self.accepted] != list(envelope.rcpt_tos):
            # A fan-out refused a recipient this upstream took: start over with only ours,
            # so the upstream never delivers to a recipient our client was told is refused.
            reply = self._restart(wanted)
            if reply is not None:
                return reply
        try:
            replies = self.client.data(self._content(envelope))
        except SMTPError as exc:
            return self._cannot_take(exc)
        return _answer_to_data(replies[-1] if replies else _unavailable("no reply to the message"))

    def _restart(self, wanted: list[tuple[str, RcptParams]]) -> Reply | None:
        try:
            self.client.reset()
            self.accepted = []
            self.start()
            for address, params in wanted:
                answer = self.recipient(address, params)
                if answer.code >= 400:
                    return answer
        except Reject as exc:
            return exc.reply
        except SMTPError as exc:
            return self._lost(exc)
        return None

    def _content(self, envelope: Envelope) -> Iterator[bytes]:
        """Our Received line (RFC 5321 §4.4: a relay adds one; it names our transaction id),
        then the message from the spool, in bounded chunks."""
        return message_chunks(envelope, envelope.received_header())

    def abort(self) -> None:
        self._close()


# --- LMTP ------------------------------------------------------------------------------------


class _UnixClient(Client):
    """Our blocking client over a unix socket (Dovecot's ``/run/dovecot/lmtp``)."""

    def __init__(self, path: str, **options: Any) -> None:
        super().__init__("localhost", 0, **options)
        self.path = path
        self._session.server = path

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self._session.io_timeout)
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        return sock


@attrs.define(eq=False, repr=False)
class LMTPForward(SMTPForward):
    """Deliver in step over LMTP (a StepHandler) to ``host:port``, or to the unix socket
    ``path``: one connection per transaction, as SMTPForward, with one answer per recipient
    after the data."""

    path: str | None = None
    doing: ClassVar[str] = "delivering over LMTP"

    @property
    def where(self) -> str:
        return self.path or format_host_port(self.host, self.port)

    def _client(self, start: StepStart) -> Client:
        # LHLO names us by our own host name (a unix socket has no address literal)
        options: dict[str, Any] = {
            "tls": "none",
            "timeout": self.timeout,
            "local_hostname": self.helo or start.session.hostname,
            "lmtp": True,
        }
        if self.path is not None:
            return _UnixClient(self.path, **options)
        return Client(self.host, self.port, **options)

    def begin(self, start: StepStart) -> LMTPTransaction:
        return _begin(self, self._client(start), start, LMTPTransaction)


class LMTPTransaction(SMTPTransaction):
    """One LMTP transaction: as SMTP, but the data is answered recipient by recipient."""

    def _mail_params(self) -> MailParams:
        """As for SMTP, but the mail store is the last hop, not a relay: SMTPUTF8 is declared
        only when offered (Dovecot 2.3 does not; addresses that need it are still refused),
        and REQUIRETLS (RFC 8689, a requirement on relays) ends with us."""
        params = super()._mail_params()
        ext = self.client.extensions or Extensions()
        return attrs.evolve(params, smtputf8=params.smtputf8 and ext.smtputf8, requiretls=False)

    def deliver(self, envelope: Envelope) -> list[Reply]:  # type: ignore[override]
        """One reply per recipient of ``envelope``, in its order (the step protocol's LMTP
        answer; an SMTP transaction's ``deliver`` has one for all)."""
        try:
            return self._deliver_each(envelope)
        finally:
            self._close()

    def _deliver_each(self, envelope: Envelope) -> list[Reply]:
        count = len(envelope.rcpt_tos)
        if self.failure is not None:
            return [self.failure] * count
        #: a recipient's answer once known before the data (refused when starting over)
        answers: list[Reply | None] = [None] * count
        if [a for a, _ in self.accepted] != list(envelope.rcpt_tos):
            self._start_over(envelope, answers)
        if not self.accepted:  # each refused on starting over: no content to send
            lost = self.failure or _unavailable("no recipient accepted")
            return [lost if answer is None else answer for answer in answers]
        try:
            replies = self.client.data(self._content(envelope))
        except SMTPError as exc:
            return [self._cannot_take(exc)] * count
        if len(replies) != len(self.accepted):  # DATA or a BDAT chunk refused: one for all
            shared = _passed_on(replies[0]) if replies else _unavailable("no reply to the data")
            return [shared if answer is None else answer for answer in answers]
        given = iter(replies)  # one per recipient accepted upstream: the Nones, in order
        return [_answer_to_data(next(given)) if answer is None else answer for answer in answers]

    def _start_over(self, envelope: Envelope, answers: list[Reply | None]) -> None:
        """We accepted fewer recipients than the LMTP server did (a fan-out target after this
        one refused some): RSET, MAIL and only our RCPTs, so that nobody our client was told
        is refused gets the message. A recipient refused now gets that answer."""
        try:
            self.client.reset()
            self.accepted = []
            self.start()
        except Reject as exc:
            answers[:] = [exc.reply] * len(answers)
            return
        except SMTPError as exc:
            answers[:] = [self._lost(exc)] * len(answers)
            return
        for index, (address, params) in enumerate(
            zip(envelope.rcpt_tos, envelope.rcpt_params, strict=True)
        ):
            answer = self.recipient(address, params)
            if answer.code >= 400:
                answers[index] = answer
