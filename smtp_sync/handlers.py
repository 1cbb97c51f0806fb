"""Ready-made handlers: a Maildir, a directory of .eml files, a sink, and a debugging printer.

They are plain blocking callables taking an Envelope; smtp_anyio runs them in a worker thread.
"""

from __future__ import annotations

import mailbox
import os
import sys
import threading
import uuid
from pathlib import Path
from typing import TextIO

from smtp_core import Envelope

__all__ = ["Discard", "EmlDirectory", "Maildir", "Printer", "trace_headers"]


def _header_address(address: str) -> str:
    return address.replace("\r", "").replace("\n", "")


def trace_headers(envelope: Envelope, recipients: tuple[str, ...] | None = None) -> bytes:
    """Return-Path, one Delivered-To per recipient, and the Received line (RFC 5321 §4.4)."""
    rcpts = envelope.rcpt_tos if recipients is None else recipients
    lines = [f"Return-Path: <{_header_address(envelope.mail_from)}>\r\n".encode()]
    lines += [f"Delivered-To: {_header_address(r)}\r\n".encode() for r in rcpts]
    lines.append(envelope.received_header())
    return b"".join(lines)


class Maildir:
    """Deliver into a Maildir (readable by mutt, neomutt, dovecot), created if missing."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        # mailbox.Maildir(create=True) leaves an existing directory as it is, so one made by
        # hand (``mkdir mail``) would fail every delivery; and a file there is an error now,
        # not at the first message.
        for part in ("tmp", "new", "cur"):
            (self.path / part).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._maildir = mailbox.Maildir(self.path, create=False)
        self._lock = threading.Lock()

    def __call__(self, envelope: Envelope) -> None:
        data = trace_headers(envelope) + envelope.as_bytes()
        with self._lock:  # mailbox.Maildir is not documented as thread-safe
            self._maildir.add(data)

    def __repr__(self) -> str:
        return f"Maildir({str(self.path)!r})"


class EmlDirectory:
    """Write each message to its own ``<id>.eml`` file (atomically, via a temporary name)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def __call__(self, envelope: Envelope) -> None:
        name = f"{envelope.transaction_id}-{uuid.uuid4().hex[:8]}.eml"
        temporary = self.path / f".{name}.tmp"
        with open(temporary, "wb") as file:
            file.write(trace_headers(envelope))
            source = envelope.open()
            while chunk := source.read(1024 * 1024):
                file.write(chunk)
        os.replace(temporary, self.path / name)


class Discard:
    """Accept and forget (benchmarks, tests)."""

    def __call__(self, envelope: Envelope) -> None:
        return None


class Printer:
    """Print each message with its envelope, for debugging."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def __call__(self, envelope: Envelope) -> None:
        out = self.stream or sys.stdout
        print(f"---------- message {envelope.transaction_id} ----------", file=out)
        print(f"From: <{envelope.mail_from}>  To: {', '.join(envelope.rcpt_tos)}", file=out)
        print(f"Peer: {envelope.peer}  HELO: {envelope.helo}  TLS: {envelope.tls}", file=out)
        print(envelope.as_bytes().decode("utf-8", "replace"), file=out)
        print("------------------------ end ------------------------", file=out, flush=True)
