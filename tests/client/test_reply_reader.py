"""The one reply reader (smtp_core/_reply_reader.py), and the transcript players that use it.

The reader is fed whole, byte by byte and with trailing data, as h11 tests its readers; the
client engine's own reply tests (tests/client/test_client.py) cover what it makes of each reply.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from smtp_core._errors import RemoteProtocolError
from smtp_core._reply_reader import MAX_REPLY_LINE, ReplyReader
from smtp_core._transcript import TranscriptError, TranscriptReplies
from smtp_sync import play_transcript

Framed = tuple[int, list[str]]

READS: list[tuple[str, bytes, list[Framed]]] = [
    ("one line", b"250 OK\r\n", [(250, ["250 OK"])]),
    ("code only", b"250\r\n", [(250, ["250"])]),
    ("bare LF", b"220 hi\n", [(220, ["220 hi"])]),
    ("CR kept inside", b"250 a\rb\r\n", [(250, ["250 a\rb"])]),
    (
        "multi-line",
        b"250-one\r\n250-two\r\n250 end\r\n",
        [(250, ["250-one", "250-two", "250 end"])],
    ),
    ("two replies", b"250 a\r\n550 b\r\n", [(250, ["250 a"]), (550, ["550 b"])]),
    ("utf-8", "250 grüße\r\n".encode(), [(250, ["250 grüße"])]),
    ("not utf-8", b"250 caf\xe9\r\n", [(250, ["250 caf\ufffd"])]),
]


def read_all(reader: ReplyReader) -> list[Framed]:
    out = []
    while (framed := reader.next_reply()) is not None:
        out.append(framed)
    return out


@pytest.mark.parametrize(("data", "expected"), [r[1:] for r in READS], ids=[r[0] for r in READS])
@pytest.mark.parametrize("how", ["whole", "byte by byte", "with trailing data"])
def test_reads(data: bytes, expected: list[Framed], how: str) -> None:
    reader = ReplyReader()
    got: list[Framed] = []
    if how == "byte by byte":
        for i in range(len(data)):
            reader.feed(data[i : i + 1])
            got += read_all(reader)
    else:
        reader.feed(data + (b"250-next" if how == "with trailing data" else b""))
        got = read_all(reader)
    assert got == expected
    assert reader.pending is (how == "with trailing data")


FAILS = [
    ("not a code", b"hello\r\n", "malformed"),
    ("1xx", b"150 OK\r\n", "malformed"),
    ("bad separator", b"250_OK\r\n", "malformed"),
    ("codes disagree", b"250-a\r\n251 b\r\n", "inside a 250 reply"),
    ("line too long", b"250 " + b"x" * MAX_REPLY_LINE + b"\r\n", "line longer"),
    ("line too long, incomplete", b"250 " + b"x" * MAX_REPLY_LINE, "line longer"),
    ("reply too long", (b"250-" + b"x" * 1000 + b"\r\n") * 70, "reply longer"),
]


@pytest.mark.parametrize(("data", "match"), [f[1:] for f in FAILS], ids=[f[0] for f in FAILS])
def test_failures(data: bytes, match: str) -> None:
    reader = ReplyReader()
    reader.feed(data)
    with pytest.raises(RemoteProtocolError, match=match) as info:
        read_all(reader)
    assert info.value.reply_hint is None


def test_limits_are_the_callers() -> None:
    reader = ReplyReader(max_line=12, max_reply=15)
    reader.feed(b"250-12345\r\n")
    assert reader.next_reply() is None
    reader.feed(b"250 123\r\n")
    with pytest.raises(RemoteProtocolError, match="reply longer than 15"):
        reader.next_reply()


def test_clear_drops_what_is_buffered() -> None:
    """What came with STARTTLS's 220 was sent before TLS: it never becomes a reply."""
    reader = ReplyReader()
    reader.feed(b"220 go ahead\r\n250-injected\r\n")
    assert reader.next_reply() == (220, ["220 go ahead"])
    reader.clear()
    assert not reader.pending
    reader.feed(b"250 real\r\n")
    assert reader.next_reply() == (250, ["250 real"])


def test_transcript_replies_join_the_lines() -> None:
    replies = TranscriptReplies()
    replies.feed(b"250-mx.example\r\n250 PIPELINING\r\n250 ")
    assert replies.next() == "250-mx.example\n250 PIPELINING"
    assert replies.next() is None


def test_transcript_replies_malformed() -> None:
    replies = TranscriptReplies()
    replies.feed(b"hello\r\n")
    with pytest.raises(TranscriptError, match="malformed"):
        replies.next()


# --- the live player over a real socket, against a server that writes raw bytes --------------


def serve_once(send: bytes) -> Iterator[int]:
    """A listener on 127.0.0.1 that writes ``send`` to its one client, then reads until the
    client goes; stopped (and joined) when the test is done."""
    listener = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(send)
            conn.settimeout(10)
            while conn.recv(4096):
                pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        thread.join(timeout=15)
        listener.close()


LIVE = [
    ("CRLF", b"220-mx.example\r\n220 ESMTP\r\n", "S: 220 ESMTP\n", ["220-mx.example\n220 ESMTP"]),
    ("bare LF, as the client reads it", b"220 ESMTP\n", "S: 220 *\n", ["220 ESMTP"]),
]


@pytest.mark.parametrize(
    ("send", "script", "expected"), [c[1:] for c in LIVE], ids=[c[0] for c in LIVE]
)
def test_play_transcript_reads_like_the_client(
    send: bytes, script: str, expected: list[str]
) -> None:
    for port in serve_once(send):
        assert play_transcript(script, "127.0.0.1", port, timeout=10) == expected


def test_play_transcript_refuses_an_over_long_line() -> None:
    for port in serve_once(b"220 " + b"x" * MAX_REPLY_LINE + b"\r\n"):
        with pytest.raises(TranscriptError, match="line longer"):
            play_transcript("S: 220 *\n", "127.0.0.1", port, timeout=10)
