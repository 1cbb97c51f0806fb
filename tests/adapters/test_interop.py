"""Real SMTP clients against every server (asyncio, trio, sync): aiosmtplib in process, swaks
and curl as subprocesses. Each message goes through the Maildir handler into tmp_path, and the
stored file is compared byte for byte: the trace headers the handler adds, then the message."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import aiosmtplib
import anyio
import pytest

from smtp_core import (
    Credentials,
    Envelope,
    LoginMechanism,
    MailParams,
    PlainMechanism,
    Policy,
    RcptParams,
    Router,
    ServerConfig,
    SessionInfo,
    TLSInfo,
)
from smtp_sync.handlers import Maildir, trace_headers
from tests.servers import TLS, Collect, running
from tests.tools import missing, require

RECEIVED_AT = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
DATE = "Wed, 04 Mar 2026 05:06:07 +0000"  # RECEIVED_AT as RFC 5322 writes it
HOSTNAME = "mx.test"
HELO = "client.test"
CONFIG = ServerConfig(hostname=HOSTNAME)
AUTH_OVER_TLS = ServerConfig(hostname=HOSTNAME, auth_mechanisms=(PlainMechanism, LoginMechanism))
AUTH_IN_CLEAR = ServerConfig(
    hostname=HOSTNAME, auth_mechanisms=(PlainMechanism, LoginMechanism), auth_require_tls=False
)
SENDER = "alice@example.org"
RCPT = "bob@example.com"
MESSAGE = (
    b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.com>\r\nSubject: interop\r\n"
    b"Message-ID: <1@example.org>\r\n\r\nHello Bob.\r\n"
)
DOTS = b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\n. dot space\r\nend\r\n"


def fixed_clock() -> datetime:
    return RECEIVED_AT


class Accounts(Policy):
    def authenticate(self, credentials: Credentials, info: SessionInfo) -> str | None:
        known = (credentials.username, credentials.password) == ("alice", "s3cret")
        return "alice" if known else None


class Stored:
    """The Maildir handler under test, plus a Collect that keeps each envelope: the transaction
    id and the negotiated cipher are the only facts a client cannot know in advance."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.maildir = Maildir(path)
        self.seen = Collect()

    def __call__(self, envelope: Envelope) -> None:
        self.maildir(envelope)
        self.seen(envelope)

    def files(self) -> list[bytes]:
        return sorted(p.read_bytes() for p in (self.path / "new").iterdir())


@pytest.fixture
def ca_file(tls: TLS, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    tls.ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def stored(tmp_path: Path) -> Stored:
    return Stored(tmp_path / "Maildir")


@pytest.fixture
def router(stored: Stored) -> Router[Any]:
    router: Router[Any] = Router()
    router.add("*@*", stored)
    return router


def serve(kind: str, router: Router[Any], **options: Any) -> Any:
    options.setdefault("config", CONFIG)
    return running(kind, router, clock=fixed_clock, **options)


def received(parts: list[str]) -> bytes:
    """The Received line as RFC 5322 §2.1.1 wants it folded: whole clauses joined while a line,
    with the tab that starts a continuation line, stays within 78 characters."""
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + (len(lines) > 1) + 1 + len(part) <= 78:
            lines[-1] += " " + part
        else:
            lines.append(part)
    return ("\r\n\t".join(lines) + "\r\n").encode()


def expected(
    envelope: Envelope,
    content: bytes,
    *,
    protocol: str,
    helo: str = HELO,
    sender: str = SENDER,
    rcpts: tuple[str, ...] = (RCPT,),
) -> bytes:
    """The stored file: Return-Path, Delivered-To per recipient, Received, then the content."""
    parts = [f"Received: from {helo}", "([127.0.0.1])", f"by {HOSTNAME} (smtpmux)"]
    if protocol.removesuffix("A").endswith("S"):  # RFC 3848: ESMTPS, ESMTPSA: over TLS
        assert envelope.tls is not None and envelope.tls.version in ("TLSv1.2", "TLSv1.3")
        parts.append(f"(using {envelope.tls.version} with cipher {envelope.tls.cipher})")
    parts.append(f"with {protocol} id {envelope.transaction_id}")
    if len(rcpts) == 1:
        parts.append(f"for <{rcpts[0]}>")
    parts[-1] += ";"
    parts.append(DATE)
    trace = f"Return-Path: <{sender}>\r\n" + "".join(f"Delivered-To: {r}\r\n" for r in rcpts)
    return trace.encode() + received(parts) + content


def check_one(stored: Stored, content: bytes, *, protocol: str, **facts: Any) -> None:
    assert stored.seen.contents == [content]
    want = expected(stored.seen.envelopes[0], content, protocol=protocol, **facts)
    assert stored.files() == [want]


# --- aiosmtplib ------------------------------------------------------------------------------


def run_client(function: Callable[[], Awaitable[None]]) -> None:
    anyio.run(function, backend="asyncio")


def client(port: int, **options: Any) -> aiosmtplib.SMTP:
    options.setdefault("start_tls", False)
    return aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, local_hostname=HELO, timeout=10, **options
    )


def test_aiosmtplib_plain(kind: str, router: Router[Any], stored: Stored) -> None:
    async def send(port: int) -> None:
        async with client(port) as smtp:
            errors, _ = await smtp.sendmail(SENDER, [RCPT], MESSAGE)
            assert errors == {}

    with serve(kind, router) as server:
        run_client(lambda: send(server.port))
    check_one(stored, MESSAGE, protocol="ESMTP")


def test_aiosmtplib_null_sender_quoted_local_part(
    kind: str, router: Router[Any], stored: Stored
) -> None:
    rcpt = '"john doe"@example.com'

    async def send(port: int) -> None:
        async with client(port) as smtp:
            await smtp.sendmail("", [rcpt], MESSAGE)  # a bounce: MAIL FROM:<>

    with serve(kind, router) as server:
        run_client(lambda: send(server.port))
    check_one(stored, MESSAGE, protocol="ESMTP", sender="", rcpts=(rcpt,))


def test_aiosmtplib_starttls(kind: str, router: Router[Any], stored: Stored, tls: TLS) -> None:
    async def send(port: int) -> None:
        async with client(port, start_tls=True, tls_context=tls.client) as smtp:
            assert smtp.get_transport_info("sslcontext") is not None
            await smtp.sendmail(SENDER, [RCPT], MESSAGE)

    with serve(kind, router, ssl_context=tls.server) as server:
        run_client(lambda: send(server.port))
    check_one(stored, MESSAGE, protocol="ESMTPS")


def test_aiosmtplib_implicit_tls(kind: str, router: Router[Any], stored: Stored, tls: TLS) -> None:
    async def send(port: int) -> None:
        async with client(port, use_tls=True, tls_context=tls.client) as smtp:
            assert not smtp.supports_extension("starttls")
            await smtp.sendmail(SENDER, [RCPT], MESSAGE)

    with serve(kind, router, ssl_context=tls.server, implicit_tls=True) as server:
        run_client(lambda: send(server.port))
    check_one(stored, MESSAGE, protocol="ESMTPS")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_aiosmtplib_auth(
    kind: str, router: Router[Any], stored: Stored, tls: TLS, mechanism: str
) -> None:
    async def send(port: int) -> None:
        async with client(port, start_tls=True, tls_context=tls.client) as smtp:
            await smtp.ehlo()  # RFC 3207 §4.2: EHLO again after STARTTLS (auth_* does not)
            assert smtp.supports_extension("auth")
            log_in = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
                await log_in("alice", "wrong")
            assert refused.value.code == 535
            response = await log_in("alice", "s3cret")
            assert response.code == 235
            await smtp.sendmail(SENDER, [RCPT], MESSAGE)

    options = {"ssl_context": tls.server, "config": AUTH_OVER_TLS, "policy": Accounts()}
    with serve(kind, router, **options) as server:
        run_client(lambda: send(server.port))
    assert stored.seen.envelopes[0].auth_identity == "alice"
    check_one(stored, MESSAGE, protocol="ESMTPSA")


def test_aiosmtplib_pipelined_messages(kind: str, router: Router[Any], stored: Stored) -> None:
    messages = [MESSAGE.replace(b"Hello Bob.", f"Message {i}.".encode()) for i in range(5)]
    rcpts = ("bob@example.com", "carol@example.net")

    async def send(port: int) -> None:
        async with client(port) as smtp:
            await smtp.ehlo()
            assert smtp.supports_extension("pipelining")
            async with anyio.create_task_group() as group:  # queued on one connection
                for message in messages:
                    group.start_soon(smtp.sendmail, SENDER, list(rcpts), message)

    with serve(kind, router) as server:
        run_client(lambda: send(server.port))
    assert sorted(stored.seen.contents) == sorted(messages)
    want = [
        expected(envelope, content, protocol="ESMTP", rcpts=rcpts)
        for envelope, content in zip(stored.seen.envelopes, stored.seen.contents, strict=True)
    ]
    assert stored.files() == sorted(want)


def test_aiosmtplib_smtputf8(kind: str, router: Router[Any], stored: Stored) -> None:
    sender, rcpt = "jösé@exämple.org", "用户@example.com"
    content = "From: jösé@exämple.org\r\nSubject: ünïcode\r\n\r\nGrüße, 日本\r\n".encode()

    async def send(port: int) -> None:
        async with client(port) as smtp:
            await smtp.ehlo()
            assert smtp.supports_extension("smtputf8")
            await smtp.sendmail(sender, [rcpt], content, mail_options=["SMTPUTF8"])

    with serve(kind, router) as server:
        run_client(lambda: send(server.port))
    check_one(stored, content, protocol="UTF8SMTP", sender=sender, rcpts=(rcpt,))


# --- swaks -----------------------------------------------------------------------------------


@cache
def swaks_support() -> str:
    done = subprocess.run(["swaks", "--support"], capture_output=True, text=True, timeout=30)
    return done.stdout + done.stderr


def swaks(port: int, tmp_path: Path, content: bytes, *options: str) -> None:
    require("swaks")
    support = swaks_support()
    if "--tls" in options and "=== TLS supported" not in support:
        missing("this swaks has no TLS (apt-get install libnet-ssleay-perl)")
    # swaks sends the file's lines with CRLF and dot-stuffs them; "\r\n.\r\n" ends the data.
    assert content.endswith(b"\r\n")
    data = tmp_path / "swaks.txt"
    data.write_bytes(content[:-2].replace(b"\r\n", b"\n"))
    command = ["swaks", "--server", "127.0.0.1", "--port", str(port), "--helo", HELO]
    command += ["--from", SENDER, "--to", RCPT, "--data", f"@{data}", "--timeout", "10"]
    done = subprocess.run([*command, *options], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def test_swaks_plain_dot_leading_lines(
    kind: str, router: Router[Any], stored: Stored, tmp_path: Path
) -> None:
    with serve(kind, router) as server:
        swaks(server.port, tmp_path, DOTS)
    check_one(stored, DOTS, protocol="ESMTP")


def test_swaks_pipeline(kind: str, router: Router[Any], stored: Stored, tmp_path: Path) -> None:
    with serve(kind, router) as server:
        swaks(server.port, tmp_path, MESSAGE, "--pipeline")
    check_one(stored, MESSAGE, protocol="ESMTP")


def test_swaks_starttls(
    kind: str, router: Router[Any], stored: Stored, tls: TLS, tmp_path: Path, ca_file: Path
) -> None:
    with serve(kind, router, ssl_context=tls.server) as server:
        verify = ["--tls-verify", "--tls-ca-path", str(ca_file)]
        swaks(server.port, tmp_path, DOTS, "--tls", *verify)
    check_one(stored, DOTS, protocol="ESMTPS")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_auth(
    kind: str, router: Router[Any], stored: Stored, tmp_path: Path, mechanism: str
) -> None:
    options = {"config": AUTH_IN_CLEAR, "policy": Accounts()}
    with serve(kind, router, **options) as server:
        auth = ["--auth", mechanism, "--auth-user", "alice", "--auth-password", "s3cret"]
        swaks(server.port, tmp_path, MESSAGE, *auth)
    assert stored.seen.envelopes[0].auth_identity == "alice"
    check_one(stored, MESSAGE, protocol="ESMTPA")


# --- curl ------------------------------------------------------------------------------------


def curl(port: int, tmp_path: Path, content: bytes, *options: str, scheme: str = "smtp") -> None:
    require("curl")
    upload = tmp_path / "curl.eml"
    upload.write_bytes(content)  # curl sends the file as it is, dot-stuffing lines after CRLF
    command = ["curl", "--silent", "--show-error", "--max-time", "10"]
    command += [f"{scheme}://127.0.0.1:{port}/{HELO}", "--mail-from", SENDER, "--mail-rcpt", RCPT]
    done = subprocess.run(
        [*command, "--upload-file", str(upload), *options],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_curl_plain(kind: str, router: Router[Any], stored: Stored, tmp_path: Path) -> None:
    with serve(kind, router) as server:
        curl(server.port, tmp_path, DOTS)
    check_one(stored, DOTS, protocol="ESMTP")


def test_curl_implicit_tls(
    kind: str, router: Router[Any], stored: Stored, tls: TLS, tmp_path: Path, ca_file: Path
) -> None:
    with serve(kind, router, ssl_context=tls.server, implicit_tls=True) as server:
        curl(server.port, tmp_path, DOTS, "--cacert", str(ca_file), scheme="smtps")
    check_one(stored, DOTS, protocol="ESMTPS")


def test_curl_starttls(
    kind: str, router: Router[Any], stored: Stored, tls: TLS, tmp_path: Path, ca_file: Path
) -> None:
    with serve(kind, router, ssl_context=tls.server) as server:
        curl(server.port, tmp_path, MESSAGE, "--ssl-reqd", "--cacert", str(ca_file))
    check_one(stored, MESSAGE, protocol="ESMTPS")


# --- the trace headers against RFC 5321 §4.4 and RFC 5322 §2.1.1 ----------------------------

ATOM = re.compile(rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")  # RFC 5321 §4.1.2: Atom = 1*atext


def test_received_id_is_an_atom(router: Router[Any], stored: Stored) -> None:
    async def send(port: int) -> None:
        async with client(port) as smtp:
            await smtp.sendmail(SENDER, [RCPT], MESSAGE)

    with serve("sync", router) as server:
        run_client(lambda: send(server.port))
    found = re.search(rb"\sid (\S+)", stored.files()[0])
    assert found is not None
    assert ATOM.fullmatch(found[1]), found[1]


def test_trace_header_lines_fit_in_78_characters() -> None:
    session = SessionInfo(
        "589b000002",
        HOSTNAME,
        peer=("127.0.0.1", 40000),
        helo=HELO,
        extended=True,
        tls=TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384"),
    )
    envelope = Envelope(
        mail_from=SENDER,
        rcpt_tos=(RCPT,),
        content=MESSAGE,
        mail_params=MailParams(),
        rcpt_params=(RcptParams(),),
        session=session,
        received_at=RECEIVED_AT,
        transaction_id="589b000002-1",  # as the session makes them: pid in hex, counter, n
    )
    lines = trace_headers(envelope).split(b"\r\n")
    assert [line for line in lines if len(line) > 78] == []
