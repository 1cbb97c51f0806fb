"""smtp_sync: smtpmux over blocking sockets (thread per connection), for code without an event loop."""

from ._server import Server

__all__ = ("Server",)
