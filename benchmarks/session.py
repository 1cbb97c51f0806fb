"""The pure core's CPU per unit of W1, W2 and W4: Session + engine, no sockets, no event loop.

What ``smtpmux serve --discard --quiet`` spends in smtp_core for each unit of the suite's
workloads, measured without the adapter: the bytes a client sends go into a Session one round
(one read) at a time, and its Actions are carried out by ``run_inline`` (Calls inline, as a
blocking server does). The handler discards the message; the default limits, address checks
and the relay check (``relay_domains`` set, as ``--relay-domain`` does) all stay on, and the
metrics take a lock as the command line's do. Logging is off (``--quiet``) unless ``--log``.

    python benchmarks/session.py             # 20,000 W1 messages, 5 runs each, best of 5
    python benchmarks/session.py --quick     # a smaller run, for a smoke test
    python benchmarks/session.py --json
    python benchmarks/session.py --log       # with the INFO log lines (to /dev/null)

Workloads (µs of CPU, ``time.process_time``, best of ``--runs``):
- ``W1``: one 1 KiB message on a kept-open session after EHLO: the rounds MAIL, RCPT, DATA,
  content with the terminator.
- ``W2``: a whole session: built by a listener's ``SessionFactory``, greeted, EHLO, one W1
  message, QUIT (answered 221, the session closes).
- ``W4``: one 1 KiB message to 50 recipients on a kept-open session: MAIL, 50 RCPT rounds,
  DATA, content.

Compare two trees by running this file with each on ``PYTHONPATH``, taking turns.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import count

from smtp_core import Envelope, Handler, Metrics, Policy, Router, ServerConfig, Session
from smtp_core.adapter import Action, Call, Close, SessionFactory, Spool, run_inline

BODY = b"Subject: benchmark\r\n\r\n" + (b"y" * 78 + b"\r\n") * 12 + b".\r\n"  # 1 KiB and end
MAIL = b"MAIL FROM:<sender@example.org>\r\n"
DATA = b"DATA\r\n"
DOMAIN = "example.com"


def _rcpt(n: int) -> bytes:
    return b"RCPT TO:<rcpt%d@example.com>\r\n" % n


W1_ROUNDS = (MAIL, _rcpt(0), DATA, BODY)
W4_ROUNDS = (MAIL, *(_rcpt(n) for n in range(50)), DATA, BODY)


def _clock() -> datetime:
    return datetime.now(UTC)


def _discard(envelope: Envelope) -> None:
    return None


def _call(call: Call) -> object:
    return call.function(*call.args)


class Bench:
    """A listener's SessionFactory and the executor that plays rounds into its Sessions."""

    def __init__(self) -> None:
        router: Router[Handler] = Router()
        router.add(f"*@{DOMAIN}", _discard)
        ids = count()
        self.factory = SessionFactory(
            router=router,
            config=ServerConfig(),
            policy=Policy(relay_domains={DOMAIN}),
            clock=_clock,
            new_id=lambda: f"bench{next(ids)}",
            metrics=Metrics(lock=threading.Lock()),  # as smtpmux serve's
        )
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def spool(self, action: Spool) -> None:
        raise AssertionError("a 1 KiB message is never spooled")

    def play(self, session: Session, actions: list[Action]) -> Action | None:
        """Carry out ``actions`` (Calls inline); what run_inline leaves (a Close) is returned."""
        return run_inline(session, actions, self.write, self.spool, call=_call)

    def greeted(self) -> Session:
        """A Session after its greeting and EHLO, as W1 and W4 find it."""
        session = self.factory(("127.0.0.1", 40000))
        self.play(session, session.start())
        self.play(session, session.receive_data(b"EHLO client.example.org\r\n"))
        return session

    def messages(self, session: Session, rounds: tuple[bytes, ...], n: int) -> None:
        receive = session.receive_data
        for _ in range(n):
            for data in rounds:
                self.play(session, receive(data))

    def sessions(self, n: int) -> None:
        factory, play = self.factory, self.play
        for _ in range(n):
            session = factory(("127.0.0.1", 40000))
            play(session, session.start())
            for data in (b"EHLO client.example.org\r\n", *W1_ROUNDS):
                play(session, session.receive_data(data))
            if not isinstance(play(session, session.receive_data(b"QUIT\r\n")), Close):
                raise AssertionError("QUIT did not close the session")
            session.drop()


def measure(work: Callable[[int], None], n: int, runs: int) -> float:
    """Best CPU µs per unit over ``runs`` runs of ``n`` units."""
    best = float("inf")
    for _ in range(runs):
        started = time.process_time()
        work(n)
        best = min(best, (time.process_time() - started) / n * 1e6)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000, help="W1 messages per run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="200 W1 messages, 2 runs")
    parser.add_argument("--log", action="store_true", help="INFO logging on, to /dev/null")
    parser.add_argument("--workloads", default="W1,W2,W4", help="comma-separated")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.runs = 200, 2
    if args.log:
        handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 (process-long)
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)

    bench = Bench()
    w1, w4 = bench.greeted(), bench.greeted()
    n = args.messages
    works = {  # (the work, units per run): W2 and W4 units cost about 2x and 8x a W1 message
        "W1": (lambda k: bench.messages(w1, W1_ROUNDS, k), n),
        "W2": (bench.sessions, max(n // 4, 1)),
        "W4": (lambda k: bench.messages(w4, W4_ROUNDS, k), max(n // 20, 1)),
    }
    chosen = args.workloads.split(",")
    unknown = sorted(set(chosen) - set(works))
    if unknown:
        parser.error(f"unknown workload {unknown[0]} (choose from {', '.join(works)})")
    rows = {key: measure(*works[key], args.runs) for key in chosen}
    metrics = bench.factory.metrics
    expected = sum(works[key][1] for key in chosen) * args.runs
    if metrics.transactions_accepted != expected or metrics.transactions_refused:
        print(f"accepted {metrics.transactions_accepted} messages, not {expected}")
        return 1
    units = {"W1": "message", "W2": "session", "W4": "transaction"}
    if args.json:
        report = {"python": sys.version.split()[0], "runs": args.runs, "log": args.log}
        report["rows"] = [
            {"workload": k, "unit": units[k], "cpu_us": round(v, 2)} for k, v in rows.items()
        ]
        json.dump(report, sys.stdout)
        print()
        return 0
    print(f"smtp_core Session + engine, CPU µs per unit, best of {args.runs} runs")
    for key, value in rows.items():
        print(f"{key}  {value:9.1f} µs per {units[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
