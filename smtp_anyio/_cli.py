"""The ``smtpmux`` command line: ``serve`` (works with no options), ``send`` and ``hash-password``.

Every bad option or unusable file ends the command with one line on stderr and exit code 2;
SIGTERM or SIGINT stops a server gracefully with exit code 0. See docs/cli.md.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import getpass
import importlib.metadata
import io
import itertools
import logging
import os
import signal
import ssl
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import anyio
import attrs

from smtp_core import (
    TLS_MODES,
    AddressError,
    Admission,
    ConnectionLimits,
    ConnectionRate,
    Credentials,
    Envelope,
    LoginMechanism,
    MessageRefused,
    Metrics,
    OutgoingMessage,
    PlainMechanism,
    Policy,
    RecipientsRefused,
    Router,
    SenderRefused,
    SendResult,
    ServerConfig,
    SessionInfo,
    SMTPError,
    SMTPNotSupported,
    format_host_port,
    format_reply,
    normalize_domain,
    parse_path,
    prepare_message,
)
from smtp_sync import Server as SyncServer
from smtp_sync._auth_file import AuthFilePolicy, hash_password, load_auth_file
from smtp_sync._spool import is_async_callable
from smtp_sync.handlers import Discard, Printer
from smtp_sync.targets import targets as build_targets

from . import _config_file, _systemd
from ._client import connect
from ._operations import JSONFormatter, MetricsEndpoint, Reloader, TextFormatter, server_context
from ._server import Server
from ._workers import MetricsBoard, share_listeners, supervise

__all__ = ["main"]

#: What ``serve`` says about itself (listening, stopping, why it cannot start): plain
#: ``smtpmux: ...`` lines in text mode, JSON objects like every other line with --log-format json.
status = logging.getLogger("smtpmux.cli")
log = logging.getLogger("smtpmux.server")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One clear line and exit code 2, not a usage dump (``main`` writes it)."""
        raise _BadArguments(f"{self.prog}: {message} (see --help)")


class _BadArguments(Exception):
    """The command line does not parse."""


class UsageError(Exception):
    """A bad option value: reported as one line, exit code 2."""


class _Replace(argparse._AppendAction):
    """A repeatable option whose command-line values replace the default (the config file's
    list) instead of adding to it: ``--listen`` on the command line overrides the file's."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        items = getattr(namespace, self.dest, None)
        items = [] if items is None or items is self.default else list(items)
        setattr(namespace, self.dest, [*items, values])


def _route(text: str) -> tuple[str, str]:
    pattern, equals, target = text.partition("=")
    if not equals or not pattern.strip() or not target.strip():
        raise argparse.ArgumentTypeError(
            f"expected PATTERN=TARGET, e.g. '*@example.com=maildir:./mail', got {text!r}"
        )
    return pattern.strip(), target.strip()


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return (host.strip("[]") or "127.0.0.1", int(port))


def _domain(text: str) -> str:
    try:
        return normalize_domain(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a domain name (IDNA 2008), got {text!r}"
        ) from None


def _size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    number, unit = (text[:-1], text[-1].lower()) if text[-1:].lower() in units else (text, "")
    if not number.isdigit() or int(number) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a size like 10485760, 10M or 512K, got {text!r}"
        )
    return int(number) * units.get(unit, 1)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number, 0 for no limit, got {text!r}")
    return int(text)


def _rate(text: str) -> ConnectionRate:
    try:
        return ConnectionRate.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def _version() -> str:
    """The installed distribution's version; a bare checkout on PYTHONPATH has none."""
    try:
        return importlib.metadata.version("smtpmux")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="smtpmux", description="SMTP server and client toolkit")
    parser.add_argument("--version", action="version", version=f"smtpmux {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser(
        "serve", help="run an SMTP server (default: 127.0.0.1:8025 -> ./mail)"
    )
    serve.add_argument(
        "--listen",
        action=_Replace,
        type=_host_port,
        metavar="HOST:PORT",
        help="plain SMTP listener with STARTTLS when a certificate is given "
        "(repeatable; default 127.0.0.1:8025)",
    )
    serve.add_argument(
        "--tls-listen",
        action=_Replace,
        type=_host_port,
        default=[],
        metavar="HOST:PORT",
        help="implicit-TLS listener, RFC 8314 (repeatable)",
    )
    serve.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain")
    serve.add_argument("--tls-key", metavar="FILE", help="PEM private key (default: in --tls-cert)")
    serve.add_argument(
        "--route",
        action=_Replace,
        type=_route,
        default=[],
        metavar="PATTERN=TARGET",
        help="deliver mail for PATTERN (bob@example.com, *@example.com, sales@*, *@*) to TARGET "
        "(maildir:DIR, lmtp://HOST:PORT, https://URL, discard, reject, ... see docs/routes.md); "
        "repeatable; the same PATTERN twice delivers to both",
    )
    serve.add_argument(
        "--config",
        metavar="FILE",
        help="read options and [[route]] tables from this TOML file (options given on the "
        "command line override it); SIGHUP reloads it",
    )
    serve.add_argument(
        "--check",
        action="store_true",
        help="check the options and the file, print the routes in lookup order, and exit",
    )
    serve.add_argument(
        "--recipient-delimiter",
        metavar="SEPARATOR",
        help="route bob+tag@ as bob@: a local part ends at SEPARATOR (e.g. +)",
    )
    serve.add_argument(
        "--fold-case", action="store_true", help="route Bob@ as bob@ (local parts ignore case)"
    )
    serve.add_argument(
        "--ignore-dots", action="store_true", help="route b.o.b@ as bob@ (dots are ignored)"
    )
    store = serve.add_mutually_exclusive_group()
    store.add_argument(
        "--maildir", metavar="DIR", help="deliver into this Maildir (default ./mail)"
    )
    store.add_argument("--eml-dir", metavar="DIR", help="write each message to DIR/<id>.eml")
    store.add_argument("--discard", action="store_true", help="accept and discard every message")
    serve.add_argument(
        "--auth-file",
        metavar="FILE",
        help="enable AUTH PLAIN/LOGIN for the user:password lines of FILE",
    )
    serve.add_argument(
        "--auth-require-tls",
        action="store_true",
        help="offer AUTH only inside TLS (always so when a certificate is given)",
    )
    serve.add_argument(
        "--relay-domain",
        action=_Replace,
        type=_domain,
        default=[],
        metavar="DOMAIN",
        help="unauthenticated clients may send only to these domains (repeatable)",
    )
    serve.add_argument(
        "--max-message-size",
        type=_size,
        default=32 * 1024**2,
        metavar="SIZE",
        help="largest message accepted, e.g. 10M (default 32M)",
    )
    serve.add_argument(
        "--max-recipients",
        type=_positive_int,
        default=100,
        metavar="N",
        help="recipients per message (default 100)",
    )
    serve.add_argument(
        "--max-connections",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="connections at once, per process; when full, the longest-idle one outside a "
        "transaction makes room (default 1000)",
    )
    serve.add_argument(
        "--max-connections-per-client",
        type=_count,
        default=50,
        metavar="N",
        help="connections at once from one IP address, per process; 0: no limit (default 50)",
    )
    serve.add_argument(
        "--connection-rate-per-client",
        type=_rate,
        metavar="N[/PERIOD]",
        help="new connections from one IP address per minute (30), or per PERIOD (30/60s, "
        "100/1h), per process (default: no limit)",
    )
    serve.add_argument("--hostname", default="localhost", help="our name in the greeting and trace")
    serve.add_argument(
        "--backend",
        choices=("asyncio", "trio", "sync"),
        default="asyncio",
        help="event loop or blocking threads (default asyncio; uvloop when installed)",
    )
    serve.add_argument("--lmtp", action="store_true", help="speak LMTP (RFC 2033) instead of SMTP")
    serve.add_argument(
        "--proxy-protocol",
        action=_Replace,
        default=[],
        metavar="ADDRESS",
        help="accept a PROXY v1/v2 header from this peer address (repeatable)",
    )
    serve.add_argument(
        "--timeout",
        type=_seconds,
        default=300.0,
        metavar="SECONDS",
        help="seconds to wait for the client's next command before 421 (default 300)",
    )
    serve.add_argument(
        "--debug",
        action="store_true",
        help="log the protocol trace (AUTH secrets redacted) and print messages",
    )
    serve.add_argument(
        "--quiet", action="store_true", help="log only warnings and errors (no line per message)"
    )
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text lines, or one JSON object per line with the session's fields (default text)",
    )
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="serve from N processes sharing the ports, restarted if they die (default 1)",
    )
    serve.add_argument(
        "--metrics",
        type=_host_port,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics",
    )
    _add_send(commands)
    check = commands.add_parser(
        "check-config", help="check a --config file and print its routes in lookup order"
    )
    check.add_argument("file", metavar="FILE", help="the TOML file")
    hashing = commands.add_parser("hash-password", help="print a salted hash for --auth-file")
    hashing.add_argument(
        "password",
        nargs="?",
        help="the password (default: prompt, or one line of standard input; an argument is "
        "visible to other users in the process list)",
    )
    return parser


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.tls_cert:
        if args.tls_key or args.tls_listen:
            raise UsageError("--tls-key and --tls-listen need --tls-cert")
        return None
    cert = _pem_file("--tls-cert", args.tls_cert)
    if "-----BEGIN CERTIFICATE-----" not in cert:
        raise UsageError(f"--tls-cert {args.tls_cert} holds no PEM certificate")
    key_option, key_file = ("--tls-key", args.tls_key) if args.tls_key else ("--tls-cert", None)
    key = _pem_file("--tls-key", args.tls_key) if args.tls_key else cert
    where = f"{key_option} {key_file or args.tls_cert}"
    if "PRIVATE KEY-----" not in key:
        if key_file is None:
            raise UsageError(
                f"--tls-cert {args.tls_cert} holds no private key: give it with --tls-key FILE "
                "(or append the key to the certificate file)"
            )
        raise UsageError(f"{where} holds no PEM private key")
    if "ENCRYPTED" in key:  # OpenSSL would prompt on a terminal a service does not have
        raise UsageError(f"the private key in {where} is encrypted: decrypt it with openssl pkey")
    try:
        context = server_context(args.tls_cert, args.tls_key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            problem = f"the private key in {where} does not belong to the certificate"
        else:  # OpenSSL says only "PEM lib": find out which file it could not read
            try:
                ssl.create_default_context(cafile=args.tls_cert)  # the certificates alone
            except ssl.SSLError:
                problem = f"--tls-cert {args.tls_cert} holds a certificate that cannot be read"
            else:
                problem = f"the private key in {where} cannot be read"
            problem += " (damaged PEM, or a kind OpenSSL does not know)"
        raise UsageError(f"cannot load the TLS certificate: {problem}") from None
    except OSError as exc:
        raise UsageError(f"cannot load TLS certificate {args.tls_cert}: {exc}") from None
    return context


def _pem_file(option: str, path: str) -> str:
    """The text of a PEM file, or a UsageError that names the option, the file and why."""
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.read(1024 * 1024)
    except OSError as exc:
        raise UsageError(f"cannot read {option} {path}: {exc.strerror or exc}") from None


class _AsyncDiscard:
    """discard on an event loop: nothing blocks, so no worker thread per message."""

    async def __call__(self, envelope: Envelope) -> None:
        return None

    def __repr__(self) -> str:
        return "discard"


#: the shorthands for a ``*@*`` route: option -> the target prefix of its value
_SHORTHANDS = {"--maildir": "maildir:", "--eml-dir": "eml:", "--discard": "discard"}


def _routes(args: argparse.Namespace) -> list[_config_file.FileRoute]:
    """The routes to serve: the file's, with those the command line gives for the same pattern
    replaced (``--route`` twice with one pattern is a fan-out to both); ``*@*`` ->
    ``maildir:./mail`` when there is none at all."""
    options = _router_options(args)
    given: list[_config_file.FileRoute] = []
    for pattern, target in args.route:
        index = _same_pattern(given, pattern, options)
        if index is None:
            given.append(_config_file.FileRoute(pattern, (target,), "--route"))
        else:
            old = given[index]
            given[index] = attrs.evolve(old, targets=(*old.targets, target))
    for option, prefix in _SHORTHANDS.items():
        value = getattr(args, option[2:].replace("-", "_"))
        if not value:
            continue
        index = _same_pattern(given, "*@*", options)
        if index is not None:
            raise UsageError(
                f"{option} and --route '{given[index].pattern}=...' both say where *@* goes: "
                "keep one of them"
            )
        shorthand = prefix if value is True else f"{prefix}{value}"
        given.append(_config_file.FileRoute("*@*", (shorthand,), option))
    routes = [
        route
        for route in getattr(args, "file_routes", [])
        if _same_pattern(given, route.pattern, options) is None
    ]
    routes += given
    return routes or [_config_file.FileRoute("*@*", ("maildir:./mail",), "the default route")]


def _same_pattern(
    routes: list[_config_file.FileRoute], pattern: str, options: dict[str, Any]
) -> int | None:
    """The index of the route whose pattern equals ``pattern`` (as the Router compares)."""
    for index, route in enumerate(routes):
        probe: Router[int] = Router(**options)
        try:
            probe.add(route.pattern, index)
        except ValueError:
            continue  # reported when the router is built
        if pattern in probe:
            return index
    return None


def _router_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "fold_case": args.fold_case,
        "ignore_dots": args.ignore_dots,
        "subaddress_separator": args.recipient_delimiter or None,
    }


def _router(args: argparse.Namespace) -> Router[Any]:
    """Every route's handler, built now: a bad target stops the start, not the first message."""
    try:
        router: Router[Any] = Router(**_router_options(args))
    except ValueError as exc:
        raise UsageError(f"--recipient-delimiter: {exc}") from None
    for route in _routes(args):
        where = route.where if route.where != "--route" else f"--route '{route.pattern}=...'"
        try:
            handler = build_targets(list(route.targets))
        except ValueError as exc:
            raise UsageError(f"{where}: {exc}") from None
        if args.backend == "sync" and is_async_callable(handler):
            raise UsageError(
                f"{where}: {handler!r} is async, and --backend sync calls handlers in its "
                "threads: use --backend asyncio or trio, or make it a plain function"
            )
        if isinstance(handler, Discard) and args.backend != "sync" and not args.debug:
            handler = _AsyncDiscard()
        if args.debug and not hasattr(handler, "begin"):
            handler = _debugging(handler, args.log_format)
        try:
            router.add(route.pattern, handler)
        except ValueError as exc:
            raise UsageError(f"{where}: {exc}") from None
    return router


def _routing_table(router: Router[Any]) -> list[tuple[str, str]]:
    """(pattern, target) in the order a lookup tries them: (local, domain), (*, domain),
    (local, *), (*, *); alphabetical within each."""

    def rank(pattern: str) -> tuple[int, str]:
        local, _, domain = pattern.rpartition("@")
        return (2 * (domain == "*") + (local == "*"), pattern.lower())

    items = sorted(router.items(), key=lambda item: rank(item[0]))
    return [(pattern, repr(getattr(handler, "target", handler))) for pattern, handler in items]


def _servers(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The keyword arguments of each listener's Server."""
    context = _ssl_context(args)
    if args.auth_require_tls and args.auth_file and context is None:
        raise UsageError("--auth-require-tls needs --tls-cert")
    mechanisms = (PlainMechanism, LoginMechanism) if args.auth_file else ()
    config = ServerConfig(
        hostname=args.hostname,
        lmtp=args.lmtp,
        max_message_size=args.max_message_size,
        auth_mechanisms=mechanisms,
        auth_require_tls=context is not None or args.auth_require_tls,
        command_timeout=args.timeout,
    )
    limits: dict[str, Any] = {
        "max_recipients": args.max_recipients,
        "relay_domains": frozenset(d.lower().rstrip(".") for d in args.relay_domain) or None,
    }
    if args.auth_file:
        kind = AuthFilePolicy if args.backend == "sync" else _ThreadedAuthFilePolicy
        try:
            policy: Policy = kind(load_auth_file(args.auth_file), **limits)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --auth-file: {exc}") from None
    else:
        policy = Policy(**limits)
    router = _router(args)
    metrics = Metrics(lock=threading.Lock())  # one per process, read by --metrics
    connection_limits = ConnectionLimits(
        max_connections=args.max_connections,
        max_connections_per_client=args.max_connections_per_client,
        connection_rate_per_client=args.connection_rate_per_client,
    )
    common = {
        "router": router,
        "config": config,
        "policy": policy,
        "proxy_protocol_from": frozenset(args.proxy_protocol),
        "metrics": metrics,
        # one per process, so that every listener's connections count together
        "admission": Admission(
            connection_limits,
            metrics=metrics,
            exempt=frozenset(args.proxy_protocol),
            lock=threading.Lock(),
        ),
    }
    inherited = _inherited(args, context)
    if inherited:
        return [{**common, **options, "ssl_context": context} for options in inherited]
    plain = args.listen or ([] if args.tls_listen else [("127.0.0.1", 8025)])
    servers = [{**common, "host": h, "port": p, "ssl_context": context} for h, p in plain]
    servers += [
        {**common, "host": h, "port": p, "ssl_context": context, "implicit_tls": True}
        for h, p in args.tls_listen
    ]
    return servers


def _inherited(args: argparse.Namespace, context: ssl.SSLContext | None) -> list[dict[str, Any]]:
    """Socket activation: the listeners systemd opened (LISTEN_FDS), served instead of
    binding. A socket named ``smtps`` or ``submissions`` (FileDescriptorName=) is implicit
    TLS; every other one is plain SMTP, with STARTTLS when a certificate is given."""
    try:
        listeners = _systemd.inherited_listeners()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not listeners:
        return []
    if args.listen or args.tls_listen:
        raise UsageError(
            "systemd passed listening sockets (LISTEN_FDS): drop --listen and --tls-listen, "
            "the socket unit's ListenStream= lines say where to listen"
        )
    servers = []
    for listener in listeners:
        if listener.implicit_tls and context is None:
            raise UsageError(f"the socket named {listener.name} (implicit TLS) needs --tls-cert")
        servers.append(
            {
                "host": listener.host,
                "port": listener.port,
                "sock": listener.sock,
                "implicit_tls": listener.implicit_tls,
            }
        )
    return servers


class _ThreadedAuthFilePolicy(AuthFilePolicy):
    """On an event loop, the deliberately slow hash check runs in a worker thread, no more at
    once than the policy's hash slots: other logins wait on the loop, not in the worker
    threads that handlers need too."""

    _limiter: anyio.CapacityLimiter | None = None

    async def authenticate(self, credentials: Credentials, info: SessionInfo) -> str | None:
        if self._limiter is None:  # made in the loop (a --workers child has its own)
            self._limiter = anyio.CapacityLimiter(self.concurrent_checks)
        return await anyio.to_thread.run_sync(self.check, credentials, limiter=self._limiter)


def _debugging(handler: Any, log_format: str) -> Any:
    """--debug prints each message; with --log-format json as one record, like every line."""
    printer = Printer(sys.stderr)

    def show(envelope: Any) -> None:
        if log_format == "json":
            text = io.StringIO()
            Printer(text)(envelope)
            extra = {"session_id": envelope.session_id}
            logging.getLogger("smtpmux.message").debug(
                "%s", text.getvalue().rstrip("\n"), extra=extra
            )
        else:
            printer(envelope)

    def deliver(envelope: Any) -> Any:
        show(envelope)
        return handler(envelope)

    async def deliver_async(envelope: Any) -> Any:  # an async handler stays one (python:)
        show(envelope)
        return await handler(envelope)

    chosen: Any = deliver_async if is_async_callable(handler) else deliver
    chosen.target = handler  # what check-config shows
    return chosen


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


def _print_check(args: argparse.Namespace, router: Router[Any]) -> None:
    """``check-config``: what was checked, and the routes in the order a lookup tries them."""
    print(f"{args.config or 'the options'}: OK")
    options = [
        f"recipient_delimiter {args.recipient_delimiter!r}" if args.recipient_delimiter else "",
        "fold_case" if args.fold_case else "",
        "ignore_dots" if args.ignore_dots else "",
    ]
    if any(options):
        print("router: " + ", ".join(filter(None, options)))
    table = _routing_table(router)
    print("routes, in lookup order:")
    width = max(len(pattern) for pattern, _ in table)
    for pattern, target in table:
        print(f"  {pattern:<{width}}  ->  {target}")
    if not any(pattern == "*@*" for pattern, _ in table):
        print(f"  {'(other)':<{width}}  ->  refused at RCPT: 550 5.1.1")


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
        for server in self.running:
            config = swapped["config"]
            if server.ssl_context is not None and not server.implicit_tls:
                config = attrs.evolve(config, starttls=True)
            server.router, server.policy, server.config = swapped["router"], fresh["policy"], config
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
    handler = logging.StreamHandler(sys.stderr)
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


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = commands.choices[name]
    return found


def _parse(arguments: list[str]) -> argparse.Namespace:
    """The options: the command line's over those of a ``--config`` file (whose values become
    the defaults, so one parser checks both). ``check-config FILE`` is ``serve --config FILE
    --check``. Raises _BadArguments or ConfigError."""
    parser = build_parser()
    args = parser.parse_args(arguments)
    if args.command == "check-config":
        arguments = ["serve", "--config", args.file, "--check"]
        args = parser.parse_args(arguments)
    if args.command != "serve":
        return args
    routes: list[_config_file.FileRoute] = []
    if args.config:
        serve = _subparser(parser, "serve")
        values, routes = _config_file.load(args.config, serve)
        serve.set_defaults(**values)
        args = parser.parse_args(arguments)
    args.file_routes = routes
    args.arguments = arguments  # what a reload parses again
    return args


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parse(arguments)
    except (_BadArguments, _config_file.ConfigError) as exc:
        if isinstance(exc, _config_file.ConfigError):
            exc = _BadArguments(f"smtpmux: {exc}")
        if "--log-format=json" in arguments or any(  # JSON even before the options parse
            pair == ("--log-format", "json") for pair in itertools.pairwise(arguments)
        ):
            record = logging.makeLogRecord({"name": status.name, "msg": str(exc)})
            record.levelname = "ERROR"
            print(JSONFormatter().format(record), file=sys.stderr)
        else:
            print(exc, file=sys.stderr)
        return 2
    if args.command == "serve":
        return _serve(args)
    if args.command == "send":
        return _send(args)
    if args.command == "hash-password":
        return _hash_password(args.password)
    return 2


def _hash_password(password: str | None) -> int:
    """Print the hash of the password given, typed (not echoed) or piped on standard input."""
    if password is None:
        if sys.stdin.isatty():
            password = getpass.getpass("Password: ")
        else:
            password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("smtpmux: the password is empty", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


# --- smtpmux send ----------------------------------------------------------------------------

_SEND_REFUSED = 1  #: a recipient (or the whole message) was refused
_SEND_FAILED = 3  #: connection, TLS, greeting, EHLO or AUTH failed; the connection broke


def _address(text: str, *, sender: bool) -> str:
    address = text.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if sender and not address:
        return ""  # the null reverse-path, for bounces
    try:
        parse_path(f"<{address}>", sender=sender, utf8=True)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an address: {exc}") from None
    return address


def _add_send(commands: Any) -> None:
    send = commands.add_parser("send", help="send a message from a file or standard input")
    send.add_argument("file", metavar="FILE", help="the message (RFC 5322); - reads stdin")
    send.add_argument(
        "--from",
        dest="mail_from",
        type=lambda text: _address(text, sender=True),
        metavar="ADDRESS",
        help="envelope sender (default: the message's Sender or From)",
    )
    send.add_argument(
        "--to",
        dest="rcpt_tos",
        action="append",
        type=lambda text: _address(text, sender=False),
        metavar="ADDRESS",
        help="recipient (repeatable; default: the message's To, Cc and Bcc)",
    )
    send.add_argument(
        "--server",
        type=_host_port,
        default=("127.0.0.1", 8025),
        metavar="HOST:PORT",
        help="where to send (default 127.0.0.1:8025)",
    )
    send.add_argument(
        "--tls",
        choices=TLS_MODES,
        default="opportunistic",
        help="STARTTLS when offered (default), required, implicit TLS (port 465), or none",
    )
    send.add_argument("--cafile", metavar="FILE", help="trust the CA certificates in FILE (PEM)")
    send.add_argument(
        "--auth",
        metavar="USER[:PASSWORD]",
        help="AUTH PLAIN or LOGIN (without :PASSWORD, from $SMTPMUX_PASSWORD)",
    )
    send.add_argument("--helo", metavar="NAME", help="our EHLO name (default: our IP literal)")
    send.add_argument("--lmtp", action="store_true", help="speak LMTP (RFC 2033): LHLO")
    send.add_argument(
        "--timeout",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="seconds to wait for each reply (default 60)",
    )


def _send_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of connect(); a bad value is a UsageError."""
    host, port = args.server
    if port == 0:
        raise UsageError("--server needs a port other than 0")
    context = None
    if args.cafile:
        if args.tls == "none":
            raise UsageError("--cafile needs --tls starttls, implicit or opportunistic")
        try:
            context = ssl.create_default_context(cafile=args.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load --cafile {args.cafile}: {exc}") from None
    auth = None
    if args.auth is not None:
        user, colon, password = args.auth.partition(":")
        if not colon:
            password = os.environ.get("SMTPMUX_PASSWORD", "")
            if not password:
                raise UsageError("--auth USER needs :PASSWORD or $SMTPMUX_PASSWORD")
        if not user:
            raise UsageError("--auth needs a user name")
        auth = (user, password)
    if args.helo is not None and (not args.helo or any(c.isspace() for c in args.helo)):
        raise UsageError(f"--helo must be one word, not {args.helo!r}")
    return {
        "host": host,
        "port": port,
        "tls": args.tls,
        "ssl_context": context,
        "auth": auth,
        "timeout": args.timeout,
        "local_hostname": args.helo,
        "lmtp": args.lmtp,
    }


async def _deliver(options: dict[str, Any], envelope: OutgoingMessage) -> object:
    """Send; the transaction's own refusals come back as values, session failures raise."""
    async with connect(**options) as client:
        try:
            return await client.send_message(
                envelope.content, mail_from=envelope.mail_from, rcpt_tos=envelope.rcpt_tos
            )
        except (SenderRefused, RecipientsRefused, MessageRefused, SMTPNotSupported) as exc:
            return exc


def _send(args: argparse.Namespace) -> int:
    """Print one line per recipient: accepted or refused, with the server's reply."""
    try:
        options = _send_options(args)
        try:
            if args.file == "-":
                content = sys.stdin.buffer.read()
            else:
                with open(args.file, "rb") as file:
                    content = file.read()
        except OSError as exc:
            raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from None
        try:
            envelope = prepare_message(content, mail_from=args.mail_from, rcpt_tos=args.rcpt_tos)
        except ValueError as exc:
            raise UsageError(f"{exc}: see --from and --to") from None
    except UsageError as exc:
        print(f"smtpmux: {exc}", file=sys.stderr)
        return 2
    try:
        outcome = anyio.run(_deliver, options, envelope)
    except SMTPError as exc:
        print(f"smtpmux: {exc}", file=sys.stderr)
        return _SEND_FAILED
    except KeyboardInterrupt:
        return 130
    if isinstance(outcome, SMTPNotSupported):
        print(f"smtpmux: not sent: {outcome}", file=sys.stderr)
        return _SEND_REFUSED
    if isinstance(outcome, SenderRefused):
        replies = {address: outcome.reply for address in envelope.rcpt_tos}
        accepted: set[str] = set()
    else:
        if isinstance(outcome, RecipientsRefused | MessageRefused):
            outcome = outcome.result
        assert isinstance(outcome, SendResult)
        replies = {r.address: r.reply for r in outcome.recipients}
        accepted = set(outcome.accepted)
    for address, reply in replies.items():
        status = "accepted" if address in accepted else "refused"
        print(f"{status} <{address}> {format_reply(reply)}")
    return 0 if len(accepted) == len(replies) else _SEND_REFUSED
