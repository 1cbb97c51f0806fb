"""smtp_anyio: smtpmux on anyio, so the same server and client run on asyncio and trio."""

from ._client import Client, connect
from ._server import Server, serve

__all__ = ("Client", "Server", "connect", "serve")

for _name in __all__:  # tracebacks and reprs say smtp_anyio.X, not the private module it lives in
    _value = globals()[_name]
    if isinstance(_value, type) and _value.__module__.startswith(__name__ + "._"):
        _value.__module__ = __name__
del _name, _value
