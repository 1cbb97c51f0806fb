"""What the webhook and pipe targets read from an Envelope: the message in bounded chunks (never
the whole spooled file in memory), its size, its Message-ID, and one safe line for a reply."""

from __future__ import annotations

import re
from collections.abc import Iterator

from smtp_core import Envelope

__all__ = ["CHUNK", "message_chunks", "message_id", "message_size", "reply_text"]

CHUNK = 256 * 1024  #: octets read from the spool at a time: memory stays bounded
_HEAD_LIMIT = 64 * 1024  #: the Message-ID is looked for in this much of the header section
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*((?:.*)(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.M)
_END_OF_HEADER = re.compile(rb"\r?\n\r?\n")
_UNSAFE = re.compile(r"[^\x20-\x7e]+")


def message_chunks(envelope: Envelope, head: bytes = b"") -> Iterator[bytes]:
    """``head`` (e.g. the Received line), then the content as it arrived, CHUNK by CHUNK."""
    if head:
        yield head
    source = envelope.open()
    while chunk := source.read(CHUNK):
        yield chunk


def message_size(envelope: Envelope) -> int:
    """The content's length in octets, without reading it."""
    if isinstance(envelope.content, bytes):
        return len(envelope.content)
    return envelope.content.seek(0, 2)


def message_id(envelope: Envelope) -> str | None:
    """The Message-ID header's value, unfolded (RFC 5322 §3.6.4), or None when the message has
    none: read from the start of the header section only, so a big message costs 64 KiB."""
    source = envelope.open()
    head = b""
    while len(head) < _HEAD_LIMIT and (chunk := source.read(8192)):
        head += chunk
        if _END_OF_HEADER.search(head):
            break
    end = _END_OF_HEADER.search(head)
    head = head[: end.start() + 2] if end else head[:_HEAD_LIMIT]
    if head.startswith((b"\r\n", b"\n")):  # no header section at all
        return None
    found = _MESSAGE_ID.search(head)
    if found is None:
        return None
    value = re.sub(rb"\r?\n[ \t]+", b" ", found[1]).decode("utf-8", "replace").strip()
    value = "".join(ch for ch in value if ch.isprintable())
    return value[:998] or None


def reply_text(text: str, limit: int = 200) -> str:
    """One line of printable ASCII, at most ``limit`` characters: what a program or a web
    application says may go into an SMTP reply without breaking its framing."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    line = _UNSAFE.sub("?", line)
    return line if len(line) <= limit else line[: limit - 3] + "..."
