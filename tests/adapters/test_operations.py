"""Running smtpmux in production: worker processes, SIGHUP reloads, metrics, JSON logs.

Each test starts ``smtpmux serve`` as a subprocess (see tests/cli/test_cli.py) and stops it, and
every worker process it forked, whatever happens to the test.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import smtplib
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from smtp_anyio._operations import Reloader, server_context
from tests.cli.test_cli import BACKENDS, MESSAGE, Smtpmux, maildir, send
from tests.clients import free_port

WORKER = re.compile(r"worker (\d+) started \(pid (\d+)\)")


class Supervised(Smtpmux):
    """An ``smtpmux serve --workers N`` process; ``kill()`` also kills every worker it forked."""

    def workers(self) -> dict[int, int]:
        """Worker number -> pid of its latest incarnation."""
        return {int(n): int(pid) for n, pid in WORKER.findall(self.stderr_so_far())}

    def kill(self) -> None:
        pids = set(self.workers().values())
        super().kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[type[Supervised]]:
    started: list[Supervised] = []

    def run(*args: str) -> Supervised:
        process = Supervised(list(args), tmp_path)
        started.append(process)
        return process

    yield run  # type: ignore[misc]
    for process in started:
        process.kill()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
            return False
    return True


def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def authenticate(port: int, user: str, password: str) -> int:
    """AUTH PLAIN over a plain connection (the test server allows it); the reply code."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return client.docmd("AUTH", f"PLAIN {token}")[0]


# --- worker processes ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_workers_share_the_port_and_a_dead_worker_is_replaced(
    start: type[Supervised], tmp_path: Path, backend: str
) -> None:
    metrics_port = free_port()
    server = start(
        "serve",
        "--workers",
        "2",
        "--backend",
        backend,
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        f"127.0.0.1:{metrics_port}",
    )
    [port] = server.listening()
    workers = server.workers()
    assert sorted(workers) == [1, 2]
    for _ in range(16):
        send(port)
    stored = maildir(tmp_path / "mail")
    assert len(stored) == 16 and all(m.endswith(MESSAGE) for m in stored)
    wait_until(lambda: scrape(metrics_port).get("smtpmux_transactions_accepted_total") == 16)

    os.kill(workers[1], signal.SIGKILL)
    wait_until(lambda: server.workers()[1] != workers[1])
    assert "worker 1 (pid" in server.stderr_so_far() and "restarting" in server.stderr_so_far()
    assert alive(workers[2])
    for _ in range(4):
        send(port)
    assert len(maildir(tmp_path / "mail")) == 20
    # The dead worker's counts are kept: totals never go backwards.
    wait_until(lambda: scrape(metrics_port).get("smtpmux_transactions_accepted_total") == 20)

    pids = server.workers().values()
    assert server.stop(10) == 0
    assert "Traceback" not in server.stderr
    wait_until(lambda: not any(alive(pid) for pid in pids))


def test_workers_both_take_connections(start: type[Supervised], tmp_path: Path) -> None:
    server = start("serve", "--workers", "2", "--listen", "127.0.0.1:0", "--debug")
    [port] = server.listening()
    for _ in range(24):
        send(port)
    pids = set(server.workers().values())
    # The Received line's id begins with the serving process's id (hex).
    ids = re.findall(rb"with E?SMTP id ([0-9a-f]+)-", b"".join(maildir(tmp_path / "mail")))
    assert len(ids) == 24
    serving = {pid for pid in pids if any(i.startswith(f"{pid:x}".encode()) for i in ids)}
    assert serving == pids  # 24 connections over SO_REUSEPORT: one-in-8-million to miss one
    assert server.stop(10) == 0


def test_workers_each_count_their_own_connections(start: type[Supervised]) -> None:
    """--connection-rate-per-client with --workers 2: each worker admits its own 3 an hour, so
    40 attempts from one address get exactly 6 greetings (unless the kernel gave one worker
    fewer than 3 of the 40: about one chance in 10^9)."""
    metrics_port = free_port()
    server = start(
        "serve", "--workers", "2", "--listen", "127.0.0.1:0", "--discard",
        "--connection-rate-per-client", "3/1h", "--max-connections", "10",
        "--max-connections-per-client", "5", "--metrics", f"127.0.0.1:{metrics_port}",
    )  # fmt: skip
    [port] = server.listening()
    greetings = 0
    for _ in range(40):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            first = sock.recv(100)
            assert first.startswith((b"220 ", b"421 4.7.0 Too many new connections"))
            greetings += first.startswith(b"220 ")
    assert greetings == 6
    wait_until(lambda: scrape(metrics_port).get("smtpmux_connections_refused_rate_total") == 34)
    assert server.stop(10) == 0


def test_supervisor_gone_means_workers_stop(start: type[Supervised]) -> None:
    server = start("serve", "--workers", "2", "--listen", "127.0.0.1:0", "--discard")
    server.listening()
    pids = list(server.workers().values())
    server.process.kill()  # no chance to forward anything
    server.process.wait(10)
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout=15)


def test_bad_workers_value_is_one_line_exit_2(start: type[Supervised]) -> None:
    server = start("serve", "--workers", "0")
    assert server.wait() == 2
    assert server.stderr.count("\n") == 0 and "--workers" in server.stderr


# --- SIGHUP ----------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sighup_reloads_auth_file_and_certificate_without_dropping_sessions(
    start: type[Supervised], tmp_path: Path, workers: str
) -> None:
    ca = trustme.CA()
    cert, key, auth = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "users"

    def issue() -> bytes:
        issued = ca.issue_cert("127.0.0.1")
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        return issued.cert_chain_pems[0].bytes()

    first = issue()
    auth.write_text("alice:{PLAIN}first\n")
    server = start(
        "serve",
        "--workers",
        workers,
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--auth-file",
        str(auth),
        "--discard",
    )
    [port] = server.listening()
    context = ssl.create_default_context(cafile=None)
    ca.configure_trust(context)

    def served_certificate() -> bytes:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.starttls(context=context)
            der = client.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
            assert der is not None
            return ssl.DER_cert_to_PEM_cert(der).encode()

    def login(user: str, password: str) -> int:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.starttls(context=context)
            client.ehlo()
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            return client.docmd("AUTH", f"PLAIN {token}")[0]

    assert _normalise(served_certificate()) == _normalise(first)
    assert login("alice", "first") == 235
    open_session = smtplib.SMTP("127.0.0.1", port, timeout=10)
    open_session.ehlo()

    second = issue()
    auth.write_text("alice:{PLAIN}second\nbob:{PLAIN}bobs\n")
    server.process.send_signal(signal.SIGHUP)
    wait_until(lambda: server.stderr_so_far().count("reloaded 2 users") >= int(workers))

    assert _normalise(served_certificate()) == _normalise(second)
    assert login("alice", "first") == 535
    assert login("alice", "second") == 235
    assert login("bob", "bobs") == 235
    assert open_session.noop()[0] == 250  # the session opened before the reload goes on
    open_session.quit()

    auth.write_text("alice:{PLAIN}third\nbob:bobs\n")  # a line it cannot verify: old users stay
    server.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "kept the old users" in server.stderr_so_far())
    assert f"{auth}:2: an unmarked password" in server.stderr_so_far()
    assert login("bob", "bobs") == 235
    assert login("alice", "third") == 535
    assert server.stop(10) == 0


class Issuer:
    """Writes certificates and keys from one trustme CA to cert.pem and key.pem."""

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        self.cert, self.key = directory / "cert.pem", directory / "key.pem"
        self.client = ssl.create_default_context()
        self.ca.configure_trust(self.client)

    def issue(self, key_of_another: bool = False) -> bytes:
        """Write a new certificate (with its key, or with the key of a different one); return
        the certificate's DER."""
        issued = self.ca.issue_cert("127.0.0.1")
        issued.cert_chain_pems[0].write_to_path(str(self.cert))
        key = self.ca.issue_cert("127.0.0.1") if key_of_another else issued
        key.private_key_pem.write_to_path(str(self.key))
        return ssl.PEM_cert_to_DER_cert(issued.cert_chain_pems[0].bytes().decode())


def handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> bytes:
    """A TLS handshake in memory; the DER of the certificate the server presented."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_context.wrap_bio(to_server, to_client, server_side=True)
    client = client_context.wrap_bio(to_client, to_server, server_hostname="127.0.0.1")
    done: set[object] = set()
    for _ in range(20):
        for side in (client, server):
            if side not in done:
                with contextlib.suppress(ssl.SSLWantReadError):
                    side.do_handshake()
                    done.add(side)
        if len(done) == 2:
            der = client.getpeercert(binary_form=True)
            assert der is not None
            return der
    raise AssertionError("the handshake did not finish")


def test_reloader_keeps_serving_the_old_certificate_when_the_new_key_does_not_match(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    issuer = Issuer(tmp_path)
    first = issuer.issue()
    context = server_context(str(issuer.cert), str(issuer.key))
    reloader = Reloader(context, str(issuer.cert), str(issuer.key), None, None)
    assert handshake(context, issuer.client) == first

    issuer.issue(key_of_another=True)
    reloader.reload()
    assert "kept the old TLS certificate" in caplog.text
    assert handshake(context, issuer.client) == first  # not a broken context

    second = issuer.issue()
    reloader.reload()
    assert handshake(context, issuer.client) == second
    (tmp_path / "key.pem").write_text("not a key")
    reloader.reload()
    assert handshake(context, issuer.client) == second


@pytest.mark.parametrize("backend", BACKENDS)
def test_sighup_with_a_mismatched_key_keeps_tls_working(
    start: type[Supervised], tmp_path: Path, backend: str
) -> None:
    """The defect: a reload with a key that does not match the certificate broke every later
    handshake, while the log said the old certificate was kept."""
    issuer = Issuer(tmp_path)
    first = issuer.issue()
    server = start(
        "serve",
        "--backend",
        backend,
        "--listen",
        "127.0.0.1:0",
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(issuer.cert),
        "--tls-key",
        str(issuer.key),
        "--discard",
    )
    port, tls_port = server.listening(2)

    def deliver() -> list[bytes]:
        """Send a message over STARTTLS and over implicit TLS; the certificates presented."""
        presented = []
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.starttls(context=issuer.client)
            presented.append(client.sock.getpeercert(binary_form=True))  # type: ignore[union-attr]
            assert client.sendmail("a@example.org", ["b@example.com"], MESSAGE) == {}
        with smtplib.SMTP_SSL("127.0.0.1", tls_port, timeout=10, context=issuer.client) as client:
            presented.append(client.sock.getpeercert(binary_form=True))  # type: ignore[union-attr]
            assert client.sendmail("a@example.org", ["b@example.com"], MESSAGE) == {}
        return presented  # type: ignore[return-value]

    assert deliver() == [first, first]
    issuer.issue(key_of_another=True)
    server.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "kept the old TLS certificate" in server.stderr_so_far())
    assert "key values mismatch" in server.stderr_so_far().lower()
    assert deliver() == [first, first]

    second = issuer.issue()
    server.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "reloaded the TLS certificate" in server.stderr_so_far())
    assert deliver() == [second, second]
    assert server.stop(10) == 0


def _normalise(pem: bytes) -> bytes:
    return b"".join(pem.split())


# --- metrics and logs ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_metrics_endpoint_counts_what_happened(
    start: type[Supervised], tmp_path: Path, backend: str
) -> None:
    metrics_port = free_port()
    server = start(
        "serve",
        "--backend",
        backend,
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        f"127.0.0.1:{metrics_port}",
        "--max-recipients",
        "1",
        "--discard",
    )
    [port] = server.listening()
    send(port)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        client.mail("a@example.org")
        assert client.rcpt("b@example.com")[0] == 250
        assert client.rcpt("c@example.com")[0] == 452
        client.rset()
    values = scrape(metrics_port)
    assert values["smtpmux_transactions_accepted_total"] == 1
    assert values['smtpmux_rejects_total{code="452"}'] == 1
    assert values["smtpmux_connections_total"] == 2
    assert values["smtpmux_message_bytes_total"] == len(MESSAGE)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/", timeout=10)
    assert refused.value.code == 404
    assert server.stop() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_json_logs_carry_the_session_fields_and_no_secrets(
    start: type[Supervised], tmp_path: Path, backend: str
) -> None:
    auth = tmp_path / "users"
    auth.write_text("alice:{PLAIN}s3cret-password\n")
    server = start(
        "serve",
        "--backend",
        backend,
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--auth-file",
        str(auth),
    )
    [port] = server.listening()
    assert authenticate(port, "alice", "s3cret-password") == 235
    send(port)
    assert server.stop() == 0
    records = [json.loads(line) for line in server.stderr.splitlines() if line.startswith("{")]
    delivered = [r for r in records if r["message"].startswith("message from <a@example.org>")]
    assert len(delivered) == 1
    assert delivered[0]["size"] == len(MESSAGE) and delivered[0]["reply_code"] == 250
    assert re.fullmatch(r"[0-9a-f]+", delivered[0]["session_id"])
    assert delivered[0]["peer"][0] == "127.0.0.1"
    authenticated = [r for r in records if r.get("auth_identity") == "alice"]
    assert authenticated, records
    assert "s3cret" not in server.stderr
    assert base64.b64encode(b"\0alice\0s3cret-password").decode() not in server.stderr


def test_quiet_logs_no_line_per_message(start: type[Supervised], tmp_path: Path) -> None:
    server = start("serve", "--listen", "127.0.0.1:0", "--quiet", "--discard")
    [port] = server.listening()
    send(port)
    assert server.stop() == 0
    assert "message from" not in server.stderr and "connection from" not in server.stderr
    assert "smtpmux: listening on" in server.stderr


def test_json_mode_writes_only_json_on_stderr(start: type[Supervised], tmp_path: Path) -> None:
    """Workers starting, dying and restarting, listeners, --debug's trace and message dump,
    stopping, and a start that fails: with --log-format json, each stderr line is an object."""
    server = start(
        "serve",
        "--workers",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--debug",
    )
    [port] = server.listening()
    workers = server.workers()
    send(port)
    os.kill(workers[1], signal.SIGKILL)
    wait_until(lambda: server.workers()[1] != workers[1])
    assert server.stop(10) == 0
    records = [json.loads(line) for line in server.stderr.splitlines()]  # each line is JSON
    messages = [r["message"] for r in records]
    assert [m for m in messages if m.startswith("listening on")] == [
        f"listening on 127.0.0.1:{port}"
    ]
    assert f"worker 1 (pid {workers[1]}) was killed by signal 9 (SIGKILL); restarting" in messages
    assert messages.count("stopping") == 1  # the supervisor's, not one per worker
    assert any("Hello from the CLI." in m for m in messages)  # --debug's message dump
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = start(
            "serve", "--listen", f"127.0.0.1:{taken.getsockname()[1]}", "--log-format", "json"
        )
        assert busy.wait() == 2
    [refusal] = [json.loads(line) for line in busy.stderr.splitlines()]
    assert refusal["level"] == "ERROR" and "address already in use" in refusal["message"]
