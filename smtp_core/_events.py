"""Replies, typed parameters and the events the server engine emits: plain frozen values."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Literal

import attrs

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "AuthChallenge",
    "AuthCredentials",
    "BdatChunk",
    "ConnectionClosed",
    "Credentials",
    "DataChunk",
    "EndOfData",
    "Event",
    "Expand",
    "Hello",
    "Help",
    "InvalidCommand",
    "MailFrom",
    "MailParams",
    "Noop",
    "ProxyHeader",
    "Quit",
    "RcptParams",
    "RcptTo",
    "Reply",
    "Reset",
    "Sentinel",
    "StartData",
    "StartTLS",
    "Verify",
]


class Sentinel(enum.Enum):
    """What ``next_event()`` returns when it has no event to give."""

    NEED_DATA = "NEED_DATA"  #: feed more bytes (and flush what you have written)
    PAUSED = "PAUSED"  #: a command waits for its reply; send it before asking again


NEED_DATA = Sentinel.NEED_DATA
PAUSED = Sentinel.PAUSED


def _as_lines(value: str | Iterable[str]) -> tuple[str, ...]:
    lines = (value,) if isinstance(value, str) else tuple(value)
    return lines or ("",)


@attrs.frozen
class Reply:
    """One SMTP reply: a three-digit code, one or more text lines, an optional enhanced code.

    ``Reply(250, "OK", "2.0.0")`` is written ``250 2.0.0 OK``; several lines are written as a
    multi-line reply. The engine checks the reply fits the command it answers.
    """

    code: int
    lines: tuple[str, ...] = attrs.field(default=("",), converter=_as_lines)
    enhanced: str | None = None

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def is_positive(self) -> bool:
        """2xx or 3xx: the command was accepted (or may go on)."""
        return 200 <= self.code < 400


@attrs.frozen
class MailParams:
    """The ESMTP parameters of MAIL FROM, parsed and checked against the advertised extensions."""

    size: int | None = None  #: RFC 1870 declared size
    body: Literal["7BIT", "8BITMIME", "BINARYMIME"] | None = None  #: RFC 6152 / 3030
    smtputf8: bool = False  #: RFC 6531
    ret: Literal["FULL", "HDRS"] | None = None  #: RFC 3461 DSN
    envid: str | None = None  #: RFC 3461 DSN, xtext-decoded
    auth: str | None = None  #: RFC 4954 AUTH= submitter, xtext-decoded ("<>" for none)
    requiretls: bool = False  #: RFC 8689
    extra: tuple[tuple[str, str | None], ...] = ()  #: registered extra parameters, upper-cased


@attrs.frozen
class RcptParams:
    """The ESMTP parameters of RCPT TO (RFC 3461 DSN, and registered extras)."""

    notify: tuple[Literal["NEVER", "SUCCESS", "FAILURE", "DELAY"], ...] | None = None
    orcpt: tuple[str, str] | None = None  #: (address type, xtext-decoded address)
    extra: tuple[tuple[str, str | None], ...] = ()


@attrs.frozen
class Credentials:
    """What a SASL exchange proved: who asks, with what secret, acting for whom."""

    username: str
    password: str = attrs.field(repr=False)
    authzid: str = ""  #: authorization identity; empty when the same as username


# --- events -------------------------------------------------------------------------------
# Every event made from a command line carries ``default_reply``: the RFC's answer, which the
# application may send as it is or replace. DataChunk and ConnectionClosed need no reply.


@attrs.frozen
class ProxyHeader:
    """The HAProxy PROXY protocol header (v1 or v2) that arrived before the greeting."""

    version: int  #: 1 or 2
    command: Literal["PROXY", "LOCAL"]  #: LOCAL: a health check by the proxy itself
    family: Literal["TCP4", "TCP6", "UNIX", "UNKNOWN"]
    source: tuple[str, int] | None  #: the real client (address, port); None when unknown
    destination: tuple[str, int] | None
    tlvs: tuple[tuple[int, bytes], ...] = ()  #: v2 type-length-value extensions


@attrs.frozen
class Hello:
    """HELO, EHLO or LHLO. ``default_reply`` lists the capabilities that apply now."""

    name: str
    extended: bool
    lmtp: bool
    default_reply: Reply


@attrs.frozen
class MailFrom:
    address: str  #: the reverse-path without brackets; "" for the null path <>
    params: MailParams
    default_reply: Reply = Reply(250, "OK", "2.1.0")


@attrs.frozen
class RcptTo:
    address: str  #: the forward-path without brackets, source route dropped
    params: RcptParams
    default_reply: Reply = Reply(250, "OK", "2.1.5")


@attrs.frozen
class StartData:
    """DATA was accepted by the engine; answer 354 to receive the content."""

    default_reply: Reply = Reply(354, "End data with <CR><LF>.<CR><LF>")


@attrs.frozen
class DataChunk:
    """A piece of message content: dot-unstuffed, CRLF line ends. Needs no reply."""

    data: bytes


@attrs.frozen
class EndOfData:
    """The DATA terminator arrived.

    ``reject`` is set when the message broke a limit or the line-ending policy: send it (the
    engine refuses a 2xx then) and deliver nothing. In LMTP mode one reply per recipient is due.
    """

    size: int
    reject: Reply | None = None
    default_reply: Reply = Reply(250, "OK: message accepted", "2.0.0")


@attrs.frozen
class BdatChunk:
    """A BDAT chunk was read completely (its bytes came before as DataChunk events)."""

    size: int
    last: bool
    reject: Reply | None = None
    default_reply: Reply = Reply(250, "OK", "2.0.0")


@attrs.frozen
class Reset:
    default_reply: Reply = Reply(250, "OK", "2.0.0")


@attrs.frozen
class Noop:
    default_reply: Reply = Reply(250, "OK", "2.0.0")


@attrs.frozen
class Verify:
    argument: str
    default_reply: Reply = Reply(
        252, "Cannot VRFY user, but will accept message and attempt delivery", "2.5.2"
    )


@attrs.frozen
class Expand:
    argument: str
    default_reply: Reply = Reply(502, "EXPN not available", "5.5.1")


@attrs.frozen
class Help:
    topic: str
    default_reply: Reply = Reply(
        214,
        (
            "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY EXPN HELP QUIT STARTTLS AUTH",
            "See RFC 5321",
        ),
        "2.0.0",
    )


@attrs.frozen
class Quit:
    default_reply: Reply = Reply(221, "Bye", "2.0.0")


@attrs.frozen
class StartTLS:
    """STARTTLS was accepted by the engine; after the 220 the adapter starts the handshake."""

    default_reply: Reply = Reply(220, "Ready to start TLS", "2.0.0")


@attrs.frozen
class AuthChallenge:
    """The SASL mechanism needs another round: ``default_reply`` is the 334 challenge."""

    mechanism: str
    challenge: bytes
    default_reply: Reply


@attrs.frozen
class AuthCredentials:
    """The SASL exchange finished; verify the credentials and answer 235 or 535.

    The default is to refuse, so an application that forgets to check lets nobody in.
    """

    mechanism: str
    credentials: Credentials
    default_reply: Reply = Reply(535, "Authentication credentials invalid", "5.7.8")


@attrs.frozen
class InvalidCommand:
    """A command line the engine refuses: unknown, malformed, out of sequence or too long.

    ``line`` is the raw line (redacted for SASL responses); ``default_reply`` is the RFC's answer
    (only a 4xx/5xx reply may be sent).
    """

    line: bytes
    default_reply: Reply


@attrs.frozen
class ConnectionClosed:
    """The peer closed the connection (or the session ended with QUIT or 421)."""


Event = (
    ProxyHeader
    | Hello
    | MailFrom
    | RcptTo
    | StartData
    | DataChunk
    | EndOfData
    | BdatChunk
    | Reset
    | Noop
    | Verify
    | Expand
    | Help
    | Quit
    | StartTLS
    | AuthChallenge
    | AuthCredentials
    | InvalidCommand
    | ConnectionClosed
)
