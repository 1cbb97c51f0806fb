"""``smtpmux serve --workers N``: N processes serving the same ports, and their supervisor.

Each worker is a fork of the supervisor that runs the ordinary single-process server. Where the
platform has SO_REUSEPORT, every worker binds the port itself and the kernel spreads connections
over them; the supervisor holds the port (bound, never listening) so that ``:0`` means one port
for all. Elsewhere the supervisor listens and the workers inherit that socket.

The supervisor restarts a worker that dies, forwards SIGTERM/SIGINT (graceful stop of all) and
SIGHUP (reload certificates and the auth file; no connection is dropped), prints the "listening
on" lines only once every worker is ready, and adds up the workers' counters for ``--metrics``.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import attrs

from smtp_core import Metrics

from . import _systemd

__all__ = ["MetricsBoard", "share_listeners", "supervise"]

log = logging.getLogger("smtpmux.server")
status = logging.getLogger("smtpmux.cli")  #: the command line's own lines (see _cli.py)

#: A worker: ``run(number, ready)`` serves, calls ``ready()`` once listening, returns its exit code.
Worker = Callable[[int, Callable[[], None]], int]

_QUICK_DEATH = 2.0  #: seconds: a worker dying faster than this counts as failing to start
_MAX_QUICK_DEATHS = 5
_STARTUP_TIMEOUT = 30.0

_COUNTERS = tuple(name for name in attrs.fields_dict(Metrics) if name not in ("rejects", "lock"))
_CODES = tuple(range(400, 600))


class MetricsBoard:
    """Every worker's counters in memory shared across fork(): one slot per worker.

    A worker publishes a snapshot of its Metrics into its slot (every second, and when it
    stops); the supervisor adds the slots up for a scrape. Slot 0 keeps what workers that have
    since died had counted, so totals never go backwards when one is restarted.
    """

    def __init__(self, workers: int) -> None:
        self._format = struct.Struct(f"{len(_COUNTERS) + len(_CODES)}q")
        self._memory = mmap.mmap(-1, self._format.size * (workers + 1))  # MAP_SHARED

    def publish(self, number: int, metrics: Metrics) -> None:
        with metrics.lock:
            values = [getattr(metrics, name) for name in _COUNTERS]
            values += [metrics.rejects.get(code, 0) for code in _CODES]
        self._format.pack_into(self._memory, self._format.size * number, *values)

    def retire(self, number: int) -> None:
        """Worker ``number`` died: keep its counts (not its open connections) in slot 0."""
        dead = self._format.unpack_from(self._memory, self._format.size * number)
        kept = list(self._format.unpack_from(self._memory, 0))
        for index, name in enumerate(_COUNTERS):
            if name != "connections_open":
                kept[index] += dead[index]
        for index in range(len(_COUNTERS), len(kept)):
            kept[index] += dead[index]
        self._format.pack_into(self._memory, 0, *kept)
        self._format.pack_into(self._memory, self._format.size * number, *[0] * len(kept))

    def total(self) -> Metrics:
        sums = [0] * (len(_COUNTERS) + len(_CODES))
        for offset in range(0, len(self._memory), self._format.size):
            for index, value in enumerate(self._format.unpack_from(self._memory, offset)):
                sums[index] += value
        total = Metrics()
        total.add(**dict(zip(_COUNTERS, sums, strict=False)))
        total.rejects.update(
            {code: n for code, n in zip(_CODES, sums[len(_COUNTERS) :], strict=True) if n}
        )
        return total


def share_listeners(servers: list[dict[str, Any]]) -> list[socket.socket]:
    """Bind every listener once, here, and set up each Server's options so workers share it.

    The bound port replaces ``:0``. With SO_REUSEPORT each worker binds the same port again
    (``reuse_port=True``) and the kernel balances; otherwise the socket listens here and the
    workers inherit it (``sock=``). Returns the sockets the supervisor holds.
    """
    reuse_port = hasattr(socket, "SO_REUSEPORT")
    held = []
    for options in servers:
        if options.get("sock") is not None:  # inherited from systemd: the forks share it
            continue
        host = options["host"]
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, options["port"]))
        held.append(sock)
        options["port"] = int(sock.getsockname()[1])
        if reuse_port:
            options["reuse_port"] = True  # bound but never listening here: gets no connections
        else:
            sock.listen(512)
            options["sock"] = sock
    return held


def supervise(
    workers: int,
    run: Worker,
    announce: Callable[[], None],
    board: MetricsBoard | None = None,
    reload: Callable[[], None] | None = None,
) -> int:
    """Run ``workers`` forks of ``run`` until SIGTERM/SIGINT; 0 on a clean stop.

    ``run(number, ready)`` serves as worker ``number`` (1..N, also its slot on ``board``) and
    calls ``ready()`` once listening. ``announce`` runs once every worker is listening.
    ``reload`` runs here on SIGHUP (before the workers get it), so that a worker forked later
    starts with what the running ones reloaded.
    """
    ready_read, ready_write = os.pipe()
    # Only the first generation reports readiness; later forks must not touch these numbers,
    # which the supervisor has closed by then (and the OS may have given to other files).
    read_end: int | None = ready_read
    write_end: int | None = ready_write
    children: dict[int, tuple[int, float]] = {}  # pid -> (worker number, start time)
    stopping = False

    def spawn(number: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the supervisor's code
            code = 1
            try:
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(signum, signal.SIG_DFL)
                if read_end is not None:
                    os.close(read_end)
                write = write_end
                code = run(number, lambda: None if write is None else _signal_ready(write))
            except BaseException:
                log.exception("worker %d failed", number)
            finally:
                os._exit(code)
        children[pid] = (number, time.monotonic())
        status.info("worker %d started (pid %d)", number, pid, extra={"worker": number, "pid": pid})

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        if signum == signal.SIGHUP:
            _systemd.notify(_systemd.reloading())  # each worker reloads on its own
            if reload is not None:
                reload()
        elif not stopping:
            status.info("stopping")
            _systemd.notify("STOPPING=1")
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        if signum == signal.SIGHUP:
            _systemd.notify("READY=1")

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    for number in range(1, workers + 1):
        spawn(number)
    os.close(ready_write)
    write_end = None
    code = _await_ready(ready_read, workers, children)
    read_end = None
    if code is not None:
        forward(signal.SIGTERM, None)
        _reap_all(children)
        return code
    announce()
    quick_deaths = 0
    while children:
        try:
            pid, status_code = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        number, started = children.pop(pid, (0, 0.0))
        if board is not None and number:
            board.retire(number)
        if stopping or not number:
            continue
        quick_deaths = quick_deaths + 1 if time.monotonic() - started < _QUICK_DEATH else 0
        status.warning(
            "worker %d (pid %d) %s; restarting",
            number,
            pid,
            _how_it_ended(status_code),
            extra={"worker": number, "pid": pid},
        )
        if quick_deaths >= _MAX_QUICK_DEATHS:
            status.error("workers keep dying at start; stopping")
            forward(signal.SIGTERM, None)
            _reap_all(children)
            return 1
        spawn(number)
    return 0


def _how_it_ended(wait_status: int) -> str:
    """``exited with code 1`` or ``was killed by signal 9 (SIGKILL)``."""
    code = os.waitstatus_to_exitcode(wait_status)
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"was killed by signal {-code}"
    return f"was killed by signal {-code} ({name})"


def _signal_ready(fd: int) -> None:
    os.write(fd, b".")
    os.close(fd)


def _await_ready(pipe: int, workers: int, children: dict[int, tuple[int, float]]) -> int | None:
    """Wait until every worker is listening; a worker's exit code if one failed to start."""
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    seen = 0
    try:
        while seen < workers:
            for pid in list(children):
                done, wait_status = os.waitpid(pid, os.WNOHANG)
                if done:
                    children.pop(pid)
                    return os.waitstatus_to_exitcode(wait_status) or 1
            left = deadline - time.monotonic()
            if left <= 0:
                status.error("workers did not start in %d seconds", _STARTUP_TIMEOUT)
                return 1
            readable, _, _ = select.select([pipe], [], [], min(left, 0.1))
            if readable:
                seen += len(os.read(pipe, workers))
        return None
    finally:
        os.close(pipe)


def _reap_all(children: dict[int, tuple[int, float]]) -> None:
    for pid in list(children):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        children.pop(pid, None)
