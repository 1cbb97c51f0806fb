"""``smtpmux serve --route`` and ``--config`` as a user runs them: ``python -m smtp_anyio`` in a
scratch directory, real mail over smtplib, Maildirs read back, SIGHUP sent to the process."""

from __future__ import annotations

import base64
import importlib.util
import os
import re
import signal
import smtplib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from smtp_anyio import _cli, _config_file
from tests.adapters.test_operations import Supervised
from tests.cli.test_cli import (
    BACKENDS,
    MESSAGE,
    Smtpmux,
    Start,
    certificate,
    maildir,
    run,
    send,
    stopped_cleanly,
)

REPO = Path(__file__).resolve().parents[2]
__all__ = ["certificate"]  # the fixture of test_cli, used here


@pytest.fixture
def smtpmux(tmp_path: Path) -> Iterator[Start]:
    """Start ``smtpmux ARGS...`` in tmp_path; every process started (and every worker it
    forked) is killed at the end."""
    started: list[Smtpmux] = []

    def start(*args: str) -> Smtpmux:
        started.append(Supervised(list(args), tmp_path))
        return started[-1]

    yield start
    for process in started:
        process.kill()


def wait_until(condition: object, timeout: float = 30.0) -> None:
    """Wait for a server-side state (the bound is only a safety net on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def refused(port: int, rcpt: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        assert client.mail("a@example.org")[0] == 250
        return client.rcpt(rcpt)


def sent(port: int, rcpt: str) -> bool:
    """One message sent, or False while no worker listens yet (a restarted one is starting)."""
    try:
        send(port, rcpt=rcpt)
    except (ConnectionError, smtplib.SMTPServerDisconnected):
        return False
    return True


def count(path: Path) -> int:
    return len(maildir(path)) if (path / "new").is_dir() else 0


ROUTES = [
    *("--route", "bob@example.com=maildir:bob"),
    *("--route", "*@example.com=maildir:all"),
    *("--route", "news@*=discard"),
    *("--recipient-delimiter", "+", "--fold-case"),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_routes_pick_the_maildir_by_the_routers_precedence(
    smtpmux: Start, tmp_path: Path, backend: str
) -> None:
    server = smtpmux("serve", "--backend", backend, "--listen", "127.0.0.1:0", *ROUTES)
    [port] = server.listening()
    send(port, rcpt="Bob+lists@Example.COM")  # (local, domain) beats (*, domain)
    assert (count(tmp_path / "bob"), count(tmp_path / "all")) == (1, 0)
    send(port, rcpt="carol@example.com")
    assert (count(tmp_path / "bob"), count(tmp_path / "all")) == (1, 1)
    send(port, rcpt="news@elsewhere.example")  # accepted and discarded
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:  # one message, two handlers
        assert (
            client.sendmail("a@example.org", ["bob@example.com", "dan@example.com"], MESSAGE) == {}
        )
    assert (count(tmp_path / "bob"), count(tmp_path / "all")) == (2, 2)
    assert maildir(tmp_path / "bob")[0].endswith(MESSAGE)
    code, text = refused(port, "someone@elsewhere.example")  # no route: refused at RCPT
    assert (code, text[:5]) == (550, b"5.1.1")
    assert not (tmp_path / "mail").exists()  # routes given: no default Maildir
    stopped_cleanly(server)


def test_the_same_pattern_twice_fans_out(smtpmux: Start, tmp_path: Path) -> None:
    options = ["--route", "*@*=maildir:one", "--route", "*@*=maildir:two"]
    if importlib.util.find_spec("smtp_sync._step") is None:
        done = run("serve", "--listen", "127.0.0.1:0", *options, cwd=tmp_path)
        assert done.returncode == 2
        assert (
            "--route '*@*=...': the fan-out (several targets) target is not available"
            in done.stderr
        )
        return
    server = smtpmux("serve", "--listen", "127.0.0.1:0", *options)
    [port] = server.listening()
    send(port)
    assert (count(tmp_path / "one"), count(tmp_path / "two")) == (1, 1)
    stopped_cleanly(server)


def test_a_python_target_from_the_working_directory(smtpmux: Start, tmp_path: Path) -> None:
    (tmp_path / "myhandlers.py").write_text(
        "import pathlib\n"
        "def deliver(envelope):\n"
        "    pathlib.Path('seen.txt').write_text(' '.join(envelope.rcpt_tos))\n"
    )
    server = smtpmux("serve", "--listen", "127.0.0.1:0", "--route", "*@*=python:myhandlers:deliver")
    [port] = server.listening()
    send(port, rcpt="x@example.com")
    assert (tmp_path / "seen.txt").read_text() == "x@example.com"
    stopped_cleanly(server)


#: (options, what the one line on stderr says)
BAD_ROUTES = [
    (["--route", "bob"], "--route: expected PATTERN=TARGET"),
    (["--route", "bob=discard"], "--route 'bob=...': pattern 'bob' has no domain"),
    (["--route", "*@*=mbox:x"], "--route '*@*=...': unknown target 'mbox:x': write one of"),
    (["--route", "*@*=python:nosuch_xyz:f"], "module nosuch_xyz is not installed"),
    (["--route", "*@*=python:os:sep"], "'python:os:sep': sep is a str, not a callable"),
    (["--maildir", "m", "--route", "*@*=discard"], "--maildir and --route '*@*=...' both say"),
    (["--config", "missing.toml"], "cannot read --config missing.toml: No such file"),
]


@pytest.mark.parametrize(("options", "message"), BAD_ROUTES)
def test_a_bad_route_is_one_line_and_exit_2(
    tmp_path: Path, options: list[str], message: str
) -> None:
    done = run("serve", "--listen", "127.0.0.1:0", *options, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("smtpmux"), done.stderr
    assert message in done.stderr, done.stderr


CONFIG = """\
listen = ["127.0.0.1:0"]
hostname = "mx.file.example"
relay_domains = ["example.com"]

[limits]
max_recipients = 1
max_message_size = "1M"

[router]
recipient_delimiter = "+"

[logging]
quiet = true

[[route]]
match = "bob@example.com"
deliver = "maildir:./bob"

[[route]]
match = "*@example.com"
deliver = ["maildir:./all"]
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_config_file_with_flags_over_it(smtpmux: Start, tmp_path: Path, backend: str) -> None:
    (tmp_path / "smtpmux.toml").write_text(CONFIG)
    server = smtpmux(
        "serve",
        "--config",
        "smtpmux.toml",
        "--backend",
        backend,
        "--max-recipients",
        "2",  # the command line wins over the file's 1
        "--route",
        "carol@example.com=eml:./carol",  # added to the file's routes
    )
    [port] = server.listening()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        assert b"mx.file.example" in client.ehlo()[1]
        rcpts = ["bob+x@example.com", "carol@example.com"]
        assert client.sendmail("a@example.org", rcpts, MESSAGE) == {}
        assert client.mail("a@example.org")[0] == 250
        assert client.rcpt("x@example.com")[0] == 250
        assert client.rcpt("y@example.com")[0] == 250
        assert client.rcpt("z@example.com")[0] == 452  # max_recipients 2
        client.rset()
        too_big = b"Subject: big\r\n\r\n" + b"x" * 1024 * 1024 + b"\r\n"
        with pytest.raises(smtplib.SMTPException):
            client.sendmail("a@example.org", ["x@example.com"], too_big)
    assert count(tmp_path / "bob") == 1
    assert len(list((tmp_path / "carol").glob("*.eml"))) == 1
    assert count(tmp_path / "all") == 0
    stderr = stopped_cleanly(server)
    assert "accepted" not in stderr  # [logging] quiet: no line per message


def test_check_config_prints_the_routes_in_lookup_order(tmp_path: Path) -> None:
    (tmp_path / "smtpmux.toml").write_text(
        CONFIG
        + '\n[[route]]\nmatch = "*@*"\ndeliver = "discard"\n'
        + '\n[[route]]\nmatch = "postmaster@*"\ndeliver = "eml:./postmaster"\n'
    )
    done = run("check-config", "smtpmux.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "smtpmux.toml: OK\n"
        "router: recipient_delimiter '+'\n"
        "routes, in lookup order:\n"
        "  bob@example.com  ->  maildir:./bob\n"
        "  *@example.com    ->  maildir:./all\n"
        "  postmaster@*     ->  eml:./postmaster\n"
        "  *@*              ->  discard\n"
    )
    same = run("serve", "--config", "smtpmux.toml", "--check", cwd=tmp_path)
    assert (same.returncode, same.stdout) == (0, done.stdout)
    without_default = run("serve", "--route", "a@b.example=discard", "--check", cwd=tmp_path)
    assert without_default.stdout.endswith(
        "  a@b.example  ->  discard\n  (other)      ->  refused at RCPT: 550 5.1.1\n"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[limits]\nmax_recipients = -1\n", "smtpmux.toml:2: [limits] max_recipients: expected"),
        ('[[route]]\nmatch = "*@*"\ndeliver = "maildir:"\n', "smtpmux.toml:1: [[route]] #1: "),
        ("[tls]\ncert = 'missing.pem'\n", "cannot read --tls-cert missing.pem"),
        ("[auth]\nfile = 'nousers'\n", "cannot read --auth-file"),
    ],
)
def test_check_config_refuses_a_bad_file_with_exit_2(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "smtpmux.toml").write_text(text)
    done = run("check-config", "smtpmux.toml", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def reload_config(box: str, max_recipients: int) -> str:
    return (
        'listen = ["127.0.0.1:0"]\n'
        f"[limits]\nmax_recipients = {max_recipients}\n"
        f'[[route]]\nmatch = "*@example.com"\ndeliver = "maildir:./{box}"\n'
    )


@pytest.mark.parametrize(
    ("backend", "workers"), [(b, "1") for b in BACKENDS] + [("asyncio", "2"), ("sync", "2")]
)
def test_sighup_swaps_the_routes_and_keeps_open_connections(
    smtpmux: Start, tmp_path: Path, backend: str, workers: str
) -> None:
    config = tmp_path / "smtpmux.toml"
    config.write_text(reload_config("one", 5))
    server = smtpmux(
        "serve", "--config", "smtpmux.toml", "--backend", backend, "--workers", workers
    )
    [port] = server.listening()
    send(port, rcpt="a@example.com")
    assert count(tmp_path / "one") == 1
    idle = smtplib.SMTP("127.0.0.1", port, timeout=10)
    try:
        idle.ehlo()
        config.write_text(reload_config("two", 1))
        server.process.send_signal(signal.SIGHUP)
        processes = int(workers) + (workers != "1")  # the supervisor reloads too
        wait_until(lambda: server.stderr_so_far().count("reloaded smtpmux.toml") >= processes)
        send(port, rcpt="b@example.com")  # a new connection: the new route
        assert (count(tmp_path / "one"), count(tmp_path / "two")) == (1, 1)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:  # the new limit
            client.ehlo()
            client.mail("a@example.org")
            assert client.rcpt("x@example.com")[0] == 250
            assert client.rcpt("y@example.com")[0] == 452

        config.write_text(reload_config("three", 5).replace("maildir:", "mbox:"))
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: server.stderr_so_far().count("kept the old configuration") >= processes)
        assert re.search(
            r"smtpmux.toml:\d+: \[\[route\]\] #1: unknown target", server.stderr_so_far()
        )
        send(port, rcpt="c@example.com")
        assert (count(tmp_path / "one"), count(tmp_path / "two")) == (1, 2)
        assert not (tmp_path / "three").exists()

        # the connection opened before both reloads was never dropped; it keeps the
        # configuration it started with, so its transaction sees one table, not half of each
        assert idle.noop()[0] == 250
        assert idle.sendmail("a@example.org", ["d@example.com"], MESSAGE) == {}
        assert (count(tmp_path / "one"), count(tmp_path / "two")) == (2, 2)
        idle.quit()
    finally:
        idle.close()
    stopped_cleanly(server)


def test_a_worker_restarted_after_a_reload_serves_the_new_configuration(
    smtpmux: Start, tmp_path: Path
) -> None:
    """The supervisor reloads too: a worker forked after SIGHUP (one died) must not come back
    with the routes of the start."""
    config = tmp_path / "smtpmux.toml"
    config.write_text(reload_config("one", 5))
    server = smtpmux("serve", "--config", "smtpmux.toml", "--workers", "2")
    assert isinstance(server, Supervised)
    [port] = server.listening()
    config.write_text(reload_config("two", 5))
    server.process.send_signal(signal.SIGHUP)
    wait_until(lambda: server.stderr_so_far().count("reloaded smtpmux.toml") >= 3)
    before = server.workers()
    for pid in before.values():  # both workers die; the supervisor forks new ones
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: all(server.workers()[n] != pid for n, pid in before.items()))
    wait_until(lambda: server.stderr_so_far().count("restarting") >= 2)
    for number in range(6):
        wait_until(lambda: sent(port, f"n{number}@example.com"))  # noqa: B023 - called now
    assert (count(tmp_path / "one"), count(tmp_path / "two")) == (0, 6)
    stopped_cleanly(server)


def company_example() -> str:
    """The TOML file of docs/routes.md's example, as written."""
    text = (REPO / "docs" / "routes.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- the test suite loads this file[^\n]*\n```toml\n(.*?)```", text, re.S)
    assert found, "docs/routes.md lost its example (or the comment before it)"
    return found[1]


#: the lazily imported modules the example's targets need (other parts of smtpmux)
EXAMPLE_MODULES = ("smtp_sync._webhook", "smtp_sync._pipe", "smtp_sync._forward", "smtp_sync._step")


def test_the_company_example_of_the_docs_loads(
    tmp_path: Path, certificate: dict[str, Path]
) -> None:
    """Every key of the example is one the file may say, with a value it accepts; then
    check-config builds every target and prints the table in lookup order. Only the files
    the example names on a real server are replaced by scratch ones."""
    script = tmp_path / "expand-list"
    script.write_text("#!/bin/sh\ncat > /dev/null\n")
    script.chmod(0o755)
    text = (
        company_example()
        .replace("/etc/smtpmux/tls/fullchain.pem", str(certificate["cert"]))
        .replace("/etc/smtpmux/tls/privkey.pem", str(certificate["key"]))
        .replace("/usr/local/bin/expand-list", str(script))
    )
    config = tmp_path / "mx.toml"
    config.write_text(text)
    serve = _cli._subparser(_cli.build_parser(), "serve")
    values, routes = _config_file.load(str(config), serve)
    assert values["hostname"] == "mx.example.com" and values["workers"] == 2
    assert [route.pattern for route in routes] == [
        "support@example.com",
        "all@example.com",
        "newsletter@example.com",
        "*@example.com",
        "*@*",
    ]
    missing = [m for m in EXAMPLE_MODULES if importlib.util.find_spec(m) is None]
    if missing:  # the rest of the file (certificate, limits, routes) is checked all the same
        config.write_text(
            re.sub(r'deliver = "(https:|pipe:|lmtp:|reject)[^"]*"', 'deliver = "discard"', text)
        )
        partial = run("check-config", "mx.toml", cwd=tmp_path)
        assert partial.returncode == 0, partial.stderr
        pytest.skip(f"the example's targets need {', '.join(missing)} (not on this branch yet)")
    done = run("check-config", "mx.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == [
        "mx.toml: OK",
        "router: recipient_delimiter '+', fold_case",
        "routes, in lookup order:",
    ]
    order = [line.split()[0] for line in lines[3:]]
    assert order == [
        "all@example.com",
        "newsletter@example.com",
        "support@example.com",
        "*@example.com",
        "*@*",
    ]
    assert "->  discard" in done.stdout and "->  lmtp://127.0.0.1:24" in done.stdout


@pytest.mark.parametrize("debug", [[], ["--debug"]], ids=["plain", "debug"])
@pytest.mark.parametrize("kind", ["def", "async def"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_python_targets_sync_and_async_on_every_backend(
    smtpmux: Start, tmp_path: Path, backend: str, kind: str, debug: list[str]
) -> None:
    """An ``async def`` handler is awaited (also under --debug, which wraps it to print the
    message); --backend sync, which cannot await, refuses it at start with one line."""
    (tmp_path / "asynchandlers.py").write_text(
        "import pathlib\n"
        f"{kind} deliver(envelope):\n"
        "    pathlib.Path('seen.txt').write_text(envelope.mail_from)\n"
    )
    options = ["--listen", "127.0.0.1:0", "--backend", backend, *debug]
    options += ["--route", "*@*=python:asynchandlers:deliver"]
    if backend == "sync" and kind == "async def":
        done = run("serve", *options, cwd=tmp_path)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert "python:asynchandlers:deliver is async, and --backend sync" in done.stderr
        return
    server = smtpmux("serve", *options)
    [port] = server.listening()
    send(port)
    assert (tmp_path / "seen.txt").read_text() == "a@example.org"
    stopped_cleanly(server)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sighup_takes_users_and_certificate_from_the_new_file(
    smtpmux: Start, tmp_path: Path, backend: str
) -> None:
    """The reloaded file may name other files: the new auth file's users and the new
    certificate serve the next connections."""
    ca = trustme.CA()
    for name in ("one", "two"):
        issued = ca.issue_cert("127.0.0.1")
        issued.cert_chain_pems[0].write_to_path(str(tmp_path / f"{name}.pem"))
        issued.private_key_pem.write_to_path(str(tmp_path / f"{name}.key"))
    (tmp_path / "users-one").write_text("alice:{PLAIN}first\n")
    (tmp_path / "users-two").write_text("bob:{PLAIN}second\n")

    def write(name: str) -> None:
        (tmp_path / "smtpmux.toml").write_text(
            f'listen = ["127.0.0.1:0"]\n[tls]\ncert = "{name}.pem"\nkey = "{name}.key"\n'
            f'[auth]\nfile = "users-{name}"\n'
            '[[route]]\nmatch = "*@*"\ndeliver = "discard"\n'
        )

    write("one")
    server = smtpmux("serve", "--config", "smtpmux.toml", "--backend", backend)
    [port] = server.listening()
    context = ssl.create_default_context()
    ca.configure_trust(context)

    def login(user: str, password: str) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.starttls(context=context)
            der = client.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
            client.ehlo()
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            return client.docmd("AUTH", f"PLAIN {token}")[0], der or b""

    def served(name: str) -> bytes:
        pem = (tmp_path / f"{name}.pem").read_text()
        return ssl.PEM_cert_to_DER_cert(pem)

    assert login("alice", "first") == (235, served("one"))
    write("two")
    server.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "reloaded smtpmux.toml" in server.stderr_so_far())
    assert login("alice", "first") == (535, served("two"))
    assert login("bob", "second") == (235, served("two"))
    stopped_cleanly(server)


def test_a_reload_applies_settings_and_says_what_needs_a_restart(
    smtpmux: Start, tmp_path: Path
) -> None:
    config = tmp_path / "smtpmux.toml"
    config.write_text('listen = ["127.0.0.1:0"]\nhostname = "one.example"\n')
    server = smtpmux("serve", "--config", "smtpmux.toml")
    [port] = server.listening()

    def greeting() -> bytes:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            return client.ehlo()[1]

    assert greeting().startswith(b"one.example")
    config.write_text(
        'listen = ["127.0.0.1:1"]\nhostname = "two.example"\nbackend = "trio"\n'
        '[logging]\nformat = "text"\n'  # the default: not a change
    )
    server.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "reloaded smtpmux.toml" in server.stderr_so_far())
    assert greeting().startswith(b"two.example")  # still on the old port, with the new name
    stderr = stopped_cleanly(server)
    assert "backend changed in smtpmux.toml: restart smtpmux to apply it" in stderr
    assert "listen changed in smtpmux.toml: restart smtpmux to apply it" in stderr
    assert "format changed" not in stderr
