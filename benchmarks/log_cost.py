"""What the command line's logging costs per W1 message, in process, without sockets.

    python benchmarks/log_cost.py                # text and JSON against --quiet, process time
    python benchmarks/log_cost.py --format json --messages 20

Sessions are driven through ``run_inline`` as the servers drive them (EHLO, then 1 KiB
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
import itertools
import logging
import os
import sys
import tempfile
import time
from typing import Any

from smtp_anyio._cli_run import _configure_logging
from smtp_core import Router
from smtp_core.adapter import SessionFactory, run_inline
from smtp_sync._spool import utc_now

SESSIONS = 10  #: as W1: ten sessions kept open
BODY = b"Subject: x\r\n\r\n" + (b"x" * 78 + b"\r\n") * 12
MESSAGE = [
    b"MAIL FROM:<sender@example.com>\r\n",
    b"RCPT TO:<rcpt@example.org>\r\n",
    b"DATA\r\n",
    BODY + b".\r\n",
]


def _discard(envelope: object) -> None:
    return None


def _call(action: Any) -> object:
    try:
        return action.function(*action.args)
    except Exception as exc:
        return exc


def _ignore(_: object) -> None:
    return None


def run(factory: SessionFactory, messages: int) -> float:
    """µs of process time per message over SESSIONS sessions of ``messages`` messages."""
    start = time.process_time()
    for number in range(SESSIONS):
        session = factory(("127.0.0.1", 40000 + number))
        run_inline(session, session.start(), _ignore, _ignore, _call)
        run_inline(
            session, session.receive_data(b"EHLO client.example\r\n"), _ignore, _ignore, _call
        )
        for _ in range(messages):
            for chunk in MESSAGE:
                run_inline(session, session.receive_data(chunk), _ignore, _ignore, _call)
        run_inline(session, session.receive_data(b"QUIT\r\n"), _ignore, _ignore, _call)
    return (time.process_time() - start) / (SESSIONS * messages) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--format", choices=["text", "json", "both"], default="both")
    parser.add_argument("--messages", type=int, default=100, help="per session (default 100)")
    parser.add_argument("--rounds", type=int, default=10, help="best of (default 10)")
    args = parser.parse_args()
    formats = ["text", "json"] if args.format == "both" else [args.format]
    router: Router[Any] = Router()
    router.add("*@*", _discard)
    ids = itertools.count(1)
    factory = SessionFactory(router=router, clock=utc_now, new_id=lambda: f"{next(ids):x}")
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
                    quiet.append(run(factory, args.messages))
                    root.setLevel(logging.INFO)
                    logged.append(run(factory, args.messages))
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
