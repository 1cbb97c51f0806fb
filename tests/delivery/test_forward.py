"""``smtp://`` / ``smtps://`` forwarding in step (smtp_sync._forward), end to end.

Our server (every backend) routes ``*@fwd.test`` to an upstream: aiosmtpd in a thread with a
handler that answers as each test needs, Postfix's smtp-sink (CHUNKING: the content streamed as
BDAT chunks, a spooled message), or a port where nobody listens. A real client (smtplib) sends.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from aiosmtpd.smtp import SMTP as AiosmtpdServer
from aiosmtpd.smtp import AuthResult, LoginPassword
from aiosmtpd.smtp import Envelope as UpstreamEnvelope
from aiosmtpd.smtp import Session as UpstreamSession
from hypothesis import strategies as st

from smtp_core import Router, ServerConfig
from smtp_sync._forward import SMTPForward, forward_target
from smtp_sync._step import fan_out
from tests.client.test_client_interop import aiosmtpd, dumped, needs_sink, smtp_sink
from tests.clients import free_port
from tests.servers import TLS, Collect, running

SENDER = "alice@client.test"


class Upstream:
    """An aiosmtpd handler that writes down the commands it saw and answers by the address
    or subject: ``busy-*`` 450 and ``no-*`` 550 at RCPT, ``slow-*`` stalls the RCPT; a
    sender ``blocked@*`` gets 550 at MAIL; Subject ``tempfail`` gets 451 after the data (only
    ``fail_times`` times), ``spam`` 554, ``slow`` stalls."""

    def __init__(self, fail_times: int = 1) -> None:
        self.commands: list[str] = []
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.fail_times = fail_times
        self.lock = threading.Lock()

    def _note(self, command: str) -> None:
        with self.lock:
            self.commands.append(command)

    async def handle_MAIL(
        self,
        server: AiosmtpdServer,
        session: UpstreamSession,
        envelope: UpstreamEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        self._note("MAIL")
        if address.startswith("blocked@"):
            return "550 5.7.1 Sender blocked"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: AiosmtpdServer,
        session: UpstreamSession,
        envelope: UpstreamEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        self._note("RCPT " + address)
        if address.startswith("busy-"):
            return "450 4.2.1 Mailbox busy"
        if address.startswith("no-"):
            return "550 5.1.1 No such user"
        if address.startswith("bare-"):
            return "553 Not like that"  # no enhanced code: ours adds 5.0.0
        if address.startswith("slow-"):
            await asyncio.sleep(5)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(
        self, server: AiosmtpdServer, session: UpstreamSession, envelope: UpstreamEnvelope
    ) -> str:
        self._note("DATA")
        content = envelope.original_content
        assert isinstance(content, bytes) and envelope.mail_from is not None
        if b"Subject: tempfail" in content and self.fail_times:
            self.fail_times -= 1
            return "451 4.3.0 Try again later"
        if b"Subject: spam" in content:
            return "554 5.7.1 Looks like spam"
        if b"Subject: slow" in content:
            await asyncio.sleep(5)
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), content))
        return "250 2.0.0 Queued as UP1"

    async def handle_RSET(
        self, server: AiosmtpdServer, session: UpstreamSession, envelope: UpstreamEnvelope
    ) -> str:
        self._note("RSET")
        return "250 OK"

    async def handle_QUIT(
        self, server: AiosmtpdServer, session: UpstreamSession, envelope: UpstreamEnvelope
    ) -> str:
        self._note("QUIT")
        return "221 Bye"


@contextmanager
def forwarding(kind: str, target: str, **options: Any) -> Iterator[Any]:
    router: Router[Any] = Router()
    router.add("*@fwd.test", forward_target(target))
    router.add("*@local.test", Collect())
    with running(kind, router, **options) as server:
        yield server


@contextmanager
def upstream(handler: Upstream) -> Iterator[str]:
    """aiosmtpd with ``handler``; yields the target string for it (1 s per upstream step)."""
    with aiosmtpd(handler) as port:  # type: ignore[arg-type]
        yield f"smtp://127.0.0.1:{port}?tls=none&timeout=1"


def message(subject: str = "hello") -> bytes:
    return f"Message-ID: <m-{subject}@client.test>\r\nSubject: {subject}\r\n\r\nHi.\r\n".encode()


def test_accepted_message_goes_through_in_step(kind: str) -> None:
    handler = Upstream()
    with upstream(handler) as target, forwarding(kind, target) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.ehlo("client.test")
            assert client.mail(SENDER)[0] == 250
            assert handler.commands == []  # MAIL goes upstream with the first recipient
            assert client.rcpt("bob@fwd.test") == (250, b"2.1.5 OK")
            assert handler.commands == ["MAIL", "RCPT bob@fwd.test"]
            assert client.data(message()) == (250, b"2.0.0 Queued as UP1")  # the upstream's
    [(mail_from, rcpt_tos, content)] = handler.messages
    assert (mail_from, rcpt_tos) == (SENDER, ["bob@fwd.test"])
    # our Received line (with our transaction id) first, then the message as it was sent
    assert content.startswith(b"Received: from client.test")
    assert b" id " in content.split(b"\r\n\r\n")[0]
    assert content.endswith(message())


@pytest.mark.parametrize(
    ("recipient", "code", "enhanced"),
    [
        ("no-bob@fwd.test", 550, b"5.1.1"),
        ("busy-bob@fwd.test", 451, b"4.4.1"),
        ("bare-bob@fwd.test", 553, b"5.0.0 Not like that"),
    ],
    ids=["5xx-passed-through", "4xx-is-451", "5xx-without-enhanced-code"],
)
def test_recipient_refused_upstream_is_refused_at_our_rcpt(
    kind: str, recipient: str, code: int, enhanced: bytes
) -> None:
    handler = Upstream()
    with upstream(handler) as target, forwarding(kind, target) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.ehlo("client.test")
            client.mail(SENDER)
            answer = client.rcpt(recipient)
            assert answer[0] == code and answer[1].startswith(enhanced)
            assert client.rcpt("carol@fwd.test")[0] == 250
            assert client.data(message())[0] == 250
    # the refused recipient never got the message; the accepted one did
    assert [m[1] for m in handler.messages] == [["carol@fwd.test"]]


def test_sender_refused_upstream_refuses_its_recipients(kind: str) -> None:
    handler = Upstream()
    with upstream(handler) as target, forwarding(kind, target) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.ehlo("client.test")
            assert client.mail("blocked@client.test")[0] == 250  # ours: the upstream is asked later
            assert client.rcpt("bob@fwd.test") == (550, b"5.7.1 Sender blocked")
            assert client.rcpt("carol@fwd.test") == (550, b"5.7.1 Sender blocked")
            assert client.rcpt("dave@local.test")[0] == 250  # other routes go on
    assert handler.commands.count("MAIL") == 1 and "DATA" not in handler.commands


@pytest.mark.parametrize(
    ("subject", "code", "enhanced"),
    [("tempfail", 451, b"4.4.1"), ("spam", 554, b"5.7.1"), ("slow", 451, b"4.4.1")],
    ids=["451-after-data", "554-after-data", "timeout-after-data"],
)
def test_refused_content(kind: str, subject: str, code: int, enhanced: bytes) -> None:
    handler = Upstream()
    with upstream(handler) as target, forwarding(kind, target) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as client:
            client.ehlo("client.test")
            client.mail(SENDER)
            client.rcpt("bob@fwd.test")
            answer = client.data(message(subject))
            assert answer[0] == code and answer[1].startswith(enhanced), answer
    if subject != "slow":  # a stall after the data may still have been delivered: never lost
        assert handler.messages == []


def test_after_a_451_the_retry_delivers_exactly_once(kind: str) -> None:
    handler = Upstream(fail_times=1)
    with upstream(handler) as target, forwarding(kind, target) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            with pytest.raises(smtplib.SMTPDataError) as info:
                client.sendmail(SENDER, ["bob@fwd.test"], message("tempfail"))
            assert info.value.smtp_code == 451
            assert client.sendmail(SENDER, ["bob@fwd.test"], message("tempfail")) == {}
    assert [m[1] for m in handler.messages] == [["bob@fwd.test"]]


def test_rcpt_timeout_is_451_and_nothing_half_delivered(kind: str) -> None:
    handler = Upstream()
    with upstream(handler) as target, forwarding(kind, target) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as client:
            client.ehlo("client.test")
            client.mail(SENDER)
            answer = client.rcpt("slow-bob@fwd.test")
            assert answer[0] == 451 and answer[1].startswith(b"4.4.1")
            # the upstream connection is gone: the rest of the transaction is 451 too
            assert client.rcpt("carol@fwd.test")[0] == 451
            assert client.docmd("DATA")[0] == 554  # no valid recipients
    assert "DATA" not in handler.commands and handler.messages == []


def test_unreachable_upstream_is_451(kind: str) -> None:
    port = free_port()  # nobody listens there
    with forwarding(kind, f"smtp://127.0.0.1:{port}?timeout=2") as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.ehlo("client.test")
            client.mail(SENDER)
            for rcpt in ("bob@fwd.test", "carol@fwd.test"):
                answer = client.rcpt(rcpt)
                assert answer[0] == 451 and answer[1].startswith(b"4.4.1"), answer
                assert b"127.0.0.1" not in answer[1]  # the upstream's address stays in our log


@pytest.mark.parametrize("how", ["rset", "quit", "drop", "too-big", "timeout", "stop"])
def test_abandoned_transaction_is_never_delivered(kind: str, how: str) -> None:
    """However our transaction ends without a message, the upstream's is abandoned (QUIT
    mid-transaction) and never sees DATA."""
    handler = Upstream()
    config = ServerConfig(max_message_size=100, command_timeout=1 if how == "timeout" else 300)
    with upstream(handler) as target:
        with forwarding(kind, target, config=config, shutdown_timeout=0.5) as server:
            client = smtplib.SMTP("127.0.0.1", server.port, timeout=10)
            client.ehlo("client.test")
            client.mail(SENDER)
            assert client.rcpt("bob@fwd.test")[0] == 250
            if how == "rset":
                client.rset()
            elif how == "quit":
                client.quit()
            elif how == "drop":
                client.close()
            elif how == "too-big":
                assert client.data(b"x" * 300)[0] == 552
            if how != "stop":  # "stop": the server stops with our transaction still open
                wait_until(lambda: "QUIT" in handler.commands)
        wait_until(lambda: "QUIT" in handler.commands)
        client.close()
    assert handler.commands == ["MAIL", "RCPT bob@fwd.test", "QUIT"]
    assert handler.messages == []


def wait_until(predicate: Any, seconds: float = 10) -> None:
    done = threading.Event()
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return
        done.wait(0.05)
    raise AssertionError("timed out waiting")


def test_fan_out_replays_when_a_later_upstream_refuses(kind: str) -> None:
    """A recipient the second upstream refuses is refused at our RCPT; the first upstream,
    which took it, starts over without it before the data, so it never gets the message."""

    class PickyUpstream(Upstream):
        async def handle_RCPT(
            self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
        ) -> str:
            if address.startswith("picky-"):
                self._note("RCPT " + address)
                return "550 5.1.1 Not here"
            return await super().handle_RCPT(server, session, envelope, address, options)

    first, second = Upstream(), PickyUpstream()
    with upstream(first) as one, upstream(second) as two:
        router: Router[Any] = Router()
        router.add("*@fwd.test", fan_out([forward_target(one), forward_target(two)]))
        with running(kind, router) as server:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
                refused = client.sendmail(SENDER, ["bob@fwd.test", "picky-x@fwd.test"], message())
    assert refused == {"picky-x@fwd.test": (550, b"5.1.1 Not here")}
    # the first upstream accepted picky-x at RCPT, then was reset and given only bob
    assert "RSET" in first.commands
    assert [m[1] for m in first.messages] == [["bob@fwd.test"]]
    assert [m[1] for m in second.messages] == [["bob@fwd.test"]]


@pytest.mark.parametrize("failing_first", [False, True], ids=["failing-second", "failing-first"])
def test_fan_out_upstreams_disagree_after_the_data(kind: str, failing_first: bool) -> None:
    """One upstream takes the message, the other answers 451 once: our client gets 451 and
    retries; nothing is lost. The target before the failing one sees the message twice (same
    Message-ID, so it can drop the repeat); a target after it was never given the first try,
    so written first, the failing one costs no repeat at all."""
    steady, flaky = Upstream(fail_times=0), Upstream(fail_times=1)
    with upstream(steady) as one, upstream(flaky) as two:
        targets = (
            [forward_target(two), forward_target(one)]
            if failing_first
            else [
                forward_target(one),
                forward_target(two),
            ]
        )
        router: Router[Any] = Router()
        router.add("*@fwd.test", fan_out(targets))
        with running(kind, router) as server:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
                with pytest.raises(smtplib.SMTPDataError) as info:
                    client.sendmail(SENDER, ["bob@fwd.test"], message("tempfail"))
                assert (info.value.smtp_code, info.value.smtp_error[:5]) == (451, b"4.4.1")
                assert client.sendmail(SENDER, ["bob@fwd.test"], message("tempfail")) == {}
    assert len(flaky.messages) == 1
    assert len(steady.messages) == (1 if failing_first else 2)
    ids = {m[2].split(b"Message-ID: ")[1].split(b"\r\n")[0] for m in steady.messages}
    assert ids == {b"<m-tempfail@client.test>"}  # a repeat is recognisable


BIG_BODY = b"".join(b"line %06d\r\n.dot at a line start\r\n" % i for i in range(100_000))
BIG = b"Message-ID: <big@client.test>\r\nSubject: big\r\n\r\n" + BIG_BODY  # ~3.2 MB


@needs_sink
def test_smtp_sink_dsn_passes_and_a_spooled_message_streams(kind: str) -> None:
    """smtp-sink offers DSN and PIPELINING (aiosmtpd offers neither) and dumps what it got:
    RET/ENVID/NOTIFY/ORCPT pass through, and a 3 MB message (spooled to a file on our side)
    arrives intact, dot-stuffed as it streamed from the spool."""
    with smtp_sink() as sink:
        target = f"smtp://127.0.0.1:{sink.port}?tls=none"
        with forwarding(kind, target, config=ServerConfig(max_message_size=None)) as server:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
                refused = client.sendmail(
                    SENDER,
                    ["bob@fwd.test"],
                    BIG,
                    mail_options=["RET=HDRS", "ENVID=env1"],
                    rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob@fwd.test"],
                )
                assert refused == {}
        [dump] = sink.dumps()
    fields, arrived = dumped(dump)
    assert "RET=HDRS" in fields["X-Mail-Args"][0] and "ENVID=env1" in fields["X-Mail-Args"][0]
    assert "NOTIFY=SUCCESS,FAILURE" in fields["X-Rcpt-Args"][0]
    assert arrived.endswith(BIG)


def test_bdat_upstream_gets_the_spooled_message_in_chunks(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Our own server as the upstream offers CHUNKING: the content goes as BDAT chunks read
    from the spool (no dot-stuffing), and arrives byte for byte."""
    caplog.set_level(logging.DEBUG, logger="smtpmux.trace")
    box = Collect()
    inner: Router[Any] = Router()
    inner.add("*@*", box)
    big = ServerConfig(max_message_size=None)
    with running("sync", inner, config=big) as upstream_server:
        target = f"smtp://127.0.0.1:{upstream_server.port}?tls=none"
        with forwarding(kind, target, config=big) as server:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
                assert client.sendmail(SENDER, ["bob@fwd.test"], BIG) == {}
    bdat = [r.getMessage() for r in caplog.records if " C: BDAT " in r.getMessage()]
    assert len(bdat) > 2 and bdat[-1].endswith(" LAST"), bdat  # several chunks, then LAST
    [content] = box.contents
    assert content.endswith(BIG) and content.startswith(b"Received: from ")
    assert box.envelopes[0].session.extended and box.envelopes[0].rcpt_tos == ("bob@fwd.test",)


def test_wrapped_as_a_plain_handler_it_forwards_after_the_data(kind: str) -> None:
    """Wrapped by code that does not know steps (a plain function calling it), the target
    forwards the whole transaction after our data, with the same rules."""
    handler = Upstream()
    with upstream(handler) as target:
        forward = forward_target(target)
        router: Router[Any] = Router()
        router.add("*@fwd.test", lambda envelope: forward(envelope))
        with running(kind, router) as server:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
                assert client.sendmail(SENDER, ["bob@fwd.test"], message()) == {}
                with pytest.raises(smtplib.SMTPDataError) as info:
                    client.sendmail(SENDER, ["no-bob@fwd.test"], message())
                assert (info.value.smtp_code, info.value.smtp_error) == (
                    550,
                    b"5.1.1 No such user",
                )
    assert [m[1] for m in handler.messages] == [["bob@fwd.test"]]


# --- TLS and AUTH upstream ---------------------------------------------------------------


def _login(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    good = isinstance(data, LoginPassword) and (data.login, data.password) == (b"alice", b"pw")
    return AuthResult(success=good, handled=False)


@pytest.mark.parametrize(
    ("scheme", "query", "aiosmtpd_options", "expected"),
    [
        ("smtps", "", {"implicit": True}, 250),
        ("smtp", "&tls=starttls", {"starttls": True}, 250),
        ("smtp", "&user=alice&password_env=FWD_PW", {"starttls": True, "auth": True}, 250),
        ("smtp", "&user=alice&password_env=FWD_BAD", {"starttls": True, "auth": True}, 451),
        ("smtp", "&tls=starttls", {}, 451),  # STARTTLS required, not offered
        ("smtp", "&tls=starttls&nocafile", {"starttls": True}, 451),  # certificate unverified
    ],
    ids=["smtps", "starttls", "auth", "auth-refused", "starttls-missing", "untrusted-cert"],
)
def test_tls_and_auth_upstream(
    kind: str,
    tls: TLS,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    scheme: str,
    query: str,
    aiosmtpd_options: dict[str, bool],
    expected: int,
) -> None:
    monkeypatch.setenv("FWD_PW", "pw")
    monkeypatch.setenv("FWD_BAD", "wrong")
    cafile = tmp_path / "ca.pem"
    tls.ca.cert_pem.write_to_path(str(cafile))
    options: dict[str, Any] = {}
    if aiosmtpd_options.get("implicit"):
        options["ssl_context"] = tls.server
    if aiosmtpd_options.get("starttls"):
        options.update(tls_context=tls.server, require_starttls=True)
    if aiosmtpd_options.get("auth"):
        options.update(authenticator=_login, auth_require_tls=True)
    handler = Upstream()
    with aiosmtpd(handler, **options) as port:  # type: ignore[arg-type]
        if "&nocafile" in query:
            query = query.replace("&nocafile", "")
        else:
            query += f"&cafile={cafile}"
        target = f"{scheme}://127.0.0.1:{port}?timeout=5{query}"
        with forwarding(kind, target) as server:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as client:
                client.ehlo("client.test")
                client.mail(SENDER)
                answer = client.rcpt("bob@fwd.test")
                assert answer[0] == expected, answer
                if expected == 250:
                    assert client.data(message())[0] == 250
                else:
                    assert answer[1].startswith(b"4.4.1")
    assert len(handler.messages) == (expected == 250)


# --- the target string ---------------------------------------------------------------------


def test_target_strings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAM_PW", "s3cret")
    secret = tmp_path / "pw"
    secret.write_text("filepw\nignored\n")
    cafile = tmp_path / "ca.pem"
    import trustme

    trustme.CA().cert_pem.write_to_path(str(cafile))
    cases = {
        "smtp://mx.example.com": ("mx.example.com", 25, "opportunistic", None),
        "smtp://mx.example.com:2525?tls=starttls": ("mx.example.com", 2525, "starttls", None),
        "smtps://mx.example.com": ("mx.example.com", 465, "implicit", None),
        "smtp://[::1]:25?tls=none": ("::1", 25, "none", None),
        "smtp://h:587?user=bob&password_env=UPSTREAM_PW": ("h", 587, "opportunistic", "s3cret"),
        f"smtps://h?user=bob&password_file={secret}&cafile={cafile}": (
            "h",
            465,
            "implicit",
            "filepw",
        ),
    }
    for text, (host, port, tls, password) in cases.items():
        target = forward_target(text)
        assert isinstance(target, SMTPForward)
        assert (target.host, target.port, target.tls) == (host, port, tls), text
        assert (target.auth[1] if target.auth else None) == password
        assert "s3cret" not in repr(target) and "filepw" not in repr(target)
        assert forward_target(repr(target)).port == port  # the canonical form reads back


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("smtp://bob:pw@mx.example.com", "no user or password before the host"),
        ("smtp://mx.example.com?password=pw&user=bob", "no password in the target"),
        ("smtp://mx.example.com?user=bob", "password_env=VAR or password_file=PATH"),
        ("smtp://mx.example.com?user=bob&password_env=NOT_SET_ANYWHERE", "is not set"),
        ("smtp://mx.example.com?user=bob&password_file=/nonexistent", "cannot read"),
        ("smtp://mx.example.com?tls=maybe", "starttls, opportunistic or none"),
        ("smtps://mx.example.com?tls=starttls", "TLS from the start"),
        ("smtp://mx.example.com?colour=blue", "unknown option 'colour'"),
        ("smtp://mx.example.com:99999", "port must be a number"),
        ("smtp://mx.example.com/path", "HOST:PORT"),
        ("smtp://", "no host"),
        ("smtp://h?timeout=soon", "timeout= is a number"),
        ("smtp://h?tls=none&user=bob&password_env=HOME", "clear text"),
        ("smtp://h?cafile=/nonexistent/ca.pem", "cannot load cafile"),
        ("ftp://h", "not a forwarding target"),
    ],
)
def test_bad_target_strings(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        forward_target(text)
    assert "\n" not in str(info.value)
    if "pw" in text:
        assert "pw@" not in str(info.value) and "=pw" not in str(info.value)


# --- the streamed content: the same bytes as the whole-message writer ----------------------


@hypothesis.given(
    content=st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"..x", b"\xc3\xa9"])).map(
        b"".join
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_message_data_stream_equals_whole_stuffing(content: bytes, cuts: list[int]) -> None:
    from smtp_core._client import MessageData, _stuff

    stream = MessageData(lambda chunk: None)
    points = sorted({c for c in cuts if c <= len(content)})
    pieces = [content[a:b] for a, b in zip([0, *points], [*points, len(content)], strict=True)]
    out = b"".join(stream.feed(piece) for piece in pieces) + stream.end()
    assert out == _stuff(content)
