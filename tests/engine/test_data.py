"""The DATA reader: strict CRLF.CRLF end, dot-unstuffing, bare LF policy, limits, any split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_core._data import REPLY_BARE_LF, REPLY_LINE_TOO_LONG, REPLY_TOO_BIG, DotReader
from smtp_core._events import DataChunk, EndOfData, Reply


def reference(
    stream: bytes,
    *,
    reject_bare_lf: bool = False,
    max_line: int | None = 1000,
    max_size: int | None = None,
) -> tuple[bytes, Reply | None, bytes] | None:
    """A slow, obviously right model: walk the lines one by one.

    Returns (content, reject, rest after the terminator), or None if no terminator yet.
    """
    end = (b"\r\n" + stream).find(b"\r\n.\r\n")
    if end < 0:
        return None
    body = stream[:end]  # with the CRLF that ends the last line
    rest = stream[end + 3 :]
    reject = None
    if body.count(b"\n") != body.count(b"\r\n") and reject_bare_lf:
        reject = REPLY_BARE_LF
    lines = body.replace(b"\r\n", b"\n").split(b"\n")[:-1] if body else []
    if reject is None and max_line is not None and any(len(ln) + 2 > max_line for ln in lines):
        reject = REPLY_LINE_TOO_LONG
    out = b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines)
    if reject is None and max_size is not None and len(out) > max_size:
        reject = REPLY_TOO_BIG
    return out, reject, rest


def run(pieces: list[bytes], **kwargs: object) -> tuple[bytes, EndOfData | None, bytes]:
    reader = DotReader(
        kwargs.get("max_size"),  # type: ignore[arg-type]
        kwargs.get("max_line", 1000),  # type: ignore[arg-type]
        bool(kwargs.get("reject_bare_lf", False)),
    )
    buf = bytearray()
    content = []
    end: EndOfData | None = None
    for piece in pieces:
        buf += piece
        while end is None:
            event = reader.read(buf)
            if event is None:
                break
            if isinstance(event, DataChunk):
                assert event.data
                content.append(event.data)
            else:
                end = event
        if len(buf) > 8 and end is None:
            # the reader keeps at most a partial line end / terminator, never a whole backlog
            assert len(buf) <= 5 or b"\n" not in buf[2:] or buf.rfind(b"\r\n") == 0
    return b"".join(content), end, bytes(buf)


CASES = [
    ("empty", b".\r\n", b""),
    ("one line", b"hello\r\n.\r\n", b"hello\r\n"),
    ("first line stuffed", b"..x\r\n.\r\n", b".x\r\n"),
    ("dot line stuffed", b"a\r\n..\r\nb\r\n.\r\n", b"a\r\n.\r\nb\r\n"),
    ("dot inside line", b"a.b\r\n. x\r\n.\r\n", b"a.b\r\n x\r\n"),
    ("LF.LF is content", b"a\n.\nb\r\n.\r\n", b"a\r\n\r\nb\r\n"),
    ("CR.CR is content", b"a\r.\rb\r\n.\r\n", b"a\r.\rb\r\n"),
    ("LF.CRLF is content", b"a\n.\r\nb\r\n.\r\n", b"a\r\n\r\nb\r\n"),
    ("CRLF.LF is content", b"a\r\n.\nb\r\n.\r\n", b"a\r\n\r\nb\r\n"),
    ("CR.CRLF is content", b"a\r.\r\nb\r\n.\r\n", b"a\r.\r\nb\r\n"),
    ("bare CR kept", b"a\rb\r\n.\r\n", b"a\rb\r\n"),
    ("empty lines", b"\r\n\r\n.\r\n", b"\r\n\r\n"),
]


@pytest.mark.parametrize(("name", "stream", "content"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_table(name: str, stream: bytes, content: bytes, split: str) -> None:
    pieces = [stream] if split == "whole" else [bytes([b]) for b in stream]
    got, end, rest = run([*pieces, b"NOOP\r\n"])
    assert end is not None and end.reject is None
    assert got == content
    assert end.size == len(content)
    assert rest == b"NOOP\r\n"


SMUGGLING = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\n.\r", b"\r\n.\r"]


@pytest.mark.parametrize("fake", SMUGGLING, ids=[repr(f) for f in SMUGGLING])
def test_smuggling_variants_do_not_end_data(fake: bytes) -> None:
    stream = b"Subject: x\r\n\r\nbody" + fake + b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\n"
    _, end, _ = run([stream])
    assert end is None  # still inside the message
    got2, end2, rest2 = run([stream + b"\r\n.\r\n"])
    assert end2 is not None and rest2 == b""
    assert b"MAIL FROM:<evil@x>" in got2


def test_bare_lf_reject() -> None:
    got, end, rest = run([b"a\nb\r\n.\r\nQUIT\r\n"], reject_bare_lf=True)
    assert end is not None and end.reject == REPLY_BARE_LF and end.default_reply == REPLY_BARE_LF
    assert got == b"" and rest == b"QUIT\r\n"


def test_size_limit_counts_unstuffed_content() -> None:
    _, end, _ = run([b"..\r\n" * 10 + b".\r\n"], max_size=30)
    assert end is not None and end.reject is None and end.size == 30
    _, end, rest = run([b"x" * 40 + b"\r\n.\r\nQUIT\r\n"], max_size=30)
    assert end is not None and end.reject == REPLY_TOO_BIG and rest == b"QUIT\r\n"


@pytest.mark.parametrize(("length", "ok"), [(998, True), (999, False), (5000, False)])
def test_line_length(length: int, ok: bool) -> None:
    for pieces in (
        [b"x" * length + b"\r\n.\r\n"],
        [b"y\r\n" + b"x" * length + b"\r\n.\r\n"],
        [b"x" * 300] * (length // 300) + [b"x" * (length % 300) + b"\r\n.\r\n"],
    ):
        _, end, _ = run(pieces)
        assert end is not None and (end.reject is None) == ok, pieces[:1]


def test_huge_line_without_crlf_is_not_buffered() -> None:
    reader = DotReader(None, None, False)
    buf = bytearray()
    for _ in range(100):
        buf += b"x" * 100_000
        event = reader.read(buf)
        assert isinstance(event, DataChunk)
        assert len(buf) <= 5


ALPHABET = st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b"\r\n.", b".\r\n", b"\xff"])


@settings(max_examples=400, deadline=None)
@given(
    body=st.lists(ALPHABET, max_size=40).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
    reject_bare_lf=st.booleans(),
    max_line=st.sampled_from([None, 4, 1000]),
)
def test_any_split_matches_the_reference(
    body: bytes, cuts: list[int], reject_bare_lf: bool, max_line: int | None
) -> None:
    stream = body + b"\r\n.\r\nQUIT\r\n"
    expected = reference(stream, reject_bare_lf=reject_bare_lf, max_line=max_line)
    assert expected is not None
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    got, end, rest = run(pieces, reject_bare_lf=reject_bare_lf, max_line=max_line)
    assert end is not None
    content, reject, expected_rest = expected
    assert rest == expected_rest
    if reject is None:
        assert end.reject is None and got == content
    else:
        assert end.reject is not None


# Content that runs on well past the first dotted line: the reader splits each read at every
# "\r\n." instead of looking for the terminator near the first one (_NEAR), and sorts the parts
# to find out whether one is the terminator.
LONG = (b"..stuffed\r\n" + b"x" * 76 + b"\r\n") * 60
AFTER_A_DOT = [b"\t", b"\x00", b"\x0b", b"\r\r\n", b"\n", b"\r", b"\r\x0b", b"\x0c\r\n"]


@pytest.mark.parametrize("after", AFTER_A_DOT, ids=[repr(a) for a in AFTER_A_DOT])
@pytest.mark.parametrize("split", ["whole", "reads of 1000"])
def test_long_content_lines_that_sort_below_a_terminator(after: bytes, split: str) -> None:
    stream = LONG + b"." + after + b"\r\n" + LONG + b".\r\nQUIT\r\n"
    expected = reference(stream)
    assert expected is not None
    size = len(stream) if split == "whole" else 1000
    got, end, rest = run([stream[i : i + size] for i in range(0, len(stream), size)])
    assert end is not None and end.reject is None
    assert (got, rest) == (expected[0], expected[2])


@pytest.mark.parametrize(("length", "ok"), [(998, True), (999, False)])
@pytest.mark.parametrize("dotted", [False, True], ids=["plain", "dotted"])
def test_line_length_inside_long_dotted_content(length: int, ok: bool, dotted: bool) -> None:
    line = (b".." + b"x" * (length - 2)) if dotted else b"x" * length  # raw octets count
    stream = LONG + line + b"\r\n" + LONG + b".\r\n"
    for size in (len(stream), 4096, 333):
        _, end, _ = run([stream[i : i + size] for i in range(0, len(stream), size)])
        assert end is not None and (end.reject is None) == ok, size


@settings(max_examples=300, deadline=None)
@given(
    body=st.lists(ALPHABET, max_size=40).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=12_000), max_size=8),
    reject_bare_lf=st.booleans(),
    max_line=st.sampled_from([None, 80, 1000]),
)
def test_long_content_any_split_matches_the_reference(
    body: bytes, cuts: list[int], reject_bare_lf: bool, max_line: int | None
) -> None:
    stream = LONG + body + LONG + b"\r\n.\r\nQUIT\r\n"
    expected = reference(stream, reject_bare_lf=reject_bare_lf, max_line=max_line)
    assert expected is not None
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    got, end, rest = run(pieces, reject_bare_lf=reject_bare_lf, max_line=max_line)
    assert end is not None
    content, reject, expected_rest = expected
    assert rest == expected_rest
    if reject is None:
        assert end.reject is None and got == content
    else:
        assert end.reject is not None
