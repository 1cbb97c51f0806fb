"""The ``smtpmux`` command line: ``serve`` (works with no options), ``send`` and ``hash-password``.

Every bad option or unusable file ends the command with one line on stderr and exit code 2;
SIGTERM or SIGINT stops a server gracefully with exit code 0. See docs/cli.md.

This module is the entry point and the parser (both commands' options, and a ``--config``
file read as their defaults); the jobs live beside it: ``_cli_config`` turns the options into
the servers' configuration, ``_cli_run`` runs them (one process, or a supervisor and its
workers), ``_cli_send`` sends. ``main`` imports a command's module when that command runs.
"""

from __future__ import annotations

import argparse
import getpass
import importlib
import importlib.metadata
import itertools
import logging
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from smtp_core import TLS_MODES, AddressError, ConnectionRate, normalize_domain, parse_path
from smtp_sync.auth_file import hash_password

from . import _config_file
from ._operations import JSONFormatter

__all__ = ["main"]

#: What ``serve`` says about itself (listening, stopping, why it cannot start): plain
#: ``smtpmux: ...`` lines in text mode, JSON objects like every other line with --log-format json.
status = logging.getLogger("smtpmux.cli")


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
        from ._cli_run import _serve

        return _serve(args)
    if args.command == "send":
        from ._cli_send import _send

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


#: where the helpers that lived here before the split are now (tests and tools reach them as
#: ``_cli.<name>``); read lazily, so this module never imports the others at import time
_MOVED = {
    **dict.fromkeys(
        (
            *("_AsyncDiscard", "_SHORTHANDS", "_ThreadedAuthFilePolicy", "_debugging"),
            *("_inherited", "_pem_file", "_print_check", "_router", "_router_options"),
            *("_routes", "_routing_table", "_same_pattern", "_servers", "_ssl_context"),
        ),
        "_cli_config",
    ),
    **dict.fromkeys(
        (
            *("_FileReloader", "_LISTEN_HINTS", "_Process", "_RESTART_ONLY", "_announce"),
            *("_cannot_listen", "_configure_logging", "_metrics_endpoint", "_ready"),
            *("_reload", "_run", "_serve", "_serve_anyio", "_serve_sync", "_supervise", "log"),
        ),
        "_cli_run",
    ),
    **dict.fromkeys(
        ("_SEND_FAILED", "_SEND_REFUSED", "_deliver", "_send", "_send_options"), "_cli_send"
    ),
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(f"{__package__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
