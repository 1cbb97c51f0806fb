"""smtp_sync: smtpmux over blocking sockets, a thread per connection, for code without a loop."""

from ._server import Server

__all__ = ("Server",)
