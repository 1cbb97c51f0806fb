"""smtp_core/_lifecycle.py and the Session's lifecycle calls: the SessionFactory (a listener's
facts in, the rules out), handshake counting, what a wait's end means, the inline executor,
and plaintext dropped before a STARTTLS handshake. The live tests (test_live, test_limits)
run the same rules through every server."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from smtp_core import (
    Metrics,
    Policy,
    Router,
    ServerConfig,
    ServerState,
    Session,
    TLSInfo,
)
from smtp_core.adapter import (
    Action,
    Call,
    Close,
    Connect,
    Deliver,
    Send,
    SessionFactory,
    Spool,
    UpgradeToTLS,
    WaitEnd,
    run_inline,
)

NOW = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
PEER = ("198.51.100.7", 50000)
TRANSACTION = b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\n"


@pytest.fixture
def router() -> Router[Any]:
    router: Router[Any] = Router()
    router.add("*@example.com", lambda envelope: None)
    return router


def factory(router: Router[Any], **facts: Any) -> SessionFactory:
    return SessionFactory(router=router, clock=lambda: NOW, new_id=lambda: "S1", **facts)


class Wire:
    """The executor's ``write`` and ``spool``, and an inline ``call`` that records calls."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.spooled: list[Spool] = []
        self.calls: list[Call] = []

    def write(self, data: bytes) -> None:
        self.written += data

    def spool(self, action: Spool) -> None:
        self.spooled.append(action)

    def call(self, action: Call) -> object:
        self.calls.append(action)
        return None

    def codes(self) -> list[str]:
        return [line[:9] for line in self.written.decode().split("\r\n") if line[3:4] == " "]


def started(session: Session, wire: Wire, data: bytes = b"") -> Session:
    assert run_inline(session, session.start(), wire.write, wire.spool, wire.call) is None
    if data:
        assert run_inline(session, session.receive_data(data), wire.write, wire.spool) is None
    return session


# --- the factory: the listener's facts in, the rules out -------------------------------------


@pytest.mark.parametrize(
    ("tls_configured", "implicit_tls", "starttls"),
    [
        (False, False, False),  # no context: nothing to offer
        (True, False, True),  # a context on a plain listener: STARTTLS offered
        (True, True, False),  # implicit TLS: already inside TLS
    ],
    ids=["plain", "starttls", "implicit"],
)
def test_factory_offers_starttls_when_a_context_is_configured(
    router: Router[Any], tls_configured: bool, implicit_tls: bool, starttls: bool
) -> None:
    made = factory(router, tls_configured=tls_configured, implicit_tls=implicit_tls)
    assert made.session_config.starttls is starttls
    assert made(PEER).config.starttls is starttls
    assert made.config.starttls is False  # what the server was given stays as it was


@pytest.mark.parametrize(
    ("peer", "expects_proxy"),
    [(("10.0.0.1", 4000), True), (PEER, False), (None, False)],
    ids=["trusted", "untrusted", "unknown"],
)
def test_factory_expects_a_proxy_header_only_from_trusted_peers(
    router: Router[Any], peer: tuple[str, int] | None, expects_proxy: bool
) -> None:
    made = factory(router, proxy_protocol_from=frozenset({"10.0.0.1"}))
    session = made(peer)
    assert (session.conn.state is ServerState.PROXY) is expects_proxy
    assert session.info.session_id == "S1" and session.info.peer == peer


def test_factory_resolves_auth_once_for_the_listener(router: Router[Any]) -> None:
    class Accounts(Policy):
        def authenticate(self, credentials: Any, info: Any) -> str | None:
            return None

    made = factory(router, policy=Accounts())
    assert made.session_config.auth_mechanisms  # PLAIN and LOGIN: the policy checks passwords
    assert made(PEER).config is made.session_config  # not evolved again per connection


def test_factory_serves_says_whether_a_reload_swapped_its_inputs(router: Router[Any]) -> None:
    config, policy, trusted = ServerConfig(), Policy(), frozenset({"10.0.0.1"})
    made = factory(router, config=config, policy=policy, proxy_protocol_from=trusted)
    assert made.serves(router, config, policy, trusted)
    assert not made.serves(router, ServerConfig(), policy, trusted)
    assert not made.serves(Router(), config, policy, trusted)


@pytest.mark.parametrize("kind", ["anyio", "sync"])
def test_a_server_keeps_its_factory_until_a_reload_swaps_its_settings(
    router: Router[Any], kind: str
) -> None:
    """Both servers build their SessionFactory with smtp_sync.adapter.session_factory, from
    their own settings: the same one for every connection, a new one after a reload."""
    import smtp_anyio
    import smtp_sync
    from smtp_sync.adapter import session_factory

    server: Any = (smtp_anyio.Server if kind == "anyio" else smtp_sync.Server)(router, port=0)
    first = session_factory(server, None)
    assert session_factory(server, first) is first
    assert first(PEER).conn.state is ServerState.GREETING and not first.implicit_tls
    server.config = ServerConfig(hostname="reloaded.example")  # what SIGHUP does
    second = session_factory(server, first)
    assert second is not first and second(PEER).info.hostname == "reloaded.example"


@pytest.mark.parametrize(
    ("outcome", "counted", "logged"),
    [
        (TLSInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256"), "tls_handshakes", None),
        (
            ConnectionResetError(104, "Connection reset by peer"),
            "tls_failures",
            "TLS handshake with 198.51.100.7:50000 failed: ",
        ),
    ],
    ids=["success", "failure"],
)
def test_implicit_tls_handshakes_are_counted_and_logged_in_the_core(
    router: Router[Any],
    caplog: pytest.LogCaptureFixture,
    outcome: object,
    counted: str,
    logged: str | None,
) -> None:
    metrics = Metrics()
    made = factory(router, metrics=metrics, tls_configured=True, implicit_tls=True)
    with caplog.at_level(logging.INFO, logger="smtpmux.server"):
        tls = made.handshake(PEER, outcome)
    assert (tls is outcome) is (logged is None)
    assert getattr(metrics, counted) == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "smtpmux.server"]
    assert [line.startswith(logged or "") for line in lines] == ([] if logged is None else [True])


# --- what a wait's end means -----------------------------------------------------------------

#: (why the wait ended, evicted, stopping, in a transaction) -> the reply, or None for nothing
WAIT_ENDS = [
    (WaitEnd.TIMED_OUT, False, False, False, "421 4.4.2"),
    (WaitEnd.TIMED_OUT, False, False, True, "421 4.4.2"),
    (WaitEnd.TIMED_OUT, False, True, False, "421 4.3.2"),
    (WaitEnd.TIMED_OUT, False, True, True, "421 4.3.2"),  # the one the adapters disagreed on
    (WaitEnd.INTERRUPTED, False, False, False, None),
    (WaitEnd.INTERRUPTED, False, True, False, "421 4.3.2"),
    (WaitEnd.INTERRUPTED, False, True, True, "421 4.3.2"),  # a forced stop
    (WaitEnd.INTERRUPTED, True, False, False, "421 4.4.2"),
    (WaitEnd.TIMED_OUT, True, True, False, "421 4.4.2"),  # the eviction wins
]


@pytest.mark.parametrize(
    ("why", "evicted", "stopping", "in_transaction", "reply"),
    WAIT_ENDS,
    ids=[f"{w[0].name}-ev{w[1]:d}-stop{w[2]:d}-tx{w[3]:d}" for w in WAIT_ENDS],
)
def test_wait_ended(
    router: Router[Any],
    why: WaitEnd,
    evicted: bool,
    stopping: bool,
    in_transaction: bool,
    reply: str | None,
) -> None:
    wire = Wire()
    session = started(factory(router)(PEER), wire, TRANSACTION if in_transaction else b"")
    assert session.in_transaction is in_transaction
    before = wire.codes()
    actions = session.wait_ended(why, stopping=stopping, evicted=evicted)
    done = run_inline(session, actions, wire.write, wire.spool)
    if reply is None:
        assert actions == [] and done is None and not session.closed
    else:
        assert wire.codes()[len(before) :] == [reply]
        assert isinstance(done, Close) and session.closed


@pytest.mark.parametrize(
    ("data", "reply"), [(b"", "421 4.3.2"), (TRANSACTION, None)], ids=["idle", "transaction"]
)
def test_server_stopping_lets_a_transaction_finish(
    router: Router[Any], data: bytes, reply: str | None
) -> None:
    wire = Wire()
    session = started(factory(router)(PEER), wire, data)
    actions = session.server_stopping()
    if reply is None:
        assert actions == []
    else:
        assert isinstance(run_inline(session, actions, wire.write, wire.spool), Close)
        assert wire.codes()[-1] == reply


# --- the inline executor ---------------------------------------------------------------------


def test_run_inline_hands_back_a_call_it_may_not_make(router: Router[Any]) -> None:
    wire = Wire()
    session = factory(router)(PEER)
    action = run_inline(session, session.start(), wire.write, wire.spool)
    assert isinstance(action, Connect) and wire.written == b""  # the greeting waits for it
    assert run_inline(session, session.resolve(action, None), wire.write, wire.spool) is None
    assert wire.codes() == ["220 local"]


def test_run_inline_makes_calls_and_spools_when_it_may(router: Router[Any]) -> None:
    wire = Wire()
    session = Session(router, clock=lambda: NOW, session_id="S1", policy=Policy(spool_threshold=10))
    started(session, wire)
    data = TRANSACTION + b"RCPT TO:<b@example.com>\r\nDATA\r\n" + b"x" * 20 + b"\r\n.\r\nQUIT\r\n"
    action = run_inline(session, session.receive_data(data), wire.write, wire.spool, wire.call)
    assert isinstance(action, Close)
    assert [type(call) for call in wire.calls] == [Connect, Deliver]
    assert wire.spooled and wire.spooled[0].start
    assert wire.codes()[-2:] == ["250 2.0.0", "221 2.0.0"]


def test_run_inline_stops_when_the_client_is_gone(router: Router[Any]) -> None:
    session = factory(router)(PEER)
    writes: list[bytes] = []

    def gone(data: bytes) -> bool:
        writes.append(data)
        return False

    actions: list[Action] = [Send(b"250 one\r\n"), Send(b"250 two\r\n")]
    assert isinstance(run_inline(session, actions, gone, Wire().spool), Close)
    assert writes == [b"250 one\r\n"]


def test_run_inline_hands_back_upgrade_to_tls(router: Router[Any]) -> None:
    wire = Wire()
    session = started(factory(router, tls_configured=True)(PEER), wire, b"EHLO c\r\n")
    action = run_inline(session, session.receive_data(b"STARTTLS\r\n"), wire.write, wire.spool)
    assert isinstance(action, UpgradeToTLS) and wire.codes()[-1] == "220 2.0.0"


# --- STARTTLS: plaintext the adapter read before the handshake ------------------------------


def test_discard_before_tls_drops_and_counts_what_the_adapter_kept(
    router: Router[Any], caplog: pytest.LogCaptureFixture
) -> None:
    wire, metrics = Wire(), Metrics()
    session = started(factory(router, tls_configured=True, metrics=metrics)(PEER), wire)
    injected = b"MAIL FROM:<evil@example.org>\r\n"
    action = run_inline(
        session,
        session.receive_data(b"EHLO c\r\nSTARTTLS\r\n" + b"RSET\r\n"),
        wire.write,
        wire.spool,
    )
    assert isinstance(action, UpgradeToTLS)
    with caplog.at_level(logging.INFO, logger="smtpmux.session"):
        session.discard_before_tls(injected)  # read by the adapter after the engine's buffer
    assert session.conn.plaintext_discarded == len(b"RSET\r\n") + len(injected)
    assert metrics.bytes_received == len(b"EHLO c\r\nSTARTTLS\r\nRSET\r\n") + len(injected)
    assert f"discarded {len(injected)} octets sent before the TLS handshake" in caplog.text
    tls = TLSInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256")
    assert run_inline(session, session.resolve(action, tls), wire.write, wire.spool) is None
    assert (
        run_inline(
            session, session.receive_data(b"MAIL FROM:<a@b.org>\r\n"), wire.write, wire.spool
        )
        is None
    )
    assert wire.codes()[-1] == "503 5.5.1"  # EHLO again first: nothing injected counted


# --- one TLSInfo builder ---------------------------------------------------------------------


class FakeSSLObject:
    """What ``ssl.SSLObject`` and ``ssl.SSLSocket`` have in common, for the builder."""

    def __init__(self, cipher: tuple[str, str, int] | None, cert: dict[str, Any] | None) -> None:
        self._cipher, self._cert = cipher, cert

    def version(self) -> str:
        return "TLSv1.3"

    def cipher(self) -> tuple[str, str, int] | None:
        return self._cipher

    def getpeercert(self) -> dict[str, Any] | None:
        return self._cert


@pytest.mark.parametrize(
    ("cipher", "cert", "expected_cipher", "expected_cert"),
    [
        (("TLS_AES_128_GCM_SHA256", "TLSv1.3", 128), None, "TLS_AES_128_GCM_SHA256", None),
        (None, {}, None, None),  # no verified client certificate: none
        (("X", "TLSv1.3", 128), {"subject": ()}, "X", {"subject": ()}),
    ],
    ids=["no-cert", "empty-cert", "cert"],
)
def test_tls_info_from_ssl_object(
    cipher: tuple[str, str, int] | None,
    cert: dict[str, Any] | None,
    expected_cipher: str | None,
    expected_cert: dict[str, Any] | None,
) -> None:
    info = TLSInfo.from_ssl_object(FakeSSLObject(cipher, cert))
    assert (info.version, info.cipher, info.peer_certificate) == (
        "TLSv1.3",
        expected_cipher,
        expected_cert,
    )
