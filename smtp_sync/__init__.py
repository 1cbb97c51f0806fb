"""smtp_sync: smtpmux over blocking sockets, a thread per connection, for code without a loop."""

from ._client import Client, connect
from ._server import Server
from ._transcript import play_transcript

__all__ = ("Client", "Server", "connect", "play_transcript")
