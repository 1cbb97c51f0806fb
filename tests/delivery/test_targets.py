"""smtp_sync.targets: the table of delivery targets, one string each."""

from __future__ import annotations

import inspect
import mailbox
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest

from smtp_core import Envelope, MailParams, RcptParams, SessionInfo
from smtp_sync import targets as table
from smtp_sync.targets import SCHEMES, target, targets

HERE = Path(__file__).resolve().parent


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A scratch working directory holding ``userhandlers.py``, importable as the CLI would."""
    (tmp_path / "userhandlers.py").write_text(
        "calls = []\n"
        "def deliver(envelope):\n    calls.append(envelope)\n"
        "async def deliver_async(envelope):\n    calls.append(envelope)\n"
        "class Inbox:\n    def deliver(self, envelope):\n        calls.append(envelope)\n"
        "inbox = Inbox()\n"
        "not_callable = 42\n"
    )
    (tmp_path / "brokenhandlers.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / "failinghandlers.py").write_text("raise RuntimeError('configure me first')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("userhandlers", "brokenhandlers", "failinghandlers"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("maildir:mail", "maildir:mail"),
        ("maildir:./deep/er", "maildir:./deep/er"),
        ("MAILDIR:mail", "maildir:mail"),
        ("  maildir:mail  ", "maildir:mail"),
        ("eml:out", "eml:out"),
        ("discard", "discard"),
        ("Discard", "discard"),
        ("python:userhandlers:deliver", "python:userhandlers:deliver"),
        ("python:userhandlers:inbox.deliver", "python:userhandlers:inbox.deliver"),
        ("python:userhandlers:deliver_async", "python:userhandlers:deliver_async"),
    ],
)
def test_built_handlers_repr_as_their_canonical_target(
    workdir: Path, text: str, canonical: str
) -> None:
    assert repr(target(text)) == canonical
    assert repr(targets([text])) == canonical


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty target"),
        ("   ", "empty target"),
        ("maildir:", r"'maildir:' names no directory: write maildir:DIR"),
        ("eml:  ", r"names no directory: write eml:DIR"),
        ("mbox:/var/mail", r"unknown target 'mbox:/var/mail': write one of maildir:DIR, "),
        ("/var/mail", "unknown target"),
        ("discards", "unknown target"),
        ("discard:now", "discard takes nothing after it"),
        ("ftp://example.com", "unknown target"),
        ("python:", "write python:MODULE:CALLABLE"),
        ("python:userhandlers", "write python:MODULE:CALLABLE"),
        ("python::deliver", "write python:MODULE:CALLABLE"),
        ("python:no_such_module_xyz:deliver", "module no_such_module_xyz is not installed"),
        ("python:userhandlers:missing", "module userhandlers has no missing"),
        ("python:userhandlers:not_callable", "not_callable is a int, not a callable"),
        ("python:brokenhandlers:x", "needs the package no_such_dependency_xyz"),
        ("python:failinghandlers:x", "importing failinghandlers failed: RuntimeError: configure"),
        ("maildir:userhandlers.py", r"cannot use the directory userhandlers.py"),
    ],
)
def test_bad_target_strings_say_what_to_write(workdir: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as caught:
        target(text)
    assert "\n" not in str(caught.value)


def test_the_unknown_target_message_lists_every_scheme() -> None:
    with pytest.raises(ValueError) as caught:
        target("mbox:x")
    for scheme in SCHEMES:
        assert scheme.syntax in str(caught.value)


#: the targets other modules build, by the names the branches agreed (briefs/routes.md)
LAZY = {
    "reject": "smtp_sync._step:reject_target",
    "http://": "smtp_sync._webhook:webhook_target",
    "https://": "smtp_sync._webhook:webhook_target",
    "pipe:": "smtp_sync._pipe:pipe_target",
    "smtp://": "smtp_sync._forward:forward_target",
    "smtps://": "smtp_sync._forward:forward_target",
    "lmtp://": "smtp_sync._forward:forward_target",
    "lmtp+unix://": "smtp_sync._forward:forward_target",
}


def test_the_table_names_every_scheme_and_its_lazy_factory() -> None:
    prefixes = [scheme.prefix for scheme in SCHEMES]
    assert len(prefixes) == len(set(prefixes))
    assert {s.prefix: s.factory for s in SCHEMES if isinstance(s.factory, str)} == LAZY
    assert {s.prefix for s in SCHEMES if not isinstance(s.factory, str)} == {
        "maildir:",
        "eml:",
        "discard",
        "python:",
    }
    assert table.FAN_OUT == "smtp_sync._step:fan_out"


#: a module that does not exist, for the "not installed" messages
MISSING = "smtp_sync._no_such_target_module"


@pytest.mark.parametrize(
    ("text", "scheme"),
    [
        ("reject", "reject"),
        ("reject:550 5.7.1 No thanks", "reject"),
        ("http://127.0.0.1:9/hook", "http"),
        ("HTTPS://example.com/hook", "https"),
        ("pipe:/usr/bin/true", "pipe"),
        ("smtp://127.0.0.1:25", "smtp"),
        ("smtps://127.0.0.1:465", "smtps"),
        ("lmtp://127.0.0.1:24", "lmtp"),
        ("lmtp+unix:///run/dovecot/lmtp", "lmtp+unix"),
    ],
)
def test_a_lazy_target_whose_module_is_missing_says_so(
    monkeypatch: pytest.MonkeyPatch, text: str, scheme: str
) -> None:
    """Each lazy row of the table, pointed at a module that is not there."""
    moved = [
        attrs.evolve(row, factory=f"{MISSING}:factory") if isinstance(row.factory, str) else row
        for row in SCHEMES
    ]
    monkeypatch.setattr(table, "SCHEMES", tuple(moved))
    with pytest.raises(
        ValueError,
        match=rf"^the {re.escape(scheme)} target is not available: module {MISSING} is not "
        r"installed \(it comes with a newer smtpmux\)$",
    ):
        target(text)


def fake_fan_out(handlers: list[Any]) -> Any:
    """Stands in for smtp_sync._step:fan_out."""
    return ("fan-out", handlers)


def test_several_targets_fan_out_in_order(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table, "FAN_OUT", "tests.delivery.test_targets:fake_fan_out")
    kind, handlers = targets(["maildir:a", "discard", "eml:b"])
    assert kind == "fan-out"
    assert [repr(h) for h in handlers] == ["maildir:a", "discard", "eml:b"]


def test_a_fan_out_without_its_module_says_so(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(table, "FAN_OUT", f"{MISSING}:fan_out")
    with pytest.raises(
        ValueError,
        match=rf"fan-out \(several targets\) target is not available: module {MISSING} is not",
    ):
        targets(["discard", "maildir:a"])


@pytest.mark.parametrize("texts", [[], ["maildir:a", "bogus"]], ids=["empty", "one-bad"])
def test_a_route_needs_good_targets(workdir: Path, texts: list[str]) -> None:
    with pytest.raises(ValueError):
        targets(texts)


def test_python_target_calls_the_users_handler(workdir: Path, envelope: Envelope) -> None:
    handler = target("python:userhandlers:deliver")
    assert handler(envelope) is None
    import userhandlers  # type: ignore[import-not-found]

    assert userhandlers.calls == [envelope]
    assert not inspect.iscoroutinefunction(handler.__call__)  # type: ignore[operator]
    asynchronous = target("python:userhandlers:deliver_async")
    assert inspect.iscoroutinefunction(asynchronous.__call__)  # type: ignore[operator]


def test_maildir_and_eml_targets_store_the_message(workdir: Path, envelope: Envelope) -> None:
    target("maildir:inbox")(envelope)
    target("eml:out")(envelope)
    [stored] = mailbox.Maildir(workdir / "inbox", create=False)
    assert stored.get_payload().startswith("Hello")
    [eml] = (workdir / "out").glob("*.eml")
    assert eml.read_bytes().endswith(envelope.as_bytes())
    assert target("discard")(envelope) is None


@pytest.fixture
def envelope() -> Envelope:
    return Envelope(
        mail_from="a@example.org",
        rcpt_tos=("b@example.com",),
        content=b"From: a@example.org\r\nSubject: t\r\n\r\nHello\r\n",
        mail_params=MailParams(),
        rcpt_params=(RcptParams(),),
        session=SessionInfo("S1", "mx.example.com", peer=("192.0.2.1", 1234), helo="c"),
        received_at=datetime(2026, 1, 1, 12, 0, tzinfo=UTC),
        transaction_id="S1-1",
    )


def test_a_directory_may_start_with_a_tilde(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(workdir / "home"))
    assert repr(target("maildir:~/Maildir")) == "maildir:~/Maildir"
    assert (workdir / "home" / "Maildir" / "new").is_dir()
    target("eml:~/eml")
    assert (workdir / "home" / "eml").is_dir()
