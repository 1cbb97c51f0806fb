"""The one reader of server replies: bytes in, complete (multi-line) replies out (sans-IO).

Used by the client engine (``ClientConnection``) and by both transcript players (in memory and
live), so a reply is framed, bounded and checked the same way everywhere. It only frames:
which command a reply answers, and what its text means, is the caller's business.

- A line ends in CRLF or in a bare LF (replies are only read, so leniency costs nothing here).
- Every line is ``NNN`` (a code from 2xx to 5xx), then ``-`` (more lines follow), a space, or
  nothing; every line of one reply carries the same code (RFC 5321 §4.2.1).
- A line longer than ``max_line`` octets (with its line end) or a reply longer than
  ``max_reply`` octets fails before the rest of it is buffered, so memory stays bounded; each
  octet is looked at once (the search for LF resumes where the last one stopped).

Any breach is a ``RemoteProtocolError`` (no reply hint: a client has nobody to answer); the
reader is then unusable, and the caller stops.
"""

from __future__ import annotations

from ._errors import RemoteProtocolError

__all__ = ["MAX_REPLY_LINE", "MAX_REPLY_SIZE", "ReplyReader"]

MAX_REPLY_LINE = 2048  #: octets per reply line with CRLF (RFC 5321: 512; servers exceed it)
MAX_REPLY_SIZE = 64 * 1024  #: octets per (multi-line) reply


class ReplyReader:
    """Feed the server's bytes with ``feed``; ``next_reply`` returns ``(code, lines)`` for each
    complete reply, where ``lines`` are the reply's lines as sent (code and separator
    included, line ends removed, UTF-8 decoded with replacement), or None until one is
    complete."""

    def __init__(self, *, max_line: int = MAX_REPLY_LINE, max_reply: int = MAX_REPLY_SIZE):
        self.max_line = max_line
        self.max_reply = max_reply
        self._buffer = bytearray()
        self._scanned = 0  # how far the buffer is known to hold no LF
        self._code: int | None = None  # the code of the reply being read
        self._lines: list[str] = []  # its lines so far
        self._octets = 0  # and their size

    @property
    def pending(self) -> bool:
        """Part of a reply is buffered (at the end of the stream: the server stopped mid-reply)."""
        return bool(self._buffer) or bool(self._lines)

    def feed(self, data: bytes | bytearray) -> None:
        self._buffer += data

    def clear(self) -> None:
        """Drop every byte not read yet (after STARTTLS's 220: RFC 3207 §4.2, CVE-2011-0411)."""
        self._buffer.clear()
        self._scanned = 0
        self._code, self._lines, self._octets = None, [], 0

    def next_reply(self) -> tuple[int, list[str]] | None:
        """Take one complete reply off the buffer, if there is one."""
        buf = self._buffer
        while True:
            end = buf.find(b"\n", self._scanned)
            if end < 0:
                self._scanned = len(buf)
                if len(buf) > self.max_line:
                    raise self._fail(f"reply line longer than {self.max_line} octets")
                if self._octets + len(buf) > self.max_reply:
                    raise self._fail(f"reply longer than {self.max_reply} octets")
                return None
            length = end + 1
            if length > self.max_line:
                raise self._fail(f"reply line longer than {self.max_line} octets")
            line = bytes(buf[: end - 1 if end and buf[end - 1] == 0x0D else end])
            del buf[:length]
            self._scanned = 0
            self._octets += length
            if self._octets > self.max_reply:
                raise self._fail(f"reply longer than {self.max_reply} octets")
            code_digits, separator = line[:3], line[3:4]
            if not (
                len(code_digits) == 3
                and code_digits.isdigit()
                and code_digits[0] in b"2345"
                and separator in (b"", b" ", b"-")
            ):
                raise self._fail(f"malformed reply line: {line[:80]!r}")
            code = int(code_digits)
            if self._code is None:
                self._code = code
            elif code != self._code:
                raise self._fail(f"reply code {code} inside a {self._code} reply")
            self._lines.append(line.decode("utf-8", "replace"))
            if separator != b"-":
                lines = self._lines
                self._code, self._lines, self._octets = None, [], 0
                return code, lines

    def _fail(self, message: str) -> RemoteProtocolError:
        self.clear()
        return RemoteProtocolError(message, None)
