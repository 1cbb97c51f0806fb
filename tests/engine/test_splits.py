"""Hypothesis: feeding the same bytes in any split gives the same events and the same output.

(STARTTLS is the one place where timing matters by design: bytes that arrive with the command
are discarded, bytes that arrive after the 220 are the TLS layer's. tests/engine/test_server.py
covers it.)"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_core import LoginMechanism, PlainMechanism, ServerConfig
from tests.helpers import merged, run_pieces

AUTH = ServerConfig(auth_mechanisms=(PlainMechanism, LoginMechanism))
PLAIN = base64.b64encode(b"\0user\0pass")
TXN = b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n"

SCRIPTS: dict[str, tuple[bytes, dict[str, object]]] = {
    "transaction with stuffing": (
        b"EHLO c\r\n" + TXN + b"..a\r\n.b\r\nbare\nlf\r\n\r\n.\r\nQUIT\r\n",
        {},
    ),
    "pipelined": (b"EHLO c\r\n" + (TXN + b"x\r\n.\r\n") * 5 + b"RSET\r\nQUIT\r\n", {}),
    "bdat": (
        b"EHLO c\r\nMAIL FROM:<a@x.org> BODY=BINARYMIME\r\nRCPT TO:<b@y.org>\r\n"
        b"BDAT 5\r\n\r\n.\r\nBDAT 3 LAST\r\n\x00\xff\nNOOP\r\n",
        {},
    ),
    "auth plain and login": (
        b"EHLO c\r\nAUTH PLAIN\r\n"
        + PLAIN
        + b"\r\nAUTH LOGIN\r\n*\r\nAUTH PLAIN "
        + PLAIN
        + b"\r\n",
        {"config": AUTH, "tls": True},
    ),
    "lmtp": (
        b"LHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@y.org>\r\nRCPT TO:<c@y.org>\r\n"
        b"DATA\r\nhi\r\n.\r\n",
        {"config": ServerConfig(lmtp=True)},
    ),
    "oversize and long lines": (
        b"EHLO c\r\n" + TXN + b"y" * 300 + b"\r\n.\r\n" + b"NOOP " + b"z" * 600 + b"\r\nNOOP\r\n",
        {"config": ServerConfig(max_message_size=100, max_text_line_length=200)},
    ),
    "errors and smuggling": (
        b"FOO\r\nEHLO c\r\nRCPT TO:<b@y.org>\r\n" + TXN + b"a\n.\nb\r.\rc\n.\r\n\r\n.\r\n",
        {},
    ),
}


@pytest.mark.parametrize("name", list(SCRIPTS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_split_gives_the_same_events(name: str, data: st.DataObject) -> None:
    script, options = SCRIPTS[name]
    cuts = sorted(data.draw(st.sets(st.integers(1, len(script) - 1), max_size=12), label="cuts"))
    pieces = [script[a:b] for a, b in zip([0, *cuts], [*cuts, len(script)], strict=True)]
    whole = run_pieces([script], **options)
    split = run_pieces(pieces, **options)
    assert merged(split.events) == merged(whole.events)
    assert bytes(split.output) == bytes(whole.output)
