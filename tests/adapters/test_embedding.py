"""What embedding a server gets without asking, on every backend: AUTH offered because the
policy authenticates, no asyncio warning when a TLS client hangs up, and a blocking server that
refuses async handlers when it is built rather than when mail arrives."""

from __future__ import annotations

import logging
import re
import smtplib
import time
from typing import Any

import pytest

import smtp_sync
from smtp_core import (
    Credentials,
    Envelope,
    LoginMechanism,
    Policy,
    Router,
    ServerConfig,
    SessionInfo,
)
from tests.clients import client
from tests.servers import TLS, Collect, running

MESSAGE = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"


class Accounts(Policy):
    def authenticate(self, credentials: Credentials, info: SessionInfo) -> str | None:
        return "alice" if (credentials.username, credentials.password) == ("alice", "pw") else None


@pytest.fixture
def router(box: Collect) -> Router[Any]:
    router: Router[Any] = Router()
    router.add("*@example.com", box)
    return router


def wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


# --- AUTH from the policy -----------------------------------------------------------------


def offered(client: smtplib.SMTP) -> str | None:
    """The AUTH mechanisms of the last EHLO reply, None if AUTH is not offered."""
    mechanisms = client.esmtp_features.get("auth")
    return None if mechanisms is None else mechanisms.strip()


@pytest.mark.parametrize(
    ("policy", "config", "before_tls", "in_tls"),
    [
        (Accounts(), ServerConfig(), None, "PLAIN LOGIN"),
        (Accounts(), ServerConfig(auth_require_tls=False), "PLAIN LOGIN", "PLAIN LOGIN"),
        (Accounts(), ServerConfig(auth_mechanisms=()), None, None),
        (Accounts(), ServerConfig(auth_mechanisms=(LoginMechanism,)), None, "LOGIN"),
        (Policy(), ServerConfig(), None, None),
        (Policy(), ServerConfig(auth_require_tls=False), None, None),
    ],
    ids=["policy", "policy-plaintext", "config-off", "config-login", "no-hook", "no-hook-plain"],
)
def test_auth_offered_when_the_policy_authenticates(
    kind: str,
    router: Router[Any],
    tls: TLS,
    policy: Policy,
    config: ServerConfig,
    before_tls: str | None,
    in_tls: str | None,
) -> None:
    """A policy that overrides ``authenticate`` turns AUTH on (PLAIN and LOGIN, inside TLS
    unless ``auth_require_tls=False``); an explicit ``auth_mechanisms`` wins, even empty."""
    with running(kind, router, ssl_context=tls.server, config=config, policy=policy) as server:
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            client.ehlo()
            assert offered(client) == before_tls
            client.starttls(context=tls.client)
            client.ehlo()
            assert offered(client) == in_tls


def test_embedded_server_with_an_authenticating_policy(
    kind: str, router: Router[Any], box: Collect, tls: TLS
) -> None:
    """The embedding example: ``Server(policy=MyPolicy())`` and nothing else; the project's
    client logs in over STARTTLS."""
    with running(kind, router, ssl_context=tls.server, policy=Accounts()) as server:
        with client(kind, server.port, ssl_context=tls.client, auth=("alice", "pw")) as ours:
            assert ours.authenticated
            ours.send_message(MESSAGE, mail_from="a@example.org", rcpt_tos=["b@example.com"])
    assert box.envelopes[0].auth_identity == "alice"


# --- TLS on asyncio -----------------------------------------------------------------------


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
def test_tls_end_of_stream_on_asyncio_logs_no_warning(
    router: Router[Any], tls: TLS, caplog: pytest.LogCaptureFixture, implicit: bool
) -> None:
    """A TLS client that hangs up must not make asyncio warn that returning true from
    eof_received() has no effect (it did, once per TLS connection)."""
    caplog.set_level(logging.WARNING, logger="asyncio")
    with running("asyncio", router, ssl_context=tls.server, implicit_tls=implicit) as server:
        if implicit:
            client = smtplib.SMTP_SSL("127.0.0.1", server.port, context=tls.client)
        else:
            client = smtplib.SMTP("127.0.0.1", server.port)
            client.starttls(context=tls.client)
        assert client.ehlo()[0] == 250
        client.close()  # end of stream while the server waits for a command
        wait_for(lambda: server.metrics.connections_open == 0, timeout=30)
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


# --- the blocking server and async code ---------------------------------------------------


async def async_handler(envelope: Envelope) -> None:
    pass


class AsyncHandler:
    async def __call__(self, envelope: Envelope) -> None:
        pass


class AsyncAccounts(Policy):
    async def authenticate(self, credentials: Credentials, info: SessionInfo) -> str | None:
        return None


@pytest.mark.parametrize(
    ("handler", "policy", "named"),
    [
        (async_handler, Policy(), "the handler for '*@example.com' is async"),
        (AsyncHandler(), Policy(), "the handler for '*@example.com' is async"),
        (Collect(), AsyncAccounts(), "AsyncAccounts.authenticate is async"),
    ],
    ids=["async-def", "async-call", "async-hook"],
)
def test_sync_server_refuses_async_handlers_when_built(
    handler: Any, policy: Policy, named: str
) -> None:
    """Not a 451 at the first message: the server is never built."""
    router: Router[Any] = Router()
    router.add("*@example.com", handler)
    with pytest.raises(TypeError, match=re.escape(named)) as refused:
        smtp_sync.Server(router, port=0, policy=policy)
    assert "smtp_anyio.Server" in str(refused.value) and "plain" in str(refused.value)
