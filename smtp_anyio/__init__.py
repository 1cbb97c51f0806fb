"""smtp_anyio: smtpmux on anyio, so the same server and client run on asyncio and trio."""

from ._client import Client, connect
from ._server import Server, serve

__all__ = ("Client", "Server", "connect", "serve")
