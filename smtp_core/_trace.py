"""The protocol trace every Session logs at DEBUG (``smtpmux serve --debug``), secrets redacted.

Every command line and reply line goes to the ``smtpmux.trace`` logger as ``C:`` or ``S:``.
Message content is summarised by size, not copied: DATA content by the engine's state, and
each BDAT chunk (RFC 3030), which follows its command in the same read, by the size its
command declares. SASL secrets never reach the log: an AUTH line keeps only its mechanism
name, and every client line after it is replaced by ``<redacted>`` until the server answers
with something other than a 334 challenge. That rule needs no knowledge of the mechanism and
also covers clients that (wrongly) send their responses before the challenge arrives.
"""

from __future__ import annotations

import logging

from ._server import _BDAT, ServerConnection
from ._state import ServerState

__all__ = ["ProtocolTrace"]

log = logging.getLogger("smtpmux.trace")

_MAX_SHOWN = 200  #: characters of a line shown in the trace
_MAX_PARTIAL = 4096  #: an unterminated line longer than this is shown as it is


class ProtocolTrace:
    """The trace of one connection. The Session calls ``received`` before it feeds bytes to
    the engine and ``sent`` for every Send it returns; both return at once when DEBUG is off.
    It reads the engine's state and knows the session by its id only (no import of the
    Session, which owns it)."""

    __slots__ = ("_chunk_left", "_conn", "_in_auth", "_partial", "_session_id", "enabled")

    def __init__(self, conn: ServerConnection, session_id: str) -> None:
        self._conn = conn
        self._session_id = session_id
        self._partial = b""
        self._chunk_left = 0  # octets of the current BDAT chunk not yet seen
        self._in_auth = False
        # Whether DEBUG was on when the connection began: the Session reads this attribute
        # before each call, so with --debug off a round costs one attribute read, not a
        # logger's level look-up. A connection keeps tracing, or not, to its end.
        self.enabled = log.isEnabledFor(logging.DEBUG)

    def received(self, data: bytes) -> None:
        if not self.enabled:
            return
        if not data:
            self._line("C:", "<end of stream>")
            return
        if self._conn.state is ServerState.DATA:
            self._partial = b""
            self._line("C:", f"<{len(data)} octets of message content>")
            return
        data = self._partial + data
        self._partial = b""
        start = 0
        while start < len(data):
            if self._chunk_left:  # a BDAT chunk: octets, not lines
                taken = min(self._chunk_left, len(data) - start)
                self._chunk_left -= taken
                start += taken
                self._line("C:", f"<{taken} octets of message content>")
                continue
            end = data.find(b"\n", start)
            if end < 0:
                self._partial = data[start:]
                if len(self._partial) > _MAX_PARTIAL:
                    self._line("C:", self._redacted(self._partial))
                    self._partial = b""
                return
            raw = data[start:end].rstrip(b"\r")
            start = end + 1
            self._line("C:", self._redacted(raw))
            self._chunk_left = self._chunk_size(raw)

    def _chunk_size(self, line: bytes) -> int:
        """The octets of content that follow a BDAT command line, read as the engine does;
        0 for any other line."""
        verb, _, argument = line.partition(b" ")
        if self._in_auth or verb.upper() != b"BDAT" or not argument.isascii():
            return 0
        match = _BDAT.fullmatch(argument.decode("ascii").strip(" "))
        return int(match[1]) if match else 0

    def sent(self, data: bytes) -> None:
        if not self.enabled:
            return
        for raw in data.split(b"\r\n"):
            if raw:
                self._in_auth = self._in_auth and raw.startswith(b"334")
                self._line("S:", raw.decode("utf-8", "backslashreplace"))

    def _redacted(self, line: bytes) -> str:
        words = line.split(None, 2)
        if words and words[0].upper() == b"AUTH":
            self._in_auth = True
            shown = b" ".join(words[:2])
            return shown.decode("ascii", "backslashreplace") + (" <redacted>" * (len(words) > 2))
        if self._in_auth:
            return "<redacted>"
        return line.decode("utf-8", "backslashreplace")

    def _line(self, who: str, text: str) -> None:
        if len(text) > _MAX_SHOWN:
            text = f"{text[:_MAX_SHOWN]}... ({len(text)} characters)"
        log.debug("%s %s %s", self._session_id, who, text)
