"""Drive a ServerConnection with scripted bytes and collect what it does, in any byte split."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from smtp_core import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    DataChunk,
    EndOfData,
    Event,
    Reply,
    ServerConfig,
    ServerConnection,
    ServerState,
)

GREETING = Reply(220, "mx.example.org ESMTP")
Answer = Callable[[Event], Reply]


def default_answer(event: Event) -> Reply:
    reply: Reply = event.default_reply  # type: ignore[union-attr]
    return reply


def needs_reply(event: Event) -> bool:
    return hasattr(event, "default_reply")


class Driver:
    """A server connection plus a scripted application that answers every event."""

    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        answer: Answer = default_answer,
        tls: bool = False,
        proxy_protocol: bool = False,
        greeting: Reply | None = GREETING,
    ) -> None:
        self.conn = ServerConnection(config, tls=tls, proxy_protocol=proxy_protocol)
        self.answer = answer
        self.greeting = greeting
        self.events: list[Event] = []
        self.output = bytearray()

    def feed(self, data: bytes) -> list[Event]:
        """Feed bytes, answer every event, return the events this call produced."""
        start = len(self.events)
        self.conn.receive_data(data)
        self.pump()
        return self.events[start:]

    def pump(self) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                return
            if event is PAUSED:
                if conn.state is ServerState.GREETING and self.greeting is not None:
                    self.output += conn.send(self.greeting)
                    continue
                return
            assert not isinstance(event, type(NEED_DATA))
            self.events.append(event)
            if isinstance(event, ConnectionClosed):
                return
            if needs_reply(event):
                reply = self.answer(event)
                for _ in range(conn.pending_replies):
                    self.output += conn.send(reply)

    def replies(self) -> list[tuple[int, str | None]]:
        """(code, enhanced code) of every final reply line written so far, greeting excluded."""
        out = []
        for raw in bytes(self.output).split(b"\r\n"):
            if len(raw) >= 4 and raw[3:4] == b" ":
                parts = raw[4:].split(b" ", 1)
                enhanced = parts[0].decode() if parts and parts[0][:1].isdigit() else None
                out.append((int(raw[:3]), enhanced))
        return out[1:] if self.greeting is not None else out


def merged(events: Sequence[Event]) -> list[Event]:
    """Join consecutive DataChunks, so runs in different splits compare equal.

    The chunks of a DATA message that ends refused are dropped: how much of it streamed out
    before the refusal depends on how the bytes were split, and none of it is content.
    """
    out: list[Event] = []
    for event in events:
        if isinstance(event, DataChunk) and out and isinstance(out[-1], DataChunk):
            out[-1] = DataChunk(out[-1].data + event.data)
        elif (
            isinstance(event, EndOfData) and event.reject and out and isinstance(out[-1], DataChunk)
        ):
            out[-1] = event
        else:
            out.append(event)
    return out


def run_pieces(pieces: Sequence[bytes], **kwargs: object) -> Driver:
    driver = Driver(**kwargs)  # type: ignore[arg-type]
    driver.pump()
    for piece in pieces:
        driver.feed(piece)
    return driver


def splits(data: bytes, seed: int = 0, count: int = 5) -> list[list[bytes]]:
    """The ways every transcript is fed: whole, byte by byte, and seeded random cuts."""
    ways = [[data], [data[i : i + 1] for i in range(len(data))]]
    rng = random.Random(seed)
    for _ in range(count):
        cuts = sorted(
            rng.sample(range(1, max(len(data), 2)), min(len(data) - 1, rng.randint(1, 8)))
        )
        ways.append([data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)])
    return ways


def assert_same_in_any_split(data: bytes, **kwargs: object) -> Driver:
    """Feed ``data`` every way; all must give the same events and the same bytes out."""
    reference = run_pieces([data], **kwargs)
    for pieces in splits(data)[1:]:
        other = run_pieces(pieces, **kwargs)
        assert merged(other.events) == merged(reference.events), pieces
        assert bytes(other.output) == bytes(reference.output)
    return reference
