"""Ready-made handlers: a Maildir, a directory of .eml files, a sink, and a debugging printer.

They are plain blocking callables taking an Envelope; smtp_anyio runs them in a worker thread.

The two that store a message answer 250 only once it survives a power cut, as Postfix does for
its queue: the file is written (streamed from the spool in bounded chunks), fsynced, renamed
into place, and the directory that now names it is fsynced. A full disk (or quota) refuses
the message with 452 4.3.1 and any other I/O error with 451 4.3.0: the client keeps it and
retries, and no partial file is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import secrets
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import BinaryIO, TextIO

from smtp_core import Envelope, Reject

from ._delivery import message_chunks, temporary

__all__ = ["Discard", "EmlDirectory", "Maildir", "Printer", "trace_headers"]

log = logging.getLogger("smtpmux.delivery")

# RFC 3463: X.3.1 "mail system full", X.3.0 "other or undefined mail system status".
_R_STORAGE_FULL = temporary("Insufficient system storage, try again later", "4.3.1", 452).reply
_R_STORAGE_FAILED = temporary("Local error in storing the message, try again later", "4.3.0").reply
_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def _header_address(address: str) -> str:
    return address.replace("\r", "").replace("\n", "")


def trace_headers(envelope: Envelope, recipients: tuple[str, ...] | None = None) -> bytes:
    """Return-Path, one Delivered-To per recipient, and the Received line (RFC 5321 §4.4)."""
    rcpts = envelope.rcpt_tos if recipients is None else recipients
    lines = [f"Return-Path: <{_header_address(envelope.mail_from)}>\r\n".encode()]
    lines += [f"Delivered-To: {_header_address(r)}\r\n".encode() for r in rcpts]
    lines.append(envelope.received_header())
    return b"".join(lines)


def _remove(path: Path) -> None:
    # Already gone, or the disk is in trouble: the caller reports the first error.
    with contextlib.suppress(OSError):
        os.unlink(path)


def _fsync_directory(path: Path) -> None:
    """Make a rename into ``path`` durable: the file's data is not enough, its name is in
    the directory (ext4, XFS and btrfs need this; POSIX leaves it to fsync on the directory)."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write(file: BinaryIO, head: bytes, envelope: Envelope) -> None:
    for chunk in message_chunks(envelope, head):
        file.write(chunk)
    file.flush()
    os.fsync(file.fileno())


def _store(head: bytes, envelope: Envelope, temporary: Path, final: Path, mode: int) -> None:
    """Write, fsync, rename ``temporary`` to ``final``, fsync ``final``'s directory.

    On an OSError neither name is left behind and the handler refuses with 452 4.3.1 (disk
    full, quota) or 451 4.3.0. If only the directory fsync fails, the delivered file is taken
    back too: the client will retry after the 4xx, and a kept copy would arrive twice.
    """

    def opener(path: str, flags: int) -> int:
        return os.open(path, flags, mode)

    try:
        # Exclusive: a name that exists already is never overwritten, nor removed below.
        file = open(temporary, "xb", opener=opener)  # noqa: SIM115 - closed by the with
        try:
            with file:
                _write(file, head, envelope)
            os.rename(temporary, final)
        except BaseException:
            _remove(temporary)
            raise
        try:
            _fsync_directory(final.parent)
        except BaseException:
            _remove(final)
            raise
    except OSError as exc:
        log.warning("could not store message %s in %s: %s", envelope.transaction_id, final, exc)
        reply = _R_STORAGE_FULL if exc.errno in _FULL else _R_STORAGE_FAILED
        raise Reject(reply) from exc


_deliveries = itertools.count(1)


def _maildir_host() -> str:
    # The Maildir convention (cr.yp.to/proto/maildir.html, Dovecot): "/" and ":" in the host
    # name are written as octal escapes, since ":" starts the info part of a name.
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"


class Maildir:
    """Deliver into a Maildir (readable by mutt, neomutt, dovecot, ``mailbox.Maildir``),
    created if missing: tmp/ first, then new/ under a unique name, durably."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        # An existing directory made by hand (``mkdir mail``) gets its three subdirectories;
        # a file there is an error now, not at the first message.
        for part in ("tmp", "new", "cur"):
            (self.path / part).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._host = _maildir_host()

    def __call__(self, envelope: Envelope) -> None:
        # time.M<microseconds>P<pid>Q<delivery>R<random>.host: unique across threads,
        # processes and clock steps, in the form Dovecot and Courier write.
        now = time.time()
        seconds = int(now)
        name = (
            f"{seconds}.M{int((now - seconds) * 1_000_000)}P{os.getpid()}"
            f"Q{next(_deliveries)}R{secrets.token_hex(8)}.{self._host}"
        )
        head = trace_headers(envelope)
        _store(head, envelope, self.path / "tmp" / name, self.path / "new" / name, 0o600)

    def __repr__(self) -> str:
        return f"Maildir({str(self.path)!r})"


class EmlDirectory:
    """Write each message to its own ``<id>.eml`` file: via a hidden temporary name, durably."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def __call__(self, envelope: Envelope) -> None:
        name = f"{envelope.transaction_id}-{uuid.uuid4().hex[:8]}.eml"
        temporary = self.path / f".{name}.tmp"
        _store(trace_headers(envelope), envelope, temporary, self.path / name, 0o666)


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
