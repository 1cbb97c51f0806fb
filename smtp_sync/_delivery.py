"""What every delivery target shares, in one place: the message read from the spool in bounded
chunks (never the whole spooled file in memory), its size and Message-ID, a safe line of text
for a reply, and the refusals a target answers with (``temporary``, ``permanent``).

A leaf module (it imports only smtp_core), so that ``targets`` (the table, which re-exports
``message_id``, ``temporary`` and ``permanent`` as the public names) and every target module can
import it without a cycle: ``targets`` loads the target modules lazily, by name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from smtp_core import Envelope, Reject, Reply

__all__ = [
    "CHUNK",
    "message_chunks",
    "message_id",
    "message_size",
    "permanent",
    "reply_text",
    "seconds",
    "temporary",
]

CHUNK = 256 * 1024  #: octets read from the spool at a time: memory stays bounded
_HEAD_LIMIT = 64 * 1024  #: the Message-ID is looked for in this much of the header section
_HEAD_CHUNK = 8 * 1024  #: octets read at a time while looking for the end of the header
#: RFC 5322 §4.5.3 (obs-optional) allows white space before the colon; ``.`` keeps a line's CR
_MESSAGE_ID = re.compile(rb"^message-id[ \t]*:[ \t]*(.*(?:\n[ \t].*)*)", re.IGNORECASE | re.M)
_END_OF_HEADER = re.compile(rb"\r?\n\r?\n")
#: a line of the header section: a field (name, colon) or the continuation of one (§2.2)
_HEADER_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:|[ \t]")
_FOLD = re.compile(rb"\r?\n(?=[ \t])")
_UNSAFE = re.compile(r"[^\x20-\x7e]+")


# --- reading the message ---------------------------------------------------------------------


def message_chunks(envelope: Envelope, head: bytes = b"", size: int = CHUNK) -> Iterator[bytes]:
    """``head`` (e.g. the Received line), then the content as it arrived, ``size`` octets at a
    time: the one reader of the spool, so that no target holds a whole message in memory."""
    if head:
        yield head
    source = envelope.open()
    while chunk := source.read(size):
        yield chunk


def message_size(envelope: Envelope) -> int:
    """The content's length in octets, without reading it."""
    if isinstance(envelope.content, bytes):
        return len(envelope.content)
    return envelope.content.seek(0, 2)


def message_id(envelope: Envelope) -> str | None:
    """The Message-ID header's value (``<…>``), or None when the message has none: with the
    transaction id, what a receiver needs to recognise a message it was given twice.

    Read from the start of the header section only (a big message costs 64 KiB), unfolded (RFC
    5322 §2.2.3: a line break before white space is removed), each run of white space made one
    space, decoded as UTF-8 (RFC 6532) and kept printable, so that it is safe in an HTTP header
    or a program's environment; at most 998 characters (RFC 5322 §2.1.1)."""
    head = b""
    for chunk in message_chunks(envelope, size=_HEAD_CHUNK):
        head += chunk
        if len(head) >= _HEAD_LIMIT or _END_OF_HEADER.search(head):
            break
    head = head[:_HEAD_LIMIT]
    if len(head) == _HEAD_LIMIT and not _END_OF_HEADER.search(head):
        head = head[: head.rfind(b"\n") + 1]  # a line cut at the limit is not a whole field
    found = _MESSAGE_ID.search(_header_section(head))
    if found is None:
        return None
    value = _FOLD.sub(b"", found[1]).decode("utf-8", "replace")
    value = " ".join(value.split())
    value = "".join(ch for ch in value if ch.isprintable())
    return value[:998] or None


def _header_section(head: bytes) -> bytes:
    """The header fields at the start of ``head``: up to the blank line, or up to the first
    line that is neither a field nor a continuation (a mail parser, Python's or Postfix's,
    takes the rest as body). A first line ``From …`` (an mbox envelope line) is passed over."""
    lines = head.split(b"\n")
    if lines[0].startswith(b"From "):
        lines = lines[1:]
    kept = []
    for line in lines:
        if not _HEADER_LINE.match(line):  # the blank line, or the body begins
            break
        kept.append(line)
    return b"\n".join(kept)


# --- answering -------------------------------------------------------------------------------


def temporary(reason: str, enhanced: str = "4.4.1", code: int = 451) -> Reject:
    """``raise temporary("…")``: a 4xx (451), the sender keeps the message and retries later
    (4.4.1: a peer could not be reached or answered 4xx; 4.3.0 for a local failure). Nothing is
    queued here, so nothing is lost. A step transaction answers with its ``.reply``."""
    return Reject(Reply(code, reason, enhanced))


def permanent(reason: str, enhanced: str = "5.0.0", code: int = 550) -> Reject:
    """``raise permanent("…")``: a 5xx with the reason; the sender bounces the message."""
    return Reject(Reply(code, reason, enhanced))


def seconds(value: str) -> float | None:
    """A target's ``timeout=`` value: a number of seconds above 0 (and finite), else None, so
    that each target says in its own words what to write."""
    try:
        number = float(value)
    except ValueError:
        return None
    return number if 0 < number < float("inf") else None


def reply_text(text: str, limit: int = 200) -> str:
    """One line of printable ASCII, at most ``limit`` characters: what a program or a web
    application says may go into an SMTP reply without breaking its framing."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    line = _UNSAFE.sub("?", line)
    return line if len(line) <= limit else line[: limit - 3] + "..."
