"""Start real servers for tests: the anyio Server on asyncio or trio (in a blocking portal),
or the sync Server in a thread, all on 127.0.0.1 with a free port, stopped on exit."""

from __future__ import annotations

import resource
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trustme
from anyio.from_thread import start_blocking_portal

import smtp_anyio
import smtp_sync
from smtp_core import Envelope, Reject, Reply

KINDS = ["asyncio", "trio", "sync"]


class Collect:
    """A handler that keeps every envelope (content read into bytes), thread-safe."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.contents: list[bytes] = []
        self._lock = threading.Lock()

    def __call__(self, envelope: Envelope) -> None:
        with self._lock:
            self.envelopes.append(envelope)
            self.contents.append(envelope.as_bytes())


def refuse(envelope: Envelope) -> None:
    """A handler that refuses every message."""
    raise Reject(Reply(554, "Spam, go away", "5.7.1"))


@contextmanager
def running(kind: str, router: Any, **options: Any) -> Iterator[Any]:
    if kind == "sync":
        with smtp_sync.Server(router, port=0, **options) as server:
            yield server
        return
    with start_blocking_portal(kind) as portal:
        server = smtp_anyio.Server(router, port=0, **options)
        with portal.wrap_async_context_manager(server):
            yield server


class TLS:
    """A throwaway CA (trustme) with a server context and a client context that trusts it."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert("localhost", "127.0.0.1")
        self.server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(self.server)
        self.client = ssl.create_default_context()
        self.ca.configure_trust(self.client)


def raise_file_limit(wanted: int = 4096) -> None:
    """Raise this process's soft limit on open files toward ``wanted`` (as far as the hard
    limit allows): tests that hold hundreds of connections hold both ends of each."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def ipv6_loopback() -> bool:
    """This machine can bind ::1 (some CI containers have no IPv6)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True
