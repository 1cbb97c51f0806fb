"""How log lines and messages write addresses and failures: one way, for every package.

An IPv6 peer is ``[::1]:38603`` in the session log, the listener announcement and the
command line's errors alike; a failed TLS handshake says why in words, not as a repr.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

__all__ = ["FieldsLogger", "describe_tls_failure", "fields_logger", "format_host_port", "plural"]


class FieldsLogger(logging.Logger):
    """A Logger whose records take their ``extra`` fields in one step, and go to the handlers
    without a call to ``filter`` over no filters.

    ``Logger.makeRecord`` copies ``extra`` key by key, checking each against the record: a
    quarter of the cost of the Session's line per transaction, which carries 11 fields. Here
    one test covers every key (none may be ``message``, ``asctime`` or an attribute the record
    already has) and one ``update`` copies them; a clash goes to ``Logger.makeRecord``, which
    raises its KeyError for it. The record is the same either way.
    """

    def makeRecord(
        self,
        name: str,
        level: int,
        fn: str,
        lno: int,
        msg: object,
        args: Any,
        exc_info: Any,
        func: str | None = None,
        extra: Mapping[str, object] | None = None,
        sinfo: str | None = None,
    ) -> logging.LogRecord:
        record = super().makeRecord(name, level, fn, lno, msg, args, exc_info, func, None, sinfo)
        if extra is None:
            return record
        fields = record.__dict__
        if "message" in extra or "asctime" in extra or not fields.keys().isdisjoint(extra):
            return super().makeRecord(name, level, fn, lno, msg, args, exc_info, func, extra, sinfo)
        fields.update(extra)
        return record

    def handle(self, record: logging.LogRecord) -> None:
        """``Logger.handle`` without its call to ``filter`` when the logger has no filter."""
        if self.filters:
            super().handle(record)
        elif not self.disabled:
            self.callHandlers(record)


def fields_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, made a FieldsLogger if this is its first use (the
    ``setLoggerClass`` way; a logger someone configured before keeps its class)."""
    previous = logging.getLoggerClass()
    logging.setLoggerClass(FieldsLogger)
    try:
        return logging.getLogger(name)
    finally:
        logging.setLoggerClass(previous)


def format_host_port(host: str, port: int) -> str:
    """``127.0.0.1:25``, ``[::1]:25``: IPv6 in brackets (RFC 3986), so the port stands apart."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def plural(count: int, noun: str) -> str:
    """``1 recipient``, ``2 recipients``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


#: OpenSSL reason codes a server sees when a client fails its handshake, in words
_TLS_REASONS = {
    "WRONG_VERSION_NUMBER": "the client did not start TLS (plain SMTP on a TLS port?)",
    "UNEXPECTED_EOF_WHILE_READING": "the client closed the connection during the handshake",
    "HTTP_REQUEST": "the client sent an HTTP request",
    "UNSUPPORTED_PROTOCOL": "the client offered only TLS versions this server does not allow",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version both sides allow",
    "NO_SHARED_CIPHER": "no cipher both sides allow (or the certificate does not match its key)",
    "UNKNOWN_CA": "the client does not trust this server's certificate (unknown CA)",
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust this server's certificate (unknown CA)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client refused this server's certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the client refused this server's certificate",
    "TLSV1_ALERT_DECRYPT_ERROR": "the client could not verify this server's certificate",
}


def describe_tls_failure(failure: BaseException) -> str:
    """Why a server-side TLS handshake failed, for the log: never empty, never a repr.

    Works on what the adapters see without importing ssl: ``ssl.SSLError`` carries OpenSSL's
    reason code in ``reason``; a peer that hangs up is an EOF or a ConnectionError (anyio's
    ``EndOfStream`` and ``BrokenResourceError`` arrive under their own names, the latter
    with the OS error as its cause).
    """
    reason = getattr(failure, "reason", None)
    if isinstance(reason, str) and reason:
        return _TLS_REASONS.get(reason, reason.lower().replace("_", " "))
    if isinstance(failure, TimeoutError):
        return "the client did not complete the handshake in time"
    name = type(failure).__name__
    if isinstance(failure, EOFError | ConnectionError) or name in ("EndOfStream", "SSLEOFError"):
        return "the client closed the connection during the handshake"
    cause = failure.__cause__
    if name == "BrokenResourceError" and cause is not None:
        return describe_tls_failure(cause)
    if name == "BrokenResourceError":
        return "the connection broke during the handshake"
    text = str(failure)
    return f"{name}: {text}" if text else name
