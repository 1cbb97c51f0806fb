"""The blocking server: Sessions over plain sockets, one thread per connection, bounded.

Like smtp_anyio, it only carries out the Session's Actions; no SMTP logic lives here.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import attrs

from smtp_core import (
    Admission,
    ConnectionLimits,
    Handler,
    Metrics,
    Policy,
    Router,
    ServerConfig,
    Session,
    TLSInfo,
)
from smtp_core.adapter import (
    Call,
    SessionFactory,
    Ticket,
    TurnedAway,
    UpgradeToTLS,
    WaitEnd,
    run_inline,
)

from ._spool import SpoolFile, call_arguments, is_async_callable, session_factory, utc_now

__all__ = ["Server"]

log = logging.getLogger("smtpmux.server")
_MAX_IDLE_WORKERS = 16  #: threads kept waiting for the next connection
_IDLE_SECONDS = 30.0  #: how long an idle worker waits before it ends
_FORCED_END_SECONDS = 5.0  #: how long stop() waits for the sessions its deadline cut off
#: a read's most. Not more: CPython's recv(n) mallocs n bytes and shrinks them to what came, and
#: above glibc's mmap threshold (128 KiB) that is an mmap, an mremap and a munmap on every read,
#: small ones too (measured here: 2.2 µs a small read at 64 KiB, 13-15 µs at 256 KiB)
_READ_SIZE = 64 * 1024
#: the read after one that filled ``_READ_SIZE``: a big message is arriving, and at this size its
#: rounds and spool writes are a quarter as many, while the mmap is paid once per 256 KiB
_BULK_READ_SIZE = 256 * 1024
#: a TLS socket cannot be woken by shutting its read side (the TLS layer then fails, and the
#: 421 could not be sent), so its waits are cut in slices, checked for a stop or an eviction
_TLS_WAIT_SLICE = 1.0


@attrs.define(eq=False)
class Server:
    """A blocking SMTP server. ``serve_forever()`` in the calling thread, or
    ``with Server(router, port=0) as server:`` to run it in a background thread (tests).

    A thread costs about 30 KiB, so the cap is as high as smtp_anyio's (1000); a full server
    evicts its longest-idle connection for a newcomer (see smtp_core.Admission), so idle
    clients cannot keep a working one out. ``limits``, ``max_connections`` and
    ``admission`` are as in smtp_anyio.Server."""

    router: Router[Handler]
    host: str = "127.0.0.1"
    port: int = 8025
    config: ServerConfig = attrs.Factory(ServerConfig)
    policy: Policy = attrs.Factory(Policy)
    ssl_context: ssl.SSLContext | None = None
    implicit_tls: bool = False
    proxy_protocol_from: frozenset[str] = frozenset()
    max_connections: int | None = None  #: default: ``limits.max_connections`` (1000)
    limits: ConnectionLimits = attrs.Factory(ConnectionLimits)
    shutdown_timeout: float = 30.0
    clock: Callable[[], datetime] = utc_now
    metrics: Metrics = attrs.Factory(lambda: Metrics(lock=threading.Lock()))
    reuse_port: bool = False  #: SO_REUSEPORT: several processes serve one port (--workers)
    sock: socket.socket | None = None  #: an already listening socket to serve (inherited)
    admission: Admission[socket.socket] | None = None  #: default: one of this server's own
    _listener: socket.socket | None = attrs.field(init=False, default=None)
    _sessions: dict[Session, socket.socket] = attrs.field(init=False, factory=dict)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _stopping: threading.Event = attrs.field(init=False, factory=threading.Event)
    _thread: threading.Thread | None = attrs.field(init=False, default=None)
    _workers: set[threading.Thread] = attrs.field(init=False, factory=set)
    _jobs: queue.SimpleQueue[tuple[socket.socket, Any, Ticket[Any]] | None] = attrs.field(
        init=False, factory=queue.SimpleQueue
    )
    _idle_workers: int = attrs.field(init=False, default=0)  #: waiting in _next_job, no job yet
    _forced: bool = attrs.field(init=False, default=False)  #: stop's deadline passed
    _factory: SessionFactory | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        _refuse_async(self.router, self.policy)
        if self.admission is None:
            if self.max_connections is not None:
                self.limits = attrs.evolve(self.limits, max_connections=self.max_connections)
            self.admission = Admission(
                self.limits,
                metrics=self.metrics,
                exempt=self.proxy_protocol_from,
                lock=threading.Lock(),
            )
        self.limits = self.admission.limits
        self.max_connections = self.limits.max_connections

    def bind(self) -> None:
        """Open the listening socket (``port`` becomes the bound port)."""
        if self.sock is not None:
            listener = self.sock
        else:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listener.bind((self.host, self.port))
            listener.listen(512)
        listener.settimeout(0.2)  # so serve_forever notices stop()
        self.port = listener.getsockname()[1]
        self._listener = listener

    def serve_forever(self) -> None:
        if self._listener is None:
            self.bind()
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    break
                raise
            self._admit(sock, address)

    def _admit(self, sock: socket.socket, address: Any) -> None:
        """Ask the admission here, in the acceptor: a refused client costs no thread."""
        assert self.admission is not None
        client = str(address[0]) if isinstance(address, tuple) else None
        verdict = self.admission.admit(
            client, sock, time.monotonic(), stopping=self._stopping.is_set()
        )
        if isinstance(verdict, TurnedAway):
            with contextlib.suppress(OSError):
                sock.setblocking(False)  # an empty send buffer takes it; never wait here
                sock.send(verdict.data)
            sock.close()
            return
        if verdict.evict is not None:
            _wake(verdict.evict.handle)  # its worker sees ``evicted``: 421 4.4.2
        self._dispatch(sock, address, verdict.ticket)

    def _dispatch(self, sock: socket.socket, address: Any, ticket: Ticket[Any]) -> None:
        """Hand the connection to an idle worker thread, or start a new one. Starting a thread
        costs about as much as a whole short session, and the acceptor waits for it to run."""
        with self._lock:
            if self._idle_workers:
                self._idle_workers -= 1
                self._jobs.put((sock, address, ticket))
                return
            worker = threading.Thread(target=self._work, args=(sock, address, ticket), daemon=True)
            self._workers.add(worker)
        worker.start()

    def _work(self, sock: socket.socket, address: Any, ticket: Ticket[Any]) -> None:
        """Serve connections: this one, then whatever ``_dispatch`` hands over while this
        thread waits idle (at most ``_MAX_IDLE_WORKERS`` wait, each up to ``_IDLE_SECONDS``)."""
        job: tuple[socket.socket, Any, Ticket[Any]] | None = (sock, address, ticket)
        try:
            while job is not None:
                self._guarded(*job)
                with self._lock:
                    if self._stopping.is_set() or self._idle_workers >= _MAX_IDLE_WORKERS:
                        return
                    self._idle_workers += 1
                job = self._next_job()
        finally:
            with self._lock:
                self._workers.discard(threading.current_thread())

    def _next_job(self) -> tuple[socket.socket, Any, Ticket[Any]] | None:
        while True:
            try:
                return self._jobs.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    # Count ourselves out, unless every idle worker is spoken for by a job in
                    # the queue (then one is ours: take it).
                    if self._idle_workers:
                        self._idle_workers -= 1
                        return None

    def __enter__(self) -> Server:
        self.bind()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop accepting; open transactions get ``shutdown_timeout``; others get 421."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        if self._listener is not None:
            self._listener.close()
        with self._lock:  # idle workers: no more jobs, leave
            for _ in range(self._idle_workers):
                self._jobs.put(None)
            self._idle_workers = 0
        with self._lock:
            idle = [sock for session, sock in self._sessions.items() if not session.in_transaction]
        for sock in idle:  # wake their blocking reads; the worker sends 421 4.3.2
            _wake(sock)
        with self._lock:
            workers = list(self._workers)
        deadline = threading.Event()
        timer = threading.Timer(self.shutdown_timeout, deadline.set)
        timer.start()
        for worker in workers:
            while worker.is_alive() and not deadline.is_set():
                worker.join(0.05)
        timer.cancel()
        self._forced = True
        with self._lock:
            for sock in self._sessions.values():
                _wake(sock)
        # The forced sessions still answer 421 and end their step transactions (QUIT to an
        # upstream): wait for that briefly, or a process that exits after stop() cuts it off.
        end = time.monotonic() + _FORCED_END_SECONDS
        for worker in workers:
            worker.join(max(0.0, end - time.monotonic()))

    def _guarded(self, sock: socket.socket, address: Any, ticket: Ticket[Any]) -> None:
        assert self.admission is not None
        try:
            self._connection(sock, address, ticket)
        except Exception:
            log.exception("connection failed")
        finally:
            self.admission.leave(ticket)
            sock.close()

    def _sessions_factory(self) -> SessionFactory:
        """This listener's SessionFactory; built again when a reload swapped what it uses."""
        with self._lock:
            self._factory = session_factory(self, self._factory)
            return self._factory

    def _connection(self, sock: socket.socket, address: Any, ticket: Ticket[Any]) -> None:
        peer = (str(address[0]), int(address[1])) if isinstance(address, tuple) else None
        factory, tls = self._sessions_factory(), None
        if self.implicit_tls:
            try:
                sock = self._handshake(sock, factory.handshake_timeout)
                outcome: object = TLSInfo.from_ssl_object(sock)
            except OSError as exc:  # the client's failure (plaintext, bad version, timeout)
                outcome = exc
            tls = factory.handshake(peer, outcome)
            if tls is None:
                return
        session = factory(peer, tls)
        ticket.handle, ticket.session = sock, session
        with self._lock:
            self._sessions[session] = sock
        spool = SpoolFile()
        try:
            self._run(session, sock, spool, ticket)
        finally:
            _drop(session, spool)
            spool.close()
            with self._lock:
                self._sessions.pop(session, None)

    def _handshake(self, sock: socket.socket, timeout: float) -> ssl.SSLSocket:
        assert self.ssl_context is not None
        sock.settimeout(timeout)
        return self.ssl_context.wrap_socket(sock, server_side=True)

    def _run(
        self, session: Session, sock: socket.socket, spool: SpoolFile, ticket: Ticket[Any]
    ) -> None:
        assert self.admission is not None
        admission_lock = self.admission.lock
        actions = session.start()
        timeout, timed = 0.0, None  # the timeout applied to the socket ``timed``
        read_size = _READ_SIZE  # grows to _BULK_READ_SIZE while reads come full

        def write(data: bytes) -> bool:
            try:
                sock.sendall(data)  # ``sock``: the TLS socket, once STARTTLS made one
            except OSError:  # the client is gone; nothing accepted is pending
                return False
            return True

        def call(action: Call) -> object:
            return _call(action, spool)

        while True:
            action = run_inline(session, actions, write, spool.write, call)
            if isinstance(action, UpgradeToTLS):
                try:
                    sock = self._handshake(sock, session.tls_timeout)
                    outcome: object = TLSInfo.from_ssl_object(sock)
                    with self._lock:
                        self._sessions[session] = sock
                    with admission_lock:
                        ticket.handle = sock
                except (OSError, ssl.SSLError) as exc:
                    outcome = exc
                actions = session.resolve(action, outcome)
                continue
            if action is not None:  # Close, or the client is gone
                return
            if self._stopping.is_set():
                actions = session.server_stopping()
                if actions:
                    continue
            if session.timeout != timeout or sock is not timed:
                timeout, timed = session.timeout, sock
                _apply_timeout(sock, timeout)
            ticket.waiting = True  # a full server may evict us now, if we are idle
            ended: WaitEnd | None = None  # why the wait ended without data
            try:
                if isinstance(sock, ssl.SSLSocket):
                    data = self._receive_tls(sock, session, ticket, timeout)
                else:
                    data = sock.recv(read_size)
                    read_size = _BULK_READ_SIZE if len(data) >= _READ_SIZE else _READ_SIZE
            except (TimeoutError, BlockingIOError):  # BlockingIOError: SO_RCVTIMEO ran out
                ended, data = WaitEnd.TIMED_OUT, b""
            except OSError:
                data = b""
            if not data and ended is None and self._stopping.is_set():  # stop() shut our read
                ended = WaitEnd.INTERRUPTED
            with admission_lock:  # the acceptor decides evictions under this lock
                ticket.waiting = False
                evicted = ticket.evicted  # our slot went to a newcomer while we waited, idle
            if evicted:
                ended = WaitEnd.INTERRUPTED
            if ended is not None:
                stopping = self._stopping.is_set()
                actions = session.wait_ended(ended, stopping=stopping, evicted=evicted)
                continue
            ticket.active_at = time.monotonic()
            actions = session.receive_data(data)

    def _receive_tls(
        self, sock: ssl.SSLSocket, session: Session, ticket: Ticket[Any], timeout: float
    ) -> bytes:
        """``sock.recv`` in slices of ``_TLS_WAIT_SLICE``; b"" (as at the client's end) when
        a stop or an eviction wants the wait to end, TimeoutError after ``timeout``."""
        if timeout <= _TLS_WAIT_SLICE:
            return sock.recv(_READ_SIZE)
        deadline = time.monotonic() + timeout
        sock.settimeout(_TLS_WAIT_SLICE)
        try:
            while True:
                try:
                    return sock.recv(_READ_SIZE)  # a timeout mid-record keeps the TLS state
                except TimeoutError:
                    if ticket.evicted or (
                        self._stopping.is_set() and (self._forced or not session.in_transaction)
                    ):
                        return b""
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise
                    sock.settimeout(min(left, _TLS_WAIT_SLICE))
        finally:
            sock.settimeout(timeout)


def _refuse_async(router: Router[Handler], policy: Policy) -> None:
    """This server calls handlers and hooks in its threads and cannot await them: say so now,
    not with a 451 when the first message arrives."""
    for pattern, handler in router.items():
        if is_async_callable(handler) or is_async_callable(getattr(handler, "begin", None)):
            raise TypeError(
                f"the handler for {pattern!r} is async ({handler!r}): smtp_sync calls handlers "
                "synchronously; serve it with smtp_anyio.Server, or make it a plain function"
            )
    for hook in ("on_connect", "authenticate", "addressable"):
        if is_async_callable(getattr(policy, hook)):
            raise TypeError(
                f"{type(policy).__name__}.{hook} is async: smtp_sync calls policy hooks "
                "synchronously; serve it with smtp_anyio.Server, or make it a plain method"
            )


def _apply_timeout(sock: socket.socket, seconds: float) -> None:
    """Make reads (and writes) give up after ``seconds``.

    A plain socket stays blocking and the kernel keeps the timeout (SO_RCVTIMEO, SO_SNDTIMEO:
    a read that runs out raises BlockingIOError), so each read and write is one system call;
    with ``settimeout`` Python would poll() before every one of them. A TLS socket needs
    Python's own timeout.
    """
    if isinstance(sock, ssl.SSLSocket):
        sock.settimeout(seconds)
        return
    sock.settimeout(None)
    whole, micro = 0, 0  # no timeout
    if seconds < 1e9:
        whole = int(seconds)
        micro = max(int((seconds - whole) * 1_000_000), 0 if whole else 1)  # 0, 0 is none
    timeval = struct.pack("@ll", whole, micro)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def _drop(session: Session, spool: SpoolFile) -> None:
    """However the connection ended: carry out the Calls that end what the session still has
    open (step transactions), before the socket is closed."""
    run_inline(session, session.drop(), _discard, spool.write, lambda action: _call(action, spool))


def _discard(data: bytes) -> None:
    """The connection is over: a reply would reach nobody."""


def _call(action: Call, spool: SpoolFile) -> object:
    try:
        result = action.function(*call_arguments(action, spool))
    except Exception as exc:
        return exc
    if hasattr(result, "__await__"):
        close = getattr(result, "close", None)
        if close is not None:
            close()
        return TypeError(
            "smtp_sync calls handlers and hooks synchronously; use smtp_anyio for async, "
            "or a plain function"
        )
    return result


def _wake(sock: socket.socket) -> None:
    """Make a thread blocked in recv() on ``sock`` return, as at the client's end; the way
    back stays open for the 421 that follows. A TLS socket's wait notices by itself within
    ``_TLS_WAIT_SLICE`` (after a shut read side its TLS layer could send nothing more)."""
    if isinstance(sock, ssl.SSLSocket):
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
