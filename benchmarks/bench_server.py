"""One server of the benchmark suite, run as its own process: accept every message, discard it.

``python benchmarks/bench_server.py KIND PORT`` listens on 127.0.0.1:PORT and prints ``READY`` on
stdout once it accepts connections. KIND is one of ``SERVER_KINDS``. With ``--profile FILE`` it
runs under cProfile and writes the statistics to FILE when terminated (SIGTERM).

Every server does the same work: parse the protocol, collect the message, hand it to a handler
that drops it. Nothing is logged (neither smtpmux nor aiosmtpd configures logging here) and no
server keeps anything.

The ``bare-*`` kinds are the ceiling, not servers: the least a Python SMTP sink can do (commands
cut with ``bytes.find``, the replies of one read in one write, DATA scanned with one
``bytes.find(b"\r\n.\r\n")`` per read; no checks, no storage, no TLS), on asyncio, on uvloop
and with a thread per connection.

smtpmux runs with its defaults (every limit and check on, messages over 1 MiB spooled to a
temporary file) except ``max_connections``, raised so 1000 idle connections (W5) fit, and
``max_connections_per_client``, off, since every benchmark client comes from 127.0.0.1. The
anyio servers get an ``async def`` handler, as aiosmtpd does; the thread-per-connection
server gets a plain function (it calls handlers in the connection's own thread).
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
from types import FrameType
from typing import Any

SERVER_KINDS = (
    "smtpmux-asyncio",
    "smtpmux-uvloop",
    "smtpmux-trio",
    "smtpmux-sync",
    "aiosmtpd-asyncio",
    "aiosmtpd-uvloop",
    "bare-asyncio",
    "bare-uvloop",
    "bare-threads",
)
HOST = "127.0.0.1"
MAX_CONNECTIONS = 10_000
#: the bare sinks' reads, as smtpmux's: one shared buffer on an event loop, recv() in threads
#: (where larger reads would allocate and free their buffer with mmap each time)
LOOP_READ_SIZE = 256 * 1024
THREAD_READ_SIZE = 64 * 1024


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _ready() -> None:
    print("READY", flush=True)


def run_smtpmux(backend: str, port: int) -> None:
    from smtp_core import ConnectionLimits, Envelope, Router, ServerConfig

    config = ServerConfig(hostname="localhost")
    limits = ConnectionLimits(max_connections=MAX_CONNECTIONS, max_connections_per_client=0)
    if backend == "sync":
        import smtp_sync

        def discard_sync(envelope: Envelope) -> None:
            return None

        sync_router: Router[Any] = Router()
        sync_router.add("*@*", discard_sync)
        server = smtp_sync.Server(sync_router, host=HOST, port=port, config=config, limits=limits)
        server.bind()
        _ready()
        server.serve_forever()
        return

    import anyio

    import smtp_anyio

    async def discard(envelope: Envelope) -> None:
        return None

    router: Router[Any] = Router()
    router.add("*@*", discard)

    async def main() -> None:
        async with smtp_anyio.Server(router, host=HOST, port=port, config=config, limits=limits):
            _ready()
            await anyio.sleep_forever()

    if backend == "uvloop":
        anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    else:
        anyio.run(main, backend=backend)


def run_aiosmtpd(backend: str, port: int) -> None:
    from aiosmtpd.smtp import SMTP

    class Sink:
        """aiosmtpd's own Sink, with the handle_DATA a real handler has: accept, drop."""

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    if backend == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    handler = Sink()
    server = loop.run_until_complete(
        loop.create_server(
            lambda: SMTP(handler, hostname="localhost", loop=loop), host=HOST, port=port
        )
    )
    _ready()
    try:
        loop.run_forever()
    finally:
        server.close()


class BareSink:
    """The ceiling's protocol: split on CRLF, answer, find the end of DATA; nothing else."""

    def __init__(self) -> None:
        self.buffer = b""
        self.in_data = False
        self.closed = False

    def greeting(self) -> bytes:
        return b"220 localhost bare sink\r\n"

    def received(self, data: bytes) -> bytes:
        """The replies to what ``data`` completes, in one piece (``closed`` after QUIT)."""
        buf = self.buffer + data if self.buffer else data
        replies = []
        pos = 0
        while True:
            if self.in_data:  # buf[pos:] begins with the CRLF before the first line
                end = buf.find(b"\r\n.\r\n", pos)
                if end < 0:
                    pos = max(pos, len(buf) - 4)  # a terminator split across reads
                    break
                replies.append(b"250 2.0.0 OK\r\n")
                self.in_data = False
                pos = end + 5
                continue
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                break
            verb = buf[pos : pos + 4].upper()
            if verb == b"DATA":
                replies.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                self.in_data = True
                pos = line_end
                continue
            pos = line_end + 2
            if verb == b"EHLO":
                replies.append(b"250-localhost\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"QUIT":
                replies.append(b"221 2.0.0 Bye\r\n")
                self.closed = True
                break
            else:
                replies.append(b"250 2.0.0 OK\r\n")
        self.buffer = buf[pos:]
        return b"".join(replies)


def run_bare(backend: str, port: int) -> None:
    if backend == "threads":
        _run_bare_threads(port)
        return

    # Reads go into one preallocated buffer (as smtpmux's do): asyncio's plain data_received
    # path allocates 256 KiB per read with mmap, which would make the ceiling a floor on W3.
    read_buffer = memoryview(bytearray(LOOP_READ_SIZE))

    class BareProtocol(asyncio.BufferedProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.sink = BareSink()
            transport.write(self.sink.greeting())  # type: ignore[attr-defined]

        def get_buffer(self, sizehint: int) -> memoryview:
            return read_buffer

        def buffer_updated(self, nbytes: int) -> None:
            replies = self.sink.received(bytes(read_buffer[:nbytes]))
            if replies:
                self.transport.write(replies)  # type: ignore[attr-defined]
            if self.sink.closed:
                self.transport.close()

    if backend == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(BareProtocol, host=HOST, port=port))
    _ready()
    try:
        loop.run_forever()
    finally:
        server.close()


def _run_bare_threads(port: int) -> None:
    import socket
    import threading

    def serve(conn: socket.socket) -> None:
        with conn:
            sink = BareSink()
            conn.sendall(sink.greeting())
            while not sink.closed:
                data = conn.recv(THREAD_READ_SIZE)
                if not data:
                    return
                replies = sink.received(data)
                if replies:
                    conn.sendall(replies)

    listener = socket.create_server((HOST, port), backlog=1024)
    _ready()
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def _profile_until_terminated(path: str) -> None:
    """cProfile the server; SIGTERM writes the statistics to ``path`` and exits."""
    import cProfile

    profiler = cProfile.Profile()

    def stop(signum: int, frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(path)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    profiler.enable()


def main(argv: list[str]) -> int:
    profile = None
    if len(argv) == 4 and argv[2] == "--profile":
        profile, argv = argv[3], argv[:2]
    if len(argv) != 2 or argv[0] not in SERVER_KINDS or not argv[1].isdigit():
        kinds = "|".join(SERVER_KINDS)
        print(f"usage: bench_server.py {{{kinds}}} PORT [--profile FILE]", file=sys.stderr)
        return 2
    kind, port = argv[0], int(argv[1])
    _raise_fd_limit()
    if profile is not None:
        _profile_until_terminated(profile)
    implementation, backend = kind.split("-", 1)
    if implementation == "smtpmux":
        run_smtpmux(backend, port)
    elif implementation == "bare":
        run_bare(backend, port)
    else:
        run_aiosmtpd(backend, port)
    return 0


if __name__ == "__main__":
    # Run from a checkout without installing: make smtp_core & co. importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main(sys.argv[1:]))
