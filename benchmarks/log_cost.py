"""What the command line's logging costs per W1 message, in process, without sockets.

    python benchmarks/log_cost.py                # text and JSON against --quiet, process time
    python benchmarks/log_cost.py --format json --messages 20

Sessions are driven as benchmarks/session.py drives them (its ``Bench``: EHLO, then 1 KiB
messages MAIL/RCPT/DATA, QUIT), with the logging ``smtpmux serve`` configures
(``_configure_logging``), its stderr in a file. One process switches the root level between
WARNING (``--quiet``) and INFO each round, so noise from a busy machine hits both alike; the
best round of each is reported. For counts that do not depend on the machine's load, run it
under callgrind with two ``--messages`` values and ``--rounds 1`` and subtract, e.g.
``valgrind --tool=callgrind --callgrind-out-file=/dev/null python3.11 benchmarks/log_cost.py
--format text --messages 40 --rounds 1`` (and ``--messages 20``), difference / (10 x 20).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

from smtp_anyio._cli_run import _configure_logging

if __package__:
    from .session import W1_ROUNDS, Bench
else:  # python benchmarks/log_cost.py
    from session import W1_ROUNDS, Bench

SESSIONS = 10  #: as W1: ten sessions kept open


def run(bench: Bench, messages: int) -> float:
    """µs of process time per message over SESSIONS sessions of ``messages`` messages."""
    start = time.process_time()
    for _ in range(SESSIONS):
        session = bench.greeted()
        bench.messages(session, W1_ROUNDS, messages)
        bench.play(session, session.receive_data(b"QUIT\r\n"))
    return (time.process_time() - start) / (SESSIONS * messages) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--format", choices=["text", "json", "both"], default="both")
    parser.add_argument("--messages", type=int, default=100, help="per session (default 100)")
    parser.add_argument("--rounds", type=int, default=10, help="best of (default 10)")
    args = parser.parse_args()
    formats = ["text", "json"] if args.format == "both" else [args.format]
    bench = Bench()
    results = []
    with tempfile.TemporaryFile() as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)  # the server's stderr: a file, as the benchmark suite keeps it
        root = logging.getLogger()
        try:
            for log_format in formats:
                root.handlers = []
                _configure_logging(
                    argparse.Namespace(log_format=log_format, debug=False, quiet=False)
                )
                quiet, logged = [], []
                for _ in range(args.rounds):
                    root.setLevel(logging.WARNING)
                    quiet.append(run(bench, args.messages))
                    root.setLevel(logging.INFO)
                    logged.append(run(bench, args.messages))
                results.append((log_format, min(quiet), min(logged)))
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    for log_format, quiet_us, logged_us in results:
        print(
            f"{log_format}: --quiet {quiet_us:.1f} µs/message, logged {logged_us:.1f} "
            f"(+{logged_us - quiet_us:.1f} µs, {logged_us / quiet_us:.3f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
