"""smtp_sync/_pipe.py: the pipe:COMMAND target, end to end: an SMTP client sends to a real
server (asyncio, trio, sync) whose Router runs a real program per message; its exit status
(or its timeout) maps to the documented reply, and a retried message arrives once (issue 13)."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import smtplib
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from smtp_core import Router
from smtp_sync._pipe import DEFAULT_TIMEOUT, Pipe, pipe_target
from tests.delivery.test_webhook import MESSAGE, guarded, send
from tests.servers import running

PYTHON = shlex.quote(sys.executable)


def script(path: Path, name: str, body: str) -> str:
    """Write a Python program into ``path``; return the command that runs it."""
    program = path / name
    program.write_text("import os, sys, time\n" + body)
    return f"{PYTHON} {shlex.quote(str(program))}"


def routed(target: Any) -> Router[Any]:
    router: Router[Any] = Router()
    router.add("*@example.com", target)
    return router


BIG = MESSAGE + (b"y" * 78 + b"\r\n") * 30_000  # 2.4 MB: more than a pipe holds, spooled

#: (program, message, SMTP code, enhanced code, text the reply contains)
RULES = [
    pytest.param(
        "data = sys.stdin.buffer.read()\nopen(os.environ['OUT'], 'wb').write(data)\n",
        MESSAGE,
        250,
        None,
        "",
        id="exit-0-delivered",
    ),
    pytest.param("sys.exit(0)\n", BIG, 250, None, "", id="exit-0-without-reading-stdin-delivered"),
    pytest.param(
        "sys.stdin.buffer.read(10)\nsys.exit(0)\n", BIG, 250, None, "", id="reads-a-little-exit-0"
    ),
    pytest.param(
        "sys.stdin.buffer.read()\nsys.exit(75)\n",
        MESSAGE,
        451,
        "4.3.0",
        "status 75",
        id="exit-75-tempfail",
    ),
    pytest.param(
        "sys.stdin.buffer.read()\nsys.stderr.write('\\n  mailbox full\\nsecond line\\n')\n"
        "sys.exit(1)\n",
        MESSAGE,
        550,
        "5.3.0",
        "exited with status 1: mailbox full",
        id="exit-1-first-stderr-line",
    ),
    pytest.param(
        "sys.stderr.write('unknown list\\n')\nsys.exit(67)\n",
        BIG,
        550,
        "5.3.0",
        "status 67: unknown list",
        id="exit-67-without-reading",
    ),
    pytest.param(
        "sys.stderr.buffer.write(b'\\x1b[31mbad \\xff\\x00 caf\\xc3\\xa9 ' + b'z' * 5000)\n"
        "sys.exit(2)\n",
        MESSAGE,
        550,
        "5.3.0",
        "status 2: ?[31mbad ? caf? zzz",
        id="stderr-sanitised-and-bounded",
    ),
    pytest.param(
        "sys.stderr.write('e' * 1_000_000)\nsys.stdin.buffer.read()\nsys.exit(1)\n",
        BIG,
        550,
        "5.3.0",
        "status 1: eee",
        id="chatty-stderr-does-not-deadlock",
    ),
    pytest.param(
        "import signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
        MESSAGE,
        451,
        "4.3.0",
        "signal 9",
        id="killed-by-a-signal-retry",
    ),
]


@pytest.mark.parametrize(("program", "message", "code", "enhanced", "says"), RULES)
def test_exit_status_becomes_the_smtp_reply(
    kind: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    program: str,
    message: bytes,
    code: int,
    enhanced: str | None,
    says: str,
) -> None:
    out = tmp_path / "out.eml"
    # OUT is passed the documented way for extra variables: pipe:env NAME=VALUE COMMAND
    command = script(tmp_path, "deliver.py", program)
    target = pipe_target(f"pipe:env OUT={shlex.quote(str(out))} {command}")
    with running(kind, routed(target)) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=120) as client:
            client.ehlo("client.example.org")
            client.mail("a@example.org")
            client.rcpt("list@example.com")
            got, text = client.data(message)
    reply = text.decode()
    assert got == code, reply
    if enhanced is not None:
        assert reply.startswith(enhanced + " ")
        assert says in reply and len(reply) < 250 and reply.isprintable()
    if "OUT" in program:
        data = out.read_bytes()
        assert data.startswith(b"Received: from client.example.org") and data.endswith(message)


def test_a_program_past_its_timeout_is_killed_with_its_children(kind: str, tmp_path: Path) -> None:
    """The program starts a grandchild and both sleep: at the timeout both are gone, 451."""
    pids = tmp_path / "pids"
    command = script(
        tmp_path,
        "hang.py",
        "import subprocess\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(60)\n",
    )
    target = pipe_target(f"pipe:timeout=1 {command}")
    assert isinstance(target, Pipe) and target.timeout == 1
    with running(kind, routed(target)) as server:
        started = time.monotonic()
        assert send(server.port, recipients=("list@example.com",)) == (451, "4.3.0")
        assert time.monotonic() - started < 50  # generous: not the 60 s the program sleeps
    for pid in map(int, pids.read_text().split()):
        assert not alive(pid), pid


def alive(pid: int) -> bool:
    """Is ``pid`` still running (a zombie no longer counts)?"""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rpartition(")")[2].split()[0] == "Z":
                    return False
        except FileNotFoundError:
            return False
        time.sleep(0.05)
    return True


def test_after_a_451_the_sender_retries_and_the_message_is_delivered_once(
    kind: str, tmp_path: Path
) -> None:
    """A program that fails temporarily the first time (exit 75), then appends to a mbox."""
    outbox, marker = tmp_path / "outbox", tmp_path / "failed-once"
    target = "pipe:" + (
        script(
            tmp_path,
            "flaky.py",
            f"data = sys.stdin.buffer.read()\n"
            f"if not os.path.exists({str(marker)!r}):\n"
            f"    open({str(marker)!r}, 'w').close()\n"
            f"    sys.exit(75)\n"
            f"open({str(outbox)!r}, 'ab').write(b'--8<--\\n' + data)\n",
        )
    )
    with running(kind, routed(pipe_target(target))) as server:
        first = send(server.port, recipients=("list@example.com",))
        second = send(server.port, recipients=("list@example.com",))
    assert (first, second[0]) == ((451, "4.3.0"), 250)
    copies = outbox.read_bytes().split(b"--8<--\n")[1:]
    assert len(copies) == 1 and copies[0].endswith(MESSAGE)  # once, whole


def test_the_environment_holds_the_envelope_and_nothing_else(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMTPMUX_TEST_HOOK_SECRET", "not for programs")
    dump = tmp_path / "env.json"
    dumper = f"import json\njson.dump(dict(os.environ), open({str(dump)!r}, 'w'))\n"
    target = pipe_target("pipe:" + script(tmp_path, "env.py", dumper))
    with running(kind, routed(target)) as server:
        assert send(server.port, recipients=("a@example.com", "b@example.com"))[0] == 250
    env = json.loads(dump.read_text())
    assert env["RECIPIENTS"] == "a@example.com\nb@example.com"
    assert "RECIPIENT" not in env and "ORIGINAL_RECIPIENT" not in env  # several: RECIPIENTS
    assert env["SENDER"] == "a@example.org"
    assert env["CLIENT_ADDRESS"] == "127.0.0.1" and int(env["CLIENT_PORT"]) > 0
    assert env["CLIENT_HELO"] == "client.example.org"
    assert env["CLIENT_PROTOCOL"] == "ESMTP"
    assert env["SIZE"] == str(len(MESSAGE))
    assert env["MESSAGE_ID"] == "<ticket-1@example.org>"
    assert env["SMTPMUX_TRANSACTION_ID"]
    assert "SMTPMUX_TEST_HOOK_SECRET" not in env  # secrets for other targets stay here
    documented = {"CLIENT_TLS", "SASL_USERNAME", "RECIPIENT", "ORIGINAL_RECIPIENT"}
    inherited = set(pipe_target.__globals__["_INHERITED"])
    assert set(env) - inherited - documented == {
        "SENDER",
        "RECIPIENTS",
        "CLIENT_ADDRESS",
        "CLIENT_PORT",
        "CLIENT_HELO",
        "CLIENT_PROTOCOL",
        "SIZE",
        "SMTPMUX_TRANSACTION_ID",
        "MESSAGE_ID",
    }


def test_one_recipient_gets_recipient_and_original_recipient(tmp_path: Path) -> None:
    dump = tmp_path / "env.json"
    dumper = f"import json\njson.dump(dict(os.environ), open({str(dump)!r}, 'w'))\n"
    target = pipe_target("pipe:" + script(tmp_path, "env.py", dumper))
    with running("sync", routed(target)) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=60) as client:
            client.ehlo("client.example.org")
            client.mail("", ["RET=HDRS"])
            assert client.rcpt("list@example.com", ["ORCPT=rfc822;owner@example.net"])[0] == 250
            assert client.data(MESSAGE)[0] == 250
    env = json.loads(dump.read_text())
    assert (env["SENDER"], env["RECIPIENT"]) == ("", "list@example.com")
    assert env["ORIGINAL_RECIPIENT"] == "owner@example.net"


def test_a_big_spooled_message_is_streamed_to_stdin_intact(kind: str, tmp_path: Path) -> None:
    line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ01234567\r\n"
    message = MESSAGE + line * (8 * 1024 * 1024 // len(line))  # 8 MiB, spooled (over 1 MiB)
    report, head = tmp_path / "digest", tmp_path / "head"
    digester = (
        "import hashlib\nh, n, first = hashlib.sha256(), 0, b''\n"
        "while chunk := sys.stdin.buffer.read(65536):\n"
        "    h.update(chunk)\n"
        "    n += len(chunk)\n"
        "    first = first or chunk[:4096]\n"
        f"open({str(head)!r}, 'wb').write(first)\n"
        f"open({str(report)!r}, 'w').write(f'{{n}} {{h.hexdigest()}}')\n"
    )
    target = pipe_target("pipe:" + script(tmp_path, "digest.py", digester))
    peaks: list[int] = []
    with running(kind, routed(guarded(target, peaks))) as server:
        assert send(server.port, message, recipients=("list@example.com",))[0] == 250
    length, digest = report.read_text().split()
    first = head.read_bytes()
    received = first[: first.index(MESSAGE[:20])]  # our Received line
    assert received.startswith(b"Received: from client.example.org") and len(received) < 400
    # The program hashed what it read: the message arrived whole, after the Received line.
    assert int(length) == len(received) + len(message)
    assert digest == hashlib.sha256(received + message).hexdigest()
    assert peaks and peaks[0] < 3 * 1024 * 1024, peaks  # far less than the 8 MiB message


REFUSED = [
    pytest.param("pipe:", "no command", id="empty"),
    pytest.param("pipe:   ", "no command", id="blank"),
    pytest.param("pipe:smtpmux-no-such-program --x", "smtpmux-no-such-program", id="not-on-path"),
    pytest.param("pipe:/nonexistent/deliver", "/nonexistent/deliver", id="no-such-file"),
    pytest.param("pipe:colour=red cat", "unknown option", id="unknown-option"),
    pytest.param("pipe:timeout=0 cat", "timeout", id="timeout-zero"),
    pytest.param("pipe:timeout=soon cat", "timeout", id="timeout-word"),
    pytest.param("pipe:timeout=5", "no command", id="options-only"),
    pytest.param("pipe:cat 'unbalanced", "split", id="unbalanced-quote"),
    pytest.param("pype:cat", "pipe:", id="not-pipe"),
]


@pytest.mark.parametrize(("text", "says"), REFUSED)
def test_a_bad_pipe_target_is_one_clear_error_at_start(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        pipe_target(text)
    assert "\n" not in str(caught.value)


def test_a_file_that_is_not_executable_is_refused(tmp_path: Path) -> None:
    program = tmp_path / "deliver"
    program.write_text("#!/bin/sh\nexit 0\n")
    with pytest.raises(ValueError, match="not an executable file"):
        pipe_target(f"pipe:{program}")
    program.chmod(0o755)
    assert repr(pipe_target(f"pipe:{program}")) == f"pipe:{program}"


CANONICAL = [
    pytest.param("pipe:cat", "pipe:cat", id="plain"),
    pytest.param("pipe:  cat   -u ", "pipe:cat -u", id="spaces"),
    pytest.param(
        "pipe:timeout=30 sh -c 'cat > \"$HOME/x\"'",
        "pipe:timeout=30 sh -c 'cat > \"$HOME/x\"'",
        id="timeout-and-quotes",
    ),
    pytest.param(f"pipe:timeout={DEFAULT_TIMEOUT:g} cat", "pipe:cat", id="default-timeout"),
]


@pytest.mark.parametrize(("text", "canonical"), CANONICAL)
def test_repr_is_the_canonical_target(text: str, canonical: str) -> None:
    target = pipe_target(text)
    assert repr(target) == canonical
    assert repr(pipe_target(repr(target))) == canonical  # a fixed point


def test_sh_c_is_the_only_way_to_a_shell(tmp_path: Path) -> None:
    """Shell syntax without sh -c is passed as words, not interpreted."""
    out = tmp_path / "out"
    target = pipe_target(f"pipe:sh -c 'cat > {out}'")
    with running("sync", routed(target)) as server:
        assert send(server.port, recipients=("list@example.com",))[0] == 250
    assert out.read_bytes().endswith(MESSAGE)
    literal = pipe_target(f"pipe:echo > {tmp_path / 'nothing'}")
    assert isinstance(literal, Pipe) and literal.argv == ["echo", ">", str(tmp_path / "nothing")]
    with running("sync", routed(literal)) as server:
        assert send(server.port, recipients=("list@example.com",))[0] == 250
    assert not (tmp_path / "nothing").exists()


def test_a_background_process_keeping_stderr_open_does_not_hold_the_delivery(
    tmp_path: Path,
) -> None:
    """A program that leaves a child behind (holding our stderr pipe) and exits 0: delivered,
    without waiting for the child. The test stops the child it caused."""
    pid_file = tmp_path / "pid"
    command = f"pipe:sh -c 'cat >/dev/null; sleep 60 & echo $! > {pid_file}; exit 0'"
    with running("sync", routed(pipe_target(command))) as server:
        started = time.monotonic()
        assert send(server.port, recipients=("list@example.com",))[0] == 250
        assert time.monotonic() - started < 50  # generous: not the child's 60 s
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
