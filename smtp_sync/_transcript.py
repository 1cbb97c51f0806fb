"""Play the same ``C:``/``S:`` scripts as ``smtp_core.run_transcript`` against a live server.

The script syntax and the matching rule are smtp_core's (``script_steps``, ``check_reply``);
this module only adds a socket. Use it to check a deployed server, or one started in a test.
"""

from __future__ import annotations

import socket
import ssl

from smtp_core import TranscriptError
from smtp_core.adapter import TranscriptReplies, check_reply, script_steps

__all__ = ["play_transcript"]


class _Replies:
    """Complete replies read from the socket, multi-line ones joined with "\\n"; smtp_core's
    ``TranscriptReplies`` frames them, this only reads."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.replies = TranscriptReplies()

    def next(self) -> str | None:
        while (reply := self.replies.next()) is None:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not data:
                return None
            self.replies.feed(data)
        return reply


def play_transcript(
    script: str,
    host: str,
    port: int,
    *,
    timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
) -> list[str]:
    """Connect, play ``script`` and return every reply; raise TranscriptError at a mismatch.

    With ``ssl_context`` the connection is TLS from the start (implicit TLS, RFC 8314).
    """
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock: socket.socket = raw
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(raw, server_hostname=host)
        replies = _Replies(sock)
        seen: list[str] = []
        for number, side, text in script_steps(script):
            if side == "C":
                try:
                    sock.sendall(text.encode("utf-8") + b"\r\n")
                except OSError as exc:
                    raise TranscriptError(f"line {number}: cannot send: {exc}") from None
            else:
                reply = replies.next()
                check_reply(number, text, reply)
                assert reply is not None
                seen.append(reply)
        return seen
