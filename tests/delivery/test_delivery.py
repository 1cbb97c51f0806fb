"""smtp_sync/_delivery.py: what every target shares: the spool read in bounded chunks, the
Message-ID from the header section, the refusals, one reply for many, a safe reply line."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from smtp_core import Reject, Reply, combined_refusal
from smtp_sync import _delivery, targets
from smtp_sync._delivery import (
    message_chunks,
    message_id,
    message_size,
    permanent,
    reply_text,
    seconds,
    temporary,
)
from tests.delivery.test_handlers import envelope

LIMIT = 64 * 1024  #: the documented header read


def test_targets_re_exports_the_one_implementation() -> None:
    assert targets.message_id is message_id
    assert targets.temporary is temporary
    assert targets.permanent is permanent


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"Message-ID: <a@b>\r\nSubject: x\r\n\r\nbody\r\n", "<a@b>"),
        (b"Subject: x\r\nmessage-id:\r\n <folded@b>\r\n\r\nMessage-ID: <body@b>\r\n", "<folded@b>"),
        (b"Subject: x\r\n\r\nMessage-ID: <in-the-body@b>\r\n", None),
        (b"\r\nMessage-ID: <a@b>\r\n", None),
        (b"Message-ID: <a@b>\n\nbare LF\n", "<a@b>"),
        (b"Message-ID: \r\n\r\n", None),
        (b"", None),
        (b"X: " + b"y" * 200_000 + b"\r\nMessage-ID: <late@b>\r\n\r\n", None),
        # unfolding (RFC 5322 §2.2.3) and white space
        (b"Message-ID:\r\n\t<tab@b>\r\n\r\n", "<tab@b>"),
        (b"Message-ID:\n <lf@b>\n\nbody\n", "<lf@b>"),
        (b"Message-ID: <a@b>\t(comment)\r\n\r\n", "<a@b> (comment)"),
        (b"Message-ID: <a@b>\r\n  (folded\r\n\tcomment)\r\n\r\n", "<a@b> (folded comment)"),
        (b"Message-ID : <obs@b>\r\n\r\n", "<obs@b>"),  # §4.5.3: WSP before the colon
        # which field, and where the header section ends
        (b"Message-ID: <one@b>\r\nMessage-ID: <two@b>\r\n\r\n", "<one@b>"),
        (b"Resent-Message-ID: <resent@b>\r\n\r\n", None),
        (b"X-Note: Message-ID: <quoted@b>\r\n\r\n", None),
        (b"Subject: x\r\nMessage-ID: <a@b>\r\n", "<a@b>"),  # no body at all
        (b"Subject: x\r\nnot a field\r\nMessage-ID: <after@b>\r\n\r\n", None),
        (b"From a@b Mon Jan  5 00:00:00 2026\r\nMessage-ID: <mbox@b>\r\n\r\n", "<mbox@b>"),
        # bounded: 64 KiB of header, a field cut at the limit does not count
        (b"X: " + b"y" * (LIMIT - 100) + b"\r\nMessage-ID: <near@b>\r\n\r\n", "<near@b>"),
        (b"X: " + b"y" * (LIMIT - 20) + b"\r\nMessage-ID: <cut-at-the-limit@b>\r\n\r\n", None),
        # safe to pass on: UTF-8 (RFC 6532), no controls, at most 998 characters
        ("Message-ID: <\u00e9t\u00e9@b>\r\n\r\n".encode(), "<\u00e9t\u00e9@b>"),
        (b"Message-ID: <\xe9@b>\r\n\r\n", "<\ufffd@b>"),
        (b"Message-ID: <a\x01\x7fb@c>\r\n\r\n", "<ab@c>"),
        (b"Message-ID: <" + b"a" * 2000 + b"@b>\r\n\r\n", "<" + "a" * 997),
    ],
    ids=[
        "plain",
        "folded",
        "only-in-body",
        "no-header",
        "bare-lf",
        "empty",
        "no-message",
        "huge",
        "folded-tab",
        "folded-bare-lf",
        "inner-tab",
        "folded-comment",
        "space-before-colon",
        "first-of-two",
        "resent",
        "in-another-field",
        "no-blank-line",
        "after-a-line-that-is-not-a-field",
        "mbox-from-line",
        "near-the-limit",
        "cut-at-the-limit",
        "utf-8",
        "not-utf-8",
        "controls",
        "too-long",
    ],
)
def test_message_id_reads_the_header_only(content: bytes, expected: str | None) -> None:
    assert message_id(envelope(content)) == expected


def test_message_id_from_a_spooled_file(tmp_path: Path) -> None:
    spooled = (tmp_path / "spool").open("w+b")
    spooled.write(b"Message-ID: <spooled@b>\r\n\r\n" + b"x" * 1_000_000)
    with spooled:
        spooled.seek(12345)  # where a previous reader left it
        assert message_id(envelope(spooled)) == "<spooled@b>"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "content", [b"", b"abc", b"x" * (_delivery.CHUNK * 2 + 7)], ids=["empty", "small", "big"]
)
@pytest.mark.parametrize("spooled", [False, True], ids=["bytes", "file"])
def test_message_chunks_stream_the_head_then_the_content(content: bytes, spooled: bool) -> None:
    given = envelope(io.BytesIO(content) if spooled else content)
    chunks = list(message_chunks(given, b"Received: x\r\n"))
    assert chunks[0] == b"Received: x\r\n"
    assert b"".join(chunks[1:]) == content
    assert all(len(chunk) <= _delivery.CHUNK for chunk in chunks)
    assert list(message_chunks(given)) == chunks[1:]  # again, from the start
    assert message_size(given) == len(content)


@pytest.mark.parametrize(
    ("made", "code", "enhanced"),
    [
        (temporary("upstream down"), 451, "4.4.1"),
        (temporary("disk", "4.3.0"), 451, "4.3.0"),
        (temporary("disk full", "4.3.1", 452), 452, "4.3.1"),
        (permanent("no such user", "5.1.1"), 550, "5.1.1"),
        (permanent("HTTP 403", "5.6.0", 554), 554, "5.6.0"),
    ],
)
def test_outcomes_are_rejects_with_the_reply(made: Reject, code: int, enhanced: str) -> None:
    assert (made.reply.code, made.reply.enhanced) == (code, enhanced)


OK = Reply(250, "OK", "2.0.0")
LATER = Reply(451, "later", "4.4.1")
FULL = Reply(452, "full", "4.3.1")
NEVER = Reply(550, "never", "5.1.1")


@pytest.mark.parametrize(
    ("replies", "expected"),
    [
        ([], None),
        ([OK, OK], None),
        ([NEVER], NEVER),
        ([OK, NEVER, LATER], LATER),  # a temporary one first: the sender retries
        ([NEVER, FULL, LATER], FULL),
        ([OK, NEVER, Reply(554, "no", "5.0.0")], NEVER),
    ],
    ids=["none", "all-accepted", "one-permanent", "temporary-wins", "first-temporary", "first"],
)
def test_combined_refusal(replies: list[Reply], expected: Reply | None) -> None:
    assert combined_refusal(replies) == expected


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("fine", 200, "fine"),
        ("\n\n  first line  \nsecond\n", 200, "first line"),
        ("t\u00e9l\u00e9\x00\x1b[31m", 200, "t?l?[31m"),  # a run is one ?
        ("x" * 30, 10, "xxxxxxx..."),
        ("", 200, ""),
    ],
    ids=["plain", "first-non-blank-line", "unsafe", "too-long", "empty"],
)
def test_reply_text_is_one_safe_line(text: str, limit: int, expected: str) -> None:
    assert reply_text(text, limit) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("30", 30.0), ("0.5", 0.5), ("1e3", 1000.0)]
    + [(bad, None) for bad in ("0", "-1", "soon", "", "inf", "nan", "1e400")],
)
def test_seconds_is_a_positive_finite_number(value: str, expected: float | None) -> None:
    assert seconds(value) == expected
