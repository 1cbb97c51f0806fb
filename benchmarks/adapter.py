"""The asyncio adapter's cost per message and per connection, in one process, without noise.

    python benchmarks/adapter.py W1 1000           # CPU µs per message (best of 5)
    python benchmarks/adapter.py W2 500 --uvloop   # per session, a fresh connection each
    python benchmarks/adapter.py W1 1000 --bare    # bench_server.py's bare sink: the ceiling
    valgrind --tool=callgrind python3.11 benchmarks/adapter.py W1 1000 --once

A client protocol in the same event loop plays smtp-source against ``smtp_anyio.Server`` (an
``async def`` discard handler, every check on): W1 sends 1 KiB messages over one kept-open
session, a command per round as smtp-source does; W2 opens a connection per message (EHLO,
MAIL, RCPT, DATA, QUIT); W4 is W1 with 50 recipients. The client's share is the same before
and after a change, so differences between two trees are the server's (and instruction
counts under callgrind, ``--once``, are repeatable where wall-clock timings are not).
``--bare`` serves bench_server.py's bare sink instead: the figure minus the bare one is what
the Session, the engine and the adapter cost together.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from smtp_anyio import Server
from smtp_core import ConnectionLimits, Envelope, Router, ServerConfig

#: about 1 KiB in lines of 80, as ``smtp-source -l 1024`` sends
BODY = b"Subject: test\r\n\r\n" + (b"x" * 78 + b"\r\n") * 12


class Client(asyncio.Protocol):
    """smtp-source's conversation, one command per reply (it does not pipeline)."""

    def __init__(self, messages: int, recipients: int, keep_open: bool, done: asyncio.Future[None]):
        self.messages, self.keep_open, self.done = messages, keep_open, done
        rcpts = [f"RCPT TO:<r{i}@example.com>\r\n".encode() for i in range(recipients)]
        self.script = [b"EHLO client\r\n", b"MAIL FROM:<s@example.com>\r\n", *rcpts]
        self.script += [b"DATA\r\n", BODY + b".\r\n"]
        self.step = 0
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def itself(self) -> Client:
        """The protocol factory for this one connection."""
        return self

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        lines = self.buffer.split(b"\r\n")[:-1]
        if not lines or lines[-1][3:4] == b"-":
            return  # a reply still incomplete
        self.buffer = b""
        assert self.transport is not None
        if self.step == len(self.script):  # a message went through
            self.messages -= 1
            if self.messages == 0 or not self.keep_open:
                self.transport.write(b"QUIT\r\n")
                self.step = -1
                return
            self.step = 1  # the next MAIL FROM
        if self.step == -1:
            return
        self.transport.write(self.script[self.step])
        self.step += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _bare_server() -> tuple[asyncio.AbstractServer, int]:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_server import LOOP_READ_SIZE, BareSink

    read_buffer = memoryview(bytearray(LOOP_READ_SIZE))

    class BareProtocol(asyncio.BufferedProtocol):  # as bench_server.run_bare's
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.sink = BareSink()
            transport.write(self.sink.greeting())

        def get_buffer(self, sizehint: int) -> memoryview:
            return read_buffer

        def buffer_updated(self, nbytes: int) -> None:
            replies = self.sink.received(bytes(read_buffer[:nbytes]))
            if replies:
                self.transport.write(replies)
            if self.sink.closed:
                self.transport.close()

    server = await asyncio.get_running_loop().create_server(BareProtocol, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def run(workload: str, messages: int, bare: bool = False) -> float:
    async def discard(envelope: Envelope) -> None:
        return None

    router: Router[Any] = Router()
    router.add("*@*", discard)
    limits = ConnectionLimits(max_connections=10_000, max_connections_per_client=0)
    config = ServerConfig(hostname="localhost")
    recipients = 50 if workload == "W4" else 1
    loop = asyncio.get_running_loop()

    async def play(port: int) -> float:
        started = time.process_time()
        per_session = 1 if workload == "W2" else messages
        for _ in range(messages // per_session):
            done: asyncio.Future[None] = loop.create_future()
            client = Client(per_session, recipients, workload != "W2", done)
            await loop.create_connection(client.itself, "127.0.0.1", port)
            await done
        return (time.process_time() - started) / messages * 1e6

    if bare:
        bare_server, port = await _bare_server()
        try:
            return await play(port)
        finally:
            bare_server.close()
    async with Server(router, host="127.0.0.1", port=0, config=config, limits=limits) as server:
        return await play(server.port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/adapter.py", description=__doc__)
    parser.add_argument("workload", choices=("W1", "W2", "W4"))
    parser.add_argument("messages", type=int)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--bare", action="store_true", help="the bare sink (the ceiling)")
    parser.add_argument("--once", action="store_true", help="one run (for callgrind)")
    args = parser.parse_args(argv)
    options = {"use_uvloop": True} if args.uvloop else {}
    results = []
    for _ in range(1 if args.once else 5):
        results.append(
            anyio.run(
                run,
                args.workload,
                args.messages,
                args.bare,
                backend="asyncio",
                backend_options=options,
            )
        )
    what = "bare sink" if args.bare else "smtpmux"
    print(f"{args.workload} {what}: {min(results):.1f} µs CPU per message (client included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
