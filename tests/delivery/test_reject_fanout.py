"""``reject`` targets and fan-out routes (smtp_sync._step), parsed and served over sockets."""

from __future__ import annotations

import smtplib
from typing import Any

import pytest

from smtp_core import Envelope, Reject, Reply, Router, run_transcript
from smtp_sync._step import FanOut, StepFanOut, fan_out, reject_target
from tests.servers import Collect, running
from tests.session.test_step import Recorder

VALID = [
    ("reject", Reply(550, "No such user here", "5.1.1"), "reject"),
    ("reject:550 5.7.1 Not accepted here", Reply(550, "Not accepted here", "5.7.1"), None),
    ("reject:450 4.2.1 Try later", Reply(450, "Try later", "4.2.1"), None),
    ("reject:554", Reply(554, "Refused", "5.0.0"), "reject:554 5.0.0 Refused"),
    ("reject:553 Bad address", Reply(553, "Bad address", "5.0.0"), "reject:553 5.0.0 Bad address"),
    ("reject: 550  5.1.1  Gone ", Reply(550, "Gone", "5.1.1"), "reject:550 5.1.1 Gone"),
]


@pytest.mark.parametrize(("text", "reply", "shown"), VALID, ids=[v[0] for v in VALID])
def test_reject_target_parses(text: str, reply: Reply, shown: str | None) -> None:
    target = reject_target(text)
    assert target.reply == reply
    assert repr(target) == (shown or text)
    assert reject_target(repr(target)).reply == reply  # the canonical string reads back


INVALID = [
    ("reject:250 2.0.0 OK", "not a refusal"),
    ("reject:354", "not a refusal"),
    ("reject:421 4.3.2 Bye", "not a refusal"),
    ("reject:600", "not a refusal"),
    ("reject:550 4.1.1 Mixed", "does not fit 550"),
    ("reject:450 5.1.1 Mixed", "does not fit 450"),
    ("reject:550 5.9.1 No such subject", "does not fit"),
    ("reject:55 short", "3-digit code"),
    ("reject:", "3-digit code"),
    ("reject:abc", "3-digit code"),
    ("refuse", "not a reject target"),
    ("reject:550 5.1.1 caf\u00e9", "printable ASCII"),
]


@pytest.mark.parametrize(("text", "message"), INVALID, ids=[i[0] for i in INVALID])
def test_reject_target_refuses_bad_text(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        reject_target(text)
    assert "\n" not in str(info.value)


def _router(**routes: Any) -> Router[Any]:
    router: Router[Any] = Router()
    for domain, handler in routes.items():
        router.add(f"*@{domain}.test", handler)
    return router


@pytest.mark.parametrize(
    ("target", "code", "enhanced"),
    [("reject", 550, b"5.1.1"), ("reject:450 4.7.1 Greylisted", 450, b"4.7.1")],
)
def test_reject_live_refuses_at_rcpt(kind: str, target: str, code: int, enhanced: bytes) -> None:
    box = Collect()
    with running(kind, _router(no=reject_target(target), yes=box)) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.ehlo("client.test")
            client.mail("a@client.test")
            answer = client.rcpt("x@no.test")
            assert answer[0] == code and answer[1].startswith(enhanced)
            assert client.rcpt("y@no.test")[0] == code  # every recipient, same reply
            assert client.rcpt("z@yes.test")[0] == 250
            assert client.data(b"Subject: t\r\n\r\nhi\r\n")[0] == 250
    assert [e.rcpt_tos for e in box.envelopes] == [("z@yes.test",)]


def test_fan_out_kinds() -> None:
    a, b = Collect(), Collect()
    assert fan_out([a]) is a
    assert isinstance(fan_out([a, b]), FanOut)
    assert isinstance(fan_out([a, Recorder()]), StepFanOut)
    assert repr(fan_out([reject_target("reject"), Recorder()])) == "[reject, recorder]"
    with pytest.raises(ValueError, match="at least one target"):
        fan_out([])

    async def later(envelope: Envelope) -> None:
        pass

    with pytest.raises(ValueError, match="is async"):
        fan_out([a, later])


def _failing(reply: Reply) -> Any:
    def handler(envelope: Envelope) -> None:
        raise Reject(reply)

    return handler


HELLO = "S: 220 *\nC: EHLO c.test\nS: 250*\nC: MAIL FROM:<a@c.test>\nS: 250*\n"
MESSAGE = "C: DATA\nS: 354*\nC: Message-ID: <m1@c.test>\nC:\nC: hi\nC: .\n"


def test_fan_out_plain_all_accept() -> None:
    a, b = Collect(), Collect()
    run_transcript(
        HELLO + "C: RCPT TO:<x@f.test>\nS: 250*\n" + MESSAGE + "S: 250*\n",
        _router(f=fan_out([a, b])),
    )
    assert len(a.envelopes) == len(b.envelopes) == 1
    # every target sees the same transaction id and the Message-ID
    assert a.envelopes[0].transaction_id == b.envelopes[0].transaction_id
    assert b"Message-ID: <m1@c.test>" in b.contents[0]


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (Reply(451, "Busy", "4.3.0"), "451 4.3.0 Busy"),
        (Reply(554, "No", "5.7.1"), "554 5.7.1 No"),
    ],
)
def test_fan_out_disagreeing_after_data(failure: Reply, expected: str) -> None:
    """The first target took it, the second failed: nobody is told 250, the third target is
    never given it (it could not be taken back), and the sender's retry reaches all three."""
    first, third = Collect(), Collect()
    failing_once = {"left": 1}

    def second(envelope: Envelope) -> None:
        if failing_once["left"]:
            failing_once["left"] -= 1
            raise Reject(failure)

    router = _router(f=fan_out([first, second, third]))
    script = HELLO + "C: RCPT TO:<x@f.test>\nS: 250*\n" + MESSAGE + f"S: {expected}\n"
    run_transcript(script, router)
    assert (len(first.envelopes), len(third.envelopes)) == (1, 0)
    run_transcript(script.replace(f"S: {expected}", "S: 250*"), router)  # the retry
    assert (len(first.envelopes), len(third.envelopes)) == (2, 1)
    # the repeat carries the same Message-ID, so the first target can drop it
    assert first.contents[0] == first.contents[1]


def test_step_fan_out_refuses_a_recipient_any_member_refuses() -> None:
    one, two = Recorder(), Recorder()
    plain = Collect()
    router = _router(f=fan_out([one, plain, two]))
    run_transcript(
        HELLO
        + "C: RCPT TO:<x@f.test>\nS: 250*\n"
        + "C: RCPT TO:<no-y@f.test>\nS: 550 5.1.1 No such user\n"
        + MESSAGE
        + "S: 250*\nC: QUIT\nS: 221*\n",
        router,
    )
    assert [c[0] for c in one.calls] == ["begin", "recipient", "recipient", "deliver"]
    # the first refusal is the answer: the targets after it are not asked
    assert [c[0] for c in two.calls] == ["begin", "recipient", "deliver"]
    # each target is given only the recipients we accepted
    assert one.envelopes[0].rcpt_tos == two.envelopes[0].rcpt_tos == ("x@f.test",)
    assert [e.rcpt_tos for e in plain.envelopes] == [("x@f.test",)]


@pytest.mark.parametrize("how", ["RSET", "QUIT"])
def test_step_fan_out_aborts_every_member_once(how: str) -> None:
    one, two = Recorder(), Recorder()
    run_transcript(
        HELLO + f"C: RCPT TO:<x@f.test>\nS: 250*\nC: {how}\nS: 2*\n",
        _router(f=fan_out([one, Collect(), two])),
    )
    assert one.ends() == two.ends() == ["abort"]


def test_step_fan_out_with_reject_refuses_everything() -> None:
    one = Recorder()
    run_transcript(
        HELLO + "C: RCPT TO:<x@f.test>\nS: 550 5.7.1 Closed\nC: QUIT\nS: 221*\n",
        _router(f=fan_out([one, reject_target("reject:550 5.7.1 Closed")])),
    )
    assert [c[0] for c in one.calls] == ["begin", "abort"]  # begun, then ended at once


def test_step_fan_out_failure_after_data_aborts_the_rest() -> None:
    one, two = Recorder(), Recorder()
    router = _router(f=fan_out([one, _failing(Reply(451, "Busy", "4.3.0")), two]))
    run_transcript(
        HELLO + "C: RCPT TO:<x@f.test>\nS: 250*\n" + MESSAGE + "S: 451 4.3.0 Busy\n", router
    )
    assert one.ends() == ["deliver"]
    assert two.ends() == ["abort"]


def test_fan_out_live(kind: str) -> None:
    a, b, step = Collect(), Collect(), Recorder()
    router = _router(f=fan_out([a, step, b]))
    with running(kind, router) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            refused = client.sendmail(
                "s@c.test", ["x@f.test", "no-y@f.test"], b"Message-ID: <m2@c.test>\r\n\r\nhi\r\n"
            )
            assert refused == {"no-y@f.test": (550, b"5.1.1 No such user")}
    assert [e.rcpt_tos for e in a.envelopes] == [("x@f.test",)]
    assert [e.rcpt_tos for e in b.envelopes] == [("x@f.test",)]
    assert step.ends() == ["deliver"]
