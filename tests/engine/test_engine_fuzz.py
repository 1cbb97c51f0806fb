"""Seeded fuzzing of ServerConnection: whatever the peer sends, only RemoteProtocolError escapes.

The DESIGN's line (as h11's fuzz/afl-server.py): random bytes and mutated valid transcripts,
fed whole and in random splits, each event answered with its ``default_reply``. Any other
exception from ``next_event()`` or ``send()`` is an engine bug. Every case is seeded, so a
failure names the seed that reproduces it.
"""

from __future__ import annotations

import base64
import random

import pytest

from smtp_core import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    DataChunk,
    LoginMechanism,
    PlainMechanism,
    ProxyHeader,
    RemoteProtocolError,
    Reply,
    ServerConfig,
    ServerConnection,
    ServerState,
    encode_proxy_header,
)

AUTH = (PlainMechanism, LoginMechanism)
# (id, config, connection options): every mode and limit the engine has.
SETUPS: list[tuple[str, ServerConfig, dict[str, bool]]] = [
    ("default", ServerConfig(), {}),
    ("starttls and auth", ServerConfig(auth_mechanisms=AUTH, starttls=True), {}),
    ("implicit tls", ServerConfig(auth_mechanisms=AUTH), {"tls": True}),
    (
        "lmtp, small limits, strict line ends",
        ServerConfig(lmtp=True, max_message_size=50, max_text_line_length=20, bare_lf="reject"),
        {},
    ),
    ("proxy protocol", ServerConfig(max_command_line_length=40), {"proxy_protocol": True}),
    (
        "plaintext auth, no extensions",
        ServerConfig(
            auth_mechanisms=(PlainMechanism,),
            auth_require_tls=False,
            chunking=False,
            dsn=False,
            smtputf8=False,
            eightbitmime=False,
            enhanced_status_codes=False,
            max_message_size=None,
            max_text_line_length=None,
        ),
        {},
    ),
]

PLAIN = base64.b64encode(b"\0user\0secret")
# Valid sessions the mutations start from: every command, extension and framing.
TRANSCRIPTS = [
    b"EHLO c\r\nMAIL FROM:<a@x.org> SIZE=10 BODY=8BITMIME RET=HDRS ENVID=q+2Bx\r\n"
    b"RCPT TO:<b@y.org> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b@y.org\r\nDATA\r\n"
    b"Subject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n",
    b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@y.org>\r\nRCPT TO:<c@y.org>\r\nDATA\r\n"
    b"x\n.\nx\r.\r\r\n.\r\nBDAT 3 LAST\r\nabcRSET\r\n",
    b"EHLO c\r\nAUTH PLAIN\r\n"
    + PLAIN
    + b"\r\nAUTH LOGIN\r\ndXNlcg==\r\n*\r\nAUTH PLAIN =\r\nSTARTTLS\r\nEHLO d\r\n",
    b"EHLO c\r\nMAIL FROM:<a@x.org> BODY=BINARYMIME SMTPUTF8\r\nRCPT TO:<j\xc3\xb6@y.org>\r\n"
    b"BDAT 5\r\n\r\n.\r\nBDAT 0 LAST\r\nVRFY x\r\nEXPN y\r\nHELP\r\nNOOP\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 4000 25\r\nHELO c\r\n"
    b'MAIL FROM:<@r.x:a@[192.0.2.1]>\r\nRCPT TO:<"q b"@[IPv6:::1]>\r\nDATA\r\n.\r\n',
    encode_proxy_header(
        ProxyHeader(2, "PROXY", "TCP6", ("2001:db8::1", 1), ("2001:db8::2", 25), ((1, b"h2"),))
    )
    + b"EHLO x\r\nMAIL FROM:<a@x.org> AUTH=<> REQUIRETLS\r\nQUIT\r\n",
]
# Bytes that matter to the parsers, for insertions.
SPECIAL = b"\r\n.\x00 :<>@=*+\xff\x80"


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(len(out) + 1)
        operation = rng.randrange(5)
        if operation == 0 and out:  # flip a byte
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif operation == 1:  # insert a byte that matters
            out[at:at] = bytes([rng.choice(SPECIAL)])
        elif operation == 2:  # drop a run
            del out[at : at + rng.randint(1, 8)]
        elif operation == 3:  # repeat a run from elsewhere
            start = rng.randrange(len(out) + 1)
            out[at:at] = out[start : start + rng.randint(1, 40)]
        else:  # splice in the start of another transcript
            out[at:at] = rng.choice(TRANSCRIPTS)[: rng.randint(0, 60)]
    return bytes(out)


def random_splits(rng: random.Random, data: bytes) -> list[list[bytes]]:
    cuts = sorted(rng.sample(range(len(data) + 1), min(len(data), rng.randint(1, 12))))
    return [[data], [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]]


def serve(config: ServerConfig, options: dict[str, bool], pieces: list[bytes]) -> bytes:
    """Run the pieces (then EOF) through a server that answers every event by default."""
    conn = ServerConnection(config, **options)
    out = bytearray()
    try:
        for piece in [*pieces, b""]:
            conn.receive_data(piece)
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                if event is PAUSED:
                    # Only the greeting may be due here: every event was answered at once.
                    assert conn.state is ServerState.GREETING
                    out += conn.send(Reply(220, "mx.example ESMTP"))
                    continue
                if isinstance(event, ConnectionClosed):
                    assert conn.state is ServerState.CLOSED
                    return bytes(out)
                if isinstance(event, DataChunk):
                    assert event.data  # never an empty chunk
                    continue
                if isinstance(event, ProxyHeader):  # needs no reply: the greeting comes next
                    continue
                reply: Reply = event.default_reply  # type: ignore[union-attr]
                for _ in range(conn.pending_replies):
                    out += conn.send(reply)
        raise AssertionError("EOF did not close the connection")
    except RemoteProtocolError as exc:
        assert conn.state is ServerState.CLOSED
        if exc.reply_hint is not None:
            out += conn.send(exc.reply_hint)
        assert isinstance(conn.next_event(), ConnectionClosed)
    return bytes(out)


def check(seed: int, data: bytes, setup: int) -> None:
    name, config, options = SETUPS[setup]
    rng = random.Random(seed)
    for pieces in random_splits(rng, data):
        try:
            out = serve(config, options, pieces)
        except Exception as exc:
            raise AssertionError(f"seed {seed} ({name}): {data!r} in {len(pieces)} pieces") from exc
        # Every reply is a well-formed SMTP reply line.
        for line in out.split(b"\r\n")[:-1]:
            assert line[:3].isdigit() and line[3:4] in (b" ", b"-"), (seed, line)


@pytest.mark.parametrize("block", range(8))
def test_random_bytes(block: int) -> None:
    for seed in range(block * 250, (block + 1) * 250):
        rng = random.Random(seed)
        data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        if rng.random() < 0.5:  # random bytes after a good start reach the later states
            data = rng.choice(TRANSCRIPTS)[: rng.randint(0, 200)] + data
        check(seed, data, seed % len(SETUPS))


@pytest.mark.parametrize("block", range(8))
def test_mutated_transcripts(block: int) -> None:
    for seed in range(block * 500, (block + 1) * 500):
        rng = random.Random(seed)
        check(seed, mutate(rng, rng.choice(TRANSCRIPTS)), seed % len(SETUPS))


@pytest.mark.parametrize("setup", range(len(SETUPS)), ids=[s[0] for s in SETUPS])
@pytest.mark.parametrize("transcript", range(len(TRANSCRIPTS)))
def test_transcripts_byte_by_byte(setup: int, transcript: int) -> None:
    """The unmutated transcripts in every setup, one byte at a time, answer as when whole.

    (Except across an accepted STARTTLS: what arrived with it is discarded, what comes after
    its 220 belongs to the TLS layer, so there the split matters by design.)"""
    data = TRANSCRIPTS[transcript]
    _, config, options = SETUPS[setup]
    whole = serve(config, options, [data])
    bytewise = serve(config, options, [data[i : i + 1] for i in range(len(data))])
    if not (config.starttls and b"STARTTLS" in data):
        assert bytewise == whole


def test_the_harness_catches_engine_bugs(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception other than RemoteProtocolError is reported, with its seed."""

    def broken(self: ServerConnection, arg: str, line: bytes) -> object:
        raise IndexError("bug")

    from smtp_core import _server

    monkeypatch.setitem(_server._COMMANDS, "NOOP", broken)  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="seed 7"):
        check(7, b"EHLO c\r\nNOOP\r\n", 0)
