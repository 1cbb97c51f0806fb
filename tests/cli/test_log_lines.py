"""The command line's log lines, written cheaply (issue 15) and still the same text.

``TextFormatter`` and ``JSONFormatter`` build each line themselves and format the time once
per second; these tests hold them to what ``logging.Formatter`` and ``json.dumps`` write for
the same record, and ``LineHandler`` to one line per record, readable as soon as it is logged.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from smtp_anyio._cli_run import _configure_logging
from smtp_anyio._operations import JSONFormatter, LeanRecord, LineHandler, TextFormatter

BASE = 1_790_000_000.0  # a second boundary: the cache of the formatted second is tested across it

SESSION = {"session_id": "Ab12", "peer": ("::1", 4567), "tls": "TLSv1.3", "auth_identity": None}
MESSAGE = {
    **SESSION,
    "mail_from": "a@example.com",
    "rcpt_tos": ["b@example.com", "c@example.org"],
    "accepted": 2,
    "size": 1024,
    "reply_code": 250,
    "reply": "250 2.0.0 OK",
    "duration": 0.0012,
}

#: (id, logger, level, message, args, extra fields)
RECORDS = [
    ("transaction", "smtpmux.session", logging.INFO, "message from <%s>: %s", ("a", "ok"), MESSAGE),
    ("connection", "smtpmux.session", logging.INFO, "connection from %s", ("[::1]:4567",), SESSION),
    ("no-session", "smtpmux.server", logging.WARNING, "stopping: %d open", (3,), {}),
    ("cli-fields", "smtpmux.cli", logging.INFO, "listening on %s", ("x",), {"listener": "x"}),
    ("percent", "smtpmux.session", logging.ERROR, "100%% %s", ("done",), {"session_id": ""}),
    ("utf8", "smtpmux.session", logging.INFO, "from <%s>", ("jörg@exämple.org",), SESSION),
    ("object", "smtpmux.session", logging.INFO, "at %s", ("t",), {"peer": datetime(2026, 1, 1)}),
]

#: seconds after BASE: the same second twice, the next ones, and a clock set back
OFFSETS = [0.0, 0.999, 0.9995, 1.0, 1.5, 61.25, -3600.004]


def record(case: tuple[Any, ...], created: float) -> logging.LogRecord:
    _, name, level, message, args, extra = case
    made = logging.LogRecord(name, level, __file__, 1, message, args, None)
    made.created = created
    made.msecs = float(int((created - int(created)) * 1000))
    made.__dict__.update(extra)
    return made


def reference_text(made: logging.LogRecord) -> str:
    """What the text formatter wrote before issue 15: logging.Formatter with a session field."""
    session_id = made.__dict__.get("session_id")
    made.session = f"[{session_id}] " if session_id else ""
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s %(session)s%(message)s").format(
        made
    )


def reference_json(made: logging.LogRecord) -> str:
    """What the JSON formatter wrote before issue 15: json.dumps with the same fields."""
    entry: dict[str, Any] = {
        "time": logging.Formatter().formatTime(made, "%Y-%m-%dT%H:%M:%S%z"),
        "level": made.levelname,
        "logger": made.name,
        "message": made.getMessage(),
    }
    for field in ("session_id", "peer", "tls", "auth_identity", *MESSAGE, "listener"):
        value = made.__dict__.get(field)
        if value is not None:
            entry[field] = value
    return json.dumps(entry, default=str)


@pytest.mark.parametrize("case", RECORDS, ids=[case[0] for case in RECORDS])
def test_text_lines_are_what_logging_formatter_writes(case: tuple[Any, ...]) -> None:
    formatter = TextFormatter()  # one formatter over all times: its cached second must follow
    for offset in OFFSETS:
        assert formatter.format(record(case, BASE + offset)) == reference_text(
            record(case, BASE + offset)
        )


@pytest.mark.parametrize("case", RECORDS, ids=[case[0] for case in RECORDS])
def test_json_lines_are_what_json_dumps_writes(case: tuple[Any, ...]) -> None:
    formatter = JSONFormatter()
    for offset in OFFSETS:
        line = formatter.format(record(case, BASE + offset))
        assert line == reference_json(record(case, BASE + offset))
        assert json.loads(line)["message"] == record(case, BASE).getMessage()


@pytest.mark.parametrize("formatter", [TextFormatter(), JSONFormatter()], ids=["text", "json"])
def test_a_traceback_is_still_written(formatter: logging.Formatter) -> None:
    try:
        raise ValueError("handler broke")
    except ValueError:
        made = logging.LogRecord("smtpmux.session", logging.ERROR, __file__, 1, "x", (), None)
        made.exc_info = sys.exc_info()
    made.session_id = "Ab12"
    line = formatter.format(made)
    assert "ValueError: handler broke" in line and "Traceback" in line
    if isinstance(formatter, TextFormatter):
        assert line.split("\n", 1)[0].endswith(" ERROR smtpmux.session [Ab12] x")


@pytest.mark.parametrize("formatter", [TextFormatter(), JSONFormatter()], ids=["text", "json"])
def test_the_time_is_formatted_once_per_second(
    formatter: logging.Formatter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """strftime was a tenth of a line's cost; a busy server writes many lines per second."""
    calls: list[str] = []
    strftime = time.strftime

    def counting(fmt: str, *args: Any) -> str:
        calls.append(fmt)
        return strftime(fmt, *args)

    monkeypatch.setattr(time, "strftime", counting)
    for offset in (0.0, 0.1, 0.2, 0.3, 0.999, 1.0, 1.5):
        formatter.format(record(RECORDS[0], BASE + offset))
    assert len(calls) == 2


class Unbuffered(io.StringIO):
    """A stream that does not flush at newlines: LineHandler must flush each line itself."""

    flushed = 0

    def flush(self) -> None:
        self.flushed += 1
        super().flush()


def test_line_handler_writes_one_line_per_record_and_flushes_it(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with path.open("w", encoding="utf-8", buffering=8192) as buffered:
        handler = LineHandler(buffered)  # a block-buffered file: the handler flushes
        handler.setFormatter(TextFormatter())
        for n in range(3):
            handler.handle(record(RECORDS[1], BASE + n))
            assert path.read_text(encoding="utf-8").count("\n") == n + 1
    with path.open("w", encoding="utf-8", buffering=1) as lined:
        handler = LineHandler(lined)  # line-buffered, as sys.stderr: the stream flushes
        handler.setFormatter(TextFormatter())
        handler.handle(record(RECORDS[0], BASE))
        assert path.read_text(encoding="utf-8") == reference_text(record(RECORDS[0], BASE)) + "\n"
    stream = Unbuffered()
    handler = LineHandler(stream)
    handler.setFormatter(JSONFormatter())
    handler.handle(record(RECORDS[0], BASE))
    assert stream.flushed == 1 and stream.getvalue().count("\n") == 1


def test_utc_time_zone_is_shown_as_logging_shows_it() -> None:
    """The JSON time keeps %z, as before (the local zone's offset, +0000 under UTC)."""
    created = datetime(2026, 12, 1, 4, 30, tzinfo=UTC).timestamp()
    line = json.loads(JSONFormatter().format(record(RECORDS[2], created)))
    assert line["time"] == logging.Formatter().formatTime(
        record(RECORDS[2], created), "%Y-%m-%dT%H:%M:%S%z"
    )


# --- the CLI's record factory and handler path (issue 15): less work, the same records -------

#: the flags the CLI switches off (logAsyncioTasks exists from Python 3.12)
FLAGS = ("logThreads", "logProcesses", "logMultiprocessing", "logAsyncioTasks")
NO_CALLER = "(unknown file)"

#: (id, pathname, msg, args, exc_info, sinfo, flag switched back on): each LeanRecord must
#: hold exactly what a LogRecord holds, on its fast path and on the standard one
RECORD_CASES = [
    ("plain", NO_CALLER, "message from <%s> to %s", ("a", "<b>"), None, None, None),
    ("no-args", NO_CALLER, "stopping", (), None, None, None),
    ("not-a-str", NO_CALLER, 42, (), None, None, None),
    ("mapping-arg", NO_CALLER, "%(a)s", ({"a": 1},), None, None, None),
    ("empty-mapping", NO_CALLER, "%s", ({},), None, None, None),
    ("exc-info", NO_CALLER, "failed", (), (ValueError, ValueError("x"), None), None, None),
    ("stack-info", NO_CALLER, "here", (), None, "Stack (most recent call last):", None),
    ("with-caller", "/srv/smtp_core/_session.py", "x %d", (1,), None, None, None),
    ("threads-on", NO_CALLER, "x", (), None, None, "logThreads"),
    ("processes-on", NO_CALLER, "x", (), None, None, "logProcesses"),
    ("multiprocessing-on", NO_CALLER, "x", (), None, None, "logMultiprocessing"),
]


#: instants in ns: within a second, and one that rounds up to the next second as a float
INSTANTS = [1_790_000_000_250_000_000, 1_790_000_000_999_999_999, 1_790_000_001_000_000_001]


@pytest.fixture(params=INSTANTS)
def flags_off(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    for flag in FLAGS:
        if hasattr(logging, flag):
            monkeypatch.setattr(logging, flag, False)
    now: int = request.param  # both records made at the same instant (3.13 reads time_ns)
    monkeypatch.setattr(time, "time", lambda: now / 1e9)
    monkeypatch.setattr(time, "time_ns", lambda: now)


@pytest.mark.parametrize("case", RECORD_CASES, ids=[case[0] for case in RECORD_CASES])
@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.ERROR, 25])
def test_lean_record_holds_what_log_record_holds(
    case: tuple[Any, ...], level: int, flags_off: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, pathname, msg, args, exc_info, sinfo, flag_on = case
    if flag_on:
        monkeypatch.setattr(logging, flag_on, True)
    made = ("smtpmux.session", level, pathname, 7, msg, args, exc_info, "f", sinfo)
    lean, standard = LeanRecord(*made), logging.LogRecord(*made)
    assert vars(lean) == vars(standard)
    assert lean.getMessage() == standard.getMessage()


@pytest.fixture
def cli_logging(tmp_path: Path) -> Iterator[Path]:
    """``_configure_logging`` as ``smtpmux serve`` runs it, its stderr in a file; every global
    it changes is put back afterwards."""
    root, status = logging.getLogger(), logging.getLogger("smtpmux.cli")
    saved = (root.handlers[:], root.level, status.handlers[:], status.level, status.propagate)
    flags = {flag: getattr(logging, flag) for flag in FLAGS if hasattr(logging, flag)}
    saved_srcfile, factory = logging._srcfile, logging.getLogRecordFactory()  # type: ignore[attr-defined]
    path = tmp_path / "stderr"
    with path.open("w", encoding="utf-8") as stderr:
        real, sys.stderr = sys.stderr, stderr
        try:
            root.handlers = []
            _configure_logging(argparse.Namespace(log_format="text", debug=False, quiet=False))
            yield path
        finally:
            sys.stderr = real
            root.handlers, root.level = saved[0], saved[1]
            status.handlers, status.level, status.propagate = saved[2], saved[3], saved[4]
            for flag, value in flags.items():
                setattr(logging, flag, value)
            logging._srcfile = saved_srcfile  # type: ignore[attr-defined]
            logging.setLogRecordFactory(factory)


def test_the_cli_makes_its_records_without_the_lookups_it_switched_off(
    cli_logging: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No caller's file to take apart, no thread, process or task to ask for: the line is
    written all the same, as logging.Formatter would write it."""
    asked: list[str] = []
    for module, name in [(os.path, "basename"), (os.path, "splitext"), (os, "getpid")]:
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _r=real, _n=name: asked.append(_n) or _r(*a))
    monkeypatch.setattr(threading, "current_thread", lambda: asked.append("thread"))
    logging.getLogger("smtpmux.session").info("at %s", "t", extra=SESSION)
    monkeypatch.undo()
    assert asked == []
    [line] = cli_logging.read_text(encoding="utf-8").splitlines()
    assert line.endswith(" INFO smtpmux.session [Ab12] at t")


def test_line_handler_keeps_the_lock_and_the_filters() -> None:
    """LineHandler.handle skips Handler.handle's calls, not its lock nor its filters."""
    seen: list[bool] = []

    class Watching(io.StringIO):
        def write(self, text: str) -> int:
            # another thread cannot take the handler's lock while the line is written
            taker = threading.Thread(target=lambda: seen.append(handler.lock.acquire(False)))
            taker.start()
            taker.join()
            return super().write(text)

    stream = Watching()
    handler = LineHandler(stream)
    handler.setFormatter(TextFormatter())
    assert handler.handle(record(RECORDS[1], BASE)) is True
    handler.addFilter(lambda made: made.levelno >= logging.WARNING)
    assert not handler.handle(record(RECORDS[1], BASE))  # INFO: filtered out
    assert handler.handle(record(RECORDS[2], BASE))  # WARNING: written
    assert seen == [False, False]
    assert stream.getvalue().splitlines() == [
        reference_text(record(RECORDS[1], BASE)),
        reference_text(record(RECORDS[2], BASE)),
    ]
