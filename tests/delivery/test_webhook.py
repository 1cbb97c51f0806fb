"""smtp_sync/_webhook.py: the http(s):// target, end to end: an SMTP client sends to a real
server (asyncio, trio, sync) whose Router hands the message to the webhook, which POSTs it to a
real HTTP(S) server this test runs; each answer maps to the documented reply (issue 13)."""

from __future__ import annotations

import contextlib
import email.message
import hashlib
import smtplib
import socket
import ssl
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import attrs
import pytest

from smtp_core import (
    Credentials,
    Envelope,
    PlainMechanism,
    Policy,
    Router,
    ServerConfig,
    SessionInfo,
)
from smtp_sync._webhook import SIGNED_HEADERS, Webhook, webhook_target
from tests.servers import TLS, running
from tests.test_docs import ROOT, python_blocks

MESSAGE = (
    b"From: Alice <a@example.org>\r\nTo: support@example.com\r\nSubject: help\r\n"
    b"Message-ID:\r\n <ticket-1@example.org>\r\n\r\nMy printer is on fire.\r\n"
)
SECRET = "s3cr3t-for-tests"


@attrs.define
class Request:
    path: str
    headers: email.message.Message
    length: int
    sha256: str
    head: bytes  #: the first 64 KiB
    body: bytes | None  #: the whole body, when at most 1 MiB
    status: int  #: what the server answered


class Recorder:
    """A real HTTP(S) server in a thread: records each POST (body read in 64 KiB chunks, kept
    only when small) and answers the next of ``answers`` (then 200); "slow" waits first."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self.requests: list[Request] = []
        self.answers: list[int | str] = []
        self.release = threading.Event()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                digest, kept, head, left = hashlib.sha256(), bytearray(), b"", length
                while left:
                    chunk = self.rfile.read(min(left, 65536))
                    if not chunk:
                        break
                    digest.update(chunk)
                    left -= len(chunk)
                    if length <= 1 << 20:
                        kept += chunk
                    if len(head) < 65536:
                        head += chunk[: 65536 - len(head)]
                answer = recorder.answers.pop(0) if recorder.answers else 200
                if answer == "slow":
                    recorder.release.wait(30)
                    answer = 200
                assert isinstance(answer, int)
                recorder.requests.append(
                    Request(
                        self.path,
                        self.headers,
                        length - left,
                        digest.hexdigest(),
                        head,
                        bytes(kept) if length <= 1 << 20 else None,
                        answer,
                    )
                )
                body = b"Unknown mailbox\nsecond line\n" if answer >= 400 else b"ok\n"
                with contextlib.suppress(OSError):  # a client that timed out is gone
                    self.send_response(answer)
                    if 300 <= answer < 400:
                        self.send_header("Location", "/elsewhere")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if context is not None:
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if context is not None else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}/hooks/mail?box=1"

    def __enter__(self) -> Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def hook() -> Iterator[Recorder]:
    with Recorder() as recorder:
        yield recorder


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> bytes:
    monkeypatch.setenv("SMTPMUX_TEST_HOOK_SECRET", SECRET)
    return SECRET.encode()


def documented_verify() -> Callable[..., bool]:
    """The verify() of docs/routes.md, run as written: the docs cannot drift from the code."""
    (block,) = [b for b in python_blocks(ROOT / "docs" / "routes.md") if "def verify" in b.code]
    namespace: dict[str, Any] = {}
    exec(compile(block.code, block.id, "exec"), namespace)
    return namespace["verify"]  # type: ignore[no-any-return]


def send(
    port: int,
    message: bytes = MESSAGE,
    recipients: tuple[str, ...] = ("support@example.com",),
    sender: str = "a@example.org",
) -> tuple[int, str]:
    """One transaction with smtplib; the reply to the end of data as (code, enhanced code)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
        client.ehlo("client.example.org")
        client.mail(sender)
        for recipient in recipients:
            assert client.rcpt(recipient)[0] == 250
        code, text = client.data(message)
    return code, text.decode().split(" ", 1)[0] if code != 250 else text.decode()


def routed(target: Any) -> Router[Any]:
    router: Router[Any] = Router()
    router.add("*@example.com", target)
    return router


RULES = [
    pytest.param(200, 250, None, id="200-accepted"),
    pytest.param(202, 250, None, id="202-accepted"),
    pytest.param(204, 250, None, id="204-accepted"),
    pytest.param(408, 451, "4.4.1", id="408-retry"),
    pytest.param(429, 451, "4.4.1", id="429-retry"),
    pytest.param(500, 451, "4.4.1", id="500-retry"),
    pytest.param(503, 451, "4.4.1", id="503-retry"),
    pytest.param(302, 451, "4.4.1", id="302-not-followed-retry"),
    pytest.param(400, 550, "5.6.0", id="400-refused"),
    pytest.param(404, 550, "5.6.0", id="404-refused"),
    pytest.param(413, 550, "5.6.0", id="413-refused"),
]


@pytest.mark.parametrize(("status", "code", "enhanced"), RULES)
def test_http_status_becomes_the_smtp_reply(
    kind: str, hook: Recorder, status: int, code: int, enhanced: str | None
) -> None:
    hook.answers = [status]
    target = webhook_target(hook.url)
    with running(kind, routed(target)) as server:
        got = send(server.port)
    assert got[0] == code
    if enhanced is not None:
        assert got[1] == enhanced
    (request,) = hook.requests  # one POST, no retry inside smtpmux, no redirect followed
    assert request.path == "/hooks/mail?box=1"
    assert request.headers["Content-Type"] == "message/rfc822"
    assert request.body is not None and request.body.endswith(MESSAGE)
    assert request.body.startswith(b"Received: from client.example.org")


@pytest.mark.parametrize("status", [400, 404, 413])
def test_a_refusal_names_the_status_and_the_first_line_of_the_answer(
    hook: Recorder, status: int
) -> None:
    hook.answers = [status]
    with running("sync", routed(webhook_target(hook.url))) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=60) as client:
            client.ehlo("client.example.org")
            client.mail("a@example.org")
            client.rcpt("support@example.com")
            code, text = client.data(MESSAGE)
    assert code == 550
    assert text.decode().startswith(f"5.6.0 Webhook refused the message: HTTP {status} ")
    assert text.decode().endswith(": Unknown mailbox")  # the first line only


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_connection_refused_is_retry_later(kind: str) -> None:
    target = webhook_target(f"http://127.0.0.1:{closed_port()}/hook#timeout=5")
    with running(kind, routed(target)) as server:
        assert send(server.port) == (451, "4.4.1")


def test_an_application_slower_than_the_timeout_is_retry_later(kind: str, hook: Recorder) -> None:
    hook.answers = ["slow"]
    target = webhook_target(hook.url + "#timeout=1")
    with running(kind, routed(target)) as server:
        assert send(server.port) == (451, "4.4.1")
    hook.release.set()


def test_after_a_451_the_sender_retries_and_the_message_is_delivered_once(
    kind: str, hook: Recorder
) -> None:
    hook.answers = [503]
    with running(kind, routed(webhook_target(hook.url))) as server:
        first = send(server.port)
        second = send(server.port)  # what a sending MTA does at its next queue run
    assert (first, second[0]) == ((451, "4.4.1"), 250)
    assert [r.status for r in hook.requests] == [503, 200]  # delivered (2xx) exactly once
    bodies = [r.body for r in hook.requests]
    assert bodies[0] is not None and bodies[1] is not None
    assert bodies[0].endswith(MESSAGE) and bodies[1].endswith(MESSAGE)
    # The receiver can tell the repeat: same Message-ID, another transaction.
    ids = [
        (r.headers["X-Smtpmux-Message-Id"], r.headers["X-Smtpmux-Transaction-Id"])
        for r in hook.requests
    ]
    assert ids[0][0] == ids[1][0] == "<ticket-1@example.org>"
    assert ids[0][1] != ids[1][1]


class Accounts(Policy):
    def authenticate(self, credentials: Credentials, info: SessionInfo) -> str | None:
        return "ops" if (credentials.username, credentials.password) == ("ops", "pw") else None


def test_envelope_headers_and_signature_verify_with_the_documented_code(
    kind: str, hook: Recorder, tls: TLS, secret: bytes
) -> None:
    """STARTTLS, AUTH, SMTPUTF8 and two recipients: every header arrives, ASCII, decodable,
    and the docs' verify() accepts the signature (and refuses a changed body, envelope, key)."""
    target = webhook_target(hook.url + "#secret_env=SMTPMUX_TEST_HOOK_SECRET")
    config = ServerConfig(auth_mechanisms=(PlainMechanism,))
    options = {"config": config, "policy": Accounts(), "ssl_context": tls.server}
    message = "Subject: caf\u00e9\r\nMessage-ID: <\u00e9t\u00e9@example.org>\r\n\r\nhi\r\n"
    with running(kind, routed(target), **options) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=60) as client:
            client.ehlo("client.example.org")
            client.starttls(context=tls.client)
            client.ehlo("client.example.org")
            client.login("ops", "pw")
            client.mail("j\u00f6rg@example.org", ["SMTPUTF8"])
            assert client.rcpt("\u00e5sa@example.com")[0] == 250
            assert client.rcpt('"odd, name"@example.com')[0] == 250
            code, _ = client.data(message.encode())
    assert code == 250
    (request,) = hook.requests
    headers = request.headers
    for name, value in headers.items():
        assert value.isascii() and value.isprintable(), (name, value)
    assert unquote(headers["X-Smtpmux-Mail-From"]) == "j\u00f6rg@example.org"
    rcpts = [unquote(r) for r in headers["X-Smtpmux-Rcpt-To"].split(", ")]
    assert rcpts == ["\u00e5sa@example.com", '"odd, name"@example.com']
    assert headers["X-Smtpmux-Peer"].startswith("127.0.0.1:")
    assert headers["X-Smtpmux-Helo"] == "client.example.org"
    assert headers["X-Smtpmux-Tls"].startswith("TLSv1.")
    assert headers["X-Smtpmux-Auth"] == "ops"
    assert headers["X-Smtpmux-Protocol"] == "UTF8SMTPSA"
    assert unquote(headers["X-Smtpmux-Message-Id"]) == "<\u00e9t\u00e9@example.org>"
    assert headers["X-Smtpmux-Transaction-Id"]
    assert headers["X-Smtpmux-Signature"].startswith("sha256=")

    verify = documented_verify()
    assert request.body is not None
    assert verify(headers, request.body, secret)
    assert not verify(headers, request.body + b"x", secret)
    assert not verify(headers, request.body, b"another secret")
    forged = email.message.Message()
    for name, value in headers.items():
        forged[name] = "evil@example.com" if name == "X-Smtpmux-Rcpt-To" else value
    assert not verify(forged, request.body, secret)
    assert not verify(headers, request.body, secret, tolerance=-1)  # replay window


def test_no_secret_no_signature(hook: Recorder) -> None:
    with running("sync", routed(webhook_target(hook.url))) as server:
        assert send(server.port, sender="")[0] == 250  # the null sender of a bounce
    (request,) = hook.requests
    assert "X-Smtpmux-Signature" not in request.headers
    assert "X-Smtpmux-Timestamp" not in request.headers
    assert request.headers["X-Smtpmux-Mail-From"] == ""
    for absent in ("X-Smtpmux-Tls", "X-Smtpmux-Auth"):
        assert absent not in request.headers


@pytest.mark.parametrize(
    ("with_cafile", "code"),
    [pytest.param(True, 250, id="cafile-trusted"), pytest.param(False, 451, id="unverified")],
)
def test_https_verifies_the_certificate(
    kind: str, tls: TLS, tmp_path: Path, with_cafile: bool, code: int
) -> None:
    ca = tmp_path / "ca.pem"
    tls.ca.cert_pem.write_to_path(str(ca))
    with Recorder(tls.server) as secure:
        url = secure.url + (f"#cafile={ca}" if with_cafile else "#timeout=10")
        with running(kind, routed(webhook_target(url))) as server:
            assert send(server.port)[0] == code
    assert len(secure.requests) == (1 if with_cafile else 0)  # nothing sent to an unverified peer


@attrs.frozen
class Guarded(Envelope):
    """An Envelope whose as_bytes() fails the test: the delivery path must stream."""

    def as_bytes(self) -> bytes:
        raise AssertionError("as_bytes() on the delivery path")


def guarded(target: Callable[[Envelope], None], peaks: list[int]) -> Callable[[Envelope], None]:
    """Call ``target`` with a Guarded copy of the envelope, measuring the memory it allocates
    (tracemalloc counts every thread: the HTTP server's reading too)."""

    def handler(envelope: Envelope) -> None:
        copy = Guarded(**{f.name: getattr(envelope, f.name) for f in attrs.fields(Envelope)})
        tracemalloc.start()
        try:
            target(copy)
        finally:
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()

    return handler


def test_a_big_spooled_message_is_streamed_and_arrives_intact(
    kind: str, hook: Recorder, secret: bytes
) -> None:
    line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ01234567\r\n"
    message = MESSAGE + line * (8 * 1024 * 1024 // len(line))  # 8 MiB, spooled (over 1 MiB)
    target = webhook_target(hook.url + "#secret_env=SMTPMUX_TEST_HOOK_SECRET")
    peaks: list[int] = []
    with running(kind, routed(guarded(target, peaks))) as server:
        assert send(server.port, message)[0] == 250
    (request,) = hook.requests
    received = request.head[: request.head.index(MESSAGE[:20])]  # our Received line
    assert received.startswith(b"Received: from client.example.org") and len(received) < 400
    # The HTTP server hashed what it read, chunk by chunk: the message arrived whole.
    assert request.length == len(received) + len(message)
    assert request.sha256 == hashlib.sha256(received + message).hexdigest()
    assert documented_verify()(request.headers, received + message, secret)
    assert peaks and peaks[0] < 3 * 1024 * 1024, peaks  # far less than the 8 MiB message


def test_the_documented_header_list_is_the_signed_one() -> None:
    verify = documented_verify()
    assert tuple(verify.__globals__["SIGNED"]) == SIGNED_HEADERS


REFUSED = [
    pytest.param("https://app.example/hook#secret=hunter2", "secret_env", id="inline-secret"),
    pytest.param("https://app.example/hook#token=hunter2", "secret_file", id="inline-token"),
    pytest.param("https://ops:hunter2@app.example/hook", "secret_env", id="password-in-url"),
    pytest.param("https://app.example/hook#colour=red", "unknown option", id="unknown-option"),
    pytest.param("https://app.example/hook#timeout=0", "timeout", id="timeout-zero"),
    pytest.param("https://app.example/hook#timeout=soon", "timeout", id="timeout-word"),
    pytest.param("https://app.example/hook#timeout", "needs a value", id="option-no-value"),
    pytest.param("https://app.example/hook#timeout=1&timeout=2", "twice", id="option-twice"),
    pytest.param(
        "https://app.example/hook#secret_env=SMTPMUX_TEST_UNSET", "SMTPMUX_TEST_UNSET", id="unset"
    ),
    pytest.param("https://app.example/hook#secret_file=/nonexistent/key", "/nonexistent", id="nf"),
    pytest.param(
        "https://app.example/hook#secret_env=A&secret_file=B", "not both", id="two-secrets"
    ),
    pytest.param("https://app.example/hook#cafile=/nonexistent/ca.pem", "cafile", id="no-cafile"),
    pytest.param("ftp://app.example/hook", "http://", id="scheme"),
    pytest.param("https:///hook", "no host", id="no-host"),
    pytest.param("https://app.example:99999/hook", "port", id="bad-port"),
]


@pytest.mark.parametrize(("text", "says"), REFUSED)
def test_a_bad_target_is_one_clear_error_that_never_shows_a_secret(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        webhook_target(text)
    message = str(caught.value)
    assert "hunter2" not in message and "\n" not in message


def test_an_empty_secret_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        webhook_target(f"https://app.example/hook#secret_file={tmp_path / 'key'}")


CANONICAL = [
    pytest.param("http://app.example/hook", "http://app.example/hook", id="plain"),
    pytest.param(
        "https://app.example/h?x=1#timeout=5&secret_env=SMTPMUX_TEST_HOOK_SECRET",
        "https://app.example/h?x=1#secret_env=SMTPMUX_TEST_HOOK_SECRET&timeout=5",
        id="options-in-order",
    ),
]


@pytest.mark.parametrize(("text", "canonical"), CANONICAL)
def test_repr_is_the_canonical_target_without_the_secret(
    text: str, canonical: str, secret: bytes
) -> None:
    target = webhook_target(text)
    assert isinstance(target, Webhook)
    assert repr(target) == canonical
    assert SECRET not in repr(target)
    assert webhook_target(repr(target)).__repr__() == canonical  # a fixed point


def test_secret_file_signs(tmp_path: Path, hook: Recorder) -> None:
    (tmp_path / "key").write_text(SECRET + "\n")
    target = webhook_target(hook.url + f"#secret_file={tmp_path / 'key'}")
    with running("sync", routed(target)) as server:
        assert send(server.port)[0] == 250
    (request,) = hook.requests
    assert request.body is not None
    assert documented_verify()(request.headers, request.body, SECRET.encode())
