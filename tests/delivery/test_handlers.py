"""smtp_sync/handlers.py: Maildir and .eml delivery are durable before the 250 (file fsync,
rename, directory fsync), stream from the spool, and turn a full disk or an I/O error into
452 4.3.1 / 451 4.3.0 with nothing partial left (issue 11). The last test fills a real tmpfs."""

from __future__ import annotations

import errno
import io
import mailbox
import os
import re
import smtplib
import stat
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from smtp_core import Envelope, MailParams, Policy, RcptParams, Reject, Router, SessionInfo
from smtp_sync.handlers import EmlDirectory, Maildir
from tests.servers import running

MESSAGE = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"


def envelope(content: bytes | io.BytesIO = MESSAGE) -> Envelope:
    return Envelope(
        mail_from="a@example.org",
        rcpt_tos=("b@example.com",),
        content=content,
        mail_params=MailParams(),
        rcpt_params=(RcptParams(),),
        session=SessionInfo("S1", "mx.example.com", peer=("192.0.2.1", 1234), helo="c"),
        received_at=datetime(2026, 1, 1, 12, 0, tzinfo=UTC),
        transaction_id="S1-1",
    )


def maildir(path: Path) -> Maildir:
    return Maildir(path / "Maildir")


def eml(path: Path) -> EmlDirectory:
    return EmlDirectory(path / "eml")


STORES = [pytest.param(maildir, id="maildir"), pytest.param(eml, id="eml")]
Store = Callable[[Path], Maildir | EmlDirectory]


def stored_files(root: Path) -> list[Path]:
    """Every file under ``root``, hidden temporary ones included."""
    return sorted(p for p in root.rglob("*") if p.is_file())


def delivered(handler: Maildir | EmlDirectory) -> list[Path]:
    if isinstance(handler, Maildir):
        return sorted((handler.path / "new").iterdir())
    return sorted(handler.path.glob("*.eml"))


@pytest.mark.parametrize("store", STORES)
def test_fsync_file_then_rename_then_fsync_directory(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = store(tmp_path)
    events: list[tuple[str, Any]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(descriptor: int) -> None:
        info = os.fstat(descriptor)
        events.append(("fsync-dir" if stat.S_ISDIR(info.st_mode) else "fsync-file", info.st_ino))
        real_fsync(descriptor)

    def rename(source: Any, target: Any) -> None:
        events.append(("rename", (Path(source), Path(target))))
        real_rename(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    handler(envelope())
    [final] = delivered(handler)
    assert [kind for kind, _ in events] == ["fsync-file", "rename", "fsync-dir"]
    assert events[0][1] == final.stat().st_ino  # the message's own data first
    source, target = events[1][1]
    assert target == final and source.parent == (
        handler.path / "tmp" if isinstance(handler, Maildir) else handler.path
    )
    assert events[2][1] == final.parent.stat().st_ino  # then the directory that names it
    assert stored_files(tmp_path) == [final]  # no temporary left


@pytest.mark.parametrize("store", STORES)
def test_content_is_trace_headers_then_message(store: Store, tmp_path: Path) -> None:
    handler = store(tmp_path)
    handler(envelope())
    [final] = delivered(handler)
    data = final.read_bytes()
    assert data.startswith(b"Return-Path: <a@example.org>\r\nDelivered-To: b@example.com\r\n")
    assert data.endswith(b"\r\n\r\n" + MESSAGE.split(b"\r\n\r\n", 1)[1])


def test_maildir_names_are_unique_and_read_by_the_stdlib(tmp_path: Path) -> None:
    handler = maildir(tmp_path)
    for _ in range(20):
        handler(envelope())
    names = [p.name for p in delivered(handler)]
    assert len(set(names)) == 20
    # time.M<usec>P<pid>Q<n>R<random>.host, no ":" (it starts the info part) and no "/".
    pattern = re.compile(r"\d+\.M\d+P\d+Q\d+R[0-9a-f]{16}\.[^/:]+")
    assert all(pattern.fullmatch(name) for name in names), names
    box = mailbox.Maildir(handler.path, create=False)
    messages = list(box)
    assert len(messages) == 20
    assert all(m["Subject"] == "hi" and m.get_subdir() == "new" for m in messages)


def test_maildir_files_are_private(tmp_path: Path) -> None:
    handler = maildir(tmp_path)
    handler(envelope())
    [final] = delivered(handler)
    assert stat.S_IMODE(final.stat().st_mode) == 0o600


class Spooled(io.BytesIO):
    """A spool file that records every read size, and refuses to be read whole."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.sizes: list[int | None] = []

    def read(self, size: int | None = -1) -> bytes:
        self.sizes.append(size)
        if size is None or size < 0:
            raise AssertionError("the whole spool read into memory")
        return super().read(size)


@pytest.mark.parametrize("store", STORES)
def test_spooled_message_is_streamed_in_bounded_chunks(store: Store, tmp_path: Path) -> None:
    body = b"x" * 998 + b"\r\n"
    spool = Spooled(MESSAGE + body * 5000)  # 5 MB
    handler = store(tmp_path)
    handler(envelope(spool))
    [final] = delivered(handler)
    assert final.read_bytes().endswith(MESSAGE + body * 5000)
    assert len(spool.sizes) > 5 and all(s is not None and 0 < s <= 1 << 20 for s in spool.sizes)


def failing(errno_: int, when: Callable[[int], bool]) -> Callable[[int], None]:
    real = os.fsync

    def fsync(descriptor: int) -> None:
        if when(descriptor):
            raise OSError(errno_, os.strerror(errno_))
        real(descriptor)

    return fsync


def is_directory(descriptor: int) -> bool:
    return stat.S_ISDIR(os.fstat(descriptor).st_mode)


def is_file(descriptor: int) -> bool:
    return not is_directory(descriptor)


class BrokenSpool(io.BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        if self.tell() > 0:
            raise OSError(errno.EIO, "spool unreadable")
        return super().read(10)


# (what fails, the errno, the reply): nothing is left behind in any case.
FAILURES = [
    pytest.param("fsync-file", errno.ENOSPC, (452, "4.3.1"), id="full-at-file-fsync"),
    pytest.param("fsync-file", errno.EDQUOT, (452, "4.3.1"), id="quota-at-file-fsync"),
    pytest.param("fsync-file", errno.EIO, (451, "4.3.0"), id="eio-at-file-fsync"),
    pytest.param("fsync-dir", errno.EIO, (451, "4.3.0"), id="eio-at-directory-fsync"),
    pytest.param("rename", errno.EXDEV, (451, "4.3.0"), id="rename-fails"),
    pytest.param("spool", errno.EIO, (451, "4.3.0"), id="spool-read-fails"),
]


@pytest.mark.parametrize(("where", "code", "reply"), FAILURES)
@pytest.mark.parametrize("store", STORES)
def test_io_error_refuses_and_leaves_nothing(
    store: Store,
    where: str,
    code: int,
    reply: tuple[int, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handler = store(tmp_path)
    content: bytes | io.BytesIO = MESSAGE
    if where == "fsync-file":
        monkeypatch.setattr(os, "fsync", failing(code, is_file))
    elif where == "fsync-dir":
        monkeypatch.setattr(os, "fsync", failing(code, is_directory))
    elif where == "rename":

        def rename(source: Any, target: Any) -> None:
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, "rename", rename)
    else:
        content = BrokenSpool(MESSAGE * 10)
    with pytest.raises(Reject) as refused:
        handler(envelope(content))
    assert (refused.value.reply.code, refused.value.reply.enhanced) == reply
    assert stored_files(tmp_path) == []
    monkeypatch.undo()
    handler(envelope())  # and the next one is delivered
    assert len(delivered(handler)) == 1


# --- a real full disk ------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs mounted for the test (root in CI); skipped where mounting is refused."""
    point = tmp_path / "small"
    point.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(point)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot run mount: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=True, timeout=30)


@pytest.mark.parametrize("spool", [False, True], ids=["in-memory", "spooled"])
@pytest.mark.parametrize("store", STORES)
def test_full_disk_answers_452_and_keeps_serving(
    kind: str, store: Store, spool: bool, small_disk: Path
) -> None:
    handler = store(small_disk)
    router: Router[Any] = Router()
    router.add("*@example.com", handler)
    # Spooled: the Session writes the message to a temporary file elsewhere first, and the
    # handler streams it from there.
    policy = Policy(spool_threshold=64 * 1024 if spool else 1024 * 1024)
    big = MESSAGE + (b"y" * 998 + b"\r\n") * 400  # 400 KB: more than the disk holds
    with running(kind, router, policy=policy) as server:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("a@example.org", ["b@example.com"], big)
            assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (452, b"4.3.1")
            assert stored_files(small_disk) == []  # nothing partial in tmp/, new/ or eml/
            client.sendmail("a@example.org", ["b@example.com"], MESSAGE)  # still serving
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            client.sendmail("a@example.org", ["b@example.com"], MESSAGE)  # and a new client
    assert len(delivered(handler)) == 2
    assert stored_files(small_disk) == delivered(handler)
