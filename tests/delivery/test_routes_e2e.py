"""The routes of ``smtpmux serve`` as a user runs them, every target over its real peer:
``python -m smtp_anyio serve`` in a scratch directory, the company example of docs/routes.md
served as written (a webhook on an HTTPS server of the test, Dovecot over LMTP, a pipe
program, discard, reject), each remote scheme once from ``--route``, and a SIGHUP that swaps a
route while a connection stays open."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from aiosmtpd.controller import Controller

from smtp_sync._webhook import SIGNED_HEADERS
from tests.adapters.test_interop import swaks_support
from tests.cli.test_cli import BACKENDS, Start, certificate, maildir, stopped_cleanly
from tests.cli.test_cli_routes import company_example, count, smtpmux, wait_until
from tests.delivery.test_forward import Upstream
from tests.delivery.test_webhook import Recorder
from tests.dovecot import Dovecot, running_dovecot
from tests.tools import missing, require

__all__ = ["certificate", "smtpmux"]  # fixtures of test_cli and test_cli_routes, used here

SENDER = "alice@customer.example"
SECRET = "e2e-hook-secret"


def message(subject: str, to: str = "someone@example.com") -> bytes:
    return (
        f"From: Alice <{SENDER}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@customer.example>\r\n\r\nHello, {subject}.\r\n"
    ).encode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def rcpt_reply(port: int, rcpt: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        assert client.mail(SENDER)[0] == 250
        return client.rcpt(rcpt)


def data_reply(port: int, rcpts: list[str], content: bytes) -> tuple[int, bytes]:
    """The reply to the data (every recipient must be accepted first)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        assert client.mail(SENDER)[0] == 250
        for rcpt in rcpts:
            assert client.rcpt(rcpt)[0] == 250, rcpt
        return client.data(content)


#: a pipe program: records its arguments, environment and stdin in ./piped/N.json (in
#: smtpmux's working directory); with --fail-once it first exits 75 (EX_TEMPFAIL) once
PIPE_SCRIPT = """\
#!{python}
import json, os, sys, uuid
data = sys.stdin.buffer.read()
if "--fail-once" in sys.argv and not os.path.exists("failed-once"):
    open("failed-once", "w").close()
    sys.exit(75)
os.makedirs("piped", exist_ok=True)
record = {{"argv": sys.argv[1:], "env": dict(os.environ), "stdin": data.decode("latin-1")}}
with open(os.path.join("piped", uuid.uuid4().hex + ".json"), "w") as out:
    json.dump(record, out)
"""


def pipe_script(directory: Path) -> Path:
    script = directory / "record-pipe"
    script.write_text(PIPE_SCRIPT.format(python=sys.executable))
    script.chmod(0o755)
    return script


def piped(directory: Path) -> list[dict[str, object]]:
    folder = directory / "piped"
    if not folder.is_dir():
        return []
    return [json.loads(path.read_text()) for path in folder.iterdir()]


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    """One Dovecot for the module (its start costs a second): tests tell their mail apart by
    the Subject."""
    with running_dovecot() as instance:
        yield instance


@pytest.fixture(scope="module")
def https_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A trustme CA: the server context of an HTTPS server on 127.0.0.1, and the CA file."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    path = tmp_path_factory.mktemp("https-ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return context, path


@pytest.fixture
def helpdesk(https_ca: tuple[ssl.SSLContext, Path]) -> Iterator[Recorder]:
    """The helpdesk of the company example: an HTTPS server with a certificate of the test's CA."""
    with Recorder(https_ca[0]) as recorder:
        yield recorder


def substituted(text: str, substitutions: list[tuple[str, str]]) -> str:
    for old, new in substitutions:
        assert old in text, f"docs/routes.md's example no longer says {old!r}"
        text = text.replace(old, new)
    return text


def delivered(dovecot: Dovecot, user: str, subject: str) -> list[bytes]:
    """The user's messages with this Subject (Dovecot stores lines with LF endings)."""
    return [m for m in dovecot.messages(user) if f"\nSubject: {subject}\n".encode() in m]


# --- 1. the company example of docs/routes.md, serving ----------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_company_example_of_the_docs_serves(
    smtpmux: Start,
    tmp_path: Path,
    backend: str,
    dovecot: Dovecot,
    certificate: dict[str, Path],
    https_ca: tuple[ssl.SSLContext, Path],
    helpdesk: Recorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/routes.md's mx.toml, with only its addresses, ports and paths replaced by the
    test's: each route delivers to its real peer or refuses as the doc says."""
    ca_file = https_ca[1]
    script = pipe_script(tmp_path)
    helpdesk_port = helpdesk.server.server_address[1]
    config = substituted(
        company_example(),
        [
            ('listen = ["0.0.0.0:25", "[::]:25"]', 'listen = ["127.0.0.1:0"]'),
            ('metrics = "127.0.0.1:9100"', 'metrics = "127.0.0.1:0"'),
            ("/etc/smtpmux/tls/fullchain.pem", str(certificate["cert"])),
            ("/etc/smtpmux/tls/privkey.pem", str(certificate["key"])),
            ("https://helpdesk.example.com/", f"https://127.0.0.1:{helpdesk_port}/"),
            ("/usr/local/bin/expand-list", str(script)),
            ("lmtp://127.0.0.1:24", f"lmtp://127.0.0.1:{dovecot.port}"),
        ],
    )
    (tmp_path / "mx.toml").write_text(config)
    # the helpdesk's certificate comes from the test's CA: trusted the way an operator
    # with a private CA would, without touching the route
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    server = smtpmux("serve", "--config", "mx.toml", "--backend", backend)
    [port] = server.listening()
    subject = f"company-{backend}"

    # support@: a ticket in the helpdesk, over STARTTLS from swaks
    content = message(f"{subject}-support", "support@example.com")
    (tmp_path / "ticket.txt").write_bytes(content[:-2].replace(b"\r\n", b"\n"))
    swaks = [require("swaks"), "--server", "127.0.0.1", "--port", str(port)]
    swaks += ["--helo", "client.customer.example", "--from", SENDER]
    swaks += ["--to", "Support@example.com", "--data", f"@{tmp_path / 'ticket.txt'}"]
    if "=== TLS supported" not in swaks_support():
        missing("this swaks has no TLS (apt-get install libnet-ssleay-perl)")
    swaks += ["--tls", "--tls-verify", "--tls-ca-path", str(certificate["ca"]), "--timeout", "30"]
    done = subprocess.run(swaks, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    [request] = helpdesk.requests
    assert request.path == "/hooks/inbound-mail"
    assert request.body is not None and request.body.endswith(content)
    assert request.body.startswith(b"Received: ")
    headers = request.headers
    assert headers["Content-Type"].startswith("message/rfc822")
    assert headers["X-Smtpmux-Mail-From"] == SENDER
    assert headers["X-Smtpmux-Rcpt-To"] == "Support@example.com"
    assert headers["X-Smtpmux-Helo"] == "client.customer.example"
    assert headers["X-Smtpmux-Message-Id"] == f"<{subject}-support@customer.example>"
    assert headers["X-Smtpmux-Tls"].startswith("TLS")
    assert headers["X-Smtpmux-Protocol"] == "ESMTPS"
    assert headers["X-Smtpmux-Transaction-Id"]
    assert headers["X-Smtpmux-Peer"].startswith("127.0.0.1:")

    # staff: Dovecot over LMTP; bob+orders@ and Bob@ are bob (recipient_delimiter, fold_case)
    staff = message(f"{subject}-staff")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        rcpts = ["Bob+orders@example.com", "alice@example.com"]
        assert client.sendmail(SENDER, rcpts, staff) == {}
        # an unknown staff user: Dovecot's own refusal, at our RCPT
        assert client.mail(SENDER)[0] == 250
        code, reply = client.rcpt("nobody@example.com")
        assert (code, reply[:6]) == (550, b"5.1.1 "), reply
        assert b"nobody@example.com" in reply
        client.rset()
    for user in ("bob", "alice"):
        [stored] = delivered(dovecot, user, f"{subject}-staff")
        assert stored.endswith(staff.replace(b"\r\n", b"\n"))
        assert b"by mx.example.com (smtpmux)" in stored  # our Received: line, then Dovecot's

    # all@: the list script, with the envelope in its environment
    listed = message(f"{subject}-list", "all@example.com")
    assert data_reply(port, ["all@example.com"], listed)[0] == 250
    [record] = piped(tmp_path)
    assert record["argv"] == ["all"]
    env = record["env"]
    assert isinstance(env, dict) and isinstance(record["stdin"], str)
    assert (env["SENDER"], env["RECIPIENT"]) == (SENDER, "all@example.com")
    assert env["MESSAGE_ID"] == f"<{subject}-list@customer.example>"
    assert "SSL_CERT_FILE" not in env  # only the documented variables
    assert record["stdin"].startswith("Received: ")
    assert record["stdin"].endswith(listed.decode())

    # newsletter@: accepted, stored nowhere
    before = sorted(p.name for p in tmp_path.iterdir())
    news = message(f"{subject}-news", "newsletter@example.com")
    assert data_reply(port, ["newsletter@example.com"], news)[0] == 250
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert len(piped(tmp_path)) == 1
    assert not any(delivered(dovecot, user, f"{subject}-news") for user in ("alice", "bob"))

    # one message To: support@ and all@, Cc: bob@, nobody@ (refused), newsletter@: each
    # accepted recipient's route gets it once, with only its own recipients
    mixed = message(f"{subject}-mixed", "support@example.com, all@example.com")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        rcpts = [
            "support@example.com",
            "bob@example.com",
            "nobody@example.com",
            "all@example.com",
            "newsletter@example.com",
        ]
        refused = client.sendmail(SENDER, rcpts, mixed)
        assert list(refused) == ["nobody@example.com"]
        assert refused["nobody@example.com"][0] == 550
    [_, ticket] = helpdesk.requests
    assert ticket.headers["X-Smtpmux-Rcpt-To"] == "support@example.com"
    assert ticket.body is not None and ticket.body.endswith(mixed)
    [stored] = delivered(dovecot, "bob", f"{subject}-mixed")
    assert stored.endswith(mixed.replace(b"\r\n", b"\n"))
    assert not delivered(dovecot, "alice", f"{subject}-mixed")
    [expanded] = [r for r in piped(tmp_path) if f"{subject}-mixed" in str(r["stdin"])]
    assert isinstance(expanded["env"], dict)
    assert expanded["env"]["RECIPIENTS"] == "all@example.com"

    # any other domain: refused at RCPT with the route's reply
    assert rcpt_reply(port, "bob@elsewhere.example") == (
        550,
        b"5.7.1 This server takes mail for example.com only",
    )
    code = server.stop(timeout=20)
    records = [json.loads(line) for line in server.stderr.splitlines()]  # format = "json"
    assert code == 0 and records[-1]["message"] == "stopping", server.stderr
    assert not [r for r in records if r["level"] not in ("INFO", "DEBUG")], server.stderr


# --- 2. each remote scheme once, from --route --------------------------------------------------


@contextlib.contextmanager
def aiosmtpd_on(handler: Upstream, port: int) -> Iterator[None]:
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield
    finally:
        controller.stop()


def test_smtp_route_forwards_and_a_retry_after_the_upstream_is_back_delivers_once(
    smtpmux: Start,
) -> None:
    handler = Upstream()
    upstream_port = free_port()
    target = f"smtp://127.0.0.1:{upstream_port}?tls=none&timeout=5"
    server = smtpmux("serve", "--listen", "127.0.0.1:0", "--route", f"*@fwd.example={target}")
    [port] = server.listening()
    with aiosmtpd_on(handler, upstream_port):
        assert data_reply(port, ["bob@fwd.example"], message("forwarded"))[0] == 250
        assert rcpt_reply(port, "no-such@fwd.example") == (550, b"5.1.1 No such user")
    [(sender, rcpts, content)] = handler.messages
    assert (sender, rcpts) == (SENDER, ["bob@fwd.example"])
    assert content.endswith(message("forwarded")) and content.startswith(b"Received: ")

    # the upstream is down: 451 4.4.1 at RCPT, nothing accepted
    code, text = rcpt_reply(port, "bob@fwd.example")
    assert (code, text[:6]) == (451, b"4.4.1 "), text
    with aiosmtpd_on(handler, upstream_port):  # back: the sender's retry goes through
        assert data_reply(port, ["bob@fwd.example"], message("retried"))[0] == 250
    retried = [m for m in handler.messages if b"Subject: retried" in m[2]]
    assert len(retried) == 1 and len(handler.messages) == 2
    stopped_cleanly(server)


def test_pipe_route_exit_75_is_451_and_the_retry_delivers(smtpmux: Start, tmp_path: Path) -> None:
    script = pipe_script(tmp_path)
    route = f"*@list.example=pipe:{script} --fail-once"
    server = smtpmux("serve", "--listen", "127.0.0.1:0", "--route", route)
    [port] = server.listening()
    content = message("pipe-retry", "staff@list.example")
    code, text = data_reply(port, ["staff@list.example"], content)
    assert (code, text[:6]) == (451, b"4.3.0 "), text
    assert piped(tmp_path) == []
    assert data_reply(port, ["staff@list.example"], content)[0] == 250
    [record] = piped(tmp_path)
    assert record["argv"] == ["--fail-once"]
    assert isinstance(record["stdin"], str) and record["stdin"].endswith(content.decode())
    stopped_cleanly(server)


def test_https_route_with_a_private_ca_and_a_signature(
    smtpmux: Start,
    https_ca: tuple[ssl.SSLContext, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    context, ca_file = https_ca
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    with Recorder(context) as hook:
        target = f"{hook.url}#cafile={ca_file}&secret_env=HOOK_SECRET"
        server = smtpmux("serve", "--listen", "127.0.0.1:0", "--route", f"*@app.example={target}")
        [port] = server.listening()
        content = message("signed", "inbox@app.example")
        assert data_reply(port, ["inbox@app.example"], content)[0] == 250
        [request] = hook.requests
    assert request.path == "/hooks/mail?box=1"  # the fragment stays with us
    assert request.body is not None and request.body.endswith(content)
    signature = request.headers["X-Smtpmux-Signature"]
    lines = ["smtpmux-v1", *(request.headers.get(name) or "" for name in SIGNED_HEADERS)]
    lines.append(hashlib.sha256(request.body).hexdigest())
    expected = hmac.new(SECRET.encode(), "\n".join(lines).encode(), hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"
    stderr = stopped_cleanly(server)
    # one line per delivery, smtpmux's own: not httpx's INFO "HTTP Request: POST ..." as well
    assert stderr.count("delivered (200)") == 1
    assert "httpx" not in stderr and "HTTP Request" not in stderr


def test_fan_out_with_a_webhook_answering_503_is_451_and_never_reported_delivered(
    smtpmux: Start, tmp_path: Path
) -> None:
    """maildir then http: the Maildir took the message, the hook did not, so the sender is
    told 451 and its retry repeats it in the Maildir (same Message-ID). http then maildir (the
    order docs/routes.md advises): the Maildir is never given the message that failed."""
    with Recorder() as hook:
        server = smtpmux(
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--debug",  # the protocol trace, not httpcore's debugging of its connections
            *("--route", "*@archive-first.example=maildir:archive"),
            *("--route", f"*@archive-first.example={hook.url}"),
            *("--route", f"*@hook-first.example={hook.url}"),
            *("--route", "*@hook-first.example=maildir:inbox"),
        )
        [port] = server.listening()
        for domain, box in (("archive-first", "archive"), ("hook-first", "inbox")):
            rcpt = f"bob@{domain}.example"
            content = message(f"fan-out-{domain}", rcpt)
            hook.answers.append(503)
            code, text = data_reply(port, [rcpt], content)
            assert (code, text[:6]) == (451, b"4.4.1 "), text
            stored_before_retry = count(tmp_path / box)
            assert stored_before_retry == (1 if box == "archive" else 0)
            assert data_reply(port, [rcpt], content)[0] == 250  # the retry: the hook is back
            assert count(tmp_path / box) == stored_before_retry + 1
            assert all(m.endswith(content) for m in maildir(tmp_path / box))
        assert [r.status for r in hook.requests] == [503, 200, 503, 200]
    stderr = stopped_cleanly(server)
    assert "smtpmux.trace" in stderr
    assert "httpcore" not in stderr and "httpx" not in stderr


def test_lmtp_unix_route_answers_each_message_by_the_stores_rule(
    smtpmux: Start, dovecot: Dovecot
) -> None:
    """Dovecot over its unix socket; after the data, its answers for several recipients become
    one SMTP reply by the table of docs/routes.md: a 4xx wins, then a 5xx, then 250."""
    route = f"*@store.example=lmtp+unix://{dovecot.socket_path}"
    server = smtpmux("serve", "--listen", "127.0.0.1:0", "--route", route)
    [port] = server.listening()
    assert data_reply(port, ["alice@store.example"], message("unix-one"))[0] == 250
    assert len(delivered(dovecot, "alice", "unix-one")) == 1
    code, text = data_reply(port, ["alice@store.example", "carol@store.example"], message("quota"))
    assert (code, text[:6]) == (552, b"5.2.2 "), text  # carol is over quota: a bounce
    assert len(delivered(dovecot, "alice", "quota")) == 1  # alice kept her copy
    code, text = data_reply(port, ["carol@store.example", "dave@store.example"], message("temp"))
    assert (code, text[:6]) == (451, b"4.4.1 "), text  # dave's store failed: retry all
    stopped_cleanly(server)


# --- 3. SIGHUP with --config -------------------------------------------------------------------


def test_sighup_moves_a_route_from_discard_to_a_maildir(smtpmux: Start, tmp_path: Path) -> None:
    config = tmp_path / "smtpmux.toml"
    route = '[[route]]\nmatch = "*@example.com"\ndeliver = "{}"\n'
    config.write_text('listen = ["127.0.0.1:0"]\n' + route.format("discard"))
    server = smtpmux("serve", "--config", "smtpmux.toml")
    [port] = server.listening()
    assert data_reply(port, ["a@example.com"], message("before"))[0] == 250
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as idle:
        idle.ehlo()
        config.write_text('listen = ["127.0.0.1:0"]\n' + route.format("maildir:kept"))
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded smtpmux.toml" in server.stderr_so_far())
        assert data_reply(port, ["b@example.com"], message("after"))[0] == 250
        [stored] = maildir(tmp_path / "kept")
        assert stored.endswith(message("after"))
        # the connection opened before the reload keeps its configuration: discard
        assert idle.sendmail(SENDER, ["c@example.com"], message("idle")) == {}
        assert count(tmp_path / "kept") == 1
    assert data_reply(port, ["d@example.com"], message("later"))[0] == 250
    assert count(tmp_path / "kept") == 2
    stopped_cleanly(server)
