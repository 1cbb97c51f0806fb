"""``smtpmux serve`` running: one process on asyncio, trio or blocking threads, or a
supervisor and its ``--workers``; signals, reloads, systemd notifications and the status lines."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import anyio
import attrs

from smtp_core import Admission, Metrics, format_host_port
from smtp_sync import Server as SyncServer

from . import _config_file, _systemd
from ._cli import UsageError, _BadArguments, _parse
from ._cli_config import _print_check, _servers
from ._operations import (
    JSONFormatter,
    LeanRecord,
    LineHandler,
    MetricsEndpoint,
    Reloader,
    TextFormatter,
)
from ._server import Server
from ._workers import MetricsBoard, share_listeners, supervise

__all__ = ["_serve"]

#: What ``serve`` says about itself (listening, stopping, why it cannot start): plain
#: ``smtpmux: ...`` lines in text mode, JSON objects like every other line with --log-format json.
status = logging.getLogger("smtpmux.cli")
log = logging.getLogger("smtpmux.server")


@attrs.define
class _Process:
    """One serving process: its listeners, and what it does besides serving.

    ``ready`` runs once every listener accepts connections; ``tick`` runs every second and
    returns False when the process should stop gracefully (a worker whose supervisor is gone);
    SIGHUP calls ``reloader.reload()``.
    """

    servers: list[dict[str, Any]]
    reloader: Reloader
    announce: bool = True  #: say "listening on" and "stopping" (the supervisor does for workers)
    ready: Callable[[], None] = lambda: None
    tick: Callable[[], bool] = lambda: True


async def _serve_anyio(process: _Process) -> None:
    # Signals are caught before the first "listening on" line, so a supervisor (or a test) that
    # sends SIGTERM as soon as it reads that line always gets the graceful stop and exit code 0.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with contextlib.AsyncExitStack() as stack:  # leaving it stops every server
            servers = []
            for options in process.servers:
                try:
                    servers.append(await stack.enter_async_context(Server(**options)))
                except OSError as exc:
                    raise _cannot_listen(options, exc) from None
            process.reloader.serving(servers)
            for server in servers if process.announce else ():  # all of them, or none
                _announce(server.host, server.port, server.implicit_tls)
            process.ready()
            async with anyio.create_task_group() as tasks:

                async def ticking() -> None:
                    while process.tick():
                        await anyio.sleep(1)
                    tasks.cancel_scope.cancel()

                tasks.start_soon(ticking)
                async for signum in signals:
                    if signum != signal.SIGHUP:
                        break
                    _reload(process.reloader)
                tasks.cancel_scope.cancel()
            if process.announce:
                status.info("stopping")
                _systemd.notify("STOPPING=1")
    process.tick()  # the final counts, once every session has ended


#: options a reload cannot change in a running process: they say how it listens and runs
_RESTART_ONLY = (
    *("listen", "tls_listen", "backend", "workers", "metrics"),
    *("log_format", "debug", "quiet"),
)


class _FileReloader(Reloader):
    """SIGHUP with ``--config``: the whole configuration again, file and command line, built
    whole (every target, the certificate, the users) before any of it is swapped in; a file
    that fails anywhere is logged and the old configuration kept.

    The running servers get the new router, policy and settings for the connections that come
    after; a connection already open keeps the ones it started with until it ends, so a
    transaction never sees half of each. The TLS certificate changes at the next handshake
    (see Reloader), the connection limits at once. The option dicts are updated too, so a
    ``--workers`` child forked after the reload starts with the new configuration.
    """

    def start(self, args: argparse.Namespace, servers: list[dict[str, Any]]) -> None:
        self.args, self.servers = args, servers
        self.running: list[Any] = []

    def serving(self, servers: list[Any]) -> None:
        self.running = servers

    def reload(self) -> None:
        try:
            args = _parse(self.args.arguments)
            fresh = _servers(args)[0]
        except (UsageError, _config_file.ConfigError, _BadArguments, OSError) as exc:
            log.error("kept the old configuration: %s", exc)
            return
        changed = [
            name for name in _RESTART_ONLY if getattr(args, name) != getattr(self.args, name)
        ]
        if (fresh["ssl_context"] is None) != (self.context is None):
            changed.append("tls_cert")
        keys = {dest: f"[{t}] {k}" if t else k for (t, k), dest in _config_file.FILE_KEYS.items()}
        for name in changed:
            key = keys.get(name, name)
            log.warning("%s changed in %s: restart smtpmux to apply it", key, args.config)
        if self.context is not None and fresh["ssl_context"] is not None:
            self.current, self.cert, self.key = fresh["ssl_context"], args.tls_cert, args.tls_key
        self.policy, self.auth_file = fresh["policy"], args.auth_file
        swapped = {key: fresh[key] for key in ("router", "policy", "config", "proxy_protocol_from")}
        for options in self.servers:
            options.update(swapped)
        admission: Admission[Any] = self.servers[0]["admission"]
        with admission.lock:
            admission.update(fresh["admission"].limits, exempt=fresh["proxy_protocol_from"])
        for server in self.running:  # its SessionFactory decides STARTTLS from its context
            server.router, server.policy = swapped["router"], fresh["policy"]
            server.config = swapped["config"]
            server.proxy_protocol_from = swapped["proxy_protocol_from"]
        self.args = args
        log.info("reloaded %s: %d routes", args.config, len(swapped["router"]))


def _reload(reloader: Reloader) -> None:
    """SIGHUP: the reload, between RELOADING=1 and READY=1 for systemd."""
    _systemd.notify(_systemd.reloading())
    try:
        reloader.reload()
    finally:
        _systemd.notify("READY=1")


def _ready() -> None:
    """Every listener accepts connections: tell systemd (Type=notify)."""
    _systemd.notify("READY=1")


def _announce(host: str, port: int, implicit_tls: bool) -> None:
    """The line that says the server is ready, with the bound port (also for ``:0``): once
    per listener (the servers themselves log no "listening" line)."""
    listener = format_host_port(host, port)
    tls = " (implicit TLS)" if implicit_tls else ""
    status.info("listening on %s%s", listener, tls, extra={"listener": listener})


def _serve_sync(process: _Process) -> None:
    running = [SyncServer(**options) for options in process.servers]
    process.reloader.serving(running)
    stopping, done = threading.Event(), threading.Event()

    def stop(signum: int, frame: object) -> None:
        if stopping.is_set():  # a second signal while stopping changes nothing
            return
        stopping.set()
        if process.announce:
            status.info("stopping")
            _systemd.notify("STOPPING=1")

        def stop_all() -> None:
            for server in running:
                server.stop()
            done.set()

        threading.Thread(target=stop_all).start()

    signal.signal(signal.SIGINT, stop)  # before "listening on": see _serve_anyio
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, lambda signum, frame: _reload(process.reloader))
    for server, options in zip(running, process.servers, strict=True):
        try:
            server.bind()
        except OSError as exc:
            raise _cannot_listen(options, exc) from None
    for server in running if process.announce else ():  # all of them, or none
        _announce(server.host, server.port, server.implicit_tls)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in running]
    for thread in threads:
        thread.start()
    process.ready()
    while not done.wait(1.0):
        if not process.tick():
            stop(signal.SIGTERM, None)
    process.tick()


#: what to do about the usual reasons a listener cannot be opened (errno name -> hint)
_LISTEN_HINTS = {
    "EADDRINUSE": "is another server listening there? Stop it, or choose another port "
    "with {option} HOST:PORT",
    "EACCES": "ports below 1024 need root or CAP_NET_BIND_SERVICE; or let systemd open the "
    "port (socket activation, see docs/deployment.md)",
    "EADDRNOTAVAIL": "is that an address of this machine? 0.0.0.0 or [::] listen on all",
}


def _cannot_listen(options: dict[str, Any], exc: OSError, option: str = "") -> UsageError:
    """``cannot listen on [::1]:25: address already in use (what to do)``."""
    where = format_host_port(options["host"], options["port"])
    option = option or ("--tls-listen" if options.get("implicit_tls") else "--listen")
    name = errno.errorcode.get(exc.errno or 0, "")
    reason = (exc.strerror or str(exc)).lower() if exc.errno else str(exc)
    hint = _LISTEN_HINTS.get(name, "").format(option=option)
    return UsageError(f"cannot listen on {where}: {reason}" + (f" ({hint})" if hint else ""))


def _metrics_endpoint(render: Callable[[], str], args: argparse.Namespace) -> MetricsEndpoint:
    host, port = args.metrics
    try:
        return MetricsEndpoint(render, host, port)
    except OSError as exc:
        raise _cannot_listen({"host": host, "port": port}, exc, "--metrics") from None


def _run(process: _Process, backend: str) -> None:
    if backend == "sync":
        _serve_sync(process)
        return
    options: dict[str, Any] = {}
    if backend == "asyncio":
        try:
            import uvloop  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
        except ImportError:
            pass
        else:
            options = {"use_uvloop": True}
    anyio.run(_serve_anyio, process, backend=backend, backend_options=options)


def _configure_logging(args: argparse.Namespace) -> None:
    handler = LineHandler(sys.stderr)
    if args.log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(TextFormatter())
        plain = logging.StreamHandler(sys.stderr)
        plain.setFormatter(logging.Formatter("smtpmux: %(message)s"))
        status.addHandler(plain)
        status.propagate = False
    status.setLevel(logging.INFO)  # "listening on" is said even with --quiet
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, handlers=[handler])
    # The logging HOWTO's "Optimization": no line this process writes shows the caller's
    # file, line or function, its thread or its process, so its records need not look them
    # up (sys._getframe and a walk up the stack, current_thread, getpid: a third of a line).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    if sys.version_info >= (3, 12):
        logging.logAsyncioTasks = False
    # ... and its records need not take "(unknown file)" apart either: the same attributes,
    # from a table (LeanRecord)
    logging.setLogRecordFactory(LeanRecord)
    # The webhook's HTTP client logs each request at INFO (smtpmux.delivery already has one
    # line per delivery) and its connections at DEBUG (noise in --debug's protocol trace).
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _serve(args: argparse.Namespace) -> int:
    _configure_logging(args)
    try:
        servers = _servers(args)
        if args.check:
            _print_check(args, servers[0]["router"])
            return 0
        first = servers[0]
        kind = _FileReloader if args.config else Reloader
        reloader = kind(
            first["ssl_context"], args.tls_cert, args.tls_key, first["policy"], args.auth_file
        )
        if isinstance(reloader, _FileReloader):
            reloader.start(args, servers)
        if args.workers > 1:
            return _supervise(args, servers, reloader)
        metrics: Metrics = first["metrics"]
        endpoint = None
        if args.metrics:
            endpoint = _metrics_endpoint(metrics.render_prometheus, args)
            endpoint.start()
        try:
            _run(_Process(servers, reloader, ready=_ready), args.backend)
        finally:
            if endpoint is not None:
                endpoint.stop()
    except UsageError as exc:
        status.error("%s", exc)
        return 2
    except OSError as exc:
        status.error("%s", exc)
        return 2
    return 0


def _supervise(args: argparse.Namespace, servers: list[dict[str, Any]], reloader: Reloader) -> int:
    """``--workers N``: fork N copies of this server; they share the listening ports."""
    held: list[Any] = []
    try:
        for options in servers:
            try:
                held += share_listeners([options])
            except OSError as exc:
                raise _cannot_listen(options, exc) from None
    except UsageError:
        for sock in held:
            sock.close()
        raise
    board = MetricsBoard(args.workers)
    endpoint = None
    if args.metrics:
        endpoint = _metrics_endpoint(lambda: board.total().render_prometheus(), args)
        endpoint.start()
    supervisor = os.getpid()

    def worker(number: int, ready: Callable[[], None]) -> int:
        os.environ.pop("NOTIFY_SOCKET", None)  # the supervisor speaks to systemd for all
        if endpoint is not None:
            endpoint.close_inherited()
        metrics: Metrics = servers[0]["metrics"]

        def tick() -> bool:
            board.publish(number, metrics)
            return os.getppid() == supervisor

        _run(_Process(servers, reloader, False, ready, tick), args.backend)
        return 0

    def announce() -> None:
        for options in servers:
            _announce(options["host"], options["port"], options.get("implicit_tls", False))
        _ready()  # every worker is listening

    try:
        return supervise(args.workers, worker, announce, board, reload=reloader.reload)
    finally:
        if endpoint is not None:
            endpoint.stop()
        for sock in held:
            sock.close()
