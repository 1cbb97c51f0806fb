"""The protocol trace behind ``--debug``: every line shown, SASL secrets never, content by size.

A tiny in-memory adapter drives a real Session; the Session writes the trace itself."""

from __future__ import annotations

import base64
import logging
import re
import smtplib
from collections import deque
from datetime import UTC, datetime
from typing import Any

import pytest

from smtp_core import LoginMechanism, PlainMechanism, Router, ServerConfig, Session
from smtp_core.adapter import Action, Authenticate, Call
from tests.clients import client
from tests.servers import Collect, running

SECRET = "hunter2-secret"
CONFIG = ServerConfig(auth_mechanisms=(PlainMechanism, LoginMechanism), auth_require_tls=False)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def converse(chunks: list[bytes]) -> None:
    """Play ``chunks`` into a Session, answering its calls, with the trace watching both ways."""
    router: Router[Any] = Router()
    router.add("*@*", lambda envelope: None)
    session = Session(
        router, clock=lambda: datetime(2026, 1, 1, tzinfo=UTC), session_id="t1", config=CONFIG
    )

    def carry_out(actions: list[Action]) -> None:
        pending = deque(actions)
        while pending:
            action = pending.popleft()
            if isinstance(action, Authenticate):
                pending.extend(session.resolve(action, "alice"))
            elif isinstance(action, Call):
                result = action.function(*action.args)
                pending.extend(session.resolve(action, result))

    carry_out(session.start())
    for chunk in chunks:
        carry_out(session.receive_data(chunk))


def shown(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "smtpmux.trace"]


@pytest.mark.parametrize("verb", ["AUTH PLAIN", "auth plain", "Auth Plain", "aUtH pLaIn"])
def test_plain_initial_response_is_redacted(caplog: pytest.LogCaptureFixture, verb: str) -> None:
    caplog.set_level(logging.DEBUG, logger="smtpmux.trace")
    response = b64(chr(0) + "alice" + chr(0) + SECRET)  # what crosses the wire
    converse([b"EHLO c\r\n", f"{verb} {response}\r\n".encode(), b"MAIL FROM:<a@example.org>\r\n"])
    text = "\n".join(shown(caplog))
    assert f"t1 C: {verb} <redacted>" in text
    assert "t1 S: 235 2.7.0 Authentication successful" in text
    assert "t1 C: MAIL FROM:<a@example.org>" in text  # after the 235, lines show again
    assert response not in text and response[:12] not in text


@pytest.mark.parametrize("verb", ["AUTH LOGIN", "auth login", "Auth Login"])
def test_login_responses_are_redacted_even_when_sent_too_early(
    caplog: pytest.LogCaptureFixture, verb: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="smtpmux.trace")
    converse([b"EHLO c\r\n", f"{verb}\r\n{b64('alice')}\r\n{b64(SECRET)}\r\n".encode()])
    text = shown(caplog)
    assert f"t1 C: {verb}" in text
    assert text.count("t1 C: <redacted>") == 2
    assert b64(SECRET) not in "\n".join(text) and b64("alice") not in "\n".join(text)


def test_content_is_summarised_and_lines_split_across_reads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="smtpmux.trace")
    converse(
        [
            b"EHLO c\r\nMAIL FROM:<a@exa",
            b"mple.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
            b"Subject: private\r\n\r\nbody\r\n.\r\n",
        ]
    )
    text = shown(caplog)
    assert "t1 C: MAIL FROM:<a@example.org>" in text
    assert "t1 C: <29 octets of message content>" in text
    assert not any("private" in line for line in text)
    assert "t1 S: 250 2.0.0 OK: message accepted" in text


def test_nothing_is_formatted_when_debug_is_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smtpmux.trace")
    converse([b"EHLO c\r\nQUIT\r\n"])
    assert shown(caplog) == []


def test_debug_off_costs_no_level_lookup_per_round(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The off path is one attribute read: the trace asks the logger once per connection,
    not once per read and per write (issue 15: the cost of default logging)."""
    caplog.set_level(logging.INFO, logger="smtpmux.trace")
    trace_log = logging.getLogger("smtpmux.trace")
    asked: list[int] = []
    real = trace_log.isEnabledFor

    def counting(level: int) -> bool:
        asked.append(level)
        return real(level)

    monkeypatch.setattr(trace_log, "isEnabledFor", counting)
    rounds = [b"EHLO c\r\n", b"NOOP\r\n", b"NOOP\r\n", b"RSET\r\n", b"QUIT\r\n"]
    converse(rounds)
    assert asked == [logging.DEBUG]
    assert shown(caplog) == []


def content_sizes(lines: list[str]) -> list[int]:
    return [int(m[1]) for line in lines if (m := re.search(r"<(\d+) octets of message", line))]


BODY = b"Subject: private\r\n\r\nMAIL FROM:<inside@example.org>\r\nsecret body\r\n.\r\n"
N = len(BODY)


@pytest.mark.parametrize(
    "chunks",
    [
        [b"BDAT %d LAST\r\n%bQUIT\r\n" % (N, BODY)],
        [b"BDAT %d LAST\r\n%b" % (N, BODY[:30]), BODY[30:] + b"QUIT\r\n"],
        [b"BDAT 30\r\n%bbdat   %d   last  \r\n%bQUIT\r\n" % (BODY[:30], N - 30, BODY[30:])],
        [b"BDAT %d LA" % N, b"ST\r\n" + BODY + b"QU", b"IT\r\n"],
        [bytes([byte]) for byte in b"BDAT %d LAST\r\n%bQUIT\r\n" % (N, BODY)],
    ],
    ids=["one-read", "split-chunk", "two-chunks", "split-command", "byte-at-a-time"],
)
def test_bdat_content_is_summarised(caplog: pytest.LogCaptureFixture, chunks: list[bytes]) -> None:
    """A BDAT chunk arrives with its command, not after a reply: counted from its declared
    size, never shown as lines (its lines may even look like commands)."""
    caplog.set_level(logging.DEBUG, logger="smtpmux.trace")
    converse([b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n", *chunks])
    text = shown(caplog)
    assert not any("private" in line or "inside@" in line or "secret" in line for line in text)
    assert sum(content_sizes(text)) == N
    assert "t1 S: 250 2.0.0 OK: message accepted" in text
    assert "t1 C: QUIT" in text and text[-1] == "t1 S: 221 2.0.0 Bye"  # lines again after


MARK = "hush-hush-body-text"


@pytest.mark.parametrize("size", [1, 5000], ids=["small", "200KiB"])
@pytest.mark.parametrize("path", ["DATA", "BDAT"])
def test_debug_trace_never_shows_content_live(
    kind: str, caplog: pytest.LogCaptureFixture, path: str, size: int
) -> None:
    """``--debug`` on every backend: content by size only, whether it came by DATA (smtplib)
    or BDAT (the project's client, which uses CHUNKING when offered)."""
    caplog.set_level(logging.DEBUG, logger="smtpmux.trace")
    box = Collect()
    router: Router[Any] = Router()
    router.add("*@example.com", box)
    body = b"Subject: x\r\n\r\n" + f"{MARK} line\r\n".encode() * size
    with running(kind, router) as server:
        if path == "DATA":
            with smtplib.SMTP("127.0.0.1", server.port) as smtp:
                smtp.sendmail("a@example.org", ["b@example.com"], body)
        else:
            with client(kind, server.port, tls="none") as ours:
                ours.send_message(body, mail_from="a@example.org", rcpt_tos=["b@example.com"])
    assert box.contents == [body]
    text = shown(caplog)
    assert any(f" C: {path}" in line.upper() for line in text)
    assert not any(MARK in record.getMessage() for record in caplog.records)
    sizes = content_sizes(text)
    if path == "BDAT":
        assert sum(sizes) == len(body)
    else:  # DATA is counted as it came: the body, then "." CRLF
        assert sum(sizes) == len(body) + 3


def test_the_trace_does_not_import_the_session() -> None:
    """The Session owns its trace; the trace knows the engine and an id, so the two modules
    do not import each other (not even for type checking)."""
    import ast
    from pathlib import Path

    import smtp_core._trace

    tree = ast.parse(Path(smtp_core._trace.__file__).read_text(encoding="utf-8"))
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is not None
    }
    assert "_session" not in imported
