"""``smtpmux serve --config FILE``: a TOML file that says what ``serve``'s options say, and routes.

One table, ``FILE_KEYS``, maps each key of the file to the ``serve`` option it stands for (its
argparse ``dest``), and every value goes through that option's own parser (``_size``, ``_rate``,
...), so the file and the flags accept the same values and cannot drift: a test walks every
``serve`` option and checks the file can say it. The file's values become the parser's defaults,
so an option given on the command line overrides the file (a repeatable one replaces its list).

Routes are ``[[route]]`` tables: ``match = "PATTERN"`` and ``deliver = "TARGET"`` or a list of
targets (a fan-out). Every problem is one ``ConfigError`` naming the file, the line where it can
be found, and the key.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from collections.abc import Iterable
from typing import Any, NoReturn

import attrs

from smtp_core import Router

__all__ = ["COMMAND_LINE_ONLY", "FILE_KEYS", "ConfigError", "FileRoute", "load"]

#: ``(table, key)`` of the file -> the ``serve`` option's dest. ``""`` is the top level.
FILE_KEYS: dict[tuple[str, str], str] = {
    ("", "listen"): "listen",
    ("", "hostname"): "hostname",
    ("", "backend"): "backend",
    ("", "workers"): "workers",
    ("", "lmtp"): "lmtp",
    ("", "proxy_protocol"): "proxy_protocol",
    ("", "relay_domains"): "relay_domain",
    ("", "metrics"): "metrics",
    ("tls", "listen"): "tls_listen",
    ("tls", "cert"): "tls_cert",
    ("tls", "key"): "tls_key",
    ("auth", "file"): "auth_file",
    ("auth", "require_tls"): "auth_require_tls",
    ("limits", "max_message_size"): "max_message_size",
    ("limits", "max_recipients"): "max_recipients",
    ("limits", "max_connections"): "max_connections",
    ("limits", "max_connections_per_client"): "max_connections_per_client",
    ("limits", "connection_rate_per_client"): "connection_rate_per_client",
    ("timeouts", "command"): "timeout",
    ("logging", "format"): "log_format",
    ("logging", "debug"): "debug",
    ("logging", "quiet"): "quiet",
    ("router", "recipient_delimiter"): "recipient_delimiter",
    ("router", "fold_case"): "fold_case",
    ("router", "ignore_dots"): "ignore_dots",
}

#: ``serve`` options the file has no key for, and why: the shorthands for a ``*@*`` route
#: (``[[route]]`` says it), and the options that name or check the file itself.
COMMAND_LINE_ONLY = {
    "route": "a [[route]] table",
    "maildir": 'a [[route]] with match = "*@*"',
    "eml_dir": 'a [[route]] with match = "*@*"',
    "discard": 'a [[route]] with match = "*@*"',
    "config": "the file itself",
    "check": "smtpmux check-config FILE",
}

_ROUTE_KEYS = ("match", "deliver")


class ConfigError(Exception):
    """The file cannot be used: one line naming the file, the line, the key and the problem."""


@attrs.frozen
class FileRoute:
    """One ``[[route]]`` table (or ``--route`` option): a pattern and its targets, in order."""

    pattern: str
    targets: tuple[str, ...]
    where: str  #: ``FILE:LINE: [[route]] #N`` or the option, for the messages of later checks


def load(path: str, serve: argparse.ArgumentParser) -> tuple[dict[str, Any], list[FileRoute]]:
    """The option values (by dest, parsed) and the routes the file at ``path`` gives."""
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError as exc:
        raise ConfigError(f"cannot read --config {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
        document = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        where = f"{path}:{line[1]}" if line else path
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    return _Reader(path, text, serve).read(document)


class _Reader:
    def __init__(self, path: str, text: str, serve: argparse.ArgumentParser) -> None:
        self.path, self.lines = path, text.splitlines()
        self.actions = {action.dest: action for action in serve._actions}

    def where(self, table: str, key: str | None, index: int | None = None) -> str:
        """``FILE:LINE`` of ``key`` in ``table`` (the ``index``-th ``[[table]]``), or ``FILE``."""
        current, seen, found = "", -1, None
        for number, line in enumerate(self.lines, 1):
            header = re.match(r"\s*\[\[?\s*([^\]]+?)\s*\]\]?", line)
            if header:
                current = header[1]
                if current == table:
                    seen += 1
                    if key is None and (index is None or seen == index):
                        return f"{self.path}:{number}"
                continue
            mine = current == table and (index is None or seen == index)
            if mine and key is not None and re.match(rf"\s*\"?{re.escape(key)}\"?\s*=", line):
                found = number
                break
        if found is None and key is not None and index is not None:
            return self.where(table, None, index)  # a key that is missing: its table's line
        return f"{self.path}:{found}" if found else self.path

    def fail(self, table: str, key: str | None, problem: str, index: int | None = None) -> NoReturn:
        name = f"[[{table}]] #{index + 1}" if index is not None else f"[{table}]" if table else ""
        name = f"{name} {key}" if key and name else key or name
        raise ConfigError(f"{self.where(table, key, index)}: {name}: {problem}")

    def read(self, document: dict[str, Any]) -> tuple[dict[str, Any], list[FileRoute]]:
        values: dict[str, Any] = {}
        tables = {table for table, _ in FILE_KEYS if table}
        for key, value in document.items():
            if key == "route":
                continue
            if key in tables:
                if not isinstance(value, dict):
                    self.fail("", key, f"must be a table: write [{key}] above its keys")
                for inner, item in value.items():
                    self.option(key, inner, item, values)
            else:
                self.option("", key, value, values)
        return values, self.routes(document.get("route", []), values)

    def option(self, table: str, key: str, value: Any, values: dict[str, Any]) -> None:
        dest = FILE_KEYS.get((table, key))
        if dest is None:
            known = sorted(k for t, k in FILE_KEYS if t == table)
            if not table:
                known += [f"[{t}]" for t in sorted({t for t, _ in FILE_KEYS if t})] + ["[[route]]"]
            self.fail(table, key, f"unknown key; the keys here are {', '.join(known)}")
        action = self.actions[dest]
        option = action.option_strings[-1]
        try:
            values[dest] = self.convert(action, value)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            self.fail(table, key, f"{exc} (as {option})")

    def convert(self, action: argparse.Action, value: Any) -> Any:
        if action.nargs == 0:  # a switch: --lmtp, --debug
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {value!r}")
            return value
        if isinstance(action, argparse._AppendAction):
            items = [value] if not isinstance(value, list) else value
            return [self.scalar(action, item) for item in items]
        return self.scalar(action, value)

    @staticmethod
    def scalar(action: argparse.Action, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"expected a text or a number, got {value!r}")
        if action.type is None and not isinstance(value, str):
            raise ValueError(f"expected a text in quotes, got {value!r}")
        text = str(value)
        converted = action.type(text) if callable(action.type) else text
        if action.choices is not None and converted not in action.choices:
            choices = ", ".join(map(str, action.choices))
            raise ValueError(f"expected one of {choices}, got {value!r}")
        return converted

    def routes(self, tables: Any, values: dict[str, Any]) -> list[FileRoute]:
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            self.fail(
                "", "route", 'write each route as a [[route]] table: match = "...", deliver = "..."'
            )
        routes: list[FileRoute] = []
        try:  # finds equal patterns (bob@EXAMPLE.com and bob@example.com; with fold_case, Bob@)
            probe: Router[int] = Router(
                fold_case=values.get("fold_case", False),
                ignore_dots=values.get("ignore_dots", False),
                subaddress_separator=values.get("recipient_delimiter") or None,
            )
        except ValueError as exc:
            self.fail("router", "recipient_delimiter", str(exc))
        for index, table in enumerate(tables):
            for key in table:
                if key not in _ROUTE_KEYS:
                    self.fail("route", key, "unknown key; a route has match and deliver", index)
            pattern = table.get("match")
            if not isinstance(pattern, str):
                self.fail("route", "match", 'needs a pattern: match = "*@example.com"', index)
            deliver = table.get("deliver")
            texts = [deliver] if isinstance(deliver, str) else deliver
            if not isinstance(texts, list) or not texts or not _all_text(texts):
                self.fail(
                    "route",
                    "deliver",
                    'needs a target or a list of targets: deliver = "maildir:./mail"',
                    index,
                )
            try:
                probe.add(pattern, index)
            except ValueError as exc:
                self.fail("route", "match", str(exc), index)
            where = f"{self.where('route', None, index)}: [[route]] #{index + 1}"
            routes.append(FileRoute(pattern, tuple(texts), where))
        return routes


def _all_text(items: Iterable[object]) -> bool:
    return all(isinstance(item, str) and item.strip() for item in items)
