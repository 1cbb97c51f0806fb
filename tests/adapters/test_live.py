"""One scenario table against every server (asyncio, trio, sync) with real clients over real
sockets: smtplib, raw pipelining, TLS by trustme certificates."""

from __future__ import annotations

import base64
import gc
import os
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from smtp_core import (
    AuthLockout,
    Credentials,
    Envelope,
    LoginMechanism,
    PlainMechanism,
    Policy,
    Router,
    ServerConfig,
    Session,
    SessionInfo,
    TranscriptError,
)
from smtp_sync import play_transcript
from tests.servers import TLS, Collect, running


class Accounts(Policy):
    def authenticate(self, credentials: Credentials, info: SessionInfo) -> str | None:
        return "alice" if (credentials.username, credentials.password) == ("alice", "pw") else None


def crash(envelope: Envelope) -> None:
    raise RuntimeError("handler bug")


@pytest.fixture
def router(box: Collect) -> Router[Any]:
    router: Router[Any] = Router()
    router.add("*@example.com", box)
    router.add("crash@example.org", crash)
    return router


MESSAGE = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"


def raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def read_replies(sock: socket.socket, count: int) -> list[bytes]:
    """Read until ``count`` final reply lines arrived; return the final lines."""
    data = b""
    finals: list[bytes] = []
    while len(finals) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        *lines, data = data.split(b"\r\n")
        finals += [line for line in lines if line[3:4] == b" "]
        data = data  # keep the partial line
    return finals


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_plain_send(kind: str, router: Router[Any], box: Collect) -> None:
    with running(kind, router) as server, smtplib.SMTP("127.0.0.1", server.port) as client:
        refused = client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
    assert refused == {}
    assert box.contents == [MESSAGE]
    envelope = box.envelopes[0]
    assert envelope.mail_from == "a@example.org" and envelope.rcpt_tos == ("b@example.com",)
    assert envelope.peer is not None and envelope.peer[0] == "127.0.0.1"


def test_starttls(kind: str, router: Router[Any], box: Collect, tls: TLS) -> None:
    with running(kind, router, ssl_context=tls.server) as server:
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            client.ehlo()
            assert client.has_extn("starttls")
            client.starttls(context=tls.client)
            client.ehlo()
            assert not client.has_extn("starttls")
            client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
    envelope = box.envelopes[0]
    assert envelope.tls is not None and envelope.tls.version in ("TLSv1.2", "TLSv1.3")
    assert envelope.protocol() == "ESMTPS"


def test_implicit_tls(kind: str, router: Router[Any], box: Collect, tls: TLS) -> None:
    with running(kind, router, ssl_context=tls.server, implicit_tls=True) as server:
        with smtplib.SMTP_SSL("127.0.0.1", server.port, context=tls.client) as client:
            client.ehlo()
            assert not client.has_extn("starttls")
            client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
    assert box.envelopes[0].tls is not None


AUTH = ServerConfig(auth_mechanisms=(PlainMechanism, LoginMechanism))


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth(kind: str, router: Router[Any], box: Collect, tls: TLS, mechanism: str) -> None:
    with running(kind, router, ssl_context=tls.server, config=AUTH, policy=Accounts()) as server:
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            client.ehlo()
            assert not client.has_extn("auth")  # not before TLS
            code, _ = client.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0pw").decode())
            assert code == 538
            client.starttls(context=tls.client)
            client.ehlo()
            client.user, client.password = "alice", "wrong"
            method = client.auth_plain if mechanism == "PLAIN" else client.auth_login
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                client.auth(mechanism, method)
            assert refused.value.smtp_code == 535
            client.user, client.password = "alice", "pw"
            code, _ = client.auth(mechanism, method)
            assert code == 235
            client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
    assert box.envelopes[0].auth_identity == "alice"


def test_password_guessing_is_limited(kind: str, router: Router[Any], box: Collect) -> None:
    """Three wrong passwords on a connection get 535 each, the next AUTH 421 4.7.0 and a close;
    five from one address lock its AUTH out, across connections, while its mail still flows."""
    config = ServerConfig(auth_mechanisms=(PlainMechanism, LoginMechanism), auth_require_tls=False)
    policy = Accounts(max_auth_failures=3, auth_lockout=AuthLockout(max_failures=5))

    def plain(password: str) -> str:
        return "PLAIN " + base64.b64encode(f"\0alice\0{password}".encode()).decode()

    with running(kind, router, config=config, policy=policy) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.ehlo()
            for guess in ("a", "b", "c"):
                assert client.docmd("AUTH", plain(guess))[0] == 535
            code, text = client.docmd("AUTH", plain("pw"))  # not even checked now
            assert (code, text[:5]) == (421, b"4.7.0")
            assert client.sock is not None and client.sock.recv(1) == b""  # closed
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.ehlo()
            client.user, client.password = "alice", "wrong"
            for _ in range(2):
                with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                    client.auth("LOGIN", client.auth_login)
                assert refused.value.smtp_code == 535
            code, text = client.docmd("AUTH", plain("pw"))  # five failures from 127.0.0.1
            assert (code, text[:5]) == (421, b"4.7.0") and b"your address" in text
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            assert client.sendmail("a@example.org", ["b@example.com"], MESSAGE) == {}
        metrics = server.metrics
        assert metrics.auth_failures == 5 and metrics.auth_successes == 0
        assert metrics.rejects[535] == 5 and metrics.rejects[421] == 2
    assert len(box.envelopes) == 1


def test_five_recipients_utf8_and_8bit(kind: str, router: Router[Any], box: Collect) -> None:
    recipients = [f"user{i}@example.com" for i in range(4)] + ["jösé@example.com"]
    body = "Subject: ünïcode\r\n\r\nGrüße, 日本\r\n".encode()
    with running(kind, router) as server, smtplib.SMTP("127.0.0.1", server.port) as client:
        client.sendmail(
            "sender@example.org", recipients, body, mail_options=["SMTPUTF8", "BODY=8BITMIME"]
        )
    assert box.envelopes[0].rcpt_tos == tuple(recipients)
    assert box.contents == [body]
    assert box.envelopes[0].mail_params.smtputf8


def test_ten_mib_with_dot_stuffing(kind: str, router: Router[Any], box: Collect) -> None:
    line = b"." + b"x" * 76 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (10 * 1024 * 1024 // len(line)) + b".\r\n..\r\n"
    with running(kind, router) as server, smtplib.SMTP("127.0.0.1", server.port) as client:
        client.sendmail("a@example.org", ["b@example.com"], body)
    assert box.contents == [body]  # spooled past 1 MiB, read back byte-exact


def test_pipelined_transactions(kind: str, router: Router[Any], box: Collect) -> None:
    one = (
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
        b"Subject: n\r\n\r\nbody\r\n.\r\n"
    )
    with running(kind, router) as server, raw(server.port) as sock:
        read_replies(sock, 1)
        sock.sendall(b"EHLO c\r\n" + one * 20 + b"QUIT\r\n")
        finals = read_replies(sock, 1 + 4 * 20 + 1)
    assert [line[:3] for line in finals] == [b"250"] + [b"250", b"250", b"354", b"250"] * 20 + [
        b"221"
    ]
    assert len(box.envelopes) == 20


def test_bdat(kind: str, router: Router[Any], box: Collect) -> None:
    with running(kind, router) as server, raw(server.port) as sock:
        read_replies(sock, 1)
        sock.sendall(
            b"EHLO c\r\nMAIL FROM:<a@example.org> BODY=BINARYMIME\r\n"
            b"RCPT TO:<b@example.com>\r\nBDAT 7\r\nhello\r\nBDAT 5 LAST\r\nworldQUIT\r\n"
        )
        finals = read_replies(sock, 6)
    assert [line[:3] for line in finals] == [b"250", b"250", b"250", b"250", b"250", b"221"]
    assert box.contents == [b"hello\r\nworld"]


def test_lmtp(kind: str, router: Router[Any], box: Collect) -> None:
    config = ServerConfig(lmtp=True)
    with running(kind, router, config=config) as server:
        client = smtplib.LMTP("127.0.0.1", server.port)
        try:
            client.lhlo = client.ehlo  # type: ignore[method-assign]
            client.ehlo_msg = "lhlo"
            client.ehlo()
            client.mail("a@example.org")
            client.rcpt("b@example.com")
            client.rcpt("crash@example.org")
            client.putcmd("data")
            assert client.getreply()[0] == 354
            client.send(MESSAGE + b".\r\n")
            assert client.getreply()[0] == 250
            assert client.getreply()[0] == 451
        finally:
            client.close()
    assert box.contents == [MESSAGE]


def test_oversize_and_limits(kind: str, router: Router[Any], box: Collect) -> None:
    config = ServerConfig(max_message_size=1000)
    with running(kind, router, config=config, policy=Policy(max_recipients=2)) as server:
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            client.ehlo()
            assert client.mail("a@example.org")[0] == 250  # no SIZE declared
            assert client.rcpt("b@example.com")[0] == 250
            assert client.rcpt("nobody@nowhere.example")[0] == 550
            assert client.rcpt("c@example.com")[0] == 250
            assert client.rcpt("d@example.com")[0] == 452
            code, _ = client.data((b"x" * 70 + b"\r\n") * 30)
            assert code == 552
            client.sendmail("a@example.org", ["b@example.com"], MESSAGE)  # still serving
    assert box.contents == [MESSAGE]


def test_relay_denied(kind: str, box: Collect) -> None:
    router: Router[Any] = Router()
    router.add("*@*", box)
    policy = Policy(relay_domains=frozenset({"example.com"}))
    with running(kind, router, policy=policy) as server:
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            client.ehlo()
            client.mail("a@example.org")
            code, text = client.rcpt("someone@gmail.example")
            assert (code, text[:5]) == (550, b"5.7.1")


# Issue 11, live: one conversation, every step's reply; the Router holds *@straße.de and
# *@bücher.example, the relay domains are written as A-labels.
IDNA_STEPS = [
    pytest.param("MAIL FROM:<a@xn--zz.example>", 553, b"5.1.3", id="mail-bad-a-label"),
    pytest.param("MAIL FROM:<a@💩.la> SMTPUTF8", 553, b"5.1.3", id="mail-emoji"),
    pytest.param("MAIL FROM:<a@bücher.example> SMTPUTF8", 250, b"2.1.0", id="mail-u-label"),
    pytest.param("RCPT TO:<b@xn--zz.example>", 553, b"5.1.3", id="rcpt-bad-a-label"),
    pytest.param("RCPT TO:<b@strasse.de>", 550, b"5.1.1", id="rcpt-ss-is-not-sharp-s"),
    pytest.param("RCPT TO:<b@XN--STRAE-OQA.DE>", 250, b"2.1.5", id="rcpt-sharp-s-a-label"),
    pytest.param("RCPT TO:<c@Bücher.example>", 250, b"2.1.5", id="rcpt-u-label-relay"),
]


def test_idna_mail_and_rcpt(kind: str, box: Collect) -> None:
    router: Router[Any] = Router()
    router.add("*@straße.de", box)
    router.add("*@bücher.example", box)
    policy = Policy(relay_domains=frozenset({"xn--strae-oqa.de", "xn--bcher-kva.example"}))
    with running(kind, router, policy=policy) as server:
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            client.command_encoding = "utf-8"
            client.ehlo()
            for step in IDNA_STEPS:
                command, code, enhanced = step.values
                reply = client.docmd(command)
                assert (reply[0], reply[1][:5]) == (code, enhanced), step.id
                assert client.docmd("NOOP")[0] == 250  # the server goes on
            assert client.data(MESSAGE)[0] == 250
    assert [e.rcpt_tos for e in box.envelopes] == [("b@XN--STRAE-OQA.DE", "c@Bücher.example")]


def test_handler_crash_keeps_serving(kind: str, router: Router[Any], box: Collect) -> None:
    with running(kind, router) as server, smtplib.SMTP("127.0.0.1", server.port) as client:
        with pytest.raises(smtplib.SMTPDataError) as failed:
            client.sendmail("a@example.org", ["crash@example.org"], MESSAGE)
        assert failed.value.smtp_code == 451
        client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
    assert box.contents == [MESSAGE]


def test_client_vanishing_mid_data(kind: str, router: Router[Any], box: Collect) -> None:
    with running(kind, router) as server:
        with raw(server.port) as sock:
            read_replies(sock, 1)
            sock.sendall(
                b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
            )
            read_replies(sock, 4)
            sock.sendall(b"Subject: half\r\n\r\nand then")
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            client.sendmail("a@example.org", ["b@example.com"], MESSAGE)
    assert box.contents == [MESSAGE]


def test_idle_timeout(kind: str, router: Router[Any]) -> None:
    config = ServerConfig(command_timeout=0.3)
    with running(kind, router, config=config) as server, raw(server.port) as sock:
        assert read_replies(sock, 1)[0][:3] == b"220"
        assert read_replies(sock, 1) == [b"421 4.4.2 Timeout, closing connection"]
        assert sock.recv(10) == b""


def test_each_connection_keeps_its_own_timeout(kind: str, router: Router[Any]) -> None:
    """Timeouts are per connection, however a server times them (asyncio: one timer for all
    of a listener's connections): a client that keeps talking is not cut when a quiet one's
    time is up, each read moves the deadline on, and a wait whose timeout is shorter than
    the one before (DATA's 3 min after a command's 5 min) ends on the shorter one."""
    config = ServerConfig(command_timeout=3.0, data_timeout=0.3)
    with (
        running(kind, router, config=config) as server,
        raw(server.port) as quiet,
        raw(server.port) as talking,
        raw(server.port) as sending,
    ):
        for sock in (quiet, talking, sending):
            assert read_replies(sock, 1)[0][:3] == b"220"
            sock.sendall(b"EHLO c.example\r\n")
            assert read_replies(sock, 1)[0][:3] == b"250"
        sending.sendall(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        assert [line[:3] for line in read_replies(sending, 3)] == [b"250", b"250", b"354"]
        assert read_replies(sending, 1)[0][:3] == b"421"  # after 0.3 s, not 3 s
        for _ in range(8):  # 4 s in all: past the 3 s the quiet one has
            time.sleep(0.5)
            talking.sendall(b"NOOP\r\n")
            assert read_replies(talking, 1)[0][:3] == b"250"
        assert read_replies(quiet, 1) == [b"421 4.4.2 Timeout, closing connection"]
        assert quiet.recv(10) == b""


def test_connection_cap(kind: str, router: Router[Any]) -> None:
    """Full, and the one connection is inside a transaction: nobody to evict, so 421 4.7.0.
    (tests/adapters/test_limits.py has the eviction of idle connections.)"""
    with running(kind, router, max_connections=1) as server, raw(server.port) as first:
        assert read_replies(first, 1)[0][:3] == b"220"
        first.sendall(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\n")
        assert [line[:3] for line in read_replies(first, 2)] == [b"250", b"250"]
        with raw(server.port) as second:
            assert read_replies(second, 1)[0][:9] == b"421 4.7.0"


def test_graceful_shutdown_sends_421_to_idle_sessions(kind: str, router: Router[Any]) -> None:
    sock: socket.socket | None = None
    with running(kind, router) as server:
        sock = raw(server.port)
        read_replies(sock, 1)
    assert read_replies(sock, 1)[0][:9] == b"421 4.3.2"
    sock.close()


def _stopping(server: Any) -> bool:
    """Has ``stop()`` begun? (a bool on smtp_anyio, an Event on smtp_sync)"""
    flag = server._stopping
    return flag.is_set() if isinstance(flag, threading.Event) else bool(flag)


def test_a_timeout_while_stopping_gets_421_4_3_2(kind: str, router: Router[Any]) -> None:
    """A transaction's wait that runs out during a graceful stop: the server is going away,
    so the client hears that (4.3.2, as every other session a stop ends), on every backend."""
    config = ServerConfig(command_timeout=1.0)
    context = running(kind, router, config=config)
    server = context.__enter__()
    stopper = threading.Thread(target=context.__exit__, args=(None, None, None))
    try:
        with raw(server.port) as sock:
            assert read_replies(sock, 1)[0][:3] == b"220"
            sock.sendall(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\n")
            assert [line[:3] for line in read_replies(sock, 2)] == [b"250", b"250"]
            stopper.start()  # the transaction keeps the stop waiting
            wait_for(lambda: _stopping(server))
            sock.sendall(b"RCPT TO:<b@example.com>\r\n")  # this wait begins after the stop
            assert read_replies(sock, 1)[0][:3] == b"250"
            assert read_replies(sock, 1) == [b"421 4.3.2 Service shutting down, try again later"]
            assert sock.recv(10) == b""
    finally:
        if stopper.ident is None:  # failed before the stop began
            context.__exit__(None, None, None)
        else:
            stopper.join()


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _open_sessions() -> set[int]:
    return {id(o) for o in gc.get_objects() if isinstance(o, Session) and not o.closed}


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    """Each test's servers are gone after it: every thread it started has ended, every file
    descriptor it opened is closed, and no Session is left open. Threads and sockets may
    take a moment to wind down after a server stops, so the check waits (up to 10 s)."""
    threads, fds, sessions = set(threading.enumerate()), _fds(), _open_sessions()
    yield
    deadline = time.monotonic() + 10
    while True:
        gc.collect()
        new_threads = [t for t in threading.enumerate() if t not in threads and not _cached(t)]
        new_fds = _fds() - fds
        new_sessions = _open_sessions() - sessions
        if not (new_threads or new_fds or new_sessions) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert new_threads == [], "threads left running"
    assert new_fds == set(), {fd: _target(fd) for fd in new_fds}
    assert new_sessions == set(), "sessions left open"


def _cached(thread: threading.Thread) -> bool:
    """Trio keeps idle worker threads in a process-wide cache for reuse (up to 10 s idle):
    trio's, not the server's. Finished threads are not leaks either."""
    return thread.name.startswith("Trio thread ") or not thread.is_alive()


def _target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


LIVE_SCRIPT = """
S: 220 *
C: EHLO client.example
S: 250 *
C: MAIL FROM:<alice@example.org>
S: 250 2.1.0 *
C: RCPT TO:<nobody@nowhere.example>
S: 550 5.1.1 *
C: RCPT TO:<bob@example.com>
S: 250 2.1.5 *
C: DATA
S: 354 *
C: Subject: transcript
C:
C: ..dot
C: .
S: 250 2.0.0 *
C: QUIT
S: 221 *
"""


def test_transcript_against_live_server(kind: str, router: Router[Any], box: Collect) -> None:
    with running(kind, router) as server:
        replies = play_transcript(LIVE_SCRIPT, "127.0.0.1", server.port)
    assert len(replies) == 8 and replies[1].startswith("250-")
    assert box.contents == [b"Subject: transcript\r\n\r\n.dot\r\n"]
    with running(kind, router) as server, pytest.raises(TranscriptError, match="line 3"):
        play_transcript("S: 220 *\nC: NOOP\nS: 550 *\n", "127.0.0.1", server.port)
