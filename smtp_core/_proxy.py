"""The HAProxy PROXY protocol, v1 (text) and v2 (binary): parse and write the header.

The header is the first thing a trusted load balancer sends, before the SMTP greeting; it
names the real client. Parsing is incremental: ``None`` means "send more bytes", and a prefix
that can no longer become a valid header raises ProxyError at once, so a client that is not
a proxy is refused after a few bytes, not after a timeout.
"""

from __future__ import annotations

import ipaddress
import struct

from ._events import ProxyHeader

__all__ = [
    "MAX_V1_LENGTH",
    "MAX_V2_PAYLOAD",
    "ProxyError",
    "encode_proxy_header",
    "parse_proxy_header",
]

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MAX_V1_LENGTH = 107  #: the specification's bound, CRLF included
MAX_V2_PAYLOAD = 8192  #: addresses + TLVs; HAProxy sends far less, the format allows 65535

_FAMILIES = {0x0: "UNKNOWN", 0x1: "TCP4", 0x2: "TCP6", 0x3: "UNIX"}
_FAMILY_CODES = {name: code for code, name in _FAMILIES.items()}
_ADDRESS_LENGTHS = {"TCP4": 12, "TCP6": 36, "UNIX": 216}


class ProxyError(Exception):
    """The bytes are not a valid PROXY header."""


def parse_proxy_header(data: bytes | bytearray) -> tuple[ProxyHeader, int] | None:
    """Parse a header at the start of ``data``: (header, bytes used), or None for "need more"."""
    head = bytes(data[:12])
    if head[:6] == V1_PREFIX[: len(head)]:
        return _parse_v1(data)
    if head == V2_SIGNATURE[: len(head)]:
        return _parse_v2(data)
    raise ProxyError("neither a v1 nor a v2 PROXY header")


def _parse_v1(data: bytes | bytearray) -> tuple[ProxyHeader, int] | None:
    end = data.find(b"\r\n", 0, MAX_V1_LENGTH)
    if end < 0:
        if len(data) >= MAX_V1_LENGTH or b"\n" in data[:MAX_V1_LENGTH]:
            raise ProxyError("v1 header has no CRLF within 107 bytes")
        return None
    try:
        words = bytes(data[:end]).decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyError("v1 header is not ASCII") from None
    if len(words) >= 2 and words[1] == "UNKNOWN":
        return ProxyHeader(1, "PROXY", "UNKNOWN", None, None), end + 2
    if len(words) != 6 or words[1] not in ("TCP4", "TCP6"):
        raise ProxyError("v1 header needs: PROXY TCP4|TCP6 source destination sport dport")
    family = words[1]
    source = (_v1_address(words[2], family), _v1_port(words[4]))
    destination = (_v1_address(words[3], family), _v1_port(words[5]))
    return ProxyHeader(1, "PROXY", family, source, destination), end + 2  # type: ignore[arg-type]


def _v1_address(text: str, family: str) -> str:
    if "%" in text:  # ipaddress takes "fe80::1%anything"; the header carries bare addresses only
        raise ProxyError(f"v1 header has a bad address {text!r}")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyError(f"v1 header has a bad address {text!r}") from None
    if address.version != (4 if family == "TCP4" else 6):
        raise ProxyError(f"v1 header address {text!r} is not {family}")
    return str(address)


def _v1_port(text: str) -> int:
    if not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ProxyError(f"v1 header has a bad port {text!r}")
    return int(text)


def _parse_v2(data: bytes | bytearray) -> tuple[ProxyHeader, int] | None:
    if len(data) < 16:
        return None
    version_command, family_protocol, length = struct.unpack_from("!BBH", data, 12)
    if version_command >> 4 != 2:
        raise ProxyError("v2 header with an unknown version")
    command = {0: "LOCAL", 1: "PROXY"}.get(version_command & 0xF)
    if command is None:
        raise ProxyError("v2 header with an unknown command")
    family = _FAMILIES.get(family_protocol >> 4)
    if family is None or family_protocol & 0xF not in (0, 1):  # UNSPEC or STREAM only
        raise ProxyError("v2 header with an unsupported address family or transport")
    if length > MAX_V2_PAYLOAD:
        raise ProxyError(f"v2 header longer than {MAX_V2_PAYLOAD} bytes")
    if len(data) < 16 + length:
        return None
    payload = bytes(data[16 : 16 + length])
    source = destination = None
    used = 0
    if command == "PROXY" and family != "UNKNOWN":
        used = _ADDRESS_LENGTHS[family]
        if length < used:
            raise ProxyError("v2 header too short for its addresses")
        source, destination = _v2_addresses(family, payload[:used])
    elif command == "LOCAL":
        used = min(length, _ADDRESS_LENGTHS.get(family, 0))
    tlvs = _v2_tlvs(payload[used:]) if command == "PROXY" or family == "UNKNOWN" else ()
    if command == "LOCAL":
        family = "UNKNOWN"
    header = ProxyHeader(2, command, family, source, destination, tlvs)  # type: ignore[arg-type]
    return header, 16 + length


def _v2_addresses(family: str, block: bytes) -> tuple[tuple[str, int], tuple[str, int]]:
    if family == "TCP4":
        src, dst, sport, dport = struct.unpack("!4s4sHH", block)
        return (str(ipaddress.IPv4Address(src)), sport), (str(ipaddress.IPv4Address(dst)), dport)
    if family == "TCP6":
        src, dst, sport, dport = struct.unpack("!16s16sHH", block)
        return (str(ipaddress.IPv6Address(src)), sport), (str(ipaddress.IPv6Address(dst)), dport)
    src_path = block[:108].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    dst_path = block[108:].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    return (src_path, 0), (dst_path, 0)


def _v2_tlvs(block: bytes) -> tuple[tuple[int, bytes], ...]:
    tlvs: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(block):
        if len(block) - offset < 3:
            raise ProxyError("v2 header with a truncated TLV")
        kind, size = struct.unpack_from("!BH", block, offset)
        value = block[offset + 3 : offset + 3 + size]
        if len(value) != size:
            raise ProxyError("v2 header with a truncated TLV")
        tlvs.append((kind, value))
        offset += 3 + size
    return tuple(tlvs)


def encode_proxy_header(header: ProxyHeader) -> bytes:
    """Write ``header`` in its version's format (for clients, tests and load-balancer shims)."""
    if header.version == 1:
        if header.family == "UNKNOWN" or header.source is None or header.destination is None:
            return b"PROXY UNKNOWN\r\n"
        if header.family not in ("TCP4", "TCP6"):
            raise ValueError("PROXY v1 carries only TCP4, TCP6 or UNKNOWN")
        src, sport = header.source
        dst, dport = header.destination
        return f"PROXY {header.family} {src} {dst} {sport} {dport}\r\n".encode("ascii")
    if header.version != 2:
        raise ValueError(f"no PROXY protocol version {header.version}")
    command = 0x21 if header.command == "PROXY" else 0x20
    family = header.family if header.command == "PROXY" else "UNKNOWN"
    addresses = b""
    if family != "UNKNOWN":
        if header.source is None or header.destination is None:
            raise ValueError(f"a {family} PROXY header needs source and destination")
        addresses = _v2_pack(family, header.source, header.destination)
    tlvs = b"".join(struct.pack("!BH", kind, len(value)) + value for kind, value in header.tlvs)
    payload = addresses + tlvs
    protocol = (_FAMILY_CODES[family] << 4) | (1 if family != "UNKNOWN" else 0)
    return V2_SIGNATURE + struct.pack("!BBH", command, protocol, len(payload)) + payload


def _v2_pack(family: str, source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    if family == "UNIX":
        return source[0].encode().ljust(108, b"\0") + destination[0].encode().ljust(108, b"\0")
    src = ipaddress.ip_address(source[0]).packed
    dst = ipaddress.ip_address(destination[0]).packed
    return src + dst + struct.pack("!HH", source[1], destination[1])
