"""The Python examples of README.md and docs/*.md, run as they are written, so they cannot drift.

Every fenced ```python block runs, as a script of its own, in a fresh interpreter whose working
directory is a scratch directory. An HTML comment on the line before a block changes how:

- ``<!-- not run: REASON -->``: not run (reported as a skip with the reason);
- ``<!-- serves forever: ... -->``: a server that runs until stopped: it is started on a free
  port (in place of 8025), sent mail with smtplib, then stopped;
- ``<!-- pytest: ... -->``: a test file, run with pytest (and the smtpmux plugin).

The other blocks talk to the hosts the docs name: ``mail.example.org`` and ``127.0.0.1``, ports
587 and 8025. Only those addresses and ports are replaced, by a local stand-in server with
STARTTLS (a throwaway CA: ``ca.pem`` in the working directory; also the "system's CAs" through
``SSL_CERT_FILE``, except for a block that loads a ``cafile`` itself), AUTH for ``alice`` with
the password ``secret``, and mailboxes for bob, carol and b at example.com (anyone else is
refused at RCPT, as ``nobody@example.com`` is in the examples).
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import smtp_sync
from smtp_core import (
    Credentials,
    LoginMechanism,
    PlainMechanism,
    Policy,
    Router,
    ServerConfig,
    SessionInfo,
)
from tests.servers import TLS, Collect

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = re.compile(r"<!--\s*(not run|serves forever|pytest):\s*(.*?)\s*-->")
HOSTS = re.compile(r'"mail\.example\.org"')
PORTS = re.compile(r"\b(?:587|8025)\b")


@attrs.frozen
class Block:
    path: Path
    line: int  #: of the opening fence, 1-based
    heading: str  #: the section the block is in
    mark: str | None  #: "not run", "serves forever", "pytest" or None
    reason: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def python_blocks(path: Path) -> list[Block]:
    """Every ```python block of ``path`` with the marker comment on the line before it."""
    blocks = []
    lines = path.read_text(encoding="utf-8").splitlines()
    heading = ""
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#") and not line.startswith("#!"):
            heading = line.lstrip("#").strip()
        if line.strip() == "```python":
            end = lines.index("```", index + 1)
            before = lines[index - 1] if index else ""
            found = MARK.fullmatch(before.strip())
            mark, reason = (found[1], found[2]) if found else (None, "")
            code = "\n".join(lines[index + 1 : end]) + "\n"
            blocks.append(Block(path, index + 1, heading, mark, reason, code))
            index = end
        elif line.startswith("```"):  # another language: skip to its end
            index = lines.index("```", index + 1)
        index += 1
    return blocks


BLOCKS = [block for path in DOCS for block in python_blocks(path)]


def blocks(*marks: str | None) -> Any:
    chosen = [b for b in BLOCKS if b.mark in marks]
    return pytest.mark.parametrize("block", chosen, ids=[b.id for b in chosen])


class Accounts(Policy):
    def authenticate(self, credentials: Credentials, info: SessionInfo) -> str | None:
        account = (credentials.username, credentials.password)
        return "alice" if account == ("alice", "secret") else None


@pytest.fixture
def stand_in(tls: TLS) -> Iterator[tuple[smtp_sync.Server, Collect]]:
    """The server every example that is a client talks to, with what it received."""
    box = Collect()
    router: Router[Any] = Router()
    for user in ("bob", "carol", "b"):
        router.add(f"{user}@example.com", box)
    config = ServerConfig(auth_mechanisms=(PlainMechanism, LoginMechanism))
    server = smtp_sync.Server(
        router, port=0, config=config, policy=Accounts(), ssl_context=tls.server
    )
    with server:
        yield server, box


@pytest.fixture
def scratch(tmp_path: Path, tls: TLS) -> Path:
    tls.ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return tmp_path


def environment(scratch: Path, block: Block) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    if "cafile" not in block.code:
        env["SSL_CERT_FILE"] = str(scratch / "ca.pem")
    return env


def localized(block: Block, port: int) -> str:
    """The block with the hosts and ports of the docs replaced; nothing else changes."""
    return PORTS.sub(str(port), HOSTS.sub('"127.0.0.1"', block.code))


def test_the_docs_have_examples_and_every_one_is_run_or_says_why() -> None:
    assert len(BLOCKS) >= 15
    assert {b.path.name for b in BLOCKS} >= {"README.md", "client.md", "session.md"}
    for block in BLOCKS:
        if block.mark is not None:
            assert block.reason, f"{block.id}: a marker without a reason"
        compile(block.code, block.id, "exec")  # every block is valid Python, run or not


def test_python_blocks_found_in_a_sample(tmp_path: Path) -> None:
    """The parser: markers, other languages (whose lines may look like fences), headings."""
    sample = tmp_path / "sample.md"
    sample.write_text(
        "# One\n\n```python\nx = 1\n```\n\n## Two\n<!-- not run: fragment -->\n```python\ny\n```\n"
        "```console\n$ a\n```\n<!-- serves forever: on a free port -->\n```python\nz = 3\n```\n"
    )
    found = [(b.line, b.heading, b.mark, b.reason, b.code) for b in python_blocks(sample)]
    assert found == [
        (3, "One", None, "", "x = 1\n"),
        (9, "Two", "not run", "fragment", "y\n"),
        (16, "Two", "serves forever", "on a free port", "z = 3\n"),
    ]


@blocks(None)
def test_example_runs(
    block: Block, stand_in: tuple[smtp_sync.Server, Collect], scratch: Path
) -> None:
    server, _box = stand_in
    script = scratch / "example.py"
    script.write_text(localized(block, server.port))
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=scratch,
        env=environment(scratch, block),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{block.id} ({block.heading}):\n{done.stdout}{done.stderr}"


@blocks("not run")
def test_example_not_run(block: Block) -> None:
    pytest.skip(f"{block.id}: {block.reason}")


@blocks("pytest")
def test_example_test_file_passes(block: Block, scratch: Path) -> None:
    (scratch / "test_example.py").write_text(block.code)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_example.py"],
        cwd=scratch,
        env=environment(scratch, block),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b1 passed\b", done.stdout), done.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, "the example exited instead of serving"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "the example did not start listening"
            time.sleep(0.1)


#: what a served example does with a message to each address: the reply code to the message
SERVED = {
    "Quick start: a server in one file (`smtp_anyio`)": {
        "bob@example.com": 250,
        "abuse@example.com": 550,  # its own handler refuses it: the pattern the example teaches
    },
}


@blocks("serves forever")
def test_served_example_takes_mail(block: Block, scratch: Path) -> None:
    assert block.heading in SERVED, f"{block.id}: say in SERVED what this server does with mail"
    expected = SERVED[block.heading]
    port = free_port()
    (scratch / "example.py").write_text(localized(block, port))
    process = subprocess.Popen(
        [sys.executable, "example.py"],
        cwd=scratch,
        env=environment(scratch, block),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_listening(port, process)
        codes = {}
        for address in expected:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.ehlo()
                client.mail("alice@example.org")
                client.rcpt(address)
                codes[address] = client.data(b"Subject: hi\r\n\r\nHello.\r\n")[0]
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            output, errors = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, errors = process.communicate()
    assert codes == expected, errors
    if "print(" in block.code:  # what the handler printed reached standard output
        assert "alice@example.org ('bob@example.com',)" in output, output + errors
