"""A real HAProxy (TCP mode, send-proxy-v2) in front of two smtpmux servers on 127.0.0.1.

The client connects from 127.0.0.2 (Linux routes all of 127/8 to loopback), HAProxy from
127.0.0.1, so the envelope can show which address it believed. Skipped when the haproxy binary
is missing (.ci/run installs it).
"""

from __future__ import annotations

import shutil
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

from .servers import Collect, running

HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
)
pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")

CLIENT = "127.0.0.2"
CONFIG = """
global
    maxconn 64
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend smtp
    bind 127.0.0.1:{port}
    default_backend mx
frontend ready
    # probed to see that HAProxy listens, so no probe takes a turn of the round robin
    bind 127.0.0.1:{ready}
    tcp-request connection reject
backend mx
    balance roundrobin
    server a 127.0.0.1:{a} send-proxy-v2
    server b 127.0.0.1:{b} send-proxy-v2
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"haproxy exited: {process.stderr.read() if process.stderr else ''!r}"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("haproxy did not start listening")


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
        port, ready = _free_port(), _free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(
            CONFIG.format(port=port, ready=ready, a=servers[0].port, b=servers[1].port)
        )
        assert HAPROXY is not None
        process = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_listening(ready, process)
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


def test_real_client_address_reaches_envelope_and_received_line(
    farm: tuple[int, list[Any], list[Collect]],
) -> None:
    port, _servers, boxes = farm
    for n in range(4):  # round robin: both servers get some
        with smtplib.SMTP("127.0.0.1", port, source_address=(CLIENT, 0)) as client:
            client.sendmail(
                "a@example.org", [f"u{n}@example.com"], b"Subject: via haproxy\r\n\r\nhi\r\n"
            )
    assert [len(box.envelopes) for box in boxes] == [2, 2]  # round robin reached both
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
