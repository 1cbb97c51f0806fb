"""smtp_sync: smtpmux over blocking sockets, a thread per connection, for code without a loop."""

from ._client import Client, connect
from ._server import Server
from ._transcript import play_transcript

__all__ = ("Client", "Server", "connect", "play_transcript")

for _name in __all__:  # tracebacks and reprs say smtp_sync.X, not the private module it lives in
    _value = globals()[_name]
    if isinstance(_value, type) and _value.__module__.startswith(__name__ + "._"):
        _value.__module__ = __name__
del _name, _value
