"""One client connection as the server loop sees it: wait for the client and feed the session,
send, upgrade to TLS, close.

Three implementations, one behaviour. ``StreamConnection`` runs over any anyio ``ByteStream``
(implicit TLS on asyncio, and whatever follows a TLS handshake on trio). ``SocketConnection``
serves plain TCP on trio straight on the socket. ``TransportConnection`` is an asyncio protocol
for plain listeners on asyncio (and uvloop). The last two skip the per-call work of a generic
stream (a cancel scope and a timer per read, a checkpoint and a drained buffer per write,
pausing and resuming the reader around every read); both also run the session's rounds that
need no decision -- bytes in, replies out -- right where the bytes arrive (the transport's
callback; on trio, the server's ``Poller``), so the connection's task wakes up only for what
must be awaited: a handler, a hook, a TLS handshake, a slow drain, the end. On asyncio an idle
connection has no task at all (``TransportConnection.park``): one is started for such an action.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import select
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

import anyio
import anyio.lowlevel
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.tls import TLSAttribute, TLSStream

from smtp_core import Session, TLSInfo
from smtp_core.adapter import Action, Ticket, WaitEnd, run_inline
from smtp_sync.adapter import SpoolFile

__all__ = [
    "Connection",
    "Poller",
    "SocketConnection",
    "Watchdog",
    "StreamConnection",
    "TransportConnection",
    "TransportTimeouts",
    "Wake",
    "peer_address",
]

_READ_LIMIT = 1024 * 1024  #: stop reading from the socket when this much waits unread
_TIMER_SLACK = 0.001  #: a timer may fire this early (the loop's clock resolution)


def peer_address(peer: object) -> tuple[str, int] | None:
    return (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None


def _waiting_round(
    session: Session,
    spool: SpoolFile,
    data: bytes,
    write: Callable[[bytes], None],
    ticket: Ticket[Any] | None,
) -> list[Action] | Exception | None:
    """One round of a session whose connection waits for its client, run where the bytes
    arrive (``TransportConnection``'s callback, trio's ``Poller``) instead of in its task:
    None when the round needed no await, else what ends the wait: the round's last Action
    (see ``run_inline``), or the exception the task is to raise as if it had failed itself."""
    if ticket is not None:
        ticket.active_at = time.monotonic()
    try:
        action = run_inline(session, session.receive_data(data), write, spool.write)
    except Exception as exc:
        return exc
    return None if action is None else [action]


class Connection(Protocol):
    """What the server loop needs from a connection."""

    @property
    def peer(self) -> tuple[str, int] | None: ...

    async def next_actions(self, session: Session, spool: SpoolFile) -> list[Action] | WaitEnd:
        """Wait for the client and feed what it sends (b"" at its end) to ``session``; return
        the session's next actions, or why the wait ended without bytes (``interrupt()``, or
        the session's timeout ran out): ``Session.wait_ended`` says what that means."""
        ...

    def write(self, data: bytes) -> None:
        """Write ``data`` now, or keep it for ``flush`` (the executor's ``write``)."""
        ...

    @property
    def unflushed(self) -> bool:
        """Is a ``flush`` needed? (A round that wrote nothing costs no coroutine.)"""
        ...

    async def flush(self) -> bool:
        """Finish what ``write`` started; False when the client is gone."""
        ...

    async def send(self, data: bytes) -> bool:
        """Write ``data``; False when the client is gone."""
        ...

    def take_unread(self) -> bytes:
        """What arrived but was not yet fed (TransportConnection keeps such bytes): before a
        STARTTLS handshake, for ``Session.discard_before_tls``."""
        ...

    async def start_tls(self, context: ssl.SSLContext, timeout: float) -> TLSInfo:
        """Run the server side of a TLS handshake; raise if it fails."""
        ...

    def interrupt(self) -> None:
        """Make a ``next_actions`` in progress return ``[]`` now (the server is stopping)."""
        ...

    async def aclose(self) -> None: ...


class StreamConnection:
    """A connection over an anyio ByteStream: works on every backend, with or without TLS."""

    __slots__ = ("_interrupted", "_pending", "_scope", "stream")  # one per connection (W5)

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self._scope: anyio.CancelScope | None = None
        self._interrupted = False
        self._pending: list[bytes] = []  # written, not yet flushed

    @property
    def peer(self) -> tuple[str, int] | None:
        return peer_address(self.stream.extra(SocketAttribute.remote_address, None))

    async def next_actions(self, session: Session, spool: SpoolFile) -> list[Action] | WaitEnd:
        self._interrupted = False
        data = None
        with anyio.move_on_after(session.timeout) as scope:
            self._scope = scope
            try:
                data = await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                data = b""
            finally:
                self._scope = None
        if data is None:
            return WaitEnd.INTERRUPTED if self._interrupted else WaitEnd.TIMED_OUT
        return session.receive_data(data)

    def write(self, data: bytes) -> None:
        self._pending.append(data)

    @property
    def unflushed(self) -> bool:
        return bool(self._pending)

    async def flush(self) -> bool:
        pending = self._pending
        if not pending:
            return True
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        return await self.send(data)

    async def send(self, data: bytes) -> bool:
        try:
            await self.stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return False
        return True

    def take_unread(self) -> bytes:
        return b""  # every read is fed at once

    async def start_tls(self, context: ssl.SSLContext, timeout: float) -> TLSInfo:
        with anyio.fail_after(timeout):
            self.stream = await TLSStream.wrap(
                self.stream, server_side=True, ssl_context=context, standard_compatible=False
            )
        return TLSInfo.from_ssl_object(self.stream.extra(TLSAttribute.ssl_object))

    def interrupt(self) -> None:
        if self._scope is not None:
            self._interrupted = True
            self._scope.cancel()

    async def aclose(self) -> None:
        await self.stream.aclose()


class Watchdog:
    """Timeouts for ``SocketConnection`` without a cancel scope per read (on trio a scope costs
    about as much as the rest of a read). Each wait notes its deadline here; one task per
    server sleeps until the earliest deadline, interrupts the waits that are overdue and
    sleeps again; a wait that ends drops its entry. Deadlines mostly move later, so the task
    wakes about once per timeout period."""

    def __init__(self) -> None:
        import trio  # a Watchdog serves SocketConnections, which run only on trio

        #: trio's clock, read on every round: ``anyio.current_time`` first looks up the backend
        self.now: Callable[[], float] = trio.current_time
        self.checkpoint: Callable[[], Awaitable[None]] = trio.lowlevel.checkpoint
        self._deadlines: dict[SocketConnection, float] = {}
        self._wake_at = math.inf
        self._scope: anyio.CancelScope | None = None

    def watch(self, connection: SocketConnection, deadline: float) -> None:
        self._deadlines[connection] = deadline
        if deadline < self._wake_at:
            self._wake_at = deadline
            if self._scope is not None:
                self._scope.deadline = deadline

    def forget(self, connection: SocketConnection) -> None:
        self._deadlines.pop(connection, None)

    async def run(self) -> None:
        while True:
            now = self.now()
            wake_at = math.inf
            for connection, deadline in list(self._deadlines.items()):
                if deadline <= now:
                    del self._deadlines[connection]
                    connection.expire()
                elif deadline < wake_at:
                    wake_at = deadline
            self._wake_at = wake_at
            with anyio.CancelScope(deadline=wake_at) as scope:
                self._scope = scope
                await anyio.sleep_forever()
            self._scope = None


class Poller:
    """The reads of a trio server's ``SocketConnection``s whose tasks wait for their client,
    done in one task: a round (read, feed the Session, write its replies) then wakes no task
    of its own, as ``TransportConnection`` does on asyncio; the connection's task wakes only
    for what must be awaited (a handler, a hook, a TLS handshake, a flush, the end).

    The sockets sit in an epoll of ours, edge-triggered: registered once per connection, where
    trio's one-shot ``wait_readable`` costs an ``epoll_ctl`` and a task switch per round. The
    poller's task waits (trio's ``wait_readable``) on that epoll and hands each connection
    whose socket became readable its turn (``SocketConnection.readable``).
    """

    def __init__(self) -> None:
        import outcome
        import trio

        self._epoll = select.epoll()
        self._connections: dict[int, SocketConnection] = {}
        self._wait_readable = trio.lowlevel.wait_readable
        self.current_task = trio.lowlevel.current_task
        self.park = trio.lowlevel.wait_task_rescheduled
        self.aborted = trio.lowlevel.Abort.SUCCEEDED
        self._reschedule = trio.lowlevel.reschedule
        self._value = outcome.Value
        self._error = outcome.Error

    def register(self, connection: SocketConnection) -> int:
        """Watch ``connection``'s socket from now on; its file descriptor."""
        fd = connection.socket.fileno()
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLET)
        self._connections[fd] = connection
        return fd

    def unregister(self, connection: SocketConnection, fd: int) -> None:
        """Before its socket is closed (or handed to TLS)."""
        if self._connections.get(fd) is connection:
            del self._connections[fd]
            if not self._epoll.closed:  # closed: the poller's task ended first (a forced stop)
                with contextlib.suppress(OSError):
                    self._epoll.unregister(fd)

    def wake(self, task: Any, result: object) -> None:
        self._reschedule(task, self._value(result))

    def fail(self, task: Any, exc: Exception) -> None:
        self._reschedule(task, self._error(exc))

    async def run(self) -> None:
        epoll, connections = self._epoll, self._connections
        try:
            while True:
                await self._wait_readable(epoll.fileno())
                for fd, _events in epoll.poll(0):
                    connection = connections.get(fd)
                    if connection is not None:
                        connection.readable()
        finally:
            epoll.close()


class SocketConnection:
    """Plain TCP straight on the non-blocking socket under an anyio SocketStream (for trio).

    Reads (commands into a buffer shared by the server's connections and copied out; in a bulk
    transfer, where a read fills that buffer, into a bytes of their own, saving the copy) and
    ``send`` go to the socket itself. When the task asks for the client's next bytes and none
    are there, it parks, and the server's ``Poller`` carries out the rounds that need no await
    (``readable``) until one does, the client leaves, a write is left unfinished, or the
    server stops; its timeout is kept by a ``Watchdog``, which (like a stop or an eviction)
    wakes the parked task. A stream instead costs a cancel scope per read and checkpoints
    around every read and write. STARTTLS (or implicit TLS) hands over to a
    ``StreamConnection`` on the same stream, which has read nothing so far.
    """

    #: one per connection: slots instead of a __dict__ (the W5 idle-connection memory)
    __slots__ = (
        "_broken",
        "_ended",
        "_fd",
        "_more",
        "_peer",
        "_poller",
        "_read_buffer",
        "_session",
        "_spool",
        "_stopping",
        "_task",
        "_tls",
        "_unsent",
        "_waiting",
        "_watchdog",
        "socket",
        "stream",
        "ticket",
    )

    def __init__(
        self,
        stream: ByteStream,
        raw_socket: socket.socket,
        watchdog: Watchdog,
        poller: Poller,
        read_buffer: memoryview,
        stopping: Callable[[], bool],
    ) -> None:
        self.stream = stream
        self.socket = raw_socket  # the stream's own (its SocketAttribute.raw_socket)
        self._watchdog = watchdog
        self._poller = poller
        self._fd = -1  # registered with the poller (at the first wait) under this descriptor
        self._read_buffer = read_buffer  # shared: filled and emptied with no await between
        self._stopping = stopping
        self._more = False  # the last read filled the buffer: more is likely waiting
        self._tls: StreamConnection | None = None
        self._waiting = False  # in next_actions: a stop, an eviction or the watchdog may end it
        self._task: Any = None  # the task, while it is parked in next_actions
        self._session: Session | None = None  # while parked: the poller feeds it
        self._spool: SpoolFile | None = None
        self._ended = WaitEnd.TIMED_OUT  # why the last wait was ended without bytes
        #: what the socket did not take at once, for flush (a list only then: W5)
        self._unsent: list[bytes] | None = None
        self._broken = False  # a write failed: the client is gone
        self._peer: tuple[str, int] | bool | None = False  # False: not asked yet
        #: the server's admission ticket: each round the poller runs marks it active
        self.ticket: Ticket[Any] | None = None

    @property
    def peer(self) -> tuple[str, int] | None:
        # From the socket, as the stream's ``SocketAttribute.remote_address`` would give it (an
        # IPv6 scope id joined with "%"), without the table of every attribute ``extra`` builds;
        # asked once: the ticket and the session keep the same tuple (W5)
        if self._peer is not False:
            return cast("tuple[str, int] | None", self._peer)
        try:
            address = self.socket.getpeername()
        except OSError:
            return None  # not connected (any more)
        if len(address) == 4 and address[3]:
            self._peer = (f"{address[0].split('%')[0]}%{address[3]}", address[1])
        else:
            self._peer = peer_address(address)
        return self._peer

    async def next_actions(self, session: Session, spool: SpoolFile) -> list[Action] | WaitEnd:
        if self._tls is not None:
            return await self._tls.next_actions(session, spool)
        self._waiting = True
        if self._more:
            await self._watchdog.checkpoint()  # let the other connections run too
            if not self._waiting:  # a stop, an eviction or the timeout came meanwhile
                return self._ended
        data = self._read()
        if data is not None:
            self._waiting = False
            return session.receive_data(data)
        # Nothing yet: park; the poller runs the rounds from here on (see ``readable``). Any
        # bytes that arrive after the read above make the socket's edge, and the poller's turn.
        poller = self._poller
        if self._fd < 0:
            self._fd = poller.register(self)
        self._session, self._spool, self._task = session, spool, poller.current_task()
        self._watchdog.watch(self, self._watchdog.now() + session.timeout)
        try:
            result: list[Action] | WaitEnd = await poller.park(self._abort)
        finally:
            self._unpark()
        return result

    def _read(self) -> bytes | None:
        """What the client sent next (b"" at its end), or None when nothing is there yet."""
        sock, buffer = self.socket, self._read_buffer
        try:
            # a bulk transfer (DATA; the last read filled the buffer): a bytes of its own, no
            # copy to make; commands: the shared buffer, and a copy of only what came
            data = sock.recv(len(buffer)) if self._more else bytes(buffer[: sock.recv_into(buffer)])
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        self._more = len(data) == len(buffer)
        return data

    def readable(self) -> None:
        """The poller's turn: bytes arrived (or the client left). While the task is parked,
        run the round here; wake the task with what it must do, or keep it parked."""
        session, spool, task = self._session, self._spool, self._task
        if session is None or spool is None or task is None:
            return  # the task is busy: its next next_actions reads them
        data = self._read()
        if data is None:
            return  # an edge whose bytes were read already
        outcome = _waiting_round(session, spool, data, self.write, self.ticket)
        if outcome is not None:
            self._wake(outcome)
        elif not data or self._more or self._unsent is not None or self._broken or self._stopping():
            # the end, a bulk transfer (the task reads on), a write to finish, a stopping server
            self._wake([])
        else:
            self._watchdog.watch(self, self._watchdog.now() + session.timeout)

    def _wake(self, result: list[Action] | WaitEnd | Exception) -> None:
        task = self._task
        self._unpark()
        if isinstance(result, Exception):
            self._poller.fail(task, result)
        else:
            self._poller.wake(task, result)

    def _unpark(self) -> None:
        self._session = self._spool = self._task = None
        self._waiting = False
        self._watchdog.forget(self)

    def _abort(self, raise_cancel: object) -> Any:
        """The parked task is cancelled (a forced stop): it is no longer ours to wake."""
        self._unpark()
        return self._poller.aborted

    def _end_wait(self, why: WaitEnd) -> None:
        if self._task is not None:
            self._wake(why)
        elif self._waiting:  # between rounds (a checkpoint): next_actions returns it
            self._waiting = False
            self._ended = why

    def expire(self) -> None:
        """The watchdog says the wait is overdue."""
        self._end_wait(WaitEnd.TIMED_OUT)

    def interrupt(self) -> None:
        if self._tls is not None:
            self._tls.interrupt()
        else:
            self._end_wait(WaitEnd.INTERRUPTED)

    def write(self, data: bytes) -> None:
        if self._tls is not None:
            self._tls.write(data)
            return
        if self._unsent is not None:  # keep the order: behind what waits already
            self._unsent.append(data)
            return
        if self._broken:
            return  # the client is gone: flush says so
        try:
            sent = self.socket.send(data)  # replies are short: almost always all of it
        except BlockingIOError:
            sent = 0
        except OSError:
            self._broken = True
            return
        if sent != len(data):
            self._unsent = [data[sent:]]

    @property
    def unflushed(self) -> bool:
        if self._tls is not None:
            return self._tls.unflushed
        return self._broken or self._unsent is not None

    async def flush(self) -> bool:
        if self._tls is not None:
            return await self._tls.flush()
        if self._broken:
            return False
        if self._unsent is None:
            return True
        data = b"".join(self._unsent)
        self._unsent = None
        return await self.send(data)

    async def send(self, data: bytes) -> bool:
        if self._tls is not None:
            return await self._tls.send(data)
        sock = self.socket
        try:
            sent = sock.send(data)  # replies are short: this is almost always all of it
        except BlockingIOError:
            sent = 0
        except OSError:
            return False
        if sent == len(data):
            return True
        view = memoryview(data)[sent:]
        try:
            while view:
                try:
                    view = view[sock.send(view) :]
                except BlockingIOError:
                    await anyio.wait_writable(sock)
        except (OSError, anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        finally:
            view.release()
        return True

    def take_unread(self) -> bytes:
        return b""  # every read is fed at once

    async def start_tls(self, context: ssl.SSLContext, timeout: float) -> TLSInfo:
        self._release()  # TLS reads through trio's own waits from now on
        self._tls = StreamConnection(self.stream)
        return await self._tls.start_tls(context, timeout)

    def _release(self) -> None:
        if self._fd >= 0:
            self._poller.unregister(self, self._fd)
            self._fd = -1

    async def aclose(self) -> None:
        try:
            self._release()  # before the socket closes: its descriptor may be reused at once
        finally:
            await (self._tls.stream if self._tls is not None else self.stream).aclose()


#: what a parked TransportConnection calls when its wait is over: the connection, its session and
#: spool, and the outcome (the next actions, why the wait ended, or an exception to raise)
Wake = Callable[
    ["TransportConnection", Session, SpoolFile, "list[Action] | WaitEnd | BaseException"], None
]


class TransportTimeouts:
    """The waits of a listener's ``TransportConnection``s, timed by one loop timer instead of
    one per connection: on uvloop a timer handle and its libuv timer are about 600 B per idle
    connection (W5), and a new connection no longer creates one. A waiting connection keeps its
    deadline in its own ``_deadline`` and sits in ``waiting``; the timer fires at the earliest
    deadline noted, ends the waits that are overdue and is set again for the earliest left.
    Deadlines mostly move later (each read moves its connection's), so the timer wakes about
    once per timeout period, not once per read."""

    __slots__ = ("_loop", "_timer", "_wake_at", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.waiting: set[TransportConnection] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._wake_at = math.inf

    def watch(self, connection: TransportConnection, deadline: float) -> None:
        """``connection`` waits for its client until ``deadline`` (the loop's clock)."""
        connection._deadline = deadline
        self.waiting.add(connection)
        if deadline < self._wake_at:
            self._set(deadline)

    def _set(self, wake_at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._wake_at = wake_at
        self._timer = self._loop.call_at(wake_at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._wake_at = math.inf
        now = self._loop.time() + _TIMER_SLACK
        waiting = self.waiting
        for connection in [c for c in waiting if c._deadline <= now]:
            waiting.discard(connection)
            connection.expire()
        if waiting:
            self._set(min(c._deadline for c in waiting))

    def close(self) -> None:
        """The listener is gone: no more timer."""
        self.waiting.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake_at = math.inf


class TransportConnection(asyncio.BufferedProtocol):
    """A connection straight on an asyncio transport.

    The transport reads into ``read_buffer``, one buffer for all the connections of a loop
    (asyncio calls ``get_buffer`` and ``buffer_updated`` back to back), so a read allocates
    no buffer of its own: asyncio's plain protocols get a fresh 256 KiB one for every read.

    While the connection waits for its client, every read is fed to the session inside
    ``buffer_updated``; replies are written and content spooled on the spot, and only an
    action that needs awaiting (or the session's end, a timeout, a full write buffer, a
    stopping server) ends the wait, with the actions still to carry out. The server's loop
    waits either in ``next_actions`` (its task sleeps on a future) or, usually, not at all:
    ``park`` leaves the session with the callbacks and ends the task, and the end of the wait
    calls the server back (``Wake``) to start a task that carries on. While a task is busy,
    bytes are kept (up to a limit, then reading pauses) for its next wait.
    The timeout is a deadline kept by the listener's ``TransportTimeouts`` (one timer for all
    its connections), moved on by each read. ``on_connect`` starts the task that serves the
    connection; ``stopping`` says whether the server is stopping (the task then decides
    between rounds, as it always does).
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_deadline",
        "_drain",
        "_eof",
        "_interrupted",
        "_loop",
        "_lost",
        "_on_connect",
        "_peer",
        "_read_buffer",
        "_reading_paused",
        "_session",
        "_spool",
        "_stopping",
        "_timeouts",
        "_tls",
        "_waiter",
        "_wake",
        "_writing_paused",
        "ticket",
        "transport",
    )

    def __init__(
        self,
        on_connect: Callable[[TransportConnection], None],
        stopping: Callable[[], bool],
        read_buffer: memoryview,
        timeouts: TransportTimeouts,
    ) -> None:
        self._read_buffer = read_buffer
        self._timeouts = timeouts
        self._on_connect = on_connect
        self._stopping = stopping
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._reading_paused = False
        self._eof = False
        self._tls = False  # asyncio's TLS layer sits under us since STARTTLS
        self._lost = False
        self._session: Session | None = None  # set while waiting: in next_actions, or parked
        self._spool: SpoolFile | None = None
        self._waiter: asyncio.Future[list[Action] | WaitEnd] | None = None
        self._wake: Wake | None = None  # set while parked (see ``park``)
        self._drain: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._deadline = 0.0  #: the wait's end, kept by ``_timeouts`` (while in its ``waiting``)
        self._peer: tuple[str, int] | None = None
        self._interrupted = False  # interrupt() came while no wait was in progress
        #: the server's admission ticket: each read the callback feeds marks it active
        self.ticket: Ticket[Any] | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        # asked once: on uvloop each get_extra_info("peername") is a getpeername() call
        self._peer = peer_address(transport.get_extra_info("peername"))
        self._on_connect(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_buffer  # shared: the transport fills it, buffer_updated empties it

    def buffer_updated(self, nbytes: int) -> None:
        data = bytes(self._read_buffer[:nbytes])
        if self._session is not None:  # as data_received, one call less per read
            self._feed(data)
        else:
            self._keep(data)

    def data_received(self, data: bytes) -> None:
        if self._session is not None:
            self._feed(data)
        else:
            self._keep(data)

    def _keep(self, data: bytes) -> None:
        """The task is busy: keep ``data`` for its next ``next_actions``."""
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _READ_LIMIT and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._session is not None:
            self._feed(b"")
        # Keep our side open: replies still due go out before we close. Over TLS there is no
        # half-close (asyncio closes anyway, and warns if we ask otherwise).
        return not self._tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._session is not None:
            self._feed(b"")
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)
        self._timeouts.waiting.discard(self)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # --- running the session in the callback --------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """One round of the session, done here: the task wakes only for what it must do."""
        session, spool, transport = self._session, self._spool, self.transport
        assert session is not None and spool is not None and transport is not None
        outcome = _waiting_round(session, spool, data, self.write, self.ticket)
        if outcome is not None:
            self._hand_over(outcome)
        elif not data or self._writing_paused or self._stopping():
            self._hand_over([])  # the end, a client that does not read, or a stopping server
        else:
            self._timeouts.watch(self, self._loop.time() + session.timeout)

    def _hand_over(self, outcome: list[Action] | WaitEnd | BaseException) -> None:
        """The wait is over: wake the waiting task, or (parked) have the server start one."""
        session, spool = self._session, self._spool
        self._session = self._spool = None
        self._timeouts.waiting.discard(self)
        waiter, wake = self._waiter, self._wake
        if waiter is not None:
            if not waiter.done():
                if isinstance(outcome, BaseException):
                    waiter.set_exception(outcome)
                else:
                    waiter.set_result(outcome)
        elif wake is not None and session is not None and spool is not None:
            self._wake = None
            wake(self, session, spool, outcome)

    def expire(self) -> None:
        """The wait is overdue (``TransportTimeouts`` says so)."""
        if self._session is not None:
            self._hand_over(WaitEnd.TIMED_OUT)

    # --- Connection ---------------------------------------------------------------------------

    @property
    def peer(self) -> tuple[str, int] | None:
        return self._peer

    def park(self, session: Session, spool: SpoolFile, wake: Wake) -> bool:
        """Wait for the client with no task at all, if nothing is to be done first (bytes kept
        while the task was busy, a drain, an interrupt, the end): the callbacks feed
        ``session`` as they do for ``next_actions``, and what would have woken the task calls
        ``wake(self, session, spool, outcome)`` instead, whose task carries on from there.
        An idle connection then holds no task, no coroutine frames and no future (W5)."""
        if self._writing_paused or self._interrupted or self._chunks or self._eof or self._lost:
            return False  # next_actions deals with these
        self._session, self._spool, self._wake = session, spool, wake
        self._timeouts.watch(self, self._loop.time() + session.timeout)
        return True

    def end_wait(self, outcome: BaseException) -> None:
        """End a parked wait with ``outcome`` raised in the task that ``wake`` starts."""
        if self._session is not None and self._waiter is None:
            self._hand_over(outcome)

    async def next_actions(self, session: Session, spool: SpoolFile) -> list[Action] | WaitEnd:
        if self._writing_paused and not self._lost:
            await self._wait_drain()  # read nothing more while the client reads nothing
        if self._interrupted:  # a stop or an eviction came while we waited for the drain
            self._interrupted = False
            return WaitEnd.INTERRUPTED
        if self._chunks or self._eof or self._lost:  # arrived while the task was busy
            chunks = self._chunks
            data = b"".join(chunks) if len(chunks) != 1 else chunks[0]
            self._chunks = []
            self._buffered = 0
            if self._reading_paused and self.transport is not None:
                self._reading_paused = False
                self.transport.resume_reading()
            return session.receive_data(data)
        self._session, self._spool = session, spool
        self._timeouts.watch(self, self._loop.time() + session.timeout)
        waiter: asyncio.Future[list[Action] | WaitEnd] = self._loop.create_future()
        self._waiter = waiter
        try:
            return await waiter
        finally:
            self._waiter = None
            self._session = self._spool = None
            self._timeouts.waiting.discard(self)  # cancelled: the wait is over all the same

    async def _wait_drain(self) -> None:
        self._drain = self._loop.create_future()
        try:
            await self._drain
        finally:
            self._drain = None

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    @property
    def unflushed(self) -> bool:
        return self._writing_paused or self._lost

    async def flush(self) -> bool:
        if self._writing_paused and not self._lost:
            await self._wait_drain()
        return not self._lost

    async def send(self, data: bytes) -> bool:
        transport = self.transport
        if self._lost or transport is None or transport.is_closing():
            return False
        transport.write(data)
        if self._writing_paused:
            await self._wait_drain()
        return not self._lost

    def take_unread(self) -> bytes:
        chunks = self._chunks
        self._chunks = []
        self._buffered = 0
        return b"".join(chunks)

    async def start_tls(self, context: ssl.SSLContext, timeout: float) -> TLSInfo:
        assert self.transport is not None
        # Bytes that arrived since the last feed must have been taken (take_unread) and
        # handed to the Session, which drops them (RFC 3207 §4.2).
        self._chunks = []
        self._buffered = 0
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        self._tls = True  # set first: the handshake may finish, and EOF arrive, before we resume
        transport = await self._loop.start_tls(
            self.transport, self, context, server_side=True, ssl_handshake_timeout=timeout
        )
        if transport is None:
            raise ConnectionError("the connection closed during the TLS handshake")
        self.transport = transport
        return TLSInfo.from_ssl_object(transport.get_extra_info("ssl_object"))

    def interrupt(self) -> None:
        if self._session is not None:
            self._hand_over(WaitEnd.INTERRUPTED)
        else:
            self._interrupted = True

    async def aclose(self) -> None:
        self._timeouts.waiting.discard(self)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
