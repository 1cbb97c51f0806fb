"""smtp_anyio._config_file: the TOML file of ``smtpmux serve --config``, read in-process (the
command line around it is tested as a subprocess in test_cli_routes.py)."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path
from typing import Any

import pytest

from smtp_anyio import _cli, _cli_config
from smtp_anyio._config_file import COMMAND_LINE_ONLY, FILE_KEYS, ConfigError, FileRoute
from smtp_core import ConnectionRate


def serve_actions() -> dict[str, argparse.Action]:
    serve = _cli._subparser(_cli.build_parser(), "serve")
    return {a.dest: a for a in serve._actions if not isinstance(a, argparse._HelpAction)}


def test_the_file_can_say_every_serve_option() -> None:
    """The guard against drift: an option added to ``serve`` needs its key in FILE_KEYS (or a
    reason in COMMAND_LINE_ONLY), and every key names a real option."""
    dests = set(serve_actions())
    said = set(FILE_KEYS.values())
    assert len(said) == len(FILE_KEYS)  # one key per option
    assert dests - said - set(COMMAND_LINE_ONLY) == set()
    assert said - dests == set()
    assert set(COMMAND_LINE_ONLY) <= dests


def parse(tmp_path: Path, text: str, *options: str) -> argparse.Namespace:
    path = tmp_path / "smtpmux.toml"
    path.write_text(text)
    return _cli._parse(["serve", "--config", str(path), *options])


#: one line for each key of the file: (table, TOML value, the option's parsed value)
EVERY_KEY: dict[tuple[str, str], tuple[str, Any]] = {
    ("", "listen"): ('["127.0.0.1:2525", "[::1]:25"]', [("127.0.0.1", 2525), ("::1", 25)]),
    ("", "hostname"): ('"mx.example.com"', "mx.example.com"),
    ("", "backend"): ('"trio"', "trio"),
    ("", "workers"): ("4", 4),
    ("", "lmtp"): ("true", True),
    ("", "proxy_protocol"): ('["10.0.0.1"]', ["10.0.0.1"]),
    ("", "relay_domains"): (
        '["Example.COM", "bücher.example"]',
        ["example.com", "xn--bcher-kva.example"],
    ),
    ("", "metrics"): ('"127.0.0.1:9100"', ("127.0.0.1", 9100)),
    ("tls", "listen"): ('"0.0.0.0:465"', [("0.0.0.0", 465)]),
    ("tls", "cert"): ('"/etc/ssl/mx.pem"', "/etc/ssl/mx.pem"),
    ("tls", "key"): ('"/etc/ssl/mx.key"', "/etc/ssl/mx.key"),
    ("auth", "file"): ('"users"', "users"),
    ("auth", "require_tls"): ("true", True),
    ("limits", "max_message_size"): ('"10M"', 10 * 1024**2),
    ("limits", "max_recipients"): ("20", 20),
    ("limits", "max_connections"): ("300", 300),
    ("limits", "max_connections_per_client"): ("0", 0),
    ("limits", "connection_rate_per_client"): ('"30/60s"', ConnectionRate.parse("30/60s")),
    ("timeouts", "command"): ("120", 120.0),
    ("logging", "format"): ('"json"', "json"),
    ("logging", "debug"): ("true", True),
    ("logging", "quiet"): ("true", True),
    ("router", "recipient_delimiter"): ('"+"', "+"),
    ("router", "fold_case"): ("true", True),
    ("router", "ignore_dots"): ("true", True),
}


def test_the_table_of_every_key_is_complete() -> None:
    assert set(EVERY_KEY) == set(FILE_KEYS)


def test_every_key_of_the_file_sets_its_option(tmp_path: Path) -> None:
    """The file with every table and every key at once (what the docs call a full file)."""
    tables: dict[str, list[str]] = {}
    for (table, key), (value, _) in EVERY_KEY.items():
        tables.setdefault(table, []).append(f"{key} = {value}")
    text = "\n".join(tables.pop(""))
    for table, lines in tables.items():
        text += f"\n\n[{table}]\n" + "\n".join(lines)
    text += '\n\n[[route]]\nmatch = "*@example.com"\ndeliver = ["maildir:a", "eml:b"]\n'
    args = parse(tmp_path, text)
    for (table, key), (_, expected) in EVERY_KEY.items():
        assert getattr(args, FILE_KEYS[table, key]) == expected, (table, key)
    [route] = args.file_routes
    assert route == FileRoute("*@example.com", ("maildir:a", "eml:b"), route.where)
    line = text.splitlines().index("[[route]]") + 1
    assert route.where == f"{tmp_path / 'smtpmux.toml'}:{line}: [[route]] #1"


#: (file, command line, option, value): the command line wins; a list replaces the file's
OVERRIDES = [
    ('listen = ["127.0.0.1:1"]', ["--listen", "127.0.0.1:2"], "listen", [("127.0.0.1", 2)]),
    (
        'relay_domains = ["a.example", "b.example"]',
        ["--relay-domain", "c.example"],
        "relay_domain",
        ["c.example"],
    ),
    ("[limits]\nmax_recipients = 5", ["--max-recipients", "7"], "max_recipients", 7),
    ("[limits]\nmax_recipients = 5", [], "max_recipients", 5),
    ('hostname = "file.example"', ["--hostname", "flag.example"], "hostname", "flag.example"),
    ('backend = "trio"', ["--backend", "sync"], "backend", "sync"),
    ("[logging]\ndebug = false", ["--debug"], "debug", True),
    ("", [], "max_recipients", 100),  # the built-in default when neither says it
    ("", [], "listen", None),
]


@pytest.mark.parametrize(("text", "options", "dest", "expected"), OVERRIDES)
def test_the_command_line_overrides_the_file(
    tmp_path: Path, text: str, options: list[str], dest: str, expected: Any
) -> None:
    assert getattr(parse(tmp_path, text, *options), dest) == expected


#: (file, where, the rest of the one-line message)
BAD_FILES = [
    ("frob = 1\n", ":1: frob: unknown key; the keys here are backend, hostname", ""),
    ("[limits]\nmax_mesage_size = 1\n", ":2: [limits] max_mesage_size: unknown key", ""),
    ("[tls]\ncert = 5\n", ":2: [tls] cert: expected a text in quotes, got 5", "(as --tls-cert)"),
    (
        '[limits]\n\nmax_message_size = "12Q"\n',
        ":3: [limits] max_message_size: expected a size",
        "got '12Q' (as --max-message-size)",
    ),
    ('lmtp = "yes"\n', ":1: lmtp: expected true or false, got 'yes'", ""),
    ("workers = 0\n", ":1: workers: expected a positive whole number, got '0'", "(as --workers)"),
    ('backend = "tokio"\n', ":1: backend: expected one of asyncio, trio, sync", ""),
    ('listen = "localhost"\n', ":1: listen: expected HOST:PORT, got 'localhost'", ""),
    ("listen = [25]\n", ":1: listen: expected HOST:PORT, got '25'", ""),
    ("[[route]]\ndeliver = 'discard'\n", ":1: [[route]] #1 match: needs a pattern", ""),
    ("[[route]]\nmatch = '*@*'\n", ":1: [[route]] #1 deliver: needs a target", ""),
    ("[[route]]\nmatch = '*@*'\ndeliver = []\n", ":3: [[route]] #1 deliver: needs a target", ""),
    ("[[route]]\nmatch = '*@*'\ndeliver = [1]\n", ":3: [[route]] #1 deliver: needs a target", ""),
    (
        "[[route]]\nmatch = '*@*'\ndeliver = 'discard'\nto = 'x'\n",
        ":4: [[route]] #1 to: unknown key",
        "",
    ),
    (
        "[[route]]\nmatch = 'bob'\ndeliver = 'discard'\n",
        ":2: [[route]] #1 match: pattern 'bob' has no domain",
        "",
    ),
    (
        "[[route]]\nmatch = 'bob@x.example'\ndeliver = 'discard'\n\n"
        "[[route]]\nmatch = 'bob@X.Example.'\ndeliver = 'discard'\n",
        ":6: [[route]] #2 match: pattern 'bob@X.Example.' duplicates the registered pattern",
        "'bob@x.example'",
    ),
    (
        "[router]\nfold_case = true\n[[route]]\nmatch = 'Bob@x.example'\ndeliver = 'discard'\n"
        "[[route]]\nmatch = 'bob@x.example'\ndeliver = 'discard'\n",
        ":7: [[route]] #2 match: pattern 'bob@x.example' duplicates the registered pattern",
        "'Bob@x.example'",
    ),
    (
        "[router]\nrecipient_delimiter = '@'\n",
        ":2: [router] recipient_delimiter: subaddress_separator must be text without @",
        "",
    ),
    ("route = 'x'\n", ":1: route: write each route as a [[route]] table", ""),
    ("tls = 'x'\n", ":1: tls: must be a table: write [tls] above its keys", ""),
    ("\n\nlisten = \n", ":3: not valid TOML", "(at line 3, column 10)"),
    ('hostname = "a"\nhostname = "b"\n', ":2: not valid TOML", ""),
]


@pytest.mark.parametrize(("text", "where", "rest"), BAD_FILES)
def test_a_bad_file_is_one_error_naming_the_file_line_and_key(
    tmp_path: Path, text: str, where: str, rest: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(tmp_path, text)
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "smtpmux.toml") + where), message
    assert rest in message
    assert "\n" not in message


def test_a_missing_or_binary_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read --config .*missing.toml: No such file"):
        _cli._parse(["serve", "--config", str(tmp_path / "missing.toml")])
    (tmp_path / "binary.toml").write_bytes(b"hostname = '\xff'\n")
    with pytest.raises(ConfigError, match=r"binary.toml: not UTF-8 text"):
        _cli._parse(["serve", "--config", str(tmp_path / "binary.toml")])


#: (file, options, error): what the file says is checked by building it, as serve would
BAD_ROUTES = [
    (
        "[[route]]\nmatch = '*@*'\ndeliver = 'mbox:x'\n",
        [],
        ":1: [[route]] #1: unknown target 'mbox:x'",
    ),
    (
        "[[route]]\nmatch = '*@*'\ndeliver = 'python:nosuchmodule_xyz:f'\n",
        [],
        "module nosuchmodule_xyz is not installed",
    ),
    (
        # equal only with the command line's --fold-case: found when the router is built
        "[[route]]\nmatch = 'Bob@x.example'\ndeliver = 'discard'\n"
        "[[route]]\nmatch = 'bob@x.example'\ndeliver = 'discard'\n",
        ["--fold-case"],
        ":4: [[route]] #2: pattern 'bob@x.example' duplicates",
    ),
    ("", ["--route", "*@*=maildir:"], "--route '*@*=...': target 'maildir:' names no directory"),
    ("", ["--route", "*@*=discard", "--discard"], "--discard and --route '*@*=...' both say"),
    ("", ["--route", "*@*=discard", "--maildir", "m"], "--maildir and --route '*@*=...' both"),
    ("", ["--recipient-delimiter", "@"], "--recipient-delimiter: subaddress_separator must"),
]


@pytest.mark.parametrize(("text", "options", "error"), BAD_ROUTES)
def test_a_bad_route_names_where_it_was_written(
    tmp_path: Path, text: str, options: list[str], error: str
) -> None:
    args = parse(tmp_path, text, *options)
    with pytest.raises(_cli.UsageError) as caught:
        _cli_config._router(args)
    assert error in str(caught.value)


def table(tmp_path: Path, text: str, *options: str) -> list[tuple[str, str]]:
    return _cli_config._routing_table(_cli_config._router(parse(tmp_path, text, *options)))


FILE = """
[[route]]
match = "*@*"
deliver = "maildir:./rest"

[[route]]
match = "sales@*"
deliver = "eml:./sales"

[[route]]
match = "*@example.com"
deliver = "maildir:./example"

[[route]]
match = "bob@example.com"
deliver = "maildir:./bob"
"""


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            [],
            [
                ("bob@example.com", "maildir:./bob"),
                ("*@example.com", "maildir:./example"),
                ("sales@*", "eml:./sales"),
                ("*@*", "maildir:./rest"),
            ],
        ),
        (
            # the command line replaces the file's route for an equal pattern, adds the others
            ["--route", "BOB@example.com=discard", "--route", "ann@example.com=eml:./ann"],
            [
                ("ann@example.com", "eml:./ann"),
                ("bob@example.com", "maildir:./bob"),
                ("BOB@example.com", "discard"),
                ("*@example.com", "maildir:./example"),
                ("sales@*", "eml:./sales"),
                ("*@*", "maildir:./rest"),
            ],
        ),
        (
            ["--fold-case", "--route", "BOB@EXAMPLE.COM=discard"],
            [
                ("BOB@EXAMPLE.COM", "discard"),
                ("*@example.com", "maildir:./example"),
                ("sales@*", "eml:./sales"),
                ("*@*", "maildir:./rest"),
            ],
        ),
        (
            ["--eml-dir", "./all"],
            [
                ("bob@example.com", "maildir:./bob"),
                ("*@example.com", "maildir:./example"),
                ("sales@*", "eml:./sales"),
                ("*@*", "eml:./all"),
            ],
        ),
    ],
    ids=["file", "command-line-adds-and-replaces", "fold-case-makes-them-equal", "shorthand"],
)
def test_routes_in_lookup_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: list[str], expected: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    assert table(tmp_path, FILE, *options) == expected


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ([], [("*@*", "maildir:./mail")]),
        (["--maildir", "box"], [("*@*", "maildir:box")]),
        (["--eml-dir", "out"], [("*@*", "eml:out")]),
        (["--discard"], [("*@*", "discard")]),
        (["--discard", "--backend", "sync"], [("*@*", "discard")]),
        (["--discard", "--debug"], [("*@*", "discard")]),
        (["--route", "a@b.example=discard"], [("a@b.example", "discard")]),
    ],
)
def test_without_routes_everything_goes_to_one_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: list[str], expected: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    assert table(tmp_path, "", *options) == expected


ROOT = Path(__file__).resolve().parents[2]
TOML_BLOCKS = [
    (path, match[1])
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for match in re.finditer(r"^```toml\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M)
]


@pytest.mark.parametrize(
    ("path", "text"), TOML_BLOCKS, ids=[f"{p.name}-{i}" for i, (p, _) in enumerate(TOML_BLOCKS)]
)
def test_every_toml_example_of_the_docs_is_a_file_smtpmux_reads(
    tmp_path: Path, path: Path, text: str
) -> None:
    """Every key and value the docs show is accepted (the targets are built by
    test_cli_routes.py's test of the docs' complete example)."""
    args = parse(tmp_path, text)
    assert args.file_routes


def test_the_docs_have_toml_examples() -> None:
    assert {path.name for path, _ in TOML_BLOCKS} >= {"README.md", "routes.md"}


def test_every_serve_option_is_in_the_readme_and_cli_md() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    cli = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    options = {o for a in serve_actions().values() for o in a.option_strings if o != "-h"}
    assert {o for o in options if f"`{o}" not in readme} == set()
    assert {o for o in options if o not in cli} == set()
    assert "smtpmux check-config" in readme and "smtpmux check-config" in cli


def test_every_key_of_the_file_is_in_routes_md() -> None:
    """routes.md's table of the file's keys names each one in its table's row."""
    text = (ROOT / "docs" / "routes.md").read_text(encoding="utf-8")
    rows = {
        row.split("|")[1].strip(): row
        for row in text.splitlines()
        if row.startswith("| `[") or row.startswith("| top level")
    }
    for table, key in FILE_KEYS:
        row = rows["top level" if not table else f"`[{table}]`"]
        assert f"`{key}`" in row, (table, key)


@pytest.mark.parametrize("name", sorted(_cli._MOVED))
def test_the_cli_split_keeps_each_old_name(name: str) -> None:
    """The helpers that moved out of _cli.py in the split still answer as ``_cli.<name>``."""
    module = importlib.import_module(f"smtp_anyio.{_cli._MOVED[name]}")
    assert getattr(_cli, name) is getattr(module, name)
    with pytest.raises(AttributeError):
        _cli.no_such_name  # noqa: B018
