"""Open our own clients for tests: the anyio client on asyncio or trio (run in a blocking portal,
so one scenario drives every kind), or the blocking client. Also free ports for peers that
cannot bind port 0 themselves."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

import smtp_anyio
import smtp_sync
from smtp_core import Extensions, Reply, SendResult


class Blocking:
    """The anyio client seen through a portal: the same methods as smtp_sync.Client."""

    def __init__(self, portal: BlockingPortal, client: smtp_anyio.Client) -> None:
        self._portal = portal
        self._client = client

    def send_message(self, message: Any, **options: Any) -> SendResult:
        return self._portal.call(partial(self._client.send_message, message, **options))

    def noop(self) -> Reply:
        return self._portal.call(self._client.noop)

    @property
    def extensions(self) -> Extensions | None:
        return self._client.extensions

    @property
    def tls_active(self) -> bool:
        return self._client.tls_active

    @property
    def authenticated(self) -> bool:
        return self._client.authenticated

    @property
    def round_trips(self) -> int:
        return self._client.round_trips


@contextmanager
def client(kind: str, port: int, **options: Any) -> Iterator[Any]:
    """``with client("trio", port, tls="none") as c: c.send_message(...)``."""
    if kind == "sync":
        with smtp_sync.connect("127.0.0.1", port, **options) as sync_client:
            yield sync_client
        return
    with start_blocking_portal(kind) as portal:
        async_client = smtp_anyio.connect("127.0.0.1", port, **options)
        with portal.wrap_async_context_manager(async_client):
            yield Blocking(portal, async_client)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
