"""smtp_anyio/_systemd.py, as systemd drives ``smtpmux serve``: ``Type=notify`` readiness over
a real AF_UNIX datagram socket, and socket activation with listening sockets passed from fd 3.

The tests play the service manager: they bind the notification socket or the listening
sockets, start the CLI as a subprocess with the variables systemd sets, and stop it.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from smtp_anyio import _systemd
from tests.cli.test_cli import BACKENDS, MESSAGE, Smtpmux, environment, maildir

# Replaces this wrapper with smtpmux, in the same process, once the sockets are at fd 3, 4, ...
# and LISTEN_PID names it: what systemd does between fork and exec.
ACTIVATE = """\
import fcntl, os, sys
passed = [int(fd) for fd in sys.argv[1].split(",")]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in passed]  # out of the way of 3, 4, ...
for fd in passed:
    os.close(fd)
for index, fd in enumerate(high):
    os.dup2(fd, 3 + index)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-m", "smtp_anyio", *sys.argv[2:]])
"""


class Activated(Smtpmux):
    """``smtpmux ARGS...`` started the way systemd starts a service: ``env`` set, ``sockets``
    passed from fd 3 on."""

    def __init__(
        self, args: list[str], cwd: Path, env: dict[str, str], sockets: list[socket.socket]
    ) -> None:
        fds = [sock.fileno() for sock in sockets]
        self.process = subprocess.Popen(
            [sys.executable, "-c", ACTIVATE, ",".join(map(str, fds)), *args]
            if sockets
            else [sys.executable, "-m", "smtp_anyio", *args],
            cwd=cwd,
            env={**environment(), **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=fds,
        )
        self._lines: list[str] = []
        self._ended = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[type[Activated]]:
    started: list[Activated] = []

    def run(
        *args: str, env: dict[str, str] | None = None, sockets: list[socket.socket] | None = None
    ) -> Activated:
        process = Activated(list(args), tmp_path, env or {}, sockets or [])
        started.append(process)
        return process

    yield run  # type: ignore[misc]
    for process in started:
        process.kill()  # with --workers, SIGTERM has already stopped the workers it forked


@pytest.fixture(params=["path", "abstract"])
def notifications(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[socket.socket, str]]:
    """The service manager's end: a datagram socket, and the NOTIFY_SOCKET that names it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        if request.param == "abstract":
            name = f"smtpmux-test-{os.getpid()}-{id(receiver)}"
            receiver.bind("\0" + name)
            address = "@" + name
        else:
            address = str(tmp_path / "notify.sock")
            receiver.bind(address)
        receiver.settimeout(30)
        yield receiver, address


def received(receiver: socket.socket) -> dict[str, str]:
    """One notification, as its KEY=VALUE lines."""
    data = receiver.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


@pytest.mark.parametrize(
    ("backend", "workers"), [*[(b, "1") for b in BACKENDS], ("asyncio", "2"), ("sync", "2")]
)
def test_notify_ready_reloading_stopping(
    start: type[Activated],
    notifications: tuple[socket.socket, str],
    backend: str,
    workers: str,
) -> None:
    receiver, address = notifications
    server = start(
        "serve",
        "--backend",
        backend,
        "--workers",
        workers,
        "--listen",
        "127.0.0.1:0",
        "--discard",
        env={"NOTIFY_SOCKET": address},
    )
    assert received(receiver) == {"READY": "1"}
    [port] = server.listening()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:  # ready means accepting
        assert client.sendmail("a@example.org", ["b@example.com"], MESSAGE) == {}

    server.process.send_signal(signal.SIGHUP)
    reloading = received(receiver)
    assert reloading["RELOADING"] == "1"
    monotonic_usec = int(reloading["MONOTONIC_USEC"])  # CLOCK_MONOTONIC, as systemd wants it
    assert abs(monotonic_usec - time.monotonic_ns() // 1000) < 60_000_000
    assert received(receiver) == {"READY": "1"}

    server.process.send_signal(signal.SIGTERM)
    assert received(receiver) == {"STOPPING": "1"}
    assert server.wait(20) == 0
    assert "Traceback" not in server.stderr
    receiver.settimeout(0.5)
    with pytest.raises(TimeoutError):  # workers never speak to systemd themselves
        receiver.recv(4096)


def test_notify_without_notify_socket_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert _systemd.notify("READY=1") is False


def test_notify_to_a_missing_socket_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert _systemd.notify("READY=1") is False
    assert "cannot notify systemd at" in caplog.text


# --- socket activation -----------------------------------------------------------------------


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    files = {name: directory / f"{name}.pem" for name in ("cert", "key", "ca")}
    issued.cert_chain_pems[0].write_to_path(str(files["cert"]))
    issued.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    return files


@pytest.mark.parametrize(("backend", "workers"), [*[(b, "1") for b in BACKENDS], ("trio", "2")])
def test_socket_activation_serves_the_inherited_sockets(
    start: type[Activated],
    tmp_path: Path,
    certificate: dict[str, Path],
    backend: str,
    workers: str,
) -> None:
    """fd 3 named ``smtp`` is plain SMTP with STARTTLS, fd 4 named ``smtps`` implicit TLS:
    smtpmux binds nothing itself, and a message goes through each."""
    with listening_socket() as plain, listening_socket() as implicit:
        server = start(
            "serve",
            "--backend",
            backend,
            "--workers",
            workers,
            "--tls-cert",
            str(certificate["cert"]),
            "--tls-key",
            str(certificate["key"]),
            env={"LISTEN_FDS": "2", "LISTEN_FDNAMES": "smtp:smtps"},
            sockets=[plain, implicit],
        )
        ports = [plain.getsockname()[1], implicit.getsockname()[1]]
        assert server.listening(2) == ports
        assert f"listening on 127.0.0.1:{ports[1]} (implicit TLS)" in server.stderr_so_far()
    # the test's copies are closed: the server serves its own
    context = ssl.create_default_context(cafile=str(certificate["ca"]))
    with smtplib.SMTP("127.0.0.1", ports[0], timeout=10) as client:
        client.starttls(context=context)
        assert client.sendmail("a@example.org", ["b@example.com"], MESSAGE) == {}
    with smtplib.SMTP_SSL("127.0.0.1", ports[1], context=context, timeout=10) as client:
        assert client.sendmail("a@example.org", ["c@example.com"], MESSAGE) == {}
    assert len(maildir(tmp_path / "mail")) == 2
    server.process.send_signal(signal.SIGTERM)
    assert server.wait(20) == 0
    assert "Traceback" not in server.stderr


def test_socket_activation_without_names_is_all_plain(
    start: type[Activated], tmp_path: Path
) -> None:
    with listening_socket() as inherited:
        server = start("serve", "--eml-dir", "eml", env={"LISTEN_FDS": "1"}, sockets=[inherited])
        [port] = server.listening()
        assert port == inherited.getsockname()[1]
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        assert client.sendmail("a@example.org", ["b@example.com"], MESSAGE) == {}
    assert len(list((tmp_path / "eml").iterdir())) == 1
    server.process.send_signal(signal.SIGTERM)
    assert server.wait(20) == 0


def test_socket_activation_for_another_process_is_ignored(start: type[Activated]) -> None:
    """LISTEN_PID names someone else (a parent that did not unset it): bind as usual."""
    server = start(
        "serve", "--listen", "127.0.0.1:0", "--discard", env={"LISTEN_FDS": "1", "LISTEN_PID": "1"}
    )
    [port] = server.listening()
    assert port != 0
    server.process.send_signal(signal.SIGTERM)
    assert server.wait(20) == 0


# (id, the inherited socket, options, what the one line on stderr says)
ACTIVATION_ERRORS = [
    (
        "listen-given-too",
        "stream",
        ["--listen", "127.0.0.1:0"],
        "drop --listen and --tls-listen",
    ),
    (
        "smtps-without-cert",
        "stream-smtps",
        [],
        "the socket named smtps (implicit TLS) needs --tls-cert",
    ),
    ("datagram", "datagram", [], "fd 3 (unknown) is not a listening stream socket"),
    ("not-listening", "bound", [], "fd 3 (unknown) is not a listening stream socket"),
    ("unix-socket", "unix", [], "fd 3 (unknown) is not a TCP socket: use ListenStream=PORT"),
]


@pytest.mark.parametrize(
    ("case", "kind", "options", "message"), ACTIVATION_ERRORS, ids=[e[0] for e in ACTIVATION_ERRORS]
)
def test_socket_activation_errors_are_one_line_exit_2(
    start: type[Activated], tmp_path: Path, case: str, kind: str, options: list[str], message: str
) -> None:
    if kind == "datagram":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
    elif kind == "bound":
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
    elif kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(tmp_path / "smtp.sock"))
        sock.listen()
    else:
        sock = listening_socket()
    env = {"LISTEN_FDS": "1"}
    if kind == "stream-smtps":
        env["LISTEN_FDNAMES"] = "smtps"
    with sock:
        server = start("serve", "--discard", *options, env=env, sockets=[sock])
        assert server.wait(20) == 2
    assert server.stderr.count("\n") == 0 and message in server.stderr, server.stderr
