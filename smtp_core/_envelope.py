"""What a handler receives: the Envelope of one delivered message, and facts about its session."""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any, BinaryIO

import attrs

from ._events import MailParams, ProxyHeader, RcptParams

__all__ = ["Envelope", "SessionInfo", "TLSInfo"]

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@attrs.frozen
class TLSInfo:
    """The negotiated TLS session, as the adapter saw it."""

    version: str | None = None
    cipher: str | None = None
    peer_certificate: dict[str, Any] | None = attrs.field(default=None, eq=False, repr=False)

    @classmethod
    def from_ssl_object(cls, ssl_object: Any) -> TLSInfo:
        """Read an ``ssl.SSLObject`` or ``ssl.SSLSocket`` after its handshake (duck-typed:
        ``version()``, ``cipher()``, ``getpeercert()``; smtp_core imports no ssl). One builder
        for every adapter; a client without a certificate gives None."""
        cipher = ssl_object.cipher()
        return cls(
            version=ssl_object.version(),
            cipher=cipher[0] if cipher else None,
            peer_certificate=ssl_object.getpeercert() or None,
        )


@attrs.frozen
class SessionInfo:
    """Who is talking to us, as far as the session knows now (policy hooks get it too)."""

    session_id: str
    hostname: str  #: our own name, as in the greeting
    peer: tuple[str, int] | None = None  #: the client; from the PROXY header when there is one
    helo: str | None = None
    extended: bool = False  #: EHLO/LHLO rather than HELO
    lmtp: bool = False
    tls: TLSInfo | None = None
    auth_identity: str | None = None
    proxy: ProxyHeader | None = None


def rfc5322_date(moment: datetime) -> str:
    """``Tue, 24 Nov 2026 10:00:00 +0000`` without the locale-dependent strftime names."""
    offset = moment.strftime("%z") or "+0000"
    return (
        f"{_DAYS[moment.weekday()]}, {moment.day:02d} {_MONTHS[moment.month - 1]} "
        f"{moment.year} {moment:%H:%M:%S} {offset}"
    )


@attrs.frozen
class Envelope:
    """One message for one handler: the recipients routed to it and the content.

    ``content`` is bytes, or a binary file (rewound) once the message outgrew the session's
    spool threshold; ``as_bytes()`` and ``open()`` read either.
    """

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes | BinaryIO = attrs.field(repr=False)
    mail_params: MailParams
    rcpt_params: tuple[RcptParams, ...]
    session: SessionInfo
    received_at: datetime
    transaction_id: str

    @property
    def peer(self) -> tuple[str, int] | None:
        return self.session.peer

    @property
    def helo(self) -> str | None:
        return self.session.helo

    @property
    def tls(self) -> TLSInfo | None:
        return self.session.tls

    @property
    def auth_identity(self) -> str | None:
        return self.session.auth_identity

    @property
    def session_id(self) -> str:
        return self.session.session_id

    def as_bytes(self) -> bytes:
        if isinstance(self.content, bytes):
            return self.content
        self.content.seek(0)
        data = self.content.read()
        self.content.seek(0)
        return data

    def open(self) -> BinaryIO:
        """The content as a file to read from the start."""
        if isinstance(self.content, bytes):
            return io.BytesIO(self.content)
        self.content.seek(0)
        return self.content

    def protocol(self) -> str:
        """The ``with`` keyword of RFC 3848 / RFC 6531 §4.3: ESMTPSA, LMTPS, UTF8SMTPA, ..."""
        info = self.session
        if self.mail_params.smtputf8:
            base = "UTF8LMTP" if info.lmtp else "UTF8SMTP"
        else:
            base = "LMTP" if info.lmtp else ("ESMTP" if info.extended else "SMTP")
        if base == "SMTP":
            return base
        return base + ("S" if info.tls else "") + ("A" if info.auth_identity else "")

    def received_header(self) -> bytes:
        """The RFC 5321 §4.4 trace line to prepend to the content, folded, ending in CRLF."""
        info = self.session
        parts = [f"Received: from {info.helo or 'unknown'}"]
        if info.peer is not None:
            address = info.peer[0]
            literal = f"IPv6:{address}" if ":" in address else address
            parts.append(f"([{literal}])")
        parts.append(f"by {info.hostname} (smtpmux)")
        if info.tls is not None and info.tls.version:
            parts.append(f"(using {info.tls.version} with cipher {info.tls.cipher or 'unknown'})")
        parts.append(f"with {self.protocol()} id {self.transaction_id}")
        if len(self.rcpt_tos) == 1:
            parts.append(f"for <{self.rcpt_tos[0]}>")
        parts[-1] += ";"
        parts.append(rfc5322_date(self.received_at))
        lines: list[str] = []
        for part in parts:  # RFC 5322 §2.1.1: at most 78 characters, the folding tab included
            width = len(lines[-1]) + (len(lines) > 1) + 1 + len(part) if lines else 0
            if lines and width <= 78:
                lines[-1] += " " + part
            else:
                lines.append(part)
        return ("\r\n\t".join(lines) + "\r\n").encode("utf-8")
