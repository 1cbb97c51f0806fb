"""Play ``C:``/``S:`` scripts against a Session: a test kit for your own handlers and policies.

    C: EHLO client.example
    S: 250*
    C: MAIL FROM:<alice@example.org>
    S: 250 2.1.0 *

``C:`` lines are sent with CRLF; each ``S:`` line is matched (shell-style wildcards, via
fnmatch) against the last line of the next complete reply. Lines starting with ``#`` and blank
lines are ignored; ``C:`` alone sends an empty line. Handlers and hooks run in the caller's
thread; ``async def`` ones work as long as they await nothing that needs an event loop.
"""

from __future__ import annotations

import fnmatch
import io
import itertools
from collections.abc import Awaitable, Coroutine, Iterator
from datetime import UTC, datetime
from typing import Any, BinaryIO, Literal

import attrs

from ._config import ServerConfig
from ._envelope import Envelope, TLSInfo
from ._errors import RemoteProtocolError
from ._lifecycle import run_inline
from ._reply_reader import ReplyReader
from ._router import Router
from ._session import (
    Action,
    Call,
    Close,
    Deliver,
    Handler,
    Policy,
    Session,
    Spool,
    UpgradeToTLS,
)

__all__ = [
    "TranscriptError",
    "TranscriptReplies",
    "TranscriptResult",
    "check_reply",
    "run_transcript",
    "script_steps",
]

FIXED_TIME = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


class TranscriptError(AssertionError):
    """The server said something other than the script expected."""


@attrs.define
class TranscriptResult:
    replies: list[str] = attrs.Factory(list)  #: every reply, lines joined with "\n"
    deliveries: list[Envelope] = attrs.Factory(list)  #: what each handler call received
    closed: bool = False


class TranscriptReplies:
    """The server's replies as a script sees them: each complete reply's lines as sent, joined
    with "\n". Framed by the client's ``ReplyReader`` (same line ends, limits and checks), for
    the in-memory player here and the live one in smtp_sync."""

    def __init__(self) -> None:
        self._reader = ReplyReader()

    def feed(self, data: bytes | bytearray) -> None:
        self._reader.feed(data)

    def next(self) -> str | None:
        """The next complete reply, or None until one is buffered."""
        try:
            framed = self._reader.next_reply()
        except RemoteProtocolError as exc:
            raise TranscriptError(f"the server's reply is malformed: {exc}") from None
        return None if framed is None else "\n".join(framed[1])


def _finish(value: object) -> object:
    """Run a coroutine that awaits nothing to completion, without an event loop."""
    if not isinstance(value, Coroutine):
        if isinstance(value, Awaitable):
            raise TypeError("transcripts run coroutines only, not other awaitables")
        return value
    try:
        value.send(None)
    except StopIteration as stop:
        return stop.value
    value.close()
    raise TypeError("this coroutine awaits something that needs an event loop")


class _Player:
    def __init__(self, session: Session, result: TranscriptResult) -> None:
        self.session = session
        self.result = result
        self.output = bytearray()
        self.spool: BinaryIO | None = None
        self.replies = TranscriptReplies()

    def run(self, actions: list[Action]) -> None:
        while True:
            action = run_inline(self.session, actions, self.output.extend, self.keep, self.call)
            if isinstance(action, UpgradeToTLS):
                actions = self.session.resolve(action, TLSInfo("TLSv1.3", "TRANSCRIPT"))
                continue
            if isinstance(action, Close):
                self.result.closed = True
            return

    def keep(self, action: Spool) -> None:
        self.spool = self.spool or io.BytesIO()
        self.spool.write(action.data)

    def call(self, action: Call) -> object:
        args: tuple[Any, ...] = action.args
        if isinstance(action, Deliver):
            envelope = action.envelope
            if action.spooled:
                assert self.spool is not None
                self.spool.seek(0)
                envelope = attrs.evolve(envelope, content=self.spool)
            self.result.deliveries.append(envelope)
            args = (envelope,)
        try:
            return _finish(action.function(*args))
        except Exception as exc:  # the session turns it into 451 (or the Reject's reply)
            return exc

    def next_reply(self) -> str | None:
        self.replies.feed(self.output)
        self.output.clear()
        return self.replies.next()


def script_steps(script: str) -> Iterator[tuple[int, Literal["C", "S"], str]]:
    """The script's ``(line number, side, text)`` steps; blank and ``#`` lines skipped."""
    for number, raw in enumerate(script.splitlines(), 1):
        line = raw.strip(" ") if raw.startswith(" ") else raw
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        side, _, text = line.lstrip().partition(":")
        text = text[1:] if text.startswith(" ") else text
        if side == "C":
            yield number, "C", text
        elif side == "S":
            yield number, "S", text
        else:
            raise TranscriptError(f"line {number}: lines start with 'C:' or 'S:', not {raw!r}")


def check_reply(number: int, expected: str, reply: str | None) -> None:
    """Raise TranscriptError unless the reply's last line matches the ``S:`` pattern."""
    if reply is None:
        raise TranscriptError(f"line {number}: expected {expected!r}, the server said nothing")
    last = reply.rsplit("\n", 1)[-1]
    if not fnmatch.fnmatchcase(last, expected):
        raise TranscriptError(f"line {number}: expected {expected!r}, got {last!r}")


def run_transcript(
    script: str,
    router: Router[Handler],
    *,
    config: ServerConfig | None = None,
    policy: Policy | None = None,
    tls: TLSInfo | None = None,
    peer: tuple[str, int] = ("192.0.2.1", 40000),
    clock: Any = lambda: FIXED_TIME,
) -> TranscriptResult:
    """Play ``script`` against a fresh Session; raise TranscriptError at the first mismatch."""
    result = TranscriptResult()
    counter = itertools.count(1)
    session = Session(
        router,
        clock=clock,
        session_id=f"T{next(counter)}",
        config=config,
        policy=policy,
        peer=peer,
        tls=tls,
    )
    player = _Player(session, result)
    player.run(session.start())
    for number, side, text in script_steps(script):
        if side == "C":
            if result.closed:
                raise TranscriptError(f"line {number}: the server closed the connection")
            player.run(session.receive_data(text.encode("utf-8") + b"\r\n"))
        else:
            reply = player.next_reply()
            check_reply(number, text, reply)
            assert reply is not None
            result.replies.append(reply)
    player.run(session.drop())  # the connection is over: end any open step transaction
    leftover = player.next_reply()
    if leftover is not None:
        raise TranscriptError(f"the server said more than the script expects: {leftover!r}")
    return result
