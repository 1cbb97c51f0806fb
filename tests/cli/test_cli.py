"""``smtpmux`` as a user runs it: ``python -m smtp_anyio`` as a subprocess in a scratch directory,
talked to with smtplib over 127.0.0.1, stopped with SIGTERM. Every process a test starts is
killed by the fixture that started it, whatever happens to the test."""

from __future__ import annotations

import base64
import importlib.metadata
import json
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme

from tests.servers import ipv6_loopback

REPO = Path(__file__).resolve().parents[2]
BACKENDS = ["asyncio", "trio", "sync"]
MESSAGE = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: cli\r\n\r\nHello from the CLI.\r\n"
LISTENING = re.compile(r"smtpmux: listening on \[?([^\s\]]+)\]?:(\d+)( \(implicit TLS\))?$")


def as_text(line: str) -> str:
    """A ``--log-format json`` record's message as the text format writes it."""
    if line.startswith("{"):
        return "smtpmux: " + str(json.loads(line).get("message"))
    return line


def environment() -> dict[str, str]:
    """This checkout first on the path, whatever is installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class Smtpmux:
    """One ``smtpmux`` process. A thread collects its stderr, so a chatty ``--debug`` can never
    fill the pipe and stall the server."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "smtp_anyio", *args],
            cwd=cwd,
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._lines: list[str] = []
        self._ended = False  # stderr is closed: the process is gone
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            with self._changed:
                self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def listening(self, count: int = 1, timeout: float = 20.0) -> list[int]:
        """The ports of the first ``count`` "listening on" lines, once they are all there."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [m for m in map(LISTENING.search, map(as_text, self._lines)) if m]
                if len(found) >= count:
                    return [int(m[2]) for m in found[:count]]
                if self._ended or time.monotonic() > deadline:
                    raise AssertionError(f"smtpmux did not start:\n{self.stderr_so_far()}")
                self._changed.wait(deadline - time.monotonic())

    def stderr_so_far(self) -> str:
        with self._changed:
            return "\n".join(self._lines)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then the exit code, which must come within ``timeout`` seconds."""
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 10.0) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    @property
    def stderr(self) -> str:
        """Everything written to stderr (call after the process ended)."""
        assert self.process.poll() is not None
        self._reader.join(5)
        return self.stderr_so_far().rstrip("\n")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        if self.process.stderr is not None:
            self.process.stderr.close()


Start = Callable[..., Smtpmux]


@pytest.fixture
def smtpmux(tmp_path: Path) -> Iterator[Start]:
    """Start ``smtpmux ARGS...`` with tmp_path as its working directory."""
    started: list[Smtpmux] = []

    def start(*args: str) -> Smtpmux:
        process = Smtpmux(list(args), tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def run(*args: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``smtpmux ARGS...`` to its end (for commands that must exit by themselves)."""
    return subprocess.run(
        [sys.executable, "-m", "smtp_anyio", *args],
        cwd=cwd,
        env=environment(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=20,
    )


def stopped_cleanly(server: Smtpmux) -> str:
    """Stop with SIGTERM; assert exit code 0 well before the 30 s graceful deadline (20 s is
    room for a loaded machine) and no traceback; give stderr."""
    code = server.stop(timeout=20)
    stderr = server.stderr
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert "smtpmux: stopping" in stderr
    return stderr


def maildir(path: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((path / "new").iterdir())]


def send(port: int, sender: str = "a@example.org", rcpt: str = "b@example.com") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        assert client.sendmail(sender, [rcpt], MESSAGE) == {}


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """trustme files: the server's certificate, its key, the CA that signed it, a bad key."""
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    files = {name: directory / f"{name}.pem" for name in ("cert", "key", "ca", "bad_key")}
    issued.cert_chain_pems[0].write_to_path(str(files["cert"]))
    issued.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    files["bad_key"].write_text(
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
    )
    return files


def client_context(certificate: dict[str, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate["ca"]))


# --- running and stopping --------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_serve_delivers_to_maildir_and_stops_on_sigterm(
    smtpmux: Start, tmp_path: Path, backend: str
) -> None:
    server = smtpmux("serve", "--backend", backend, "--listen", "127.0.0.1:0")
    [port] = server.listening()
    assert port != 0  # the bound port is printed, not the 0 asked for
    send(port)
    [stored] = maildir(tmp_path / "mail")
    assert stored.endswith(MESSAGE) and stored.startswith(b"Return-Path: <a@example.org>\r\n")
    idle = smtplib.SMTP("127.0.0.1", port, timeout=10)  # an idle session gets 421 at the stop
    try:
        idle.ehlo()
        stopped_cleanly(server)
        assert idle.getreply()[0] == 421
    finally:
        idle.close()


def port_8025_free() -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", 8025))
        except OSError:
            return False
    return True


def test_zero_config_listens_on_8025_and_delivers_to_mail(smtpmux: Start, tmp_path: Path) -> None:
    if not port_8025_free():
        pytest.skip("127.0.0.1:8025 is taken on this machine")
    server = smtpmux("serve")
    try:
        ports = server.listening()
    except AssertionError:
        if server.process.poll() == 2 and "in use" in server.stderr:
            pytest.skip("127.0.0.1:8025 was taken just now by another program")
        raise
    assert ports == [8025]
    assert "smtpmux: listening on 127.0.0.1:8025" in server.stderr_so_far()
    send(8025)
    assert maildir(tmp_path / "mail")[0].endswith(MESSAGE)
    stopped_cleanly(server)


# --- TLS -------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_tls_listen_and_starttls(
    smtpmux: Start, tmp_path: Path, certificate: dict[str, Path], backend: str
) -> None:
    server = smtpmux(
        "serve",
        "--backend",
        backend,
        "--listen",
        "127.0.0.1:0",
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(certificate["cert"]),
        "--tls-key",
        str(certificate["key"]),
    )
    plain, implicit = server.listening(2)
    assert re.search(
        rf"listening on 127\.0\.0\.1:{implicit} \(implicit TLS\)", server.stderr_so_far()
    )
    context = client_context(certificate)
    with smtplib.SMTP("127.0.0.1", plain, timeout=10) as client:
        client.ehlo()
        assert client.has_extn("starttls")  # offered because a certificate was given
        client.starttls(context=context)
        client.ehlo()
        assert not client.has_extn("starttls")
        client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
    with smtplib.SMTP_SSL("127.0.0.1", implicit, context=context, timeout=10) as client:
        client.ehlo()
        assert not client.has_extn("starttls")
        client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
    with socket.create_connection(("127.0.0.1", implicit), timeout=10) as confused:
        confused.sendall(b"EHLO plaintext.example\r\n")  # no TLS on the TLS port: just closed
        try:
            answer = confused.recv(100)
        except ConnectionResetError:
            answer = b""
        assert answer == b""
    stored = maildir(tmp_path / "mail")
    assert len(stored) == 2
    assert all(re.search(rb"\(using TLSv1\.[23] .*\swith ESMTPS id ", m, re.S) for m in stored)
    stderr = stopped_cleanly(server)
    # logged as the client's failure, with the reason in words
    assert "TLS handshake with 127.0.0.1:" in stderr
    assert "failed: the client did not start TLS (plain SMTP on a TLS port?)" in stderr


# --- authentication and relay control --------------------------------------------------------


def login(port: int, context: ssl.SSLContext, user: str, password: str, mechanism: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.starttls(context=context)
        client.ehlo()
        client.user, client.password = user, password
        method = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        try:
            code = client.auth(mechanism, method)[0]
        except smtplib.SMTPAuthenticationError as refused:
            return refused.smtp_code
        assert client.sendmail("a@example.org", ["someone@elsewhere.example"], MESSAGE) == {}
        return code


def test_hash_password(tmp_path: Path) -> None:
    done = run("hash-password", cwd=tmp_path, stdin="correct horse\n")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"pbkdf2-sha256\$600000\$[0-9a-f]{32}\$[0-9a-f]{64}\n", done.stdout)
    assert "correct horse" not in done.stdout
    empty = run("hash-password", cwd=tmp_path, stdin="\n")
    assert empty.returncode == 2 and empty.stderr.count("\n") == 1


UNVERIFIABLE = [
    ("unmarked", "bob:bobs-password", "an unmarked password"),
    ("dovecot", "bob:{SHA512-CRYPT}$6$salt$hash", "the password scheme {SHA512-CRYPT}"),
    ("htpasswd", "bob:$2y$05$abcdefghijklmnopqrstuv", "a bcrypt hash"),
]


@pytest.mark.parametrize(
    ("line", "message"), [c[1:] for c in UNVERIFIABLE], ids=[c[0] for c in UNVERIFIABLE]
)
def test_auth_file_with_a_line_it_cannot_verify_refuses_to_start(
    tmp_path: Path, line: str, message: str
) -> None:
    (tmp_path / "users").write_text(f"alice:{{PLAIN}}ok\n{line}\n")
    done = run("serve", "--listen", "127.0.0.1:0", "--auth-file", "users", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"users:2: {message}" in done.stderr
    assert "{PLAIN}" in done.stderr and "smtpmux hash-password" in done.stderr


def test_auth_file_plain_and_hashed_over_tls_with_relay_domain(
    smtpmux: Start, tmp_path: Path, certificate: dict[str, Path]
) -> None:
    hashed = run("hash-password", cwd=tmp_path, stdin="bobs password\n").stdout.strip()
    users = tmp_path / "users"
    users.write_text(f"# smtpmux users\n\nalice:{{PLAIN}}alices-secret\nbob:{hashed}\n")
    server = smtpmux(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(certificate["cert"]),
        "--tls-key",
        str(certificate["key"]),
        "--auth-file",
        "users",
        "--auth-require-tls",
        "--relay-domain",
        "example.com",
    )
    [port] = server.listening()
    context = client_context(certificate)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        assert not client.has_extn("auth")  # not before TLS
        code, _ = client.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0x").decode())
        assert code == 538
        client.mail("a@example.org")
        code, text = client.rcpt("someone@elsewhere.example")
        assert (code, text[:5]) == (550, b"5.7.1")  # unauthenticated: only example.com
        assert client.rcpt("b@example.com")[0] == 250
        client.rset()
        client.starttls(context=context)
        client.ehlo()
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
    assert login(port, context, "alice", "wrong", "PLAIN") == 535
    assert login(port, context, "alice", "alices-secret", "PLAIN") == 235
    assert login(port, context, "bob", "bobs password", "LOGIN") == 235
    assert login(port, context, "bob", hashed, "LOGIN") == 535  # the hash is not the password
    assert login(port, context, "carol", "anything", "PLAIN") == 535
    stored = maildir(tmp_path / "mail")
    assert len(stored) == 2 and all(re.search(rb"\swith ESMTPSA id ", m) for m in stored)
    stopped_cleanly(server)


# --- limits, names, protocols, stores --------------------------------------------------------


def test_limits_and_hostname(smtpmux: Start, tmp_path: Path) -> None:
    server = smtpmux(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--hostname",
        "mx.cli.test",
        "--max-message-size",
        "1K",
        "--max-recipients",
        "2",
    )
    [port] = server.listening()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        code, greeting = client.ehlo()
        assert greeting.startswith(b"mx.cli.test Hello")
        assert client.esmtp_features["size"] == "1024"
        assert client.mail("a@example.org")[0] == 250
        assert client.rcpt("b@example.com")[0] == 250
        assert client.rcpt("c@example.com")[0] == 250
        code, text = client.rcpt("d@example.com")
        assert (code, text[:5]) == (452, b"4.5.3")
        code, text = client.data(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 20)
        assert (code, text[:5]) == (552, b"5.3.4")
        client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert sock.recv(100).startswith(b"220 mx.cli.test ESMTP")
    [stored] = maildir(tmp_path / "mail")
    assert b"by mx.cli.test (smtpmux)" in stored
    stopped_cleanly(server)


def test_lmtp(smtpmux: Start, tmp_path: Path) -> None:
    server = smtpmux("serve", "--listen", "127.0.0.1:0", "--lmtp")
    [port] = server.listening()
    client = smtplib.LMTP("127.0.0.1", port, timeout=10)
    try:
        code, _ = client.ehlo()  # smtplib.LMTP sends LHLO
        assert code == 250
        assert client.mail("a@example.org")[0] == 250
        assert client.rcpt("b@example.com")[0] == 250
        assert client.rcpt("c@example.com")[0] == 250
        client.putcmd("data")
        assert client.getreply()[0] == 354
        client.send(MESSAGE + b".\r\n")
        assert [client.getreply()[0], client.getreply()[0]] == [250, 250]  # one per recipient
        client.quit()
    finally:
        client.close()
    [stored] = maildir(tmp_path / "mail")
    assert re.search(rb"\swith LMTP id ", stored) and stored.endswith(MESSAGE)
    stopped_cleanly(server)


def test_eml_dir(smtpmux: Start, tmp_path: Path) -> None:
    server = smtpmux("serve", "--listen", "127.0.0.1:0", "--eml-dir", "out")
    [port] = server.listening()
    send(port)
    [eml] = list((tmp_path / "out").iterdir())
    assert eml.suffix == ".eml"
    assert eml.read_bytes().startswith(b"Return-Path: <a@example.org>\r\n")
    assert eml.read_bytes().endswith(MESSAGE)
    assert not (tmp_path / "mail").exists()
    stopped_cleanly(server)


def test_maildir_in_an_existing_empty_directory(smtpmux: Start, tmp_path: Path) -> None:
    (tmp_path / "box").mkdir()  # made by hand before the first start: still becomes a Maildir
    server = smtpmux("serve", "--listen", "127.0.0.1:0", "--maildir", "box")
    [port] = server.listening()
    send(port)
    assert maildir(tmp_path / "box")[0].endswith(MESSAGE)
    stopped_cleanly(server)


def test_discard(smtpmux: Start, tmp_path: Path) -> None:
    server = smtpmux("serve", "--listen", "127.0.0.1:0", "--discard")
    [port] = server.listening()
    send(port)
    stopped_cleanly(server)
    assert list(tmp_path.iterdir()) == []  # nothing stored anywhere


def test_debug_traces_the_protocol_without_auth_secrets(smtpmux: Start, tmp_path: Path) -> None:
    password = "p4ss-w0rd-secret"
    (tmp_path / "users").write_text(f"alice:{{PLAIN}}{password}\n")
    server = smtpmux("serve", "--listen", "127.0.0.1:0", "--auth-file", "users", "--debug")
    [port] = server.listening()
    for mechanism in ("PLAIN", "LOGIN"):
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo()
            client.user, client.password = "alice", password
            method = client.auth_plain if mechanism == "PLAIN" else client.auth_login
            assert client.auth(mechanism, method)[0] == 235
            client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
    stderr = stopped_cleanly(server)
    secrets = [
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(f"\0alice\0{password}".encode()).decode(),
        base64.b64encode(f"alice\0alice\0{password}".encode()).decode(),
    ]
    for secret in secrets:
        assert secret not in stderr
    assert "C: AUTH PLAIN <redacted>" in stderr
    assert re.search(r"C: AUTH LOGIN( <redacted>)?\n", stderr)
    assert "C: mail FROM:<a@example.org>" in stderr and "S: 250 2.1.0" in stderr
    assert "Hello from the CLI." in stderr  # --debug prints each message too
    assert len(maildir(tmp_path / "mail")) == 2


def test_timeout(smtpmux: Start) -> None:
    server = smtpmux("serve", "--listen", "127.0.0.1:0", "--timeout", "0.5")
    [port] = server.listening()
    started = time.monotonic()  # before the server can start its clock: a true lower bound
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        assert reader.readline() == b"421 4.4.2 Timeout, closing connection\r\n"
        assert time.monotonic() - started >= 0.5
    stopped_cleanly(server)


def test_connection_limits(smtpmux: Start, tmp_path: Path) -> None:
    """--max-connections and --max-connections-per-client, and eviction when full."""
    server = smtpmux(
        "serve", "--listen", "127.0.0.1:0", "--max-connections", "2",
        "--max-connections-per-client", "1",
    )  # fmt: skip
    [port] = server.listening()
    with connect_from("127.0.0.1", port) as first, first.makefile("rb") as first_reader:
        assert first_reader.readline().startswith(b"220 ")
        with connect_from("127.0.0.1", port) as second:  # one per client
            assert second.recv(100) == b"421 4.7.0 Too many connections from your address\r\n"
        with connect_from("127.0.0.2", port) as other, other.makefile("rb") as other_reader:
            assert other_reader.readline().startswith(b"220 ")  # now full (2)
            # A working client still gets in: the longest-idle connection makes room.
            with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.0.0.3", 0)) as c:
                c.sendmail("a@example.org", ["b@example.com"], MESSAGE)
            assert first_reader.readline() == b"421 4.4.2 Server busy, closing idle connection\r\n"
    assert len(maildir(tmp_path / "mail")) == 1
    stopped_cleanly(server)


def test_connection_rate(smtpmux: Start) -> None:
    """--connection-rate-per-client N/PERIOD (and --max-connections-per-client 0: no limit)."""
    server = smtpmux(
        "serve", "--listen", "127.0.0.1:0", "--connection-rate-per-client", "2/1h",
        "--max-connections-per-client", "0",
    )  # fmt: skip
    [port] = server.listening()
    with connect_from("127.0.0.1", port) as one, connect_from("127.0.0.1", port) as two:
        assert one.recv(100).startswith(b"220 ") and two.recv(100).startswith(b"220 ")
        with connect_from("127.0.0.1", port) as three:
            assert three.recv(100) == (
                b"421 4.7.0 Too many new connections from your address, try again later\r\n"
            )
        with connect_from("127.0.0.2", port) as other:
            assert other.recv(100).startswith(b"220 ")
    stopped_cleanly(server)


def connect_from(source: str, port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def test_a_bad_limit_names_its_option(tmp_path: Path) -> None:
    done = run("serve", "--connection-rate-per-client", "30/fortnight", cwd=tmp_path)
    assert done.returncode == 2
    assert "--connection-rate-per-client" in done.stderr and "30/fortnight" in done.stderr
    assert done.stderr.count("\n") == 1


# --- what an operator reads ------------------------------------------------------------------


def test_version(tmp_path: Path) -> None:
    done = run("--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"smtpmux {importlib.metadata.version('smtpmux')}\n"


@pytest.mark.parametrize("backend", BACKENDS)
def test_listeners_announced_once_and_one_line_per_transaction(
    smtpmux: Start, backend: str
) -> None:
    """Each listener is said once, IPv6 in brackets everywhere; a transaction is one line with
    its addresses, reply, size, recipient count (singular for one) and time, no tuples."""
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    server = smtpmux(
        "serve", "--backend", backend, "--listen", "[::1]:0", "--listen", "127.0.0.1:0", "--discard"
    )
    v6, v4 = server.listening(2)
    with smtplib.SMTP("::1", v6, timeout=10) as client:
        assert client.sendmail("a@example.org", ["b@example.com"], MESSAGE) == {}
    with smtplib.SMTP("127.0.0.1", v4, timeout=10) as client:
        recipients = ["b@example.com", "c@example.com"]
        assert client.sendmail("a@example.org", recipients, MESSAGE) == {}
    stderr = stopped_cleanly(server)
    assert [line for line in stderr.splitlines() if "listening" in line] == [
        f"smtpmux: listening on [::1]:{v6}",
        f"smtpmux: listening on 127.0.0.1:{v4}",
    ]
    assert re.search(r"connection from \[::1\]:\d+$", stderr, re.M)
    assert not re.search(r"(?<!\[)::1:\d", stderr)  # never ::1:PORT
    assert "('" not in stderr and "',)" not in stderr  # no tuple reprs
    transactions = [line for line in stderr.splitlines() if "message from" in line]
    size = len(MESSAGE)
    assert len(transactions) == 2
    assert re.search(
        rf"message from <a@example.org> to <b@example.com>: 250 2\.0\.0 .*; "
        rf"{size} octets, 1 recipient, \d+\.\d{{3}} s$",
        transactions[0],
    ), transactions
    assert re.search(
        rf"to <b@example.com>, <c@example.com>: 250 .*; {size} octets, 2 recipients, ",
        transactions[1],
    ), transactions


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_starttls_logs_why(
    smtpmux: Start, certificate: dict[str, Path], backend: str
) -> None:
    server = smtpmux(
        "serve",
        "--backend",
        backend,
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(certificate["cert"]),
        "--tls-key",
        str(certificate["key"]),
        "--discard",
    )
    [port] = server.listening()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        assert client.docmd("STARTTLS")[0] == 220
        client.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]  # gone, no handshake
    deadline = time.monotonic() + 20
    while "TLS handshake failed" not in server.stderr_so_far() and time.monotonic() < deadline:
        time.sleep(0.05)
    stderr = stopped_cleanly(server)
    assert re.search(
        r"TLS handshake failed: the client closed the connection during the handshake$",
        stderr,
        re.M,
    ), stderr


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Certificates and keys that are wrong in each of the ways an operator gets them wrong."""
    from cryptography.hazmat.primitives import serialization

    directory = tmp_path_factory.mktemp("tls-files")
    ca = trustme.CA()
    issued, other = ca.issue_cert("localhost"), ca.issue_cert("other.example")
    cert, key = issued.cert_chain_pems[0].bytes(), issued.private_key_pem.bytes()
    loaded = serialization.load_pem_private_key(key, password=None)
    encrypted = loaded.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    damaged = cert.replace(b"\n", b"\nAAAA", 2).replace(b"\nAAAA", b"\n", 1)
    contents = {
        "cert": cert,
        "key": key,
        "other_key": other.private_key_pem.bytes(),
        "encrypted_key": encrypted,
        "bad_key": b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
        "damaged_cert": damaged,
        "text": b"not a certificate\n",
    }
    files = {name: directory / f"{name}.pem" for name in contents}
    for name, data in contents.items():
        files[name].write_bytes(data)
    return files


# (id, options, what the one line must say)
TLS_FILE_ERRORS: list[tuple[str, list[str], str]] = [
    (
        "cert-without-key",
        ["--tls-cert", "{cert}"],
        "--tls-cert {cert} holds no private key: give it with --tls-key FILE",
    ),
    ("missing-cert", ["--tls-cert", "{missing}"], "cannot read --tls-cert {missing}: No such file"),
    ("not-pem", ["--tls-cert", "{text}", "--tls-key", "{key}"], "--tls-cert {text} holds no PEM"),
    (
        "key-not-pem",
        ["--tls-cert", "{cert}", "--tls-key", "{text}"],
        "--tls-key {text} holds no PEM private key",
    ),
    (
        "damaged-key",
        ["--tls-cert", "{cert}", "--tls-key", "{bad_key}"],
        "the private key in --tls-key {bad_key} cannot be read (damaged PEM",
    ),
    (
        "damaged-cert",
        ["--tls-cert", "{damaged_cert}", "--tls-key", "{key}"],
        "--tls-cert {damaged_cert} holds a certificate that cannot be read",
    ),
    (
        "mismatched-key",
        ["--tls-cert", "{cert}", "--tls-key", "{other_key}"],
        "the private key in --tls-key {other_key} does not belong to the certificate",
    ),
    (
        "encrypted-key",
        ["--tls-cert", "{cert}", "--tls-key", "{encrypted_key}"],
        "the private key in --tls-key {encrypted_key} is encrypted",
    ),
]


@pytest.mark.parametrize(
    ("case", "options", "expected"), TLS_FILE_ERRORS, ids=[c for c, _, _ in TLS_FILE_ERRORS]
)
def test_tls_file_errors_name_the_file_and_the_problem(
    tmp_path: Path, tls_files: dict[str, Path], case: str, options: list[str], expected: str
) -> None:
    names = {name: str(path) for name, path in tls_files.items()}
    names["missing"] = str(tmp_path / "missing.pem")
    done = run(
        "serve", "--listen", "127.0.0.1:0", *[o.format(**names) for o in options], cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert expected.format(**names) in done.stderr
    assert "PEM lib" not in done.stderr and "_ssl.c" not in done.stderr


# --- bad options -----------------------------------------------------------------------------


@contextmanager
def busy_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


#: (case, options, what the one line must name: the bad option, and its value where it has one)
BAD_OPTIONS: list[tuple[str, list[str], list[str]]] = [
    ("port-out-of-range", ["--listen", "127.0.0.1:99999"], ["--listen", "127.0.0.1:99999"]),
    ("listen-without-port", ["--listen", "localhost"], ["--listen", "localhost"]),
    ("missing-cert", ["--tls-cert", "{missing}"], ["--tls-cert", "{missing}"]),
    (
        "unreadable-key",
        ["--tls-cert", "{cert}", "--tls-key", "{bad_key}"],
        ["--tls-key", "{bad_key}"],
    ),
    (
        "key-is-a-directory",
        ["--tls-cert", "{cert}", "--tls-key", "{directory}"],
        ["--tls-key", "{directory}"],
    ),
    ("tls-listen-without-cert", ["--tls-listen", "127.0.0.1:0"], ["--tls-listen", "--tls-cert"]),
    ("unknown-backend", ["--backend", "tornado"], ["--backend", "tornado"]),
    ("two-stores", ["--maildir", "a", "--eml-dir", "b"], ["--maildir", "--eml-dir"]),
    ("store-and-discard", ["--eml-dir", "b", "--discard"], ["--eml-dir", "--discard"]),
    ("missing-auth-file", ["--auth-file", "{missing}"], ["--auth-file", "{missing}"]),
    (
        "auth-require-tls-without-cert",
        ["--auth-file", "{users}", "--auth-require-tls"],
        ["--auth-require-tls", "--tls-cert"],
    ),
    (
        "unmarked-password-in-auth-file",
        ["--auth-file", "{unmarked}"],
        ["--auth-file", "{unmarked}"],
    ),
    (
        "relay-domain-not-idna",
        ["--relay-domain", "xn--zz.example"],
        ["--relay-domain", "xn--zz.example"],
    ),
    ("bad-size", ["--max-message-size", "lots"], ["--max-message-size", "lots"]),
    ("zero-recipients", ["--max-recipients", "0"], ["--max-recipients", "'0'"]),
    ("bad-timeout", ["--timeout", "0"], ["--timeout", "'0'"]),
    ("zero-max-connections", ["--max-connections", "0"], ["--max-connections", "'0'"]),
    (
        "negative-per-client",
        ["--max-connections-per-client", "-1"],
        ["--max-connections-per-client", "'-1'"],
    ),
    (
        "bad-rate",
        ["--connection-rate-per-client", "fast"],
        ["--connection-rate-per-client", "fast"],
    ),
    (
        "bad-rate-period",
        ["--connection-rate-per-client", "30/60"],
        ["--connection-rate-per-client", "30/60"],
    ),
    ("zero-rate", ["--connection-rate-per-client", "0/m"], ["--connection-rate-per-client", "0/m"]),
    ("unknown-option", ["--frobnicate"], ["--frobnicate"]),
    ("maildir-is-a-file", ["--maildir", "{users}"], ["--maildir", "{users}"]),
]


@pytest.mark.parametrize(
    ("case", "options", "named"), BAD_OPTIONS, ids=[c for c, _, _ in BAD_OPTIONS]
)
def test_bad_options_one_line_exit_2(
    tmp_path: Path, certificate: dict[str, Path], case: str, options: list[str], named: list[str]
) -> None:
    (tmp_path / "users").write_text("alice:{PLAIN}secret\n")
    (tmp_path / "unmarked").write_text("# users\nalice:secret\n")
    names = {
        "missing": str(tmp_path / "missing.pem"),
        "cert": str(certificate["cert"]),
        "bad_key": str(certificate["bad_key"]),
        "directory": str(tmp_path),
        "users": str(tmp_path / "users"),
        "unmarked": str(tmp_path / "unmarked"),
    }
    done = run(
        "serve", "--listen", "127.0.0.1:0", *[o.format(**names) for o in options], cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("smtpmux"), done.stderr
    assert "Traceback" not in done.stderr
    for name in named:
        assert name.format(**names) in done.stderr, (name, done.stderr)


@pytest.mark.parametrize("backend", BACKENDS)
def test_port_in_use_one_line_exit_2(tmp_path: Path, backend: str) -> None:
    with busy_port() as port:
        done = run("serve", "--backend", backend, "--listen", f"127.0.0.1:{port}", cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("smtpmux"), done.stderr
        # the address, the reason, and what to do about it
        assert f"cannot listen on 127.0.0.1:{port}: address already in use (" in done.stderr
        assert "choose another port with --listen HOST:PORT" in done.stderr


@pytest.mark.parametrize(
    ("option", "workers"),
    [("--listen", "1"), ("--tls-listen", "1"), ("--metrics", "1"), ("--metrics", "2")],
)
def test_busy_port_names_the_address_and_the_option_to_change(
    tmp_path: Path, certificate: dict[str, Path], option: str, workers: str
) -> None:
    tls = ["--tls-cert", str(certificate["cert"]), "--tls-key", str(certificate["key"])]
    with busy_port() as port:
        options = [option, f"127.0.0.1:{port}"]
        if option != "--listen":
            options += ["--listen", "127.0.0.1:0"]
        done = run("serve", "--workers", workers, *options, *tls, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"smtpmux: cannot listen on 127.0.0.1:{port}: address already in use (is another server "
        f"listening there? Stop it, or choose another port with {option} HOST:PORT)\n"
    )


@pytest.mark.parametrize(
    "options",
    [["--log-format", "json", "--listen", "nowhere"], ["--listen=nowhere", "--log-format=json"]],
)
def test_bad_option_with_json_log_format_is_one_json_line(
    tmp_path: Path, options: list[str]
) -> None:
    """Even an option that does not parse is reported as JSON when JSON was asked for."""
    done = run("serve", *options, cwd=tmp_path)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    record = json.loads(line)
    assert record["level"] == "ERROR" and record["logger"] == "smtpmux.cli"
    assert record["message"] == (
        "smtpmux serve: argument --listen: expected HOST:PORT, got 'nowhere' (see --help)"
    )


def test_no_command_one_line_exit_2(tmp_path: Path) -> None:
    done = run(cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
