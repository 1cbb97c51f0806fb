"""The protocol trace behind ``--debug``: every line shown, SASL secrets never, content by size.

A tiny in-memory adapter drives a real Session; the Session writes the trace itself."""

from __future__ import annotations

import base64
import logging
from collections import deque
from datetime import UTC, datetime
from typing import Any

import pytest

from smtp_core import (
    Action,
    Authenticate,
    Call,
    LoginMechanism,
    PlainMechanism,
    Router,
    ServerConfig,
    Session,
)

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


def test_plain_initial_response_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="smtpmux.trace")
    converse(
        [
            b"EHLO c\r\n",
            f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + SECRET)}\r\n".encode(),
            b"MAIL FROM:<a@example.org>\r\n",
        ]
    )
    text = "\n".join(shown(caplog))
    assert "t1 C: AUTH PLAIN <redacted>" in text
    assert "t1 S: 235 2.7.0 Authentication successful" in text
    assert "t1 C: MAIL FROM:<a@example.org>" in text  # after the 235, lines show again
    assert SECRET not in text and b64(SECRET)[:12] not in text


def test_login_responses_are_redacted_even_when_sent_too_early(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="smtpmux.trace")
    converse([b"EHLO c\r\n", f"AUTH LOGIN\r\n{b64('alice')}\r\n{b64(SECRET)}\r\n".encode()])
    text = shown(caplog)
    assert "t1 C: AUTH LOGIN" in text
    assert text.count("t1 C: <redacted>") == 2
    assert b64(SECRET) not in "\n".join(text)


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
