"""The ``http://`` / ``https://`` delivery target: POST each message to a web application.

The body is the message itself (``Content-Type: message/rfc822``, our Received line first),
streamed from the spool with a Content-Length; the envelope travels in ``X-Smtpmux-*`` headers,
and with a shared secret the request is signed (HMAC-SHA256 over the timestamp, the envelope
headers and the body's SHA-256), so the application can trust it. The options live in the URL's
fragment, which an HTTP client never sends: ``https://app.example/hook#secret_env=HOOK_SECRET``.

Outcome, as docs/routes.md tabulates: 2xx accepted; 408, 429, 5xx, 3xx (a redirect is not
followed: a POST body must not wander to another URL), timeouts and connection errors 451 4.4.1
(the sender retries, nothing is lost); any other 4xx 550 5.6.0 with the status.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping

import httpx

from smtp_core import Envelope, format_host_port

from ._delivery import (
    message_chunks,
    message_id,
    message_size,
    permanent,
    reply_text,
    seconds,
    temporary,
)

__all__ = ["SIGNED_HEADERS", "Webhook", "envelope_headers", "signature_base", "webhook_target"]

log = logging.getLogger("smtpmux.delivery")

DEFAULT_TIMEOUT = 30.0  #: seconds for each network wait (connect, send, answer)
_OPTIONS = ("secret_env", "secret_file", "timeout", "cafile")
_INLINE_SECRET = ("secret", "key", "token", "password")

#: The headers the signature covers, in this order (an absent one counts as an empty value),
#: then the body's SHA-256 (hex): see signature_base().
SIGNED_HEADERS = (
    "X-Smtpmux-Timestamp",
    "X-Smtpmux-Transaction-Id",
    "X-Smtpmux-Message-Id",
    "X-Smtpmux-Mail-From",
    "X-Smtpmux-Rcpt-To",
    "X-Smtpmux-Peer",
    "X-Smtpmux-Helo",
    "X-Smtpmux-Tls",
    "X-Smtpmux-Auth",
    "X-Smtpmux-Protocol",
)
# Percent-encoding keeps every header value printable ASCII whatever the address (RFC 6531
# local parts, RFC 6532 Message-IDs): UTF-8, then %XX for "%", ",", controls and non-ASCII.
_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in "%,")


def _encode(value: str) -> str:
    return urllib.parse.quote(value, safe=_SAFE)


def signature_base(headers: Mapping[str, str], body_sha256: str) -> bytes:
    """The octets the HMAC covers: a version tag, each SIGNED_HEADERS value as sent, the
    body's SHA-256 in hex, one per line. A receiver rebuilds it from what it got."""
    values = [headers.get(name, "") for name in SIGNED_HEADERS]
    return "\n".join(["smtpmux-v1", *values, body_sha256]).encode("ascii")


def envelope_headers(envelope: Envelope) -> dict[str, str]:
    """The envelope as X-Smtpmux-* headers; optional facts are left out when unknown."""
    tls = envelope.tls
    fields: dict[str, str | None] = {
        "X-Smtpmux-Transaction-Id": envelope.transaction_id,
        "X-Smtpmux-Message-Id": message_id(envelope),
        "X-Smtpmux-Mail-From": envelope.mail_from,
        "X-Smtpmux-Rcpt-To": ", ".join(_encode(r) for r in envelope.rcpt_tos),
        "X-Smtpmux-Peer": format_host_port(*envelope.peer) if envelope.peer else None,
        "X-Smtpmux-Helo": envelope.helo,
        "X-Smtpmux-Tls": (
            None if tls is None else " ".join(p for p in (tls.version, tls.cipher) if p) or "yes"
        ),
        "X-Smtpmux-Auth": envelope.auth_identity,
        "X-Smtpmux-Protocol": envelope.protocol(),
    }
    headers = {}
    for name, value in fields.items():
        if value is not None:
            headers[name] = value if name == "X-Smtpmux-Rcpt-To" else _encode(value)
    return headers


def _read_secret(options: Mapping[str, str], text: str) -> bytes | None:
    if "secret_env" in options:
        name = options["secret_env"]
        value = os.environ.get(name, "")
        if not value:
            raise ValueError(f"{text}: the environment variable {name} is not set or empty")
        return value.encode("utf-8")
    if "secret_file" in options:
        path = options["secret_file"]
        try:
            with open(path, "rb") as file:
                secret = file.read().strip()
        except OSError as exc:
            raise ValueError(f"{text}: cannot read secret_file {path}: {exc.strerror}") from None
        if not secret:
            raise ValueError(f"{text}: secret_file {path} is empty")
        return secret
    return None


def _parse_options(fragment: str, shown: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in fragment.split("&") if fragment else []:
        name, equals, value = item.partition("=")
        name, value = urllib.parse.unquote(name), urllib.parse.unquote(value)
        if name in _INLINE_SECRET:
            raise ValueError(
                f"{shown}: a secret written in the target would show in ps and in logs; "
                "use #secret_env=VARIABLE or #secret_file=PATH"
            )
        if name not in _OPTIONS:
            raise ValueError(
                f"{shown}: unknown option {name!r}; the options are "
                + ", ".join(f"{o}=..." for o in _OPTIONS)
            )
        if not equals or not value:
            raise ValueError(f"{shown}: option {name} needs a value, e.g. {name}=...")
        if name in options:
            raise ValueError(f"{shown}: option {name} given twice")
        options[name] = value
    if "secret_env" in options and "secret_file" in options:
        raise ValueError(f"{shown}: give secret_env or secret_file, not both")
    return options


class Webhook:
    """POST each message to ``url``: a blocking handler (smtp_anyio calls it in a thread).

    One httpx.Client per target, made at the first message (after a fork of ``--workers``),
    shared by the delivering threads: connections are kept alive between messages.
    """

    def __init__(
        self,
        url: str,
        *,
        secret: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        cafile: str | None = None,
        canonical: str | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.cafile = cafile
        self._secret = secret
        self._canonical = canonical or url
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return self._canonical

    @property
    def signed(self) -> bool:
        return self._secret is not None

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                # The system's CAs (or SSL_CERT_FILE), or the given file; never unverified.
                context = ssl.create_default_context(cafile=self.cafile)
                self._client = httpx.Client(
                    verify=context,
                    timeout=self.timeout,
                    follow_redirects=False,
                    trust_env=False,  # no proxy from the environment: deliveries go where told
                    headers={"User-Agent": "smtpmux"},
                )
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __call__(self, envelope: Envelope) -> None:
        head = envelope.received_header()
        headers = envelope_headers(envelope)
        headers["Content-Type"] = "message/rfc822"
        # A Content-Length, not chunked encoding: every web server takes it.
        headers["Content-Length"] = str(len(head) + message_size(envelope))
        if self._secret is not None:
            digest = hashlib.sha256()
            for chunk in message_chunks(envelope, head):  # a first pass over the spool file
                digest.update(chunk)
            headers["X-Smtpmux-Timestamp"] = str(int(time.time()))
            base = signature_base(headers, digest.hexdigest())
            mac = hmac.new(self._secret, base, hashlib.sha256).hexdigest()
            headers["X-Smtpmux-Signature"] = f"sha256={mac}"
        body: Iterator[bytes] = message_chunks(envelope, head)
        client = self._http()
        try:
            request = client.build_request("POST", self.url, headers=headers, content=body)
            response = client.send(request, stream=True)
        except httpx.TransportError as exc:  # refused, reset, DNS, TLS, timeout
            log.warning(
                "webhook %r: message %s not delivered: %s: %s",
                self,
                envelope.transaction_id,
                type(exc).__name__,
                exc,
            )
            what = "timed out" if isinstance(exc, httpx.TimeoutException) else "unreachable"
            raise temporary(f"Webhook {what}, try again later") from exc
        try:
            status = response.status_code
            said = "" if status < 400 else _first_line(response)
        finally:
            response.close()
        _outcome(self, envelope, status, response.reason_phrase, said)


def _first_line(response: httpx.Response) -> str:
    """The start of the application's answer, for the reply: at most 1 KiB is read."""
    data = b""
    try:
        for chunk in response.iter_raw(1024):
            data += chunk
            if len(data) >= 1024:
                break
    except httpx.HTTPError:
        pass
    return reply_text(data[:1024].decode("utf-8", "replace"), 120)


def _outcome(hook: Webhook, envelope: Envelope, status: int, phrase: str, said: str) -> None:
    if 200 <= status < 300:
        log.info("webhook %r: message %s delivered (%d)", hook, envelope.transaction_id, status)
        return
    detail = f"HTTP {status} {reply_text(phrase, 60)}".rstrip() + (f": {said}" if said else "")
    log.warning("webhook %r: message %s: %s", hook, envelope.transaction_id, detail)
    if status in (408, 429) or status >= 500 or status < 400:
        raise temporary(f"Webhook answered {detail}, try again later")
    raise permanent(f"Webhook refused the message: {detail}", "5.6.0")


def webhook_target(text: str) -> Webhook:
    """Build the handler for ``http(s)://HOST[:PORT]/PATH[?QUERY][#OPTIONS]``.

    OPTIONS (in the fragment, never sent): ``secret_env=VAR`` or ``secret_file=PATH`` (sign
    with HMAC-SHA256), ``timeout=SECONDS`` (default 30), ``cafile=PATH`` (trust this CA).
    """
    url, _, fragment = text.partition("#")
    parts = urllib.parse.urlsplit(url)
    shown = url if not parts.password else url.replace(parts.password, "***")
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{shown}: a webhook target starts with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"{shown}: no host; write e.g. https://app.example/hook")
    if parts.password is not None:
        raise ValueError(
            f"{shown}: a password written in the target would show in ps and in logs; "
            "sign the requests with #secret_env=VARIABLE or #secret_file=PATH instead"
        )
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError(f"{shown}: the port is not a number from 0 to 65535") from None
    options = _parse_options(fragment, shown)
    timeout = DEFAULT_TIMEOUT
    if "timeout" in options:
        given = seconds(options["timeout"])
        if given is None:
            raise ValueError(f"{shown}: timeout must be a number of seconds above 0")
        timeout = given
    cafile = options.get("cafile")
    if cafile is not None and not os.path.isfile(cafile):
        raise ValueError(f"{shown}: cafile {cafile} is not a readable file")
    secret = _read_secret(options, shown)
    wanted = [f"{name}={options[name]}" for name in _OPTIONS if name in options]
    canonical = url + ("#" + "&".join(wanted) if wanted else "")
    return Webhook(url, secret=secret, timeout=timeout, cafile=cafile, canonical=canonical)
