"""A pytest plugin for people testing their own mail-sending code against a real SMTP server.

Installed with smtpmux (entry point ``pytest11``), it offers two fixtures:

``smtp_server``
    A live smtpmux server at ``.host`` and ``.port`` (127.0.0.1 and a free port), in a
    background thread, stopped when the test ends. It accepts mail for any address and keeps
    it: ``.envelopes`` (smtp_core Envelopes) and ``.messages`` (parsed
    ``email.message.EmailMessage``); with ``tls=True``, ``.client_ssl_context`` trusts its
    throwaway certificate. Configure it with
    ``@pytest.mark.smtp_server(tls=True, auth={"user": "password"}, max_message_size=...,
    max_recipients=..., lmtp=True, require_auth=True, hostname=...)``.

``smtp_transcript``
    ``smtp_transcript(script, router=None, **options)`` plays a ``C:``/``S:`` script against
    an in-memory Session (smtp_core.run_transcript); with no router, mail goes to a collector
    the result's ``deliveries`` show.
"""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from typing import Any

import attrs
import pytest

from smtp_core import (
    Credentials,
    Envelope,
    Handler,
    LoginMechanism,
    PlainMechanism,
    Policy,
    Router,
    ServerConfig,
    SessionInfo,
    TranscriptResult,
    run_transcript,
)

from ._server import Server

__all__ = ["SMTPTestServer", "smtp_server", "smtp_transcript"]

_OPTIONS = frozenset(
    {"tls", "auth", "max_message_size", "max_recipients", "lmtp", "require_auth", "hostname"}
)


class _Accounts(Policy):
    def __init__(self, users: dict[str, str], **limits: Any) -> None:
        super().__init__(**limits)
        self.users = users

    def authenticate(self, credentials: Credentials, info: SessionInfo) -> str | None:
        if self.users.get(credentials.username) == credentials.password:
            return credentials.username
        return None


class SMTPTestServer:
    """The live server a test talks to, and what it received."""

    def __init__(self, server: Server, client_context: ssl.SSLContext | None) -> None:
        self._server = server
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self.envelopes: list[Envelope] = []
        #: an SSLContext that trusts the server's throwaway certificate (``tls=True`` only)
        self.client_ssl_context = client_context

    @property
    def host(self) -> str:
        """The address the server listens on: ``127.0.0.1``."""
        return self._server.host

    @property
    def port(self) -> int:
        """The port the server listens on (a free one, chosen for this test)."""
        return self._server.port

    @property
    def messages(self) -> list[EmailMessage]:
        """Every received message, parsed with the modern ``email.policy.default``."""
        with self._lock:
            contents = [envelope.as_bytes() for envelope in self.envelopes]
        return [
            email.message_from_bytes(content, policy=email.policy.default) for content in contents
        ]

    def clear(self) -> None:
        with self._lock:
            self.envelopes.clear()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Envelope]:
        """Block until ``count`` messages arrived (code under test may send from a thread)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.envelopes) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.envelopes)} of {count} messages arrived")
                self._arrived.wait(left)
            return list(self.envelopes)

    def deliver(self, envelope: Envelope) -> None:
        """The handler: keep the envelope with its content in memory."""
        kept = attrs.evolve(envelope, content=envelope.as_bytes())
        with self._arrived:
            self.envelopes.append(kept)
            self._arrived.notify_all()


def _tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    try:
        import trustme
    except ImportError:  # pragma: no cover - depends on the environment
        message = "smtp_server(tls=True) needs trustme: pip install trustme"
        raise pytest.UsageError(message) from None
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


@pytest.fixture
def smtp_server(request: pytest.FixtureRequest) -> Iterator[SMTPTestServer]:
    """A live SMTP server at ``.host`` and ``.port`` (127.0.0.1, a free port) that keeps the mail
    it receives: ``.envelopes``, ``.messages``, ``.wait_for(n)``, ``.clear()``. Configure it with
    ``@pytest.mark.smtp_server(tls=True, auth={"user": "password"}, require_auth=True,
    max_recipients=5, max_message_size=1000, lmtp=True, hostname="smtp.test")``; with
    ``tls=True``, ``.client_ssl_context`` trusts its throwaway certificate.

    The server (smtp_sync, in a background thread) accepts mail for any address and is stopped
    when the test ends; ``envelopes`` are smtp_core Envelopes with their content in memory,
    ``messages`` the same parsed as ``email.message.EmailMessage``.
    """
    marker = request.node.get_closest_marker("smtp_server")
    options: dict[str, Any] = dict(marker.kwargs) if marker else {}
    unknown = set(options) - _OPTIONS
    if unknown:
        raise pytest.UsageError(
            f"unknown smtp_server options: {sorted(unknown)}; the options are: "
            + ", ".join(sorted(_OPTIONS))
        )
    users: dict[str, str] = options.get("auth") or {}
    server_context = client_context = None
    if options.get("tls"):
        server_context, client_context = _tls_contexts()
    config = ServerConfig(
        hostname=options.get("hostname", "smtp.test"),
        lmtp=bool(options.get("lmtp", False)),
        max_message_size=options.get("max_message_size", 32 * 1024 * 1024),
        auth_mechanisms=(PlainMechanism, LoginMechanism) if users else (),
        auth_require_tls=bool(options.get("tls")),
    )
    policy = _Accounts(
        users,
        max_recipients=options.get("max_recipients", 100),
        auth_required=bool(options.get("require_auth", False)),
    )
    router: Router[Handler] = Router()
    server = Server(router, port=0, config=config, policy=policy, ssl_context=server_context)
    kit = SMTPTestServer(server, client_context)
    router.add("*@*", kit.deliver)
    with server:
        yield kit


@pytest.fixture
def smtp_transcript() -> Callable[..., TranscriptResult]:
    """``smtp_transcript(script, router=None, **options)`` plays a ``C:``/``S:`` script against
    an in-memory smtpmux Session (smtp_core.run_transcript) and raises TranscriptError at the
    first reply that does not match; with no router every address is accepted, and the
    result's ``deliveries`` show what arrived.
    """

    def play(script: str, router: Router[Any] | None = None, **options: Any) -> TranscriptResult:
        if router is None:
            router = Router()
            router.add("*@*", lambda envelope: None)
        return run_transcript(script, router, **options)

    return play


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "smtp_server(**options): configure the smtp_server fixture (smtpmux)"
    )
