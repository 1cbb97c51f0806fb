"""The anyio server: runs Sessions over TCP on asyncio or trio, with STARTTLS and implicit TLS.

Everything SMTP lives in smtp_core.Session; this module only carries out its Actions: read,
write, upgrade to TLS, call hooks and handlers, spool to a file, enforce timeouts and limits.
"""

from __future__ import annotations

import inspect
import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any

import anyio
import anyio.streams.stapled
import attrs
from anyio.abc import ByteStream, SocketAttribute, SocketListener, TaskStatus
from anyio.streams.tls import TLSAttribute, TLSStream

from smtp_core import (
    Action,
    Call,
    Close,
    Deliver,
    Handler,
    Metrics,
    Policy,
    Router,
    Send,
    ServerConfig,
    Session,
    Spool,
    TLSInfo,
    UpgradeToTLS,
)
from smtp_sync._spool import SpoolFile, call_arguments, new_session_id, utc_now

__all__ = ["Server", "serve"]

log = logging.getLogger("smtpmux.server")
_REFUSE_FULL = b"421 4.7.0 Too many connections, try again later\r\n"


def tls_info(stream: ByteStream) -> TLSInfo:
    cipher = stream.extra(TLSAttribute.cipher, None)
    return TLSInfo(
        version=stream.extra(TLSAttribute.tls_version, None),
        cipher=cipher[0] if cipher else None,
        peer_certificate=stream.extra(TLSAttribute.peer_certificate, None),
    )


@attrs.define(eq=False)
class Server:
    """An SMTP server for embedding and tests: ``async with Server(router) as server:``.

    ``server.port`` is the bound port (useful with ``port=0``). Leaving the block stops the
    server gracefully: no new connections, open transactions get ``shutdown_timeout`` seconds
    to finish, every other session gets 421 4.3.2.
    """

    router: Router[Handler]
    host: str = "127.0.0.1"
    port: int = 8025
    config: ServerConfig = attrs.Factory(ServerConfig)
    policy: Policy = attrs.Factory(Policy)
    ssl_context: ssl.SSLContext | None = None
    implicit_tls: bool = False  #: TLS from the first byte (RFC 8314, port 465)
    proxy_protocol_from: frozenset[str] = frozenset()  #: peers trusted to send a PROXY header
    max_connections: int = 1000
    shutdown_timeout: float = 30.0
    clock: Callable[[], datetime] = utc_now
    metrics: Metrics = attrs.Factory(Metrics)  #: shared by every session of this server
    reuse_port: bool = False  #: SO_REUSEPORT: several processes serve one port (--workers)
    sock: socket.socket | None = None  #: an already listening socket to serve (inherited)
    _sessions: set[Session] = attrs.field(init=False, factory=set)
    _stopping: bool = attrs.field(init=False, default=False)
    _task_group: Any = attrs.field(init=False, default=None)
    _listener: Any = attrs.field(init=False, default=None)
    _idle_scopes: dict[Session, anyio.CancelScope] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        offer_starttls = self.ssl_context is not None and not self.implicit_tls
        if offer_starttls and not self.config.starttls:
            self.config = attrs.evolve(self.config, starttls=True)

    async def __aenter__(self) -> Server:
        if self.sock is not None:
            adopted = await SocketListener.from_socket(self.sock)
            self._listener = anyio.streams.stapled.MultiListener([adopted])
        else:
            self._listener = await anyio.create_tcp_listener(
                local_host=self.host, local_port=self.port, reuse_port=self.reuse_port
            )
        self.port = self._listener.extra(SocketAttribute.local_port)
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        for listener in self._listener.listeners:
            self._task_group.start_soon(self._accept, listener)
        log.info("listening on %s:%d", self.host, self.port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
        await self._task_group.__aexit__(None, None, None)

    async def stop(self) -> None:
        """Stop accepting; let open transactions finish up to ``shutdown_timeout``; 421 the rest."""
        if self._stopping:
            return
        self._stopping = True
        await self._listener.aclose()
        for scope in list(self._idle_scopes.values()):
            scope.cancel()
        with anyio.move_on_after(self.shutdown_timeout):
            while self._sessions:
                await anyio.sleep(0.01)
        self._task_group.cancel_scope.cancel()

    async def serve_forever(
        self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with self:
            task_status.started(self.port)
            await anyio.sleep_forever()

    async def _accept(self, listener: SocketListener) -> None:
        while True:
            try:
                stream = await listener.accept()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            self._task_group.start_soon(self._guarded, stream)

    async def _guarded(self, stream: ByteStream) -> None:
        try:
            await self._connection(stream)
        except Exception:  # one connection's bug must not stop the server
            log.exception("connection failed")
        finally:
            await stream.aclose()

    async def _connection(self, stream: ByteStream) -> None:
        if len(self._sessions) >= self.max_connections or self._stopping:
            with anyio.move_on_after(5):
                await stream.send(_REFUSE_FULL)
            return
        peer = stream.extra(SocketAttribute.remote_address)
        peer_address = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        tls = None
        if self.implicit_tls:
            assert self.ssl_context is not None
            try:
                stream = await self._handshake(stream)
            except Exception as exc:  # the client's failure (plaintext, bad version, timeout)
                log.info("TLS handshake with %s failed: %r", peer_address, exc)
                self.metrics.add(tls_failures=1)
                return
            self.metrics.add(tls_handshakes=1)
            tls = tls_info(stream)
        session = Session(
            self.router,
            clock=self.clock,
            session_id=new_session_id(),
            config=self.config,
            policy=self.policy,
            peer=peer_address,
            tls=tls,
            proxy_protocol=peer_address is not None and peer_address[0] in self.proxy_protocol_from,
            metrics=self.metrics,
        )
        self._sessions.add(session)
        spool = SpoolFile()
        try:
            await self._run(session, stream, spool)
        finally:
            spool.close()
            self._sessions.discard(session)

    async def _handshake(self, stream: ByteStream) -> TLSStream:
        with anyio.fail_after(self.config.command_timeout):
            return await TLSStream.wrap(
                stream, server_side=True, ssl_context=self.ssl_context, standard_compatible=False
            )

    async def _run(self, session: Session, stream: ByteStream, spool: SpoolFile) -> None:
        actions: deque[Action] = deque(session.start())
        while True:
            while actions:
                action = actions.popleft()
                if isinstance(action, Send):
                    try:
                        await stream.send(action.data)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        return  # the client is gone; nothing accepted is pending
                elif isinstance(action, Spool):
                    spool.write(action)
                elif isinstance(action, Close):
                    return
                elif isinstance(action, UpgradeToTLS):
                    try:
                        stream = await self._handshake(stream)
                        outcome: object = tls_info(stream)
                    except (Exception, anyio.get_cancelled_exc_class()) as exc:
                        if not isinstance(exc, Exception):
                            raise
                        outcome = exc
                    actions.extend(session.resolve(action, outcome))
                elif isinstance(action, Call):
                    actions.extend(session.resolve(action, await self._call(action, spool)))
            if self._stopping and not session.in_transaction:
                actions.extend(session.shut_down())
                continue
            data = await self._receive(session, stream)
            if data is not None:
                actions.extend(session.receive_data(data))
            else:
                actions.extend(session.shut_down() if self._stopping else session.expire())

    async def _receive(self, session: Session, stream: ByteStream) -> bytes | None:
        """Next bytes; b"" at EOF; None when the session's timeout (or a stop) ran out."""
        idle = not session.in_transaction
        with anyio.move_on_after(session.timeout) as scope:
            if idle:
                self._idle_scopes[session] = scope
            try:
                return await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                return b""
            finally:
                self._idle_scopes.pop(session, None)
        return None

    async def _call(self, action: Call, spool: SpoolFile) -> object:
        function, args = action.function, call_arguments(action, spool)
        try:
            if inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
                getattr(function, "__call__", None)  # noqa: B004 - handler objects
            ):
                return await function(*args)
            if isinstance(action, Deliver):  # handlers may block: keep them off the loop
                return await anyio.to_thread.run_sync(function, *args)
            result = function(*args)
            return await result if inspect.isawaitable(result) else result
        except Exception as exc:
            return exc


async def serve(
    router: Router[Handler],
    *,
    host: str = "127.0.0.1",
    port: int = 8025,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve ``router`` until cancelled. ``options`` are those of ``Server``."""
    await Server(router, host=host, port=port, **options).serve_forever(task_status=task_status)
