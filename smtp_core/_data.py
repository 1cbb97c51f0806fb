"""Reading DATA content: strict CRLF.CRLF end, dot-unstuffing and checks over whole buffers.

No Python loop runs per line: each call scans the buffered bytes with ``bytes.find``,
``split``/``join`` and the C newline decoder of ``io`` (a regex only for bare LFs), emits
everything up to the last line end and keeps the rest, a partial line. Only ``CRLF.CRLF`` ends
the data (SMTP smuggling: ``LF.LF``, ``CR.CR``, ``LF.CRLF`` and friends are content). A bare LF
either counts as a line end and is delivered as CRLF (``normalize``) or makes the message fail
(``reject``), as Postfix's ``smtpd_forbid_bare_newline`` does; a bare CR is never a line end.
"""

from __future__ import annotations

import io
import re

from ._events import DataChunk, EndOfData, Reply

__all__ = ["DotReader"]

_TERMINATOR = b"\r\n.\r\n"
_STUFFED = b"\r\n."  # a line that starts with a dot: stuffed, or the terminator
_NOT_A_TERMINATOR = b"\r\x0b"  # what follows a "\r\n." in no terminator sorts at or above
_NEAR = 4096  # octets after the first dotted line searched for the terminator before splitting
_LONG_PARTIAL_LINE = 4096  # a partial line this long is passed on before its line end arrives
# What ``IncrementalNewlineDecoder.newlines`` says when every LF came after a CR.
_NO_BARE_LF = frozenset({None, "\r", "\r\n", ("\r", "\r\n")})
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
        self._scanned = 0  # the buffer up to here holds no CRLF but maybe one at 0
        self._run = 0  # non-LF octets at the end of what was scanned so far
        self._started = False
        self._strip_prefix = True
        self._finished = False
        self._newlines = io.IncrementalNewlineDecoder(None, translate=False)

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
        last = buf.rfind(b"\r\n", self._scanned)
        self._scanned = 0
        if last > 0:
            keep = last  # the last line end stays in the buffer: the next piece starts with it
        else:  # no line end to cut at: cut mid-line, never right after CR or LF
            keep = len(buf)
            if keep < _LONG_PARTIAL_LINE:  # wait for its line end (one chunk per read, not two)
                self._scanned = max(keep - 1, 0)  # holds no CRLF: not searched again
                return None
            if buf[-1] in b"\r\n":
                keep -= 1
        # The CRLF put in front above is not the client's: leave it out, unless the first line
        # starts with a dot, which the unstuffing below must see after a CRLF.
        start = 2 if self._strip_prefix and not buf.startswith(_STUFFED) else 0
        # Every "\r\n." (a stuffed dot or the terminator) holds a dot: when the content has no
        # dot at all, one memchr-fast scan settles both questions.
        dot = buf.find(b".", start, keep)
        stuffed = -1 if dot < 0 else buf.find(_STUFFED, max(dot - 2, 0), keep)
        end = -1
        piece: bytes | None = None
        parts: list[bytes] | None = None
        with memoryview(buf) as view:
            if stuffed >= 0:
                # A short message ends near its first dotted line (mostly, that line is the
                # terminator): look there first, so pipelined messages cost their own length.
                end = buf.find(_TERMINATOR, stuffed, stuffed + _NEAR)
                if end < 0:
                    piece = bytes(view[start:keep])
                    parts = piece.split(_STUFFED)
                    # Each part after the first begins with what followed a "\r\n.": the
                    # terminator's begins with CRLF, or is empty when that CRLF began the next
                    # "\r\n." (or the piece ends with "\r\n." and the buffer's last CRLF
                    # follows). Both sort below b"\r\x0b", as almost no real line does, so one
                    # C-level min() says whether to look for the terminator at all.
                    if min(parts[1:]) < _NOT_A_TERMINATOR:
                        end = buf.find(_TERMINATOR, stuffed)
            if end >= 0:
                keep = end + 2  # the CRLF ending the last line belongs to the content
                piece = bytes(view[start:keep])
                parts = piece.split(_STUFFED) if stuffed < end else None
                self._finished = True
            elif piece is None:
                piece = bytes(view[start:keep])
        del buf[: keep + 3 if end >= 0 else keep]  # the terminator's ".\r\n" too
        data = self._check(piece, parts, self._strip_prefix and not start)
        if data:
            return DataChunk(data)
        return self.read(buf) if self._finished else None

    def _check(self, piece: bytes, parts: list[bytes] | None, skip_prefix: bool) -> bytes:
        """The piece as content, or b"" once the message is refused (its size still counts).

        ``parts``: the piece split at each "\r\n." (None when it holds none).
        ``skip_prefix``: the piece begins with the CRLF put in front of the first line.
        """
        if self._has_bare_lf(piece):
            self._bare_lf = self._bare_lf or self._reject_bare_lf
            piece = _BARE_LF.sub(b"\r\n", piece)
            parts = piece.split(_STUFFED) if b"\r\n." in piece else None
        if self._max_line and not self._line_too_long:
            self._line_too_long = self._too_long(piece, 2 if skip_prefix else 0, parts)
        data = piece if parts is None else b"\r\n".join(parts)
        if self._strip_prefix:
            if skip_prefix:  # the first line started with a dot: now drop our CRLF
                data = data[2:]
            self._strip_prefix = False
        self.size += len(data)
        if self._max_size is not None and self.size > self._max_size:
            self._too_big = True
        return data if self.reject is None else b""

    def _has_bare_lf(self, piece: bytes) -> bool:
        """Does an LF follow anything but a CR? The newline decoder's C loop answers in one
        pass (two ``count`` calls take three); latin-1 maps each octet to one character."""
        newlines = self._newlines
        newlines.reset()
        newlines.decode(piece.decode("latin-1"), True)
        return newlines.newlines not in _NO_BARE_LF

    def _too_long(self, piece: bytes, start: int, parts: list[bytes] | None) -> bool:
        """Does a line reach ``max_line`` octets before its LF? Jumps from the last LF of one
        window of ``max_line`` octets to the next, so it costs one ``rfind`` per window.

        ``start``: where the client's octets begin (after the CRLF put in front of them);
        ``parts``: the piece split at each "\\r\\n.", as ``read`` made them."""
        limit = self._max_line
        first_lf = piece.find(b"\n", start)
        if first_lf < 0:
            self._run += len(piece) - start
            return self._run >= limit
        if self._run + first_lf - start >= limit:
            return True
        if parts is not None and max(map(len, parts)) + 2 < limit:
            # A line after the first LF lies inside one part, but for a leading dot and a
            # trailing CR that belong to the "\r\n." around it: none is long.
            self._run = len(piece) - piece.rfind(b"\n") - 1
            return False
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
