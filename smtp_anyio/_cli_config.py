"""``smtpmux serve``'s options turned into its servers' configuration: the TLS context, the
routes (file and command line), the router with every target built, the policy and limits.

Every bad value is a UsageError that names the option (see _cli.py)."""

from __future__ import annotations

import argparse
import io
import logging
import ssl
import sys
import threading
from typing import Any

import anyio
import attrs

from smtp_core import (
    Admission,
    ConnectionLimits,
    Credentials,
    Envelope,
    LoginMechanism,
    Metrics,
    PlainMechanism,
    Policy,
    Router,
    ServerConfig,
    SessionInfo,
)
from smtp_sync.adapter import is_async_callable
from smtp_sync.auth_file import AuthFilePolicy, load_auth_file
from smtp_sync.handlers import Discard, Printer
from smtp_sync.targets import targets as build_targets

from . import _config_file, _systemd
from ._cli import UsageError
from ._operations import server_context

__all__ = ["_ThreadedAuthFilePolicy", "_print_check", "_router", "_routing_table", "_servers"]


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
