"""smtp_sync.adapter: the parts of a server adapter that do I/O and any adapter can reuse.

smtp_core stays pure (no files, no clock, no process ids), so what every server loop needs
besides it lives here, in the lowest I/O layer, and smtp_anyio imports it from here: the spool
file behind the Session's ``Spool`` actions, the arguments of a ``Call`` (a spooled ``Deliver``
gets the spool file as its content), session ids unique across processes, the wall clock, and
telling ``async def`` handlers apart (a callable object's ``__call__`` too), and a server's
SessionFactory built from its settings (``session_factory``, for any ``Listener``).
"""

from ._spool import (
    Listener,
    SpoolFile,
    call_arguments,
    is_async_callable,
    new_session_id,
    session_factory,
    utc_now,
)

__all__ = (
    "Listener",
    "SpoolFile",
    "call_arguments",
    "is_async_callable",
    "new_session_id",
    "session_factory",
    "utc_now",
)

SpoolFile.__module__ = Listener.__module__ = (
    __name__  # tracebacks name the module a user imports it from
)
