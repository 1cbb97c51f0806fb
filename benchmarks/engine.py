"""How fast the sans-IO engine alone turns bytes into events, next to a bare bytes.find ceiling.

No sockets and no event loop: the same bytes go through ``ServerConnection`` in reads of a
fixed size, as an adapter would feed them, and through the least work a Python server could
do with them (find the terminator, nothing else). The ratio between the two is what the
engine's parsing and checks cost.

    python benchmarks/engine.py                 # 64 MiB message, 20,000 transactions
    python benchmarks/engine.py --quick         # a smaller run, for a smoke test
    python benchmarks/engine.py --json

Workloads:
- ``large``: one message of ``--size`` MiB whose lines are 78 octets and every fifth one
  begins with a dot (so dot-unstuffing has real work), fed in 64 KiB reads.
- ``pipelined``: ``--transactions`` small transactions (MAIL, 3 RCPT, DATA, 1 KiB, end) in
  one pipelined stream, fed in 64 KiB reads; each event answered with its default reply.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

from smtp_core import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    DataChunk,
    EndOfData,
    Reply,
    ServerConfig,
    ServerConnection,
)

READ_SIZE = 64 * 1024
MIB = 1024 * 1024


def make_message(size: int) -> bytes:
    """About ``size`` octets of dot-stuffed content, as a client sends it (no terminator)."""
    plain = b"x" * 76 + b"\r\n"
    dotted = b".." + b"y" * 74 + b"\r\n"  # a line starting with "." is sent stuffed
    block = plain * 4 + dotted
    return block * (size // len(block) + 1)


def large_stream(size: int) -> bytes:
    head = b"EHLO bench.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
    return head + make_message(size) + b".\r\nQUIT\r\n"


def pipelined_stream(transactions: int) -> bytes:
    body = (b"Subject: hello\r\n\r\n" + b"z" * 70 + b"\r\n") * 12
    one = (
        b"MAIL FROM:<sender@example.org> SIZE=1000\r\n"
        b"RCPT TO:<one@example.com>\r\nRCPT TO:<two@example.com>\r\nRCPT TO:<three@example.com>\r\n"
        b"DATA\r\n" + body + b".\r\n"
    )
    return b"EHLO bench.example\r\n" + one * transactions + b"QUIT\r\n"


def run_engine(stream: bytes) -> tuple[int, int]:
    """Feed ``stream`` through a ServerConnection; return (content octets, messages accepted)."""
    conn = ServerConnection(ServerConfig(max_message_size=None))
    conn.send(Reply(220, "bench ESMTP"))
    content = messages = 0
    view = memoryview(stream)
    for start in range(0, len(stream), READ_SIZE):
        conn.receive_data(bytes(view[start : start + READ_SIZE]))
        while True:
            event = conn.next_event()
            if event is NEED_DATA or event is PAUSED or isinstance(event, ConnectionClosed):
                break
            if isinstance(event, DataChunk):
                content += len(event.data)
                continue
            reply = getattr(event, "default_reply", None)
            if reply is not None:
                conn.send(reply)
                messages += isinstance(event, EndOfData) and reply.code == 250
    return content, messages


def run_ceiling(stream: bytes) -> tuple[int, int]:
    """The least a Python server can do: find each CRLF.CRLF across reads, keep nothing."""
    tail = b""
    found = 0
    view = memoryview(stream)
    for start in range(0, len(stream), READ_SIZE):
        chunk = tail + bytes(view[start : start + READ_SIZE])
        at = chunk.find(b"\r\n.\r\n")
        while at >= 0:
            found += 1
            at = chunk.find(b"\r\n.\r\n", at + 5)
        tail = chunk[-4:]
    return len(stream), found


def timed(
    works: tuple[Callable[[], tuple[int, int]], ...], runs: int
) -> list[tuple[list[float], tuple[int, int]]]:
    """CPU seconds of each run of each work, the works taking turns (so drift on a shared
    machine hits them alike), and each work's last result."""
    seconds: list[list[float]] = [[] for _ in works]
    results = [(0, 0)] * len(works)
    for _ in range(runs):
        for index, work in enumerate(works):
            started = time.process_time()
            results[index] = work()
            seconds[index].append(time.process_time() - started)
    return list(zip(seconds, results, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="MiB in the large message")
    parser.add_argument("--transactions", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="4 MiB, 1,000 transactions, 2 runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.transactions, args.runs = 4, 1000, 2

    large = large_stream(args.size * MIB)
    pipelined = pipelined_stream(args.transactions)
    rows = []
    for name, stream, unit, per in (
        ("large message", large, "MiB/s", lambda n, c: c / MIB),
        ("pipelined transactions", pipelined, "tx/s", lambda n, c: n),
    ):
        (engine_s, (content, messages)), (ceiling_s, _) = timed(
            (lambda s=stream: run_engine(s), lambda s=stream: run_ceiling(s)), args.runs
        )
        expected = 1 if stream is large else args.transactions
        if messages != expected:
            print(f"{name}: the engine accepted {messages} messages, not {expected}")
            return 1
        engine = per(messages, content) / statistics.median(engine_s)
        ceiling = per(expected, len(stream)) / statistics.median(ceiling_s)
        rows.append(
            {
                "workload": name,
                "unit": unit,
                "engine": round(engine, 1),
                "ceiling": round(ceiling, 1),
                "engine_share_of_ceiling": round(engine / ceiling, 3),
            }
        )
    if args.json:
        json.dump({"python": sys.version.split()[0], "runs": args.runs, "rows": rows}, sys.stdout)
        print()
        return 0
    print(
        f"smtp_core engine, median of {args.runs} runs (CPU time, taking turns with the"
        f" ceiling), reads of {READ_SIZE // 1024} KiB"
    )
    print(f"{'workload':<24} {'engine':>14} {'bytes.find ceiling':>20} {'share':>7}")
    for row in rows:
        print(
            f"{row['workload']:<24} {row['engine']:>10,.0f} {row['unit']:<5}"
            f" {row['ceiling']:>14,.0f} {row['unit']:<5} {row['engine_share_of_ceiling']:>6.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
