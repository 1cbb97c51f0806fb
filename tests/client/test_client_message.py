"""prepare_message: the envelope from the headers, Bcc never sent, CRLF line ends (pure)."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage

import pytest

from smtp_core import OutgoingMessage, prepare_message
from smtp_core._message import normalize_line_ends


def parsed(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


ENVELOPES = [
    ("from and to", b"From: a@x.org\r\nTo: b@y.com\r\n", "a@x.org", ["b@y.com"]),
    (
        "sender wins over from",
        b"From: a@x.org, c@x.org\r\nSender: s@x.org\r\nTo: b@y.com\r\n",
        "s@x.org",
        ["b@y.com"],
    ),
    ("first of several from", b"From: a@x.org, c@x.org\r\nTo: b@y.com\r\n", "a@x.org", ["b@y.com"]),
    (
        "to, cc and bcc in order, deduplicated",
        b"From: a@x.org\r\nCc: c@y.com\r\nTo: B <b@y.com>, c@y.com\r\n"
        b"Bcc: d@y.com\r\nTo: e@y.com\r\n",
        "a@x.org",
        ["b@y.com", "c@y.com", "e@y.com", "d@y.com"],
    ),
    (
        "groups and folding",
        b"From: a@x.org\r\nTo: undisclosed-recipients:;\r\nCc: team: b@y.com,\r\n c@y.com;\r\n",
        "a@x.org",
        ["b@y.com", "c@y.com"],
    ),
    (
        "display names with commas and encoded words",
        b'From: "Doe, J" <j@x.org>\r\nTo: =?utf-8?q?J=C3=B6?= <jo@y.com>\r\n',
        "j@x.org",
        ["jo@y.com"],
    ),
    (
        "one resent block",
        b"From: a@x.org\r\nTo: b@y.com\r\nResent-Date: Mon, 2 Mar 2026 10:00:00 +0000\r\n"
        b"Resent-From: r@x.org\r\nResent-To: t@y.com\r\nResent-Bcc: u@y.com\r\n",
        "r@x.org",
        ["t@y.com", "u@y.com"],
    ),
    (
        "utf-8 addresses",
        "From: jö@x.org\r\nTo: Jösé <jösé@y.com>\r\n".encode(),
        "jö@x.org",
        ["jösé@y.com"],
    ),
]


@pytest.mark.parametrize(
    ("head", "sender", "recipients"), [c[1:] for c in ENVELOPES], ids=[c[0] for c in ENVELOPES]
)
def test_envelope_from_headers(head: bytes, sender: str, recipients: list[str]) -> None:
    raw = head + b"Subject: x\r\n\r\nbody\r\n"
    for message in (raw, parsed(raw), email.message_from_bytes(raw)):  # bytes, default, compat32
        prepared = prepare_message(message)
        assert (prepared.mail_from, list(prepared.rcpt_tos)) == (sender, recipients)


def test_explicit_envelope_wins_and_is_cleaned() -> None:
    prepared = prepare_message(
        b"From: a@x.org\r\nTo: b@y.com\r\n\r\nhi\r\n",
        mail_from=" <> ",
        rcpt_tos=["<c@y.com>", "c@y.com", " d@y.com"],
    )
    assert prepared == OutgoingMessage(
        "", ("c@y.com", "d@y.com"), b"From: a@x.org\r\nTo: b@y.com\r\n\r\nhi\r\n"
    )
    assert not prepared.international and not prepared.utf8_headers


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"To: b@y.com\r\n\r\nhi\r\n", "no sender"),
        (b"From: a@x.org\r\n\r\nhi\r\n", "no recipients"),
        (b"From: a@x.org\r\nTo: undisclosed-recipients:;\r\n\r\nhi\r\n", "no recipients"),
        (
            b"From: a@x.org\r\nTo: b@y.com\r\nResent-Date: x\r\nResent-To: c@y.com\r\n"
            b"Resent-Date: y\r\n\r\n",
            "more than one Resent- block",
        ),
    ],
)
def test_envelope_missing(message: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        prepare_message(message)


@pytest.mark.parametrize(
    ("sender", "recipients", "error"),
    [
        ("a@x.org\r\nRSET", ["b@y.com"], "line breaks"),
        ("a@x.org", ["b@y.com>"], "brackets"),
        ("a@x.org", ["b@y.com\0"], "line breaks"),
        ("a@x.org", [], "no recipients"),
    ],
)
def test_addresses_checked(sender: str, recipients: list[str], error: str) -> None:
    """Before any command is written: nothing can be smuggled into a command line."""
    with pytest.raises(ValueError, match=error):
        prepare_message(b"hi\r\n", mail_from=sender, rcpt_tos=recipients)
    with pytest.raises(ValueError, match=error):
        OutgoingMessage(sender, tuple(recipients), b"hi\r\n")


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("b@y.com", "b@y.com"),
        ("<b@y.com>", "b@y.com"),  # one enclosing pair, as smtplib takes it
        (" <b@y.com> ", "b@y.com"),
        ('<"b c"@y.com>', '"b c"@y.com'),
    ],
)
def test_one_pair_of_angle_brackets_is_dropped(given: str, sent: str) -> None:
    prepared = prepare_message(b"hi\r\n", mail_from=f"<{sent}>", rcpt_tos=[given])
    assert (prepared.mail_from, prepared.rcpt_tos) == (sent, (sent,))
    assert prepare_message(b"hi\r\n", mail_from="<>", rcpt_tos=[given]).mail_from == ""


@pytest.mark.parametrize(
    "given", ["<<b@y.com>>", "<b@y.com", "b@y.com>", "<b@y.com>>", "<<b@y.com>", " <b@y.com"]
)
def test_other_brackets_are_a_value_error(given: str) -> None:
    """Only one enclosing pair is taken away; what is left would not be a valid path."""
    with pytest.raises(
        ValueError, match=r"one pair of angle brackets at most: " + re.escape(repr(given))
    ):
        prepare_message(b"hi\r\n", mail_from="a@x.org", rcpt_tos=[given])
    with pytest.raises(ValueError, match="angle brackets"):
        prepare_message(b"hi\r\n", mail_from=given, rcpt_tos=["b@y.com"])


def test_rcpt_tos_must_be_a_list() -> None:
    with pytest.raises(ValueError, match="not one string"):
        prepare_message(b"hi\r\n", mail_from="a@x.org", rcpt_tos="b@y.com")
    with pytest.raises(ValueError, match="empty recipient"):
        prepare_message(b"hi\r\n", mail_from="a@x.org", rcpt_tos=["<>"])


def test_bcc_never_sent_from_bytes() -> None:
    raw = (
        b"From: a@x.org\r\nBCC: secret@y.com,\r\n\tother@y.com\r\nTo: b@y.com\r\n"
        b"resent-bcc :x@y.com\r\nSubject: Bcc: not a field\r\n\r\nBcc: in the body stays\r\n"
    )
    prepared = prepare_message(raw)
    assert prepared.rcpt_tos == ("b@y.com", "secret@y.com", "other@y.com")
    assert prepared.content == (
        b"From: a@x.org\r\nTo: b@y.com\r\nSubject: Bcc: not a field\r\n\r\n"
        b"Bcc: in the body stays\r\n"
    )
    explicit = prepare_message(raw, mail_from="a@x.org", rcpt_tos=["z@y.com"])
    assert explicit.content == prepared.content  # also with an explicit envelope


def test_bcc_never_sent_from_a_message_object() -> None:
    message = EmailMessage()
    message["From"] = "a@x.org"
    message["To"] = "b@y.com"
    message["Bcc"] = "secret@y.com"
    message.set_content("hi\n")
    prepared = prepare_message(message)
    assert prepared.rcpt_tos == ("b@y.com", "secret@y.com")
    assert b"Bcc" not in prepared.content and b"secret" not in prepared.content
    assert message["Bcc"] == "secret@y.com"  # the caller's message is left alone
    assert prepared.content.endswith(b"\r\n\r\nhi\r\n") and b"\n" not in prepared.content.replace(
        b"\r\n", b""
    )


def test_international_addresses_write_utf8_headers() -> None:
    message = EmailMessage()
    message["From"] = "Jürgen <jürgen@x.org>"
    message["To"] = "b@y.com"
    message["Subject"] = "Grüße"
    message.set_content("hi\n")
    prepared = prepare_message(message)
    assert prepared.international and prepared.utf8_headers
    assert "Subject: Grüße\r\n".encode() in prepared.content  # RFC 6532, not an encoded word
    ascii_only = prepare_message(message, mail_from="j@x.org")
    assert not ascii_only.international and not ascii_only.utf8_headers
    assert b"Subject: =?utf-8?" in ascii_only.content  # RFC 2047 without SMTPUTF8
    compat = email.message_from_bytes(b"From: j\xc3\xbc@x.org\r\nTo: b@y.com\r\n\r\nhi\r\n")
    assert prepare_message(compat).mail_from == "jü@x.org"


LINE_ENDS = [
    ("crlf kept", b"a\r\nb\r\n", b"a\r\nb\r\n"),
    ("final crlf added", b"a\r\nb", b"a\r\nb\r\n"),
    ("bare lf", b"a\nb\n", b"a\r\nb\r\n"),
    ("bare cr", b"a\rb", b"a\r\nb\r\n"),
    ("mixed", b"a\r\r\nb\n\rc", b"a\r\n\r\nb\r\n\r\nc\r\n"),
    ("empty", b"", b""),
]


@pytest.mark.parametrize(("raw", "wire"), [c[1:] for c in LINE_ENDS], ids=[c[0] for c in LINE_ENDS])
def test_line_ends(raw: bytes, wire: bytes) -> None:
    assert normalize_line_ends(raw) == wire
    assert prepare_message(raw, mail_from="a@x.org", rcpt_tos=["b@y.com"]).content == wire


def test_binary_content_is_left_alone() -> None:
    raw = b"Content-Type: application/octet-stream\r\n\r\n\x00\r\x0a\n\r"
    prepared = prepare_message(raw, mail_from="a@x.org", rcpt_tos=["b@y.com"], binary=True)
    assert prepared.content == raw
