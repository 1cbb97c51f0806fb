"""smtp_sync: smtpmux over blocking sockets, a thread per connection, for code without a loop."""

from ._server import Server
from ._transcript import play_transcript

__all__ = ("Server", "play_transcript")
