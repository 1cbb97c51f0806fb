"""HAProxy PROXY protocol v1 and v2 headers, through parse_proxy_header and ServerConnection.

Cases follow the specification (haproxy.org/download/1.8/doc/proxy-protocol.txt): v1 is one
CRLF-terminated ASCII line of at most 107 bytes; v2 is a 12-byte signature, version/command,
family/transport, a 16-bit length, addresses and TLVs. Valid headers are fed whole, byte by
byte and with the SMTP session right behind them; a malformed one must raise
RemoteProtocolError without a reply (the spec: close the connection), whichever way it comes.
"""

from __future__ import annotations

import struct

import pytest

from smtp_core import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Hello,
    LocalProtocolError,
    ProxyError,
    ProxyHeader,
    RemoteProtocolError,
    Reply,
    ServerConnection,
    ServerState,
    encode_proxy_header,
    parse_proxy_header,
)

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
TCP4_ADDRESSES = bytes([192, 0, 2, 1, 198, 51, 100, 2]) + struct.pack("!HH", 41000, 25)
TCP6_ADDRESSES = (
    bytes.fromhex("20010db8000000000000000000000001")
    + bytes.fromhex("20010db8000000000000000000000002")
    + struct.pack("!HH", 41000, 25)
)
UNIX_ADDRESSES = b"/run/client".ljust(108, b"\0") + b"/run/smtp".ljust(108, b"\0")


def v2(command: int, family: int, payload: bytes, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return SIGNATURE + struct.pack("!BBH", command, family, size) + payload


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


SRC4, DST4 = ("192.0.2.1", 41000), ("198.51.100.2", 25)
SRC6, DST6 = ("2001:db8::1", 41000), ("2001:db8::2", 25)
VALID: list[tuple[str, bytes, ProxyHeader]] = [
    (
        "v1 tcp4",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 41000 25\r\n",
        ProxyHeader(1, "PROXY", "TCP4", SRC4, DST4),
    ),
    (
        "v1 tcp6",
        b"PROXY TCP6 2001:db8::1 2001:db8::2 41000 25\r\n",
        ProxyHeader(1, "PROXY", "TCP6", SRC6, DST6),
    ),
    (
        "v1 tcp4 extremes",
        b"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n",
        ProxyHeader(1, "PROXY", "TCP4", ("255.255.255.255", 65535), ("0.0.0.0", 0)),
    ),
    ("v1 unknown", b"PROXY UNKNOWN\r\n", ProxyHeader(1, "PROXY", "UNKNOWN", None, None)),
    (
        "v1 unknown with addresses",  # "the receiver must ignore anything presented before CRLF"
        b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        ProxyHeader(1, "PROXY", "UNKNOWN", None, None),
    ),
    (
        "v1 longest",  # 107 bytes, CRLF included: the worst case the spec allows
        b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n",
        ProxyHeader(1, "PROXY", "UNKNOWN", None, None),
    ),
    (
        "v2 proxy tcp4",
        v2(0x21, 0x11, TCP4_ADDRESSES),
        ProxyHeader(2, "PROXY", "TCP4", SRC4, DST4),
    ),
    (
        "v2 proxy tcp6",
        v2(0x21, 0x21, TCP6_ADDRESSES),
        ProxyHeader(2, "PROXY", "TCP6", SRC6, DST6),
    ),
    (
        "v2 proxy tcp4 with tlvs",
        v2(0x21, 0x11, TCP4_ADDRESSES + tlv(0x01, b"h2") + tlv(0x04, b"") + tlv(0x20, b"\x01")),
        ProxyHeader(2, "PROXY", "TCP4", SRC4, DST4, ((0x01, b"h2"), (0x04, b""), (0x20, b"\x01"))),
    ),
    (
        "v2 proxy tcp6 with tlvs",
        v2(0x21, 0x21, TCP6_ADDRESSES + tlv(0x02, b"mx.example")),
        ProxyHeader(2, "PROXY", "TCP6", SRC6, DST6, ((0x02, b"mx.example"),)),
    ),
    (
        "v2 proxy unix",
        v2(0x21, 0x31, UNIX_ADDRESSES),
        ProxyHeader(2, "PROXY", "UNIX", ("/run/client", 0), ("/run/smtp", 0)),
    ),
    (
        "v2 proxy unspec",  # "the receiver should ignore address information"
        v2(0x21, 0x00, b""),
        ProxyHeader(2, "PROXY", "UNKNOWN", None, None),
    ),
    (
        "v2 local",  # a health check: the real endpoints apply
        v2(0x20, 0x00, b""),
        ProxyHeader(2, "LOCAL", "UNKNOWN", None, None),
    ),
    (
        "v2 local with addresses",  # "discard the protocol block including the family"
        v2(0x20, 0x11, TCP4_ADDRESSES),
        ProxyHeader(2, "LOCAL", "UNKNOWN", None, None),
    ),
]

MALFORMED: list[tuple[str, bytes]] = [
    ("not a proxy", b"EHLO client.example\r\n"),
    ("lower case", b"proxy TCP4 192.0.2.1 198.51.100.2 41000 25\r\n"),
    ("v1 no space", b"PROXYTCP4 192.0.2.1 198.51.100.2 41000 25\r\n"),
    ("v1 too long", b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n"),  # 108 bytes
    ("v1 no line end", b"PROXY TCP4 192.0.2.1 198.51.100.2 41000 25" + b" " * 80),
    ("v1 bare LF", b"PROXY TCP4 192.0.2.1 198.51.100.2 41000 25\n"),
    ("v1 only PROXY", b"PROXY \r\n"),
    ("v1 unknown family", b"PROXY TCP5 192.0.2.1 198.51.100.2 41000 25\r\n"),
    ("v1 missing port", b"PROXY TCP4 192.0.2.1 198.51.100.2 41000\r\n"),
    ("v1 extra field", b"PROXY TCP4 192.0.2.1 198.51.100.2 41000 25 x\r\n"),
    ("v1 double space", b"PROXY TCP4  192.0.2.1 198.51.100.2 41000 25\r\n"),
    ("v1 bad ipv4", b"PROXY TCP4 192.0.2 198.51.100.2 41000 25\r\n"),
    ("v1 ipv4 out of range", b"PROXY TCP4 192.0.2.256 198.51.100.2 41000 25\r\n"),
    ("v1 ipv4 leading zero", b"PROXY TCP4 192.0.2.01 198.51.100.2 41000 25\r\n"),
    ("v1 ipv6 in tcp4", b"PROXY TCP4 2001:db8::1 198.51.100.2 41000 25\r\n"),
    ("v1 ipv4 in tcp6", b"PROXY TCP6 192.0.2.1 2001:db8::2 41000 25\r\n"),
    ("v1 ipv6 zone", b"PROXY TCP6 fe80::1%eth0 2001:db8::2 41000 25\r\n"),
    ("v1 hostname", b"PROXY TCP4 client.example 198.51.100.2 41000 25\r\n"),
    ("v1 port too big", b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 25\r\n"),
    ("v1 port leading zero", b"PROXY TCP4 192.0.2.1 198.51.100.2 041000 25\r\n"),
    ("v1 port signed", b"PROXY TCP4 192.0.2.1 198.51.100.2 +41000 25\r\n"),
    ("v1 port not a number", b"PROXY TCP4 192.0.2.1 198.51.100.2 smtp 25\r\n"),
    ("v1 not ascii", b"PROXY TCP4 192.0.2.1 198.51.100.2 4\xd9\xa1 25\r\n"),
    ("v2 bad signature", SIGNATURE[:11] + b"X" + bytes([0x21, 0x11, 0, 12]) + TCP4_ADDRESSES),
    ("v2 version 1", v2(0x11, 0x11, TCP4_ADDRESSES)),
    ("v2 version 3", v2(0x31, 0x11, TCP4_ADDRESSES)),
    ("v2 unknown command", v2(0x22, 0x11, TCP4_ADDRESSES)),
    ("v2 unknown family", v2(0x21, 0x41, TCP4_ADDRESSES)),
    ("v2 unknown transport", v2(0x21, 0x13, TCP4_ADDRESSES)),
    ("v2 tcp4 too short", v2(0x21, 0x11, TCP4_ADDRESSES[:11])),
    ("v2 tcp6 too short", v2(0x21, 0x21, TCP6_ADDRESSES[:35])),
    ("v2 unix too short", v2(0x21, 0x31, UNIX_ADDRESSES[:200])),
    ("v2 truncated tlv header", v2(0x21, 0x11, TCP4_ADDRESSES + b"\x01\x00")),
    ("v2 truncated tlv value", v2(0x21, 0x11, TCP4_ADDRESSES + b"\x01\x00\x05h2")),
    ("v2 length over the cap", v2(0x21, 0x11, b"", length=0xFFFF)),
]


@pytest.mark.parametrize(("data", "header"), [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_parse_valid(data: bytes, header: ProxyHeader) -> None:
    assert parse_proxy_header(data) == (header, len(data))
    assert parse_proxy_header(data + b"EHLO c\r\n") == (header, len(data))  # trailing data kept
    for end in range(len(data)):  # every proper prefix asks for more
        assert parse_proxy_header(data[:end]) is None, end


def test_longest_v1_is_107_bytes() -> None:
    assert len(dict((c[0], c[1]) for c in VALID)["v1 longest"]) == 107
    assert len(dict(MALFORMED)["v1 too long"]) == 108


@pytest.mark.parametrize("data", [c[1] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_parse_malformed(data: bytes) -> None:
    with pytest.raises(ProxyError):
        parse_proxy_header(data)


def serve(pieces: list[bytes]) -> tuple[ServerConnection, list[object]]:
    conn = ServerConnection(proxy_protocol=True)
    events: list[object] = []
    for piece in pieces:
        conn.receive_data(piece)
        while (event := conn.next_event()) is not NEED_DATA:
            if event is PAUSED:
                assert conn.state is ServerState.GREETING
                conn.send(Reply(220, "mx.example ESMTP"))
                continue
            events.append(event)
            if isinstance(event, Hello):
                conn.send(event.default_reply)
    return conn, events


def ways(data: bytes) -> list[list[bytes]]:
    return [[data], [data[i : i + 1] for i in range(len(data))]]


@pytest.mark.parametrize(("data", "header"), [c[1:] for c in VALID], ids=[c[0] for c in VALID])
@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_engine_valid_header(data: bytes, header: ProxyHeader, split: str) -> None:
    stream = data + b"EHLO client.example\r\n"
    conn, events = serve(ways(stream)[split == "bytewise"])
    assert events[0] == header
    assert isinstance(events[1], Hello) and events[1].name == "client.example"
    assert conn.state is ServerState.READY


@pytest.mark.parametrize("data", [c[1] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_engine_malformed_header(data: bytes, split: str) -> None:
    stream = data + b"EHLO client.example\r\n"
    with pytest.raises(RemoteProtocolError) as info:
        serve(ways(stream)[split == "bytewise"])
    assert info.value.reply_hint is None  # the spec: drop the connection, say nothing


def test_engine_refuses_early_without_waiting_for_a_line() -> None:
    """A client that is no proxy is told apart from its first byte, not after a timeout."""
    conn = ServerConnection(proxy_protocol=True)
    conn.receive_data(b"E")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    assert conn.state is ServerState.CLOSED
    assert isinstance(conn.next_event(), ConnectionClosed)


@pytest.mark.parametrize(
    "data",
    [b"PROXY TCP4 192.0.2.1 198.51.100.2 41000", v2(0x21, 0x11, TCP4_ADDRESSES)[:20]],
    ids=["v1", "v2"],
)
def test_engine_truncated_header_then_eof(data: bytes) -> None:
    """A header cut short by the peer closing is no header: the connection just ends."""
    conn = ServerConnection(proxy_protocol=True)
    conn.receive_data(data)
    assert conn.next_event() is NEED_DATA
    assert conn.state is ServerState.PROXY
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), ConnectionClosed)


def test_engine_waits_for_the_header_before_the_greeting() -> None:
    conn = ServerConnection(proxy_protocol=True)
    assert conn.next_event() is NEED_DATA  # no greeting is due yet
    with pytest.raises(LocalProtocolError):  # nothing to answer yet
        conn.send(Reply(220, "too early"))
    assert conn.timeout == conn.config.proxy_timeout


#: VALID's headers once each: three v1 UNKNOWN lines parse to the same header
ROUND_TRIP = list({case[2]: case for case in reversed(VALID)}.values())[::-1]


@pytest.mark.parametrize(("header"), [c[2] for c in ROUND_TRIP], ids=[c[0] for c in ROUND_TRIP])
def test_encode_round_trip(header: ProxyHeader) -> None:
    """What encode_proxy_header writes, parse_proxy_header reads back (v1 UNKNOWN drops the
    addresses it never had; v2 LOCAL likewise)."""
    data = encode_proxy_header(header)
    parsed = parse_proxy_header(data)
    assert parsed == (header, len(data))
