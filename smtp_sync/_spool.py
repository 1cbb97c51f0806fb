"""What both adapters share: the spool file behind the Session's Spool actions, the call
arguments of a Deliver, session ids, the wall clock, telling ``async def`` handlers apart, and
a server's SessionFactory built from its settings."""

from __future__ import annotations

import inspect
import itertools
import os
import ssl
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, BinaryIO, Protocol

import attrs

from smtp_core import Admission, Handler, Metrics, Policy, Router, ServerConfig
from smtp_core.adapter import Call, Deliver, SessionFactory, Spool

__all__ = [
    "Listener",
    "SpoolFile",
    "call_arguments",
    "is_async_callable",
    "new_session_id",
    "session_factory",
    "utc_now",
]


_ids = itertools.count(1)


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_session_id() -> str:
    """Unique across the processes of one host: the process id, then a counter (hex)."""
    return f"{os.getpid():x}{next(_ids):06x}"


class SpoolFile:
    """The current transaction's spool file, created when the Session first spools."""

    __slots__ = ("file",)  # one per connection (W5)

    def __init__(self) -> None:
        self.file: BinaryIO | None = None

    def write(self, action: Spool) -> None:
        if action.start or self.file is None:
            self.close()
            self.file = tempfile.TemporaryFile()  # noqa: SIM115 - lives across actions
        self.file.write(action.data)

    def rewound(self) -> BinaryIO:
        assert self.file is not None, "a spooled delivery without a spool file"
        self.file.flush()
        self.file.seek(0)
        return self.file

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def call_arguments(action: Call, spool: SpoolFile) -> tuple[object, ...]:
    """The arguments to call ``action.function`` with: a spooled envelope gets its file."""
    if isinstance(action, Deliver) and action.spooled:
        return (attrs.evolve(action.envelope, content=spool.rewound()),)
    return action.args


def is_async_callable(function: object) -> bool:
    """``async def``, or an object whose ``__call__`` is: a handler or hook to await, which a
    blocking caller cannot run."""
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004 - handler objects
    )


class Listener(Protocol):
    """What a server knows about one listener: the settings its Sessions are built from."""

    @property
    def router(self) -> Router[Handler]: ...
    @property
    def config(self) -> ServerConfig: ...
    @property
    def policy(self) -> Policy: ...
    @property
    def clock(self) -> Callable[[], datetime]: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def admission(self) -> Admission[Any] | None: ...
    @property
    def ssl_context(self) -> ssl.SSLContext | None: ...
    @property
    def implicit_tls(self) -> bool: ...
    @property
    def proxy_protocol_from(self) -> frozenset[str]: ...


def session_factory(listener: Listener, previous: SessionFactory | None) -> SessionFactory:
    """The listener's SessionFactory: ``previous`` while it still serves the listener's
    router, config, policy and PROXY trust list, a new one once a reload swapped them."""
    if previous is not None and previous.serves(
        listener.router, listener.config, listener.policy, listener.proxy_protocol_from
    ):
        return previous
    return SessionFactory(
        router=listener.router,
        config=listener.config,
        policy=listener.policy,
        clock=listener.clock,
        new_id=new_session_id,
        metrics=listener.metrics,
        admission=listener.admission,
        tls_configured=listener.ssl_context is not None,
        implicit_tls=listener.implicit_tls,
        proxy_protocol_from=listener.proxy_protocol_from,
    )
