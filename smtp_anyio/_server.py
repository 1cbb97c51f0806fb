"""The anyio server: runs Sessions over TCP on asyncio or trio, with STARTTLS and implicit TLS.

Everything SMTP lives in smtp_core.Session; this module only carries out its Actions: read,
write, upgrade to TLS, call hooks and handlers, spool to a file, enforce timeouts and limits.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import select
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

import anyio
import anyio.streams.stapled
import attrs
from anyio.abc import SocketAttribute, SocketListener, TaskStatus

from smtp_core import (
    Admission,
    ConnectionLimits,
    Handler,
    Metrics,
    Policy,
    Router,
    ServerConfig,
    Session,
)
from smtp_core.adapter import (
    Action,
    Call,
    HandlerCall,
    SessionFactory,
    Ticket,
    TurnedAway,
    UpgradeToTLS,
    WaitEnd,
    run_inline,
)
from smtp_sync.adapter import (
    SpoolFile,
    call_arguments,
    is_async_callable,
    session_factory,
    utc_now,
)

from ._connection import (
    Connection,
    Poller,
    SocketConnection,
    StreamConnection,
    TransportConnection,
    TransportTimeouts,
    Wake,
    Watchdog,
)

__all__ = ["Server", "serve"]

log = logging.getLogger("smtpmux.server")
_BACKLOG = 4096
_READ_BUFFER = 256 * 1024
_HAS_EPOLL = hasattr(select, "epoll")  #: for SocketConnection's Poller (trio, plain TCP)
#: one name for every connection's task: trio would format one per task (81 B each, W5)
_TASK_NAME = "smtp_anyio._server.Server._serve"  # the name trio would give it


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop (asyncio or uvloop), or None on trio."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


_coroutine_functions: dict[int, tuple[object, bool]] = {}


def _is_coroutine_function(function: object) -> bool:
    """``async def`` (or an object whose ``__call__`` is)? Cached per function: the same
    handlers and hooks are called for every message."""
    key = getattr(function, "__func__", function)  # a bound method: its function
    cached = _coroutine_functions.get(id(key))
    if cached is not None and cached[0] is key:
        return cached[1]
    result = is_async_callable(function)
    if len(_coroutine_functions) >= 256:
        _coroutine_functions.clear()
    _coroutine_functions[id(key)] = (key, result)  # holding ``key`` keeps its id unique
    return result


@attrs.define(eq=False)
class Server:
    """An SMTP server for embedding and tests: ``async with Server(router) as server:``.

    ``server.port`` is the bound port (useful with ``port=0``). Leaving the block stops the
    server gracefully: no new connections, open transactions get ``shutdown_timeout`` seconds
    to finish, every other session gets 421 4.3.2.

    ``limits`` are the connection limits (smtp_core.ConnectionLimits: total, per client,
    rate, stress mode); ``max_connections`` is a shortcut for its first. ``admission`` may be
    shared by several servers of one process, so that their limits count together.
    """

    router: Router[Handler]
    host: str = "127.0.0.1"
    port: int = 8025
    config: ServerConfig = attrs.Factory(ServerConfig)
    policy: Policy = attrs.Factory(Policy)
    ssl_context: ssl.SSLContext | None = None
    implicit_tls: bool = False  #: TLS from the first byte (RFC 8314, port 465)
    proxy_protocol_from: frozenset[str] = frozenset()  #: peers trusted to send a PROXY header
    max_connections: int | None = None  #: default: ``limits.max_connections`` (1000)
    limits: ConnectionLimits = attrs.Factory(ConnectionLimits)
    shutdown_timeout: float = 30.0
    clock: Callable[[], datetime] = utc_now
    metrics: Metrics = attrs.Factory(Metrics)  #: shared by every session of this server
    reuse_port: bool = False  #: SO_REUSEPORT: several processes serve one port (--workers)
    sock: socket.socket | None = None  #: an already listening socket to serve (inherited)
    admission: Admission[Any] | None = None  #: default: one of this server's own
    _sessions: set[Session] = attrs.field(init=False, factory=set)
    _stopping: bool = attrs.field(init=False, default=False)
    _task_group: Any = attrs.field(init=False, default=None)
    _listener: Any = attrs.field(init=False, default=None)
    _idle: dict[Session, Connection] = attrs.field(init=False, factory=dict)
    _loop_servers: list[asyncio.AbstractServer] = attrs.field(init=False, factory=list)
    _watchdog: Watchdog | None = attrs.field(init=False, default=None)
    _poller: Poller | None = attrs.field(init=False, default=None)
    _factory: SessionFactory | None = attrs.field(init=False, default=None)
    _tasks: set[asyncio.Task[None]] = attrs.field(init=False, factory=set)
    _timeouts: TransportTimeouts | None = attrs.field(init=False, default=None)
    #: TransportConnections waiting for their clients with no task (``TransportConnection.park``)
    _parked: set[TransportConnection] = attrs.field(init=False, factory=set)
    _wake_parked: Wake | None = attrs.field(init=False, default=None)  #: ``_wake``, bound once
    #: what the connections read into (one loop, so one read at a time); copied out at once
    _read_buffer: memoryview = attrs.field(
        init=False, factory=lambda: memoryview(bytearray(_READ_BUFFER))
    )

    def __attrs_post_init__(self) -> None:
        if self.admission is None:
            if self.max_connections is not None:
                self.limits = attrs.evolve(self.limits, max_connections=self.max_connections)
            self.admission = Admission(
                self.limits, metrics=self.metrics, exempt=self.proxy_protocol_from
            )
        self.limits = self.admission.limits
        self.max_connections = self.limits.max_connections

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
        loop = _asyncio_loop()
        buffer = self._read_buffer
        if loop is not None and not self.implicit_tls:
            self._timeouts = TransportTimeouts(loop)
        timeouts = self._timeouts
        spawn, is_stopping = self._spawn, self._is_stopping  # bound once, not per connection
        self._wake_parked = self._wake
        for listener in self._listener.listeners:
            if loop is not None and timeouts is not None:
                # On asyncio the loop accepts, and each connection is served straight on its
                # transport (see TransportConnection); TLS from the first byte stays on anyio.
                self._loop_servers.append(
                    await loop.create_server(
                        lambda: TransportConnection(spawn, is_stopping, buffer, timeouts),
                        sock=listener.extra(SocketAttribute.raw_socket),
                        backlog=_BACKLOG,
                    )
                )
            else:
                self._task_group.start_soon(self._accept, listener)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
        await self._task_group.__aexit__(None, None, None)

    async def stop(self) -> None:
        """Stop accepting; let open transactions finish up to ``shutdown_timeout``; 421 the rest."""
        if self._stopping:
            return
        self._stopping = True
        for loop_server in self._loop_servers:
            loop_server.close()  # stops accepting; open connections carry on
        await self._listener.aclose()
        for session, connection in list(self._idle.items()):
            if not session.in_transaction:  # one may have begun in TransportConnection._feed
                connection.interrupt()
        with anyio.move_on_after(self.shutdown_timeout):
            while self._sessions:
                await anyio.sleep(0.01)
        self._task_group.cancel_scope.cancel()
        for task in list(self._tasks):
            # A task cancelled before its first step never runs its ``finally`` blocks; one
            # not started yet sees the forced stop itself (``_forced``) and ends as if cancelled.
            coroutine = task.get_coro()
            if not inspect.iscoroutine(coroutine) or (
                inspect.getcoroutinestate(coroutine) != inspect.CORO_CREATED
            ):
                task.cancel()
        # Parked connections (in a transaction still) have no task to cancel: each gets one
        # that ends as a cancelled task ends (the session dropped, the connection closed).
        for connection in list(self._parked):
            connection.end_wait(asyncio.CancelledError())
        tasks = list(self._tasks)
        if tasks:
            with anyio.CancelScope(shield=True):
                await asyncio.wait(tasks)
        if self._timeouts is not None:
            self._timeouts.close()

    async def serve_forever(
        self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with self:
            task_status.started(self.port)
            await anyio.sleep_forever()

    async def _accept(self, listener: SocketListener) -> None:
        if _asyncio_loop() is not None:  # implicit TLS on asyncio: anyio's streams
            await self._accept_into(listener, self._task_group.start_soon)
            return
        import trio  # on trio

        # A plain trio nursery for the connections' tasks: anyio's task group would give each
        # a wrapper coroutine, a cancel scope, an event and a handle (about 1 KiB per idle
        # connection, W5), and one more frame on every wake-up. The task group's cancel scope
        # (stop()) still reaches them: this nursery lives in one of its tasks.
        async with trio.open_nursery() as nursery:
            await self._accept_into(listener, nursery.start_soon)

    async def _accept_into(
        self, listener: SocketListener, start_soon: Callable[..., object]
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            # On trio, plain TCP goes straight to the socket; asyncio's transports come here
            # only for implicit TLS, and stay behind the stream.
            raw = stream.extra(SocketAttribute.raw_socket, None)
            connection: Connection
            if raw is None or _asyncio_loop() is not None or not _HAS_EPOLL:
                connection = StreamConnection(stream)  # (the Poller needs Linux's epoll)
            else:
                if self._watchdog is None or self._poller is None:
                    self._watchdog, self._poller = Watchdog(), Poller()
                    self._task_group.start_soon(self._watchdog.run)
                    self._task_group.start_soon(self._poller.run)
                connection = SocketConnection(
                    stream,
                    raw,
                    self._watchdog,
                    self._poller,
                    self._read_buffer,
                    self._is_stopping,
                )
            start_soon(self._serve, connection, name=_TASK_NAME)

    def _is_stopping(self) -> bool:
        return self._stopping

    @property
    def _forced(self) -> bool:
        """``stop()`` gave up waiting: every connection still open is to be ended now."""
        return self._stopping and self._task_group.cancel_scope.cancel_called

    def _spawn(self, connection: TransportConnection) -> None:
        """A connection the asyncio loop accepted: serve it in a task of its own. A plain
        asyncio task, not one of the task group's, which would cost a task handle, an event
        and a wrapper coroutine per connection; ``stop()`` cancels these tasks itself."""
        if self._forced:
            if connection.transport is not None:
                connection.transport.abort()
            return
        self._start(self._serve(connection))

    def _start(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """A task for a TransportConnection: it leaves ``_tasks`` itself as it ends
        (``_task_ends``), which costs less than a done callback (one more loop callback)."""
        self._tasks.add(asyncio.get_running_loop().create_task(coroutine))

    def _task_ends(self, connection: Connection) -> None:
        if isinstance(connection, TransportConnection):  # only those run in ``_start``'s tasks
            self._tasks.discard(asyncio.current_task())

    def _wake(
        self,
        connection: TransportConnection,
        session: Session,
        spool: SpoolFile,
        outcome: list[Action] | WaitEnd | BaseException,
    ) -> None:
        """A parked connection's wait is over: a task carries on where ``_carry_on`` parked it."""
        self._parked.discard(connection)
        ticket = connection.ticket
        assert ticket is not None
        ticket.waiting = False  # undo what _carry_on did as it parked
        self._idle.pop(session, None)
        self._start(self._carry_on(session, connection, spool, ticket, outcome))

    async def _serve(self, connection: Connection) -> None:
        admission = self.admission
        assert admission is not None
        ticket: Ticket[Connection] | None = None
        session: Session | None = None
        try:
            if self._forced:
                return  # accepted just before the stop gave up waiting
            peer = connection.peer
            verdict = admission.admit(
                peer[0] if peer else None, connection, time.monotonic(), stopping=self._stopping
            )
            if isinstance(verdict, TurnedAway):
                with anyio.move_on_after(5):
                    await connection.send(verdict.data)
                return
            ticket = verdict.ticket
            if verdict.evict is not None:
                verdict.evict.handle.interrupt()  # its loop sees ``evicted``: 421 4.4.2
            if isinstance(connection, (TransportConnection, SocketConnection)):
                connection.ticket = ticket
            session = await self._open(connection, admission)
            if session is None:
                return
            ticket.session = session
            self._sessions.add(session)
        except Exception:  # one connection's bug must not stop the server
            log.exception("connection failed")
            session = None
        finally:
            if session is None:
                if ticket is not None:
                    admission.leave(ticket)
                await connection.aclose()
                self._task_ends(connection)
        if session is not None and ticket is not None:
            await self._carry_on(session, connection, SpoolFile(), ticket, None)

    async def _carry_on(
        self,
        session: Session,
        connection: Connection,
        spool: SpoolFile,
        ticket: Ticket[Any],
        outcome: list[Action] | WaitEnd | BaseException | None,
    ) -> None:
        """Run ``session`` from its start (``outcome`` None) or from the end of a parked wait:
        carry out its actions and wait for its client, round after round, until it ends (then
        drop it and close) or its connection parks (it waits with no task; see
        ``TransportConnection.park``). One coroutine: a parked connection's every wake
        starts one."""
        admission = self.admission
        assert admission is not None
        parked = False
        try:
            try:
                if self._forced:
                    raise asyncio.CancelledError  # started after stop() cancelled the tasks
                if outcome is None:
                    actions = session.start()
                elif isinstance(outcome, BaseException):
                    raise outcome  # what the connection's callback ran into
                elif isinstance(outcome, list) and not ticket.evicted:
                    actions = outcome  # fed in the callback, which noted the activity already
                else:
                    actions = self._after_wait(session, ticket, outcome)
                write, spool_write = connection.write, spool.write
                while True:
                    action = run_inline(session, actions, write, spool_write)
                    if connection.unflushed and not await connection.flush():
                        break  # the client is gone; nothing accepted is pending
                    if isinstance(action, Call):
                        actions = session.resolve(action, await self._call(action, spool))
                        continue
                    if isinstance(action, UpgradeToTLS):
                        assert self.ssl_context is not None
                        session.discard_before_tls(connection.take_unread())  # RFC 3207 §4.2
                        try:
                            tls: object = await connection.start_tls(
                                self.ssl_context, session.tls_timeout
                            )
                        except Exception as exc:
                            tls = exc
                        actions = session.resolve(action, tls)
                        continue
                    if action is not None:  # Close
                        break
                    if self._stopping:
                        actions = session.server_stopping()
                        if actions:
                            continue
                    idle = not session.in_transaction
                    if idle:
                        self._idle[session] = connection  # a stop interrupts idle sessions
                    ticket.waiting = True  # a full server may evict us now, if we are idle
                    if (
                        isinstance(connection, TransportConnection)
                        and self._wake_parked is not None
                        and connection.park(session, spool, self._wake_parked)
                    ):
                        # ``_wake`` starts the next task, and undoes the two lines above
                        self._parked.add(connection)
                        parked = True
                        return
                    try:
                        # What the client's next bytes lead to, or why the wait ended without.
                        more = await connection.next_actions(session, spool)
                    finally:
                        ticket.waiting = False
                        if idle:
                            del self._idle[session]
                    actions = self._after_wait(session, ticket, more)
            finally:
                if not parked:
                    await self._drop(session, spool)
                    spool.close()
                    self._sessions.discard(session)
        except Exception:  # one connection's bug must not stop the server
            log.exception("connection failed")
        finally:
            if not parked:
                admission.leave(ticket)
                await connection.aclose()
            self._task_ends(connection)

    def _sessions_factory(self) -> SessionFactory:
        """This listener's SessionFactory; built again when a reload swapped what it uses."""
        self._factory = factory = session_factory(self, self._factory)
        return factory

    async def _open(self, connection: Connection, admission: Admission[Any]) -> Session | None:
        """The connection's Session, after the TLS handshake of an implicit-TLS listener."""
        factory, peer = self._sessions_factory(), connection.peer
        if not self.implicit_tls:
            return factory(peer)
        assert self.ssl_context is not None
        try:
            outcome: object = await connection.start_tls(
                self.ssl_context, factory.handshake_timeout
            )
        except Exception as exc:  # the client's failure (plaintext, bad version, timeout)
            outcome = exc
        tls = factory.handshake(peer, outcome)
        return None if tls is None else factory(peer, tls)

    def _after_wait(
        self, session: Session, ticket: Ticket[Any], more: list[Action] | WaitEnd
    ) -> list[Action]:
        """The actions that follow a wait for the client: its outcome, or an eviction."""
        if ticket.evicted:  # our slot went to a newcomer while we waited, idle
            return session.wait_ended(WaitEnd.INTERRUPTED, stopping=self._stopping, evicted=True)
        if isinstance(more, WaitEnd):
            return session.wait_ended(more, stopping=self._stopping)
        ticket.active_at = time.monotonic()
        return more

    async def _drop(self, session: Session, spool: SpoolFile) -> None:
        """However the connection ended: carry out the Calls that end what the session still
        has open (step transactions), before the socket is closed; shielded from a stop."""
        actions = session.drop()
        if not actions:
            return
        with anyio.CancelScope(shield=True):
            while True:
                action = run_inline(session, actions, _discard, spool.write)
                if not isinstance(action, Call):
                    return
                actions = session.resolve(action, await self._call(action, spool))

    async def _call(self, action: Call, spool: SpoolFile) -> object:
        function, args = action.function, call_arguments(action, spool)
        try:
            if _is_coroutine_function(function):
                return await function(*args)
            if isinstance(action, HandlerCall):  # handlers may block: keep them off the loop
                # shielded: a forced stop must not lose what the call returned (a step
                # transaction that ``drop`` then aborts); a thread cannot be cancelled anyway
                with anyio.CancelScope(shield=True):
                    return await anyio.to_thread.run_sync(function, *args)
            result = function(*args)
            return await result if inspect.isawaitable(result) else result
        except Exception as exc:
            return exc


def _discard(data: bytes) -> None:
    """The connection is over: a reply would reach nobody."""


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
