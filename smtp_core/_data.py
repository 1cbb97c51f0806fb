"""Reading DATA content: strict CRLF.CRLF end, dot-unstuffing and checks over whole buffers.

No Python loop runs per line: each call scans the buffered bytes with ``bytes.find``,
``count``, ``replace`` and one compiled regex, emits what can be emitted and keeps at most a
partial terminator. Only ``CRLF.CRLF`` ends the data (SMTP smuggling: ``LF.LF``, ``CR.CR``,
``LF.CRLF`` and friends are content). A bare LF either counts as a line end and is delivered
as CRLF (``normalize``) or makes the message fail (``reject``), as Postfix's
``smtpd_forbid_bare_newline`` does; a bare CR is never a line end.
"""

from __future__ import annotations

import re

from ._events import DataChunk, EndOfData, Reply

__all__ = ["DotReader"]

_TERMINATOR = b"\r\n.\r\n"
_BARE_LF = re.compile(rb"(?<!\r)\n")

REPLY_TOO_BIG = Reply(552, "Message exceeds fixed maximum message size", "5.3.4")
REPLY_LINE_TOO_LONG = Reply(500, "Line too long (RFC 5321 4.5.3.1.6)", "5.5.2")
REPLY_BARE_LF = Reply(554, "Bare <LF> in message content: lines must end with <CR><LF>", "5.6.0")


class DotReader:
    """One message's DATA content, read from the connection's receive buffer.

    The buffer starts as if a CRLF preceded it (the one that ended the DATA command), so a
    first line of "." ends the message and a first line of ".." is unstuffed, like any other.
    Between calls the buffer begins either at a CRLF or mid-line after a byte that is neither
    CR nor LF, so no pattern we look for is ever split between two emitted pieces.
    """

    def __init__(
        self, max_size: int | None, max_line_length: int | None, reject_bare_lf: bool
    ) -> None:
        self.size = 0
        # Each check keeps its own verdict, so the reply does not depend on how the bytes were
        # split: size first, then bare LF, then line length (see ``reject``).
        self._too_big = False
        self._bare_lf = False
        self._line_too_long = False
        self._max_size = max_size
        self._max_line = max_line_length or 0
        self._reject_bare_lf = reject_bare_lf
        self._run = 0  # non-LF octets at the end of what was scanned so far
        self._started = False
        self._strip_prefix = True
        self._finished = False

    @property
    def reject(self) -> Reply | None:
        """Why the message is refused (None: it is not); content stops flowing once set."""
        if self._too_big:
            return REPLY_TOO_BIG
        if self._bare_lf:
            return REPLY_BARE_LF
        if self._line_too_long:
            return REPLY_LINE_TOO_LONG
        return None

    def read(self, buf: bytearray) -> DataChunk | EndOfData | None:
        """Consume what can be consumed; None means more bytes are needed."""
        if self._finished:
            if self.reject is None:
                return EndOfData(self.size)
            return EndOfData(self.size, self.reject, self.reject)
        if not self._started:
            buf[0:0] = b"\r\n"
            self._started = True
        # Every "\r\n." (a stuffed dot or the terminator) holds a dot: when the content has no
        # dot at all, one memchr-fast scan settles both questions.
        dot = buf.find(b".")
        stuffed = -1 if dot < 0 else buf.find(b"\r\n.", dot - 2 if dot > 2 else 0)
        end = -1 if stuffed < 0 else buf.find(_TERMINATOR, stuffed)
        if end >= 0:
            keep = end + 2  # the CRLF ending the last line belongs to the content
            consume = end + len(_TERMINATOR)
            self._finished = True
        else:
            keep = buf.rfind(b"\r\n")
            if keep <= 0:  # no line end to cut at: cut mid-line, never right after CR or LF
                size = len(buf)
                if size < len(_TERMINATOR):
                    return None
                keep = size - 1 if buf[-1] in b"\r\n" else size
            consume = keep
        # The CRLF put in front above is not the client's: leave it out, unless the first line
        # starts with a dot, which the unstuffing below must see after a CRLF.
        start = 2 if self._strip_prefix and stuffed != 0 else 0
        if start:
            self._strip_prefix = False
        with memoryview(buf) as view:
            piece = bytes(view[start:keep])
        del buf[:consume]
        data = self._check(piece, stuffed >= 0 and stuffed + 3 <= keep)
        if data:
            return DataChunk(data)
        return self.read(buf) if self._finished else None

    def _check(self, piece: bytes, stuffed: bool) -> bytes:
        """The piece as content, or b"" once the message is refused (its size still counts).

        ``stuffed``: the piece may hold a dot-stuffed line.
        """
        if piece.count(b"\n") != piece.count(b"\r\n"):
            self._bare_lf = self._bare_lf or self._reject_bare_lf
            piece = _BARE_LF.sub(b"\r\n", piece)
            stuffed = True
        if not self._line_too_long and self._max_line and self._too_long(piece):
            self._line_too_long = True
        data = piece.replace(b"\r\n.", b"\r\n") if stuffed else piece
        if self._strip_prefix:  # the first line started with a dot: now drop our CRLF
            data = data[2:]
            self._strip_prefix = False
        self.size += len(data)
        if self._max_size is not None and self.size > self._max_size:
            self._too_big = True
        return data if self.reject is None else b""

    def _too_long(self, piece: bytes) -> bool:
        """Does a line reach ``max_line`` octets before its LF? Jumps from the last LF of one
        window of ``max_line`` octets to the next, so it costs one ``rfind`` per window."""
        limit = self._max_line
        first_lf = piece.find(b"\n")
        if first_lf < 0:
            self._run += len(piece)
            return self._run >= limit
        if self._run + first_lf >= limit:
            return True
        pos = first_lf + 1
        size = len(piece)
        rfind = piece.rfind
        while size - pos >= limit:
            lf = rfind(b"\n", pos, pos + limit)
            if lf < 0:
                return True  # ``limit`` octets without a line end
            pos = lf + 1
        self._run = size - piece.rfind(b"\n") - 1
        return False
