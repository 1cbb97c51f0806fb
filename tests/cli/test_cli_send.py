"""``smtpmux send`` as a user runs it: a subprocess against a live server (ours, in this
process, or ``smtpmux serve`` as a second subprocess). One line per recipient on stdout; exit
code 0 when all accepted, 1 when any was refused, 2 for a bad option (one line on stderr), 3
when no session could be had (one line on stderr)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import attrs
import pytest

from smtp_core import (
    Credentials,
    Envelope,
    LoginMechanism,
    PlainMechanism,
    Policy,
    Reject,
    Reply,
    Router,
    ServerConfig,
    SessionInfo,
)
from tests.cli.test_cli import Smtpmux, environment, maildir
from tests.clients import free_port
from tests.servers import TLS, Collect, refuse, running

MESSAGE = (
    b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nCc: carol@example.com\r\n"
    b"Bcc: dave@example.com\r\nSubject: from the command line\r\n\r\nHello.\r\n"
)


@attrs.frozen
class Done:
    returncode: int
    stdout: str
    stderr: str


def send(*args: str, cwd: Path, stdin: bytes = b"", env: dict[str, str] | None = None) -> Done:
    """``smtpmux send ARGS...`` to its end; never a traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "smtp_anyio", "send", *args],
        cwd=cwd,
        env={k: v for k, v in {**environment(), **(env or {})}.items() if v},  # "" unsets
        input=stdin,
        capture_output=True,
        timeout=30,
    )
    result = Done(done.returncode, done.stdout.decode(), done.stderr.decode())
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture
def router(box: Collect) -> Router[Any]:
    router: Router[Any] = Router()
    router.add("*@example.com", box)
    router.add("spam@example.net", refuse)
    return router


@pytest.fixture
def message(tmp_path: Path) -> Path:
    path = tmp_path / "message.eml"
    path.write_bytes(MESSAGE)
    return path


def test_envelope_from_the_headers(router: Router[Any], box: Collect, message: Path) -> None:
    with running("asyncio", router) as server:
        done = send("--server", f"127.0.0.1:{server.port}", str(message), cwd=message.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "accepted <bob@example.com> 250 2.0.0 OK: message accepted",
        "accepted <carol@example.com> 250 2.0.0 OK: message accepted",
        "accepted <dave@example.com> 250 2.0.0 OK: message accepted",
    ]
    assert done.stderr == ""
    [envelope] = box.envelopes
    assert envelope.mail_from == "alice@example.org"
    assert box.contents == [MESSAGE.replace(b"Bcc: dave@example.com\r\n", b"")]


def test_some_refused_from_stdin(router: Router[Any], box: Collect, tmp_path: Path) -> None:
    with running("asyncio", router) as server:
        done = send(
            "--server",
            f"127.0.0.1:{server.port}",
            "--from",
            "<>",
            "--to",
            "bob@example.com",
            "--to",
            "<nobody@nowhere.example>",
            "-",
            cwd=tmp_path,
            stdin=MESSAGE,
        )
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [
        "accepted <bob@example.com> 250 2.0.0 OK: message accepted",
        "refused <nobody@nowhere.example> 550 5.1.1 No such user here",
    ]
    assert [(e.mail_from, e.rcpt_tos) for e in box.envelopes] == [("", ("bob@example.com",))]


def test_everything_refused(router: Router[Any], message: Path) -> None:
    with running("asyncio", router, policy=Policy(auth_required=True)) as server:
        sender = send("--server", f"127.0.0.1:{server.port}", str(message), cwd=message.parent)
    with running("asyncio", router) as server:
        spam = send(
            "--server",
            f"127.0.0.1:{server.port}",
            "--to",
            "spam@example.net",
            str(message),
            cwd=message.parent,
        )
    assert sender.returncode == 1 and len(sender.stdout.splitlines()) == 3
    assert sender.stdout.startswith("refused <bob@example.com> 530 5.7.0 ")
    assert spam.returncode == 1
    assert spam.stdout == "refused <spam@example.net> 554 5.7.1 Spam, go away\n"


def test_too_big_exit_1_and_timeout_exit_3(router: Router[Any], message: Path) -> None:
    release = threading.Event()

    def slow(envelope: Envelope) -> None:
        release.wait(10)

    router.add("slow@example.net", slow)
    try:
        with running("asyncio", router, config=ServerConfig(max_message_size=100)) as server:
            where = f"127.0.0.1:{server.port}"
            big = send("--server", where, str(message), cwd=message.parent)
            small = message.parent / "small.eml"
            small.write_bytes(b"Subject: s\r\n\r\nhi\r\n")
            stalled = send(
                "--server",
                where,
                "--timeout",
                "0.3",
                "--from",
                "a@example.org",
                "--to",
                "slow@example.net",
                str(small),
                cwd=message.parent,
            )
            release.set()
    finally:
        release.set()
    assert big.returncode == 1 and big.stdout == ""
    assert big.stderr.count("\n") == 1 and "(SIZE 100)" in big.stderr, big.stderr
    assert stalled.returncode == 3 and stalled.stdout == ""
    assert stalled.stderr.count("\n") == 1 and "timed out after 0.3 s" in stalled.stderr


class Accounts(Policy):
    def authenticate(self, credentials: Credentials, info: SessionInfo) -> str | None:
        return "alice" if (credentials.username, credentials.password) == ("alice", "pw") else None


def test_tls_and_auth(router: Router[Any], box: Collect, message: Path, tls: TLS) -> None:
    ca = message.parent / "ca.pem"
    tls.ca.cert_pem.write_to_path(str(ca))
    config = ServerConfig(auth_mechanisms=(PlainMechanism, LoginMechanism))
    with running(
        "asyncio", router, ssl_context=tls.server, config=config, policy=Accounts()
    ) as server:
        where = f"127.0.0.1:{server.port}"
        ok = send(
            "--server",
            where,
            "--tls",
            "starttls",
            "--cafile",
            str(ca),
            "--auth",
            "alice:pw",
            str(message),
            cwd=message.parent,
        )
        from_env = send(
            "--server",
            where,
            "--cafile",
            str(ca),
            "--auth",
            "alice",
            str(message),
            cwd=message.parent,
            env={"SMTPMUX_PASSWORD": "pw"},
        )
        wrong = send(
            "--server",
            where,
            "--cafile",
            str(ca),
            "--auth",
            "alice:nope",
            str(message),
            cwd=message.parent,
        )
        untrusted = send("--server", where, str(message), cwd=message.parent)
    with running("asyncio", router, ssl_context=tls.server, implicit_tls=True) as server:
        implicit = send(
            "--server",
            f"127.0.0.1:{server.port}",
            "--tls",
            "implicit",
            "--cafile",
            str(ca),
            str(message),
            cwd=message.parent,
        )
    assert (ok.returncode, from_env.returncode, implicit.returncode) == (0, 0, 0)
    assert [e.session.auth_identity for e in box.envelopes] == ["alice", "alice", None]
    assert all(e.session.tls is not None for e in box.envelopes)
    for failed, text in (
        (wrong, "refused AUTH PLAIN: 535 5.7.8"),
        (untrusted, "CERTIFICATE_VERIFY"),
    ):
        assert failed.returncode == 3 and failed.stdout == ""
        assert failed.stderr.count("\n") == 1 and text in failed.stderr, failed.stderr


def test_auth_with_tls_none_names_starttls(router: Router[Any], message: Path, tls: TLS) -> None:
    with running("asyncio", router, ssl_context=tls.server, policy=Accounts()) as server:
        done = send(
            "--server",
            f"127.0.0.1:{server.port}",
            "--tls",
            "none",
            "--auth",
            "alice:pw",
            str(message),
            cwd=message.parent,
        )
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert "offers AUTH only after STARTTLS" in done.stderr and "--tls none" in done.stderr


def test_lmtp(box: Collect, message: Path) -> None:
    def full(envelope: Envelope) -> None:
        raise Reject(Reply(452, "Mailbox full", "4.2.2"))

    router: Router[Any] = Router()
    router.add("*@example.com", box)
    router.add("carol@example.com", full)
    with running("asyncio", router, config=ServerConfig(lmtp=True)) as server:
        done = send(
            "--server", f"127.0.0.1:{server.port}", "--lmtp", str(message), cwd=message.parent
        )
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "accepted <bob@example.com> 250 2.0.0 OK: message accepted",
        "refused <carol@example.com> 452 4.2.2 Mailbox full",
        "accepted <dave@example.com> 250 2.0.0 OK: message accepted",
    ]


def test_nobody_listening_exit_3(message: Path) -> None:
    done = send("--server", f"127.0.0.1:{free_port()}", str(message), cwd=message.parent)
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr.startswith("smtpmux: cannot connect to 127.0.0.1:")
    assert done.stderr.count("\n") == 1


def test_through_smtpmux_serve(tmp_path: Path, message: Path) -> None:
    """Both ends of the command line: ``smtpmux serve`` into a Maildir, ``smtpmux send``."""
    server = Smtpmux(["serve", "--listen", "127.0.0.1:0"], tmp_path)
    try:
        [port] = server.listening()
        done = send(
            "--server", f"127.0.0.1:{port}", "--to", "x@example.com", str(message), cwd=tmp_path
        )
        assert server.stop() == 0
    finally:
        server.kill()
    assert done.returncode == 0 and done.stdout.startswith("accepted <x@example.com> 250 ")
    [stored] = maildir(tmp_path / "mail")
    assert stored.endswith(MESSAGE.replace(b"Bcc: dave@example.com\r\n", b""))


#: (case, options, what the one line must name: the bad option, and its value where it has one)
BAD_OPTIONS: list[tuple[str, list[str], list[str]]] = [
    ("server-without-port", ["--server", "localhost", "{message}"], ["--server", "localhost"]),
    ("server-port-0", ["--server", "127.0.0.1:0", "{message}"], ["--server", "port"]),
    ("unknown-tls-mode", ["--tls", "always", "{message}"], ["--tls", "always"]),
    ("zero-timeout", ["--timeout", "0", "{message}"], ["--timeout", "'0'"]),
    ("bad-recipient", ["--to", "not an address", "{message}"], ["--to", "not an address"]),
    ("bad-sender", ["--from", "a@@example.com", "{message}"], ["--from", "a@@example.com"]),
    ("missing-file", ["{missing}"], ["{missing}"]),
    ("no-recipients", ["{headerless}"], ["no recipients", "--to"]),
    ("missing-cafile", ["--cafile", "{missing}", "{message}"], ["--cafile", "{missing}"]),
    (
        "cafile-without-tls",
        ["--tls", "none", "--cafile", "{message}", "{message}"],
        ["--cafile", "--tls"],
    ),
    ("auth-without-password", ["--auth", "alice", "{message}"], ["--auth", "SMTPMUX_PASSWORD"]),
    ("bad-helo", ["--helo", "my host", "{message}"], ["--helo", "my host"]),
    ("unknown-option", ["--frobnicate", "{message}"], ["--frobnicate"]),
    ("no-file", [], ["FILE"]),
]


@pytest.mark.parametrize(
    ("case", "options", "named"), BAD_OPTIONS, ids=[c for c, _, _ in BAD_OPTIONS]
)
def test_bad_options_one_line_exit_2(
    message: Path, case: str, options: list[str], named: list[str]
) -> None:
    headerless = message.parent / "headerless.eml"
    headerless.write_bytes(b"From: a@example.org\r\nSubject: nobody to send to\r\n\r\nhi\r\n")
    names = {
        "message": str(message),
        "missing": str(message.parent / "missing"),
        "headerless": str(headerless),
    }
    done = send(
        *[o.format(**names) for o in options], cwd=message.parent, env={"SMTPMUX_PASSWORD": ""}
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("smtpmux"), done.stderr
    assert done.stdout == ""
    for name in named:
        assert name.format(**names) in done.stderr, (name, done.stderr)
