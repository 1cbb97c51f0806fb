"""A real HAProxy (TCP mode, send-proxy-v2) in front of two smtpmux servers on 127.0.0.1.

The client connects from 127.0.0.2 (Linux routes all of 127/8 to loopback), HAProxy from
127.0.0.1, so the envelope can show which address it believed. HAProxy runs the configuration
of docs/deployment.md as written, with local addresses and ports. Needs the haproxy binary
(tests/tools.py: skipped without it, failed in CI).
"""

from __future__ import annotations

import csv
import re
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from smtp_core import Router
from tests.servers import Collect, running
from tests.tools import needs, require

pytestmark = needs("haproxy")

CLIENT = "127.0.0.2"
DEPLOYMENT = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
#: the addresses and ports of the documented configuration, and what stands in for them here
ADDRESSES = {
    "bind :25\n": "bind 127.0.0.1:{port}\n",
    "bind :465 ": "bind 127.0.0.1:{tls_port} ",
    "10.0.0.11:25 ": "127.0.0.1:{a} ",
    "10.0.0.12:25 ": "127.0.0.1:{b} ",
}
#: added after the documented configuration: a socket to ask HAProxy for its health checks
STATS = "\nglobal\n    stats socket {stats} level user\n"


def documented_configuration() -> str:
    """The ```haproxy block of docs/deployment.md, as written."""
    text = DEPLOYMENT.read_text(encoding="utf-8")
    [block] = re.findall(r"^```haproxy\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    return block


def local_configuration(**ports: Any) -> str:
    """The documented configuration with only its addresses and ports replaced."""
    config = documented_configuration()
    for documented, local in ADDRESSES.items():
        assert config.count(documented) == 1, f"{documented!r} is not in docs/deployment.md"
        config = config.replace(documented, local.format(**ports))
    return config + STATS.format(**ports)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def health(stats: Path) -> dict[str, tuple[str, str]]:
    """Each backend server's (status, check status), from HAProxy's stats socket."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(stats))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    header, *rows = data.decode().lstrip("# ").splitlines()
    names = header.split(",")
    found = {}
    for row in csv.reader(rows):
        if row and len(row) >= len(names) - 1:
            fields = dict(zip(names, row, strict=False))
            if fields["svname"] not in ("FRONTEND", "BACKEND"):
                found[fields["svname"]] = (fields["status"], fields["check_status"])
    return found


def wait_healthy(stats: Path, process: subprocess.Popen[bytes]) -> None:
    """Until every server passed its smtpchk health check (L7OK), or 60 s."""
    deadline = time.monotonic() + 60
    seen: dict[str, tuple[str, str]] = {}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"haproxy exited: {process.stderr.read() if process.stderr else ''!r}"
            )
        try:
            seen = health(stats)
        except OSError:
            seen = {}
        if seen and all(check == "L7OK" for _status, check in seen.values()):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the health checks did not pass: {seen}")


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[tuple[int, list[Any], list[Collect]]]:
    """HAProxy's port, the two servers behind it (asyncio and sync), and their mailboxes."""
    boxes = [Collect(), Collect()]
    trusted = frozenset({"127.0.0.1"})
    with ExitStack() as stack:
        servers = []
        for kind, box in zip(("asyncio", "sync"), boxes, strict=True):
            router: Router[Any] = Router()
            router.add("*@example.com", box)
            servers.append(stack.enter_context(running(kind, router, proxy_protocol_from=trusted)))
        port, stats = _free_port(), tmp_path / "stats.sock"
        config = tmp_path / "haproxy.cfg"
        config.write_text(
            local_configuration(
                port=port,
                tls_port=_free_port(),
                a=servers[0].port,
                b=servers[1].port,
                stats=stats,
            )
        )
        process = subprocess.Popen(
            [require("haproxy"), "-db", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_healthy(stats, process)
            yield port, servers, boxes
        finally:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr:
                process.stderr.close()


def test_documented_configuration_is_loaded_with_only_addresses_replaced() -> None:
    config = local_configuration(port=1, tls_port=2, a=3, b=4, stats="/s")
    assert "send-proxy-v2 check" in config and "option smtpchk" in config
    assert "maxconn" not in documented_configuration()  # sized from the file limit
    changed = [line for line in config.splitlines() if line not in documented_configuration()]
    assert changed == [
        "    bind 127.0.0.1:1",
        "    bind 127.0.0.1:2                    # implicit TLS passes through untouched "
        "(TLS ends at smtpmux)",
        "    server mx1 127.0.0.1:3 send-proxy-v2 check",
        "    server mx2 127.0.0.1:4 send-proxy-v2 check",
        "global",
        "    stats socket /s level user",
    ]


def test_real_client_address_reaches_envelope_and_received_line(
    farm: tuple[int, list[Any], list[Collect]],
) -> None:
    port, _servers, boxes = farm
    for n in range(4):  # round robin: both servers get some
        with smtplib.SMTP("127.0.0.1", port, source_address=(CLIENT, 0)) as client:
            client.sendmail(
                "a@example.org", [f"u{n}@example.com"], b"Subject: via haproxy\r\n\r\nhi\r\n"
            )
    assert [len(box.envelopes) for box in boxes] == [2, 2]  # leastconn took turns: both got mail
    for envelope in boxes[0].envelopes + boxes[1].envelopes:
        assert envelope.peer is not None and envelope.peer[0] == CLIENT
        assert envelope.session.proxy is not None and envelope.session.proxy.version == 2
        assert f"[{CLIENT}]".encode() in envelope.received_header()


def test_proxy_header_from_untrusted_peer_is_refused(
    farm: tuple[int, list[Any], list[Collect]],
) -> None:
    _port, servers, boxes = farm
    for server in servers:
        with socket.create_connection(("127.0.0.1", server.port), source_address=(CLIENT, 0)) as s:
            s.settimeout(5)
            reader = s.makefile("rb")
            assert reader.readline().startswith(b"220 ")  # untrusted: plain SMTP, greeted
            s.sendall(b"PROXY TCP4 203.0.113.1 127.0.0.1 4000 25\r\n")
            assert reader.readline().startswith(b"500 5.5.1")
            s.sendall(b"QUIT\r\n")
            assert reader.readline().startswith(b"221")
    assert boxes[0].envelopes == boxes[1].envelopes == []


def test_trusted_peer_without_header_is_dropped(farm: tuple[int, list[Any], list[Collect]]) -> None:
    _port, servers, _boxes = farm
    for server in servers:
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.settimeout(5)
            s.sendall(b"EHLO pretender\r\n")
            assert s.recv(100) == b""  # no greeting, no reply: the connection is closed
