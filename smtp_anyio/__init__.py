"""smtp_anyio: smtpmux on anyio, so the same server runs on asyncio and trio."""

from ._server import Server, serve

__all__ = ("Server", "serve")
