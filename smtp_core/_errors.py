"""The two ways the engine refuses to go on: the application misused it, or the peer broke it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._events import Reply

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base class of the engine's errors."""


class LocalProtocolError(ProtocolError):
    """The application asked for something the protocol forbids (a reply that fits no command,
    a command in the wrong state). A bug in the caller, not in the peer."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the framing beyond recovery.

    ``reply_hint`` is what to send before closing (``None``: close without a word, as the PROXY
    protocol asks for a malformed header). The connection is closed afterwards.
    """

    def __init__(self, message: str, reply_hint: Reply | None) -> None:
        super().__init__(message)
        self.reply_hint = reply_hint
