"""Step handlers: asked at RCPT time, delivered or aborted exactly once, on every path.

A step handler (any object with ``begin``) takes part in the transaction as it happens; every
path that ends a transaction must end each begun step transaction exactly once: ``deliver``
after an accepted message, ``abort`` otherwise. Checked in memory (run_transcript) and over
real sockets on every backend.
"""

from __future__ import annotations

import smtplib
import socket
import threading
import time
from typing import Any

import pytest

import smtp_anyio
from smtp_core import (
    Envelope,
    RcptParams,
    Reject,
    Reply,
    Router,
    ServerConfig,
    StepStart,
    run_transcript,
)
from tests.servers import Collect, running


class Recorder:
    """A step handler that writes down every call; refuses recipients named ``no-*`` (550)
    and ``later-*`` (450), and answers the content with ``deliver_reply``."""

    def __init__(self, deliver_reply: Reply | list[Reply] | None = None) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.starts: list[StepStart] = []
        self.envelopes: list[Envelope] = []
        self.deliver_reply = deliver_reply
        self.lock = threading.Lock()
        self.ended = threading.Event()

    def __repr__(self) -> str:
        return "recorder"

    def begin(self, start: StepStart) -> Recorder.Transaction:
        with self.lock:
            self.calls.append(("begin", start.mail_from))
            self.starts.append(start)
        return Recorder.Transaction(self)

    class Transaction:
        def __init__(self, owner: Recorder) -> None:
            self.owner = owner

        def _note(self, *call: str) -> None:
            with self.owner.lock:
                self.owner.calls.append(call)

        def recipient(self, address: str, params: RcptParams) -> Reply | None:
            self._note("recipient", address)
            if address.startswith("no-"):
                return Reply(550, "No such user", "5.1.1")
            if address.startswith("later-"):
                return Reply(450, "Mailbox busy", "4.2.1")
            return None

        def deliver(self, envelope: Envelope) -> Reply | list[Reply] | None:
            self._note("deliver", *envelope.rcpt_tos)
            with self.owner.lock:
                self.owner.envelopes.append(envelope)
            self.owner.ended.set()
            return self.owner.deliver_reply

        def abort(self) -> None:
            self._note("abort")
            self.owner.ended.set()

    def ends(self) -> list[str]:
        with self.lock:
            return [c[0] for c in self.calls if c[0] in ("deliver", "abort")]


def router_for(step: Any, plain: Any = None) -> Router[Any]:
    router: Router[Any] = Router()
    router.add("*@step.test", step)
    router.add("*@plain.test", plain or Collect())
    return router


HELLO = """\
S: 220 *
C: EHLO client.test
S: 250*
C: MAIL FROM:<a@client.test>
S: 250*
"""

# (id, the rest of the script, the calls the step handler sees)
TRANSCRIPTS = [
    (
        "delivered",
        "C: RCPT TO:<x@step.test>\nS: 250*\nC: DATA\nS: 354*\nC: hi\nC: .\nS: 250*\n"
        "C: QUIT\nS: 221*\n",
        ["begin", "recipient", "deliver"],
    ),
    (
        "rset",
        "C: RCPT TO:<x@step.test>\nS: 250*\nC: RSET\nS: 250*\nC: QUIT\nS: 221*\n",
        ["begin", "recipient", "abort"],
    ),
    (
        "new-ehlo",
        "C: RCPT TO:<x@step.test>\nS: 250*\nC: EHLO again.test\nS: 250*\nC: QUIT\nS: 221*\n",
        ["begin", "recipient", "abort"],
    ),
    (
        "quit-mid-transaction",
        "C: RCPT TO:<x@step.test>\nS: 250*\nC: QUIT\nS: 221*\n",
        ["begin", "recipient", "abort"],
    ),
    (
        "connection-dropped",
        "C: RCPT TO:<x@step.test>\nS: 250*\n",
        ["begin", "recipient", "abort"],
    ),
    (
        "recipient-refused-then-data-554",
        "C: RCPT TO:<no-x@step.test>\nS: 550 5.1.1 *\nC: DATA\nS: 554*\nC: QUIT\nS: 221*\n",
        ["begin", "recipient", "abort"],
    ),
    (
        "too-big",
        "C: RCPT TO:<x@step.test>\nS: 250*\nC: DATA\nS: 354*\nC: " + "y" * 200 + "\nC: .\n"
        "S: 552 5.3.4 *\nC: QUIT\nS: 221*\n",
        ["begin", "recipient", "abort"],
    ),
    (
        "bdat-too-big",
        "C: RCPT TO:<x@step.test>\nS: 250*\nC: BDAT 300\nC: " + "y" * 298 + "\nS: 552*\n"
        "C: QUIT\nS: 221*\n",
        ["begin", "recipient", "abort"],
    ),
    (
        "bdat-delivered",
        "C: RCPT TO:<x@step.test>\nS: 250*\nC: BDAT 4\nC: hi\nS: 250*\nC: BDAT 4 LAST\nC: ho\n"
        "S: 250*\nC: QUIT\nS: 221*\n",
        ["begin", "recipient", "deliver"],
    ),
    (
        "bdat-chunk-then-rset",
        "C: RCPT TO:<x@step.test>\nS: 250*\nC: BDAT 4\nC: hi\nS: 250*\nC: RSET\nS: 250*\n"
        "C: QUIT\nS: 221*\n",
        ["begin", "recipient", "abort"],
    ),
    (
        "delivered-then-rset-and-ehlo",
        "C: RCPT TO:<x@step.test>\nS: 250*\nC: DATA\nS: 354*\nC: hi\nC: .\nS: 250*\n"
        "C: RSET\nS: 250*\nC: EHLO again.test\nS: 250*\nC: QUIT\nS: 221*\n",
        ["begin", "recipient", "deliver"],
    ),
    (
        "two-transactions",
        "C: RCPT TO:<x@step.test>\nS: 250*\nC: RSET\nS: 250*\nC: MAIL FROM:<b@client.test>\n"
        "S: 250*\nC: RCPT TO:<y@step.test>\nS: 250*\nC: DATA\nS: 354*\nC: hi\nC: .\nS: 250*\n",
        ["begin", "recipient", "abort", "begin", "recipient", "deliver"],
    ),
]


@pytest.mark.parametrize(
    ("script", "expected"), [t[1:] for t in TRANSCRIPTS], ids=[t[0] for t in TRANSCRIPTS]
)
def test_every_end_of_a_transaction_ends_the_step_once(script: str, expected: list[str]) -> None:
    step = Recorder()
    run_transcript(HELLO + script, router_for(step), config=ServerConfig(max_message_size=100))
    assert [c[0] for c in step.calls] == expected


def test_recipients_are_asked_in_step_and_refusals_passed_on() -> None:
    step, plain = Recorder(), Collect()
    result = run_transcript(
        HELLO
        + "C: RCPT TO:<x@step.test>\nS: 250*\n"
        + "C: RCPT TO:<no-y@step.test>\nS: 550 5.1.1 No such user\n"
        + "C: RCPT TO:<later-z@step.test>\nS: 450 4.2.1 Mailbox busy\n"
        + "C: RCPT TO:<p@plain.test>\nS: 250*\n"
        + "C: DATA\nS: 354*\nC: hi\nC: .\nS: 250*\n",
        router_for(step, plain),
    )
    assert step.calls == [
        ("begin", "a@client.test"),
        ("recipient", "x@step.test"),
        ("recipient", "no-y@step.test"),
        ("recipient", "later-z@step.test"),
        ("deliver", "x@step.test"),
    ]
    assert [e.rcpt_tos for e in result.deliveries] == [("x@step.test",), ("p@plain.test",)]
    # the start names the transaction id the envelope carries
    assert step.starts[0].transaction_id == step.envelopes[0].transaction_id


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (None, "250 2.0.0 *"),
        (Reply(250, "Ok: queued as ABC", "2.0.0"), "250 2.0.0 Ok: queued as ABC"),
        (Reply(451, "Upstream trouble", "4.4.1"), "451 4.4.1 Upstream trouble"),
        (Reply(421, "Upstream closing", "4.4.2"), "451 4.4.2 Upstream closing"),
        (Reply(554, "Spam", "5.7.1"), "554 5.7.1 Spam"),
        (Reply(354, "Odd"), "451 4.3.0 *"),
        ([Reply(250, "one", "2.0.0")], "250 2.0.0 one"),
        ([Reply(250), Reply(250)], "451 4.3.0 *"),  # two replies for one recipient
    ],
    ids=["none", "250", "451", "421-is-451", "554", "354-is-failure", "list", "list-too-long"],
)
def test_deliver_answers(answer: Any, expected: str) -> None:
    step = Recorder(answer)
    run_transcript(
        HELLO
        + "C: RCPT TO:<x@step.test>\nS: 250*\nC: DATA\nS: 354*\nC: hi\nC: .\nS: "
        + expected
        + "\nC: NOOP\nS: 250*\n",
        router_for(step),
    )
    assert step.ends() == ["deliver"]


def test_lmtp_session_passes_per_recipient_answers_one_by_one() -> None:
    """Our LMTP mode: a step target's reply per recipient (an LMTP peer's) is ours, in order;
    the refused recipient is not reported delivered."""
    step = Recorder([Reply(250, "x ok", "2.0.0"), Reply(552, "y over quota", "5.2.2")])
    run_transcript(
        "S: 220 *\nC: LHLO c.test\nS: 250*\nC: MAIL FROM:<a@c.test>\nS: 250*\n"
        "C: RCPT TO:<x@step.test>\nS: 250*\nC: RCPT TO:<y@step.test>\nS: 250*\n"
        "C: DATA\nS: 354*\nC: hi\nC: .\nS: 250 2.0.0 x ok\nS: 552 5.2.2 y over quota\n",
        router_for(step),
        config=ServerConfig(lmtp=True),
    )
    assert step.ends() == ["deliver"]


def test_smtp_session_with_per_recipient_answers_is_not_250() -> None:
    step = Recorder([Reply(250, "x ok", "2.0.0"), Reply(452, "y busy", "4.2.2")])
    run_transcript(
        HELLO + "C: RCPT TO:<x@step.test>\nS: 250*\nC: RCPT TO:<y@step.test>\nS: 250*\n"
        "C: DATA\nS: 354*\nC: hi\nC: .\nS: 452 4.2.2 y busy\n",
        router_for(step),
    )


def test_begin_refused_is_asked_once_per_transaction() -> None:
    calls: list[str] = []

    class Down:
        def begin(self, start: StepStart) -> Any:
            calls.append("begin")
            raise Reject(Reply(451, "Upstream unreachable", "4.4.1"))

    run_transcript(
        HELLO
        + "C: RCPT TO:<x@step.test>\nS: 451 4.4.1 Upstream unreachable\n"
        + "C: RCPT TO:<y@step.test>\nS: 451 4.4.1 Upstream unreachable\n"
        + "C: RSET\nS: 250*\nC: MAIL FROM:<a@client.test>\nS: 250*\n"
        + "C: RCPT TO:<x@step.test>\nS: 451 4.4.1 Upstream unreachable\n",
        router_for(Down()),
    )
    assert calls == ["begin", "begin"]


@pytest.mark.parametrize("begun", [RuntimeError("bug"), None, Reply(250, "not a transaction")])
def test_a_failing_step_is_a_451_and_the_server_goes_on(begun: Any) -> None:
    class Broken:
        def begin(self, start: StepStart) -> Any:
            if isinstance(begun, Exception):
                raise begun
            return begun

    run_transcript(
        HELLO + "C: RCPT TO:<x@step.test>\nS: 451 4.3.0 *\nC: NOOP\nS: 250*\n",
        router_for(Broken()),
    )


# --- over real sockets, every backend --------------------------------------------------------


def _wait(step: Recorder) -> list[str]:
    assert step.ended.wait(10), "the step transaction was never ended"
    time.sleep(0.05)  # a second end, if there were one, would come right after the first
    return step.ends()


def _open(client: smtplib.SMTP) -> None:
    client.ehlo("client.test")
    client.mail("a@client.test")
    code, _ = client.rcpt("x@step.test")
    assert code == 250


def test_live_delivered_once(kind: str) -> None:
    step = Recorder()
    with running(kind, router_for(step)) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            refused = client.sendmail(
                "a@client.test", ["x@step.test"], b"Subject: hi\r\n\r\nhi\r\n"
            )
            assert refused == {}
            assert _wait(step) == ["deliver"]
            with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
                client.sendmail("a@client.test", ["no-x@step.test"], b"hi\r\n")
            assert info.value.recipients["no-x@step.test"][0] == 550
    assert step.ends() == ["deliver", "abort"]


@pytest.mark.parametrize("how", ["rset", "quit", "drop", "too-big"])
def test_live_aborted_once(kind: str, how: str) -> None:
    step = Recorder()
    with running(kind, router_for(step), config=ServerConfig(max_message_size=100)) as server:
        client = smtplib.SMTP("127.0.0.1", server.port, timeout=10)
        _open(client)
        if how == "rset":
            client.rset()
        elif how == "quit":
            client.quit()
        elif how == "drop":
            client.close()  # the socket and smtplib's file on it: the peer sees EOF
        else:
            code, _ = client.data(b"y" * 300)
            assert code == 552
        assert _wait(step) == ["abort"]
        client.close()
    assert step.ends() == ["abort"]


def test_live_timeout_aborts_once(kind: str) -> None:
    step = Recorder()
    with running(kind, router_for(step), config=ServerConfig(command_timeout=0.3)) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"EHLO c\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<x@step.test>\r\n")
            assert _wait(step) == ["abort"]
            seen = b""
            while b"421" not in seen:
                chunk = sock.recv(4096)
                assert chunk, f"closed without a 421: {seen!r}"
                seen += chunk
            assert b"421 4.4.2" in seen
    assert step.ends() == ["abort"]


def test_live_server_stop_aborts_open_transaction(kind: str) -> None:
    step = Recorder()
    with running(kind, router_for(step), shutdown_timeout=0.5) as server:
        client = smtplib.SMTP("127.0.0.1", server.port, timeout=10)
        _open(client)
    # the stop waited for the transaction, then closed it (421): the step is aborted, once
    assert _wait(step) == ["abort"]
    client.close()


def test_live_server_stop_returns_once_the_transaction_it_cut_off_is_aborted(kind: str) -> None:
    """A client stuck in DATA past the stop's deadline: the abort (QUIT to an upstream or
    Dovecot) is done by the time the stop returns, since the process may exit right after
    (the sync server returned first, and ``smtpmux serve`` exited without the QUIT)."""
    step = Recorder()
    with running(kind, router_for(step), shutdown_timeout=0.3) as server:
        client = smtplib.SMTP("127.0.0.1", server.port, timeout=10)
        _open(client)
        assert client.docmd("DATA")[0] == 354
    assert step.ends() == ["abort"]  # no waiting: already done
    client.close()


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
async def test_async_step_methods_are_awaited() -> None:

    calls: list[str] = []

    class AsyncStep:
        async def begin(self, start: StepStart) -> AsyncStep:
            calls.append("begin")
            return self

        async def recipient(self, address: str, params: RcptParams) -> Reply | None:
            calls.append("recipient")
            return None if address.startswith("x") else Reply(550, "No", "5.1.1")

        async def deliver(self, envelope: Envelope) -> None:
            calls.append("deliver")

        async def abort(self) -> None:
            calls.append("abort")

    async with smtp_anyio.Server(router_for(AsyncStep()), port=0) as server:
        async with smtp_anyio.connect("127.0.0.1", server.port, tls="none") as client:
            await client.send_message(
                b"Subject: x\r\n\r\nhi\r\n", mail_from="a@c.test", rcpt_tos=["x@step.test"]
            )
    assert calls == ["begin", "recipient", "deliver"]


def test_sync_server_refuses_an_async_step_handler_at_start() -> None:
    import smtp_sync

    class AsyncBegin:
        async def begin(self, start: StepStart) -> Any:
            return None

    with pytest.raises(TypeError, match="async"):
        smtp_sync.Server(router_for(AsyncBegin()), port=0)
