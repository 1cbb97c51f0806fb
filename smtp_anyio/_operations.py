"""What an operator needs around a running server: JSON logs, a metrics endpoint, a reload.

All of it is the same for every backend, so it is written once, with blocking code: the metrics
endpoint is a small ``http.server`` in a daemon thread that renders the counters on each scrape.
"""

from __future__ import annotations

import json
import json.encoder
import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO

from smtp_sync.auth_file import AuthFilePolicy, load_auth_file

__all__ = [
    "JSONFormatter",
    "LeanRecord",
    "LineHandler",
    "MetricsEndpoint",
    "Reloader",
    "TextFormatter",
    "server_context",
]

log = logging.getLogger("smtpmux.server")

#: the structured fields the Session and the servers put on their records
_FIELDS = (
    *("session_id", "peer", "tls", "auth_identity"),
    *("mail_from", "rcpt_tos", "accepted", "size", "reply_code", "reply", "duration"),
    *("listener", "worker", "pid"),  # the command line's own lines
)


#: what ``Logger._log`` passes for the caller when ``logging._srcfile`` is None (the CLI's case);
#: ``os.path.basename`` and ``splitext`` of it are itself
_NO_CALLER = "(unknown file)"
_LOGGING = vars(logging)  #: the logging module's flags, as they are when a record is made
_TASKS = sys.version_info >= (3, 12)  #: LogRecord has ``taskName``, and the flag for it
_NANOSECONDS = sys.version_info >= (3, 13)  #: LogRecord reads ``time.time_ns`` (gh-102402)


class LeanRecord(logging.LogRecord):
    """A ``LogRecord`` with the same attributes and values, made for less, for a process that
    switched off the caller, thread, process and task look-ups (the CLI's
    ``_configure_logging`` installs it with ``logging.setLogRecordFactory``).

    ``LogRecord.__init__`` still takes the caller's file name apart (``os.path.basename`` and
    ``splitext`` of ``"(unknown file)"``: five calls) and asks each flag. Equivalent because
    ``Logger._log`` passes ``"(unknown file)"`` when ``logging._srcfile`` is None, and with the
    flags off LogRecord sets the thread, process and task attributes to None; any other call
    (a caller given, a flag back on, a single mapping argument) goes the standard way. The
    attributes are set in LogRecord's order, so both kinds of record share one key table.
    """

    def __init__(
        self,
        name: str,
        level: int,
        pathname: str,
        lineno: int,
        msg: object,
        args: Any,
        exc_info: Any,
        func: str | None = None,
        sinfo: str | None = None,
        **kwargs: Any,
    ) -> None:
        if (
            pathname != _NO_CALLER
            or logging.logThreads
            or logging.logProcesses
            or logging.logMultiprocessing
            or (_TASKS and _LOGGING["logAsyncioTasks"])
            or (args and len(args) == 1 and isinstance(args[0], Mapping) and args[0])
        ):
            super().__init__(name, level, pathname, lineno, msg, args, exc_info, func, sinfo)
            return
        now = time.time_ns() if _NANOSECONDS else time.time()
        self.name = name
        self.msg = msg
        self.args = args
        self.levelname = logging.getLevelName(level)
        self.levelno = level
        self.pathname = pathname
        self.filename = pathname
        self.module = pathname
        self.exc_info = exc_info
        self.exc_text = None
        self.stack_info = sinfo
        self.lineno = lineno
        self.funcName = func  # type: ignore[assignment]  # None, as LogRecord sets it
        start = logging._startTime  # type: ignore[attr-defined]
        if _NANOSECONDS:  # as 3.13's LogRecord
            self.created = created = now / 1e9
            msecs = (now % 1_000_000_000) // 1_000_000 + 0.0
            if msecs == 999.0 and int(created) != now // 1_000_000_000:
                msecs = 0.0  # the float rounded up to the next second
            self.msecs = msecs
            self.relativeCreated = (now - start) / 1e6
        else:
            self.created = now
            self.msecs = int((now - int(now)) * 1000) + 0.0  # gh-89047
            self.relativeCreated = (now - start) * 1000
        self.thread = None
        self.threadName = None
        self.processName = None
        self.process = None
        if _TASKS:
            self.taskName = None


class _SecondStamps:
    """A record's local time to the second, formatted once per second and not once per line:
    ``time.strftime`` was a tenth of a log line's cost, and a busy server writes many lines in
    one second."""

    def __init__(self, converter: Callable[[float | None], time.struct_time], datefmt: str):
        self._converter = converter
        self._datefmt = datefmt
        self.second = -1  #: the second ``stamp`` shows (a caller may read both without a call)
        self.stamp = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self.second:
            self.stamp = time.strftime(self._datefmt, self._converter(second))
            self.second = second
        return self.stamp


#: ``%03d`` of each millisecond, made once: a line's time stamp takes its milliseconds from here
_MILLISECONDS = tuple(f"{n:03d}" for n in range(1000))


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [session id] message``: a session's lines can be grepped together.

    The line is built with one f-string (the same text as the format string below, which
    ``logging.Formatter`` still writes for a record with a traceback or stack)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(session)s%(message)s")
        self._seconds = _SecondStamps(self.converter, self.default_time_format)

    def format(self, record: logging.LogRecord) -> str:
        session_id = record.__dict__.get("session_id")
        session = f"[{session_id}] " if session_id else ""
        if record.exc_info or record.exc_text or record.stack_info:
            record.session = session
            return super().format(record)
        created, seconds = record.created, self._seconds
        stamp = seconds.stamp if int(created) == seconds.second else seconds(created)
        millis = int(record.msecs)  # 0-999, but negative before 1970
        shown = _MILLISECONDS[millis] if 0 <= millis < 1000 else f"{millis:03d}"
        return f"{stamp},{shown} {record.levelname} {record.name} {session}{record.getMessage()}"


def _one_shot_encoder() -> Callable[[object], str] | None:
    """What ``json.dumps(entry, default=str)`` runs in the end: the C encoder
    (``json.encoder.c_make_encoder``, with the same separators, escaping and ``default``),
    built once instead of per line with a Python closure around it; None without the C
    module. Without a check for circular references: an entry holds the session's flat
    fields (strings, numbers, a tuple or list of strings), which cannot contain themselves."""
    make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if make_encoder is None:
        return None
    encoder = json.JSONEncoder(default=str)
    chunks = make_encoder(
        *(None, str, json.encoder.encode_basestring_ascii, None),  # markers, default, ...
        *(encoder.key_separator, encoder.item_separator, False, False, True),
    )

    def encode(entry: object) -> str:
        return "".join(chunks(entry, 0))

    return encode


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the session's fields."""

    def __init__(self) -> None:
        super().__init__()
        self._seconds = _SecondStamps(self.converter, "%Y-%m-%dT%H:%M:%S%z")
        # json.dumps(entry, default=str) builds an encoder per call; one does for every line
        self._encode = _one_shot_encoder() or json.JSONEncoder(default=str).encode

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._seconds(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        for field in _FIELDS:
            value = fields.get(field)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self._encode(entry)


class LineHandler(logging.StreamHandler[TextIO]):
    """A log line is one ``write``; flushed by the stream itself when it flushes at each
    newline (``sys.stderr`` does, since Python 3.9), else here: every line still reaches the
    file or journal when it is written, without a second trip through the handler's lock."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._flushes_lines = bool(getattr(stream, "line_buffering", False))

    def handle(self, record: logging.LogRecord) -> bool:
        """``Handler.handle`` without its three calls around ``emit`` when there is no filter
        (``filter`` over none, ``acquire``, ``release``): the same lock, held the same way."""
        if self.filters:
            return super().handle(record)
        with self.lock:  # type: ignore[union-attr]  # Handler.__init__ made it (createLock)
            self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self.stream
            formatter = self.formatter  # Handler.format, one call less
            line = formatter.format(record) if formatter is not None else self.format(record)
            stream.write(line + self.terminator)
            if not self._flushes_lines:
                stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


class MetricsEndpoint:
    """``GET /metrics`` in the Prometheus text format, on its own port, in a daemon thread.

    ``render`` is called on each scrape (``Metrics.render_prometheus``, or the supervisor's sum
    over its workers).
    """

    def __init__(self, render: Callable[[], str], host: str, port: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is served here")
                    return
                body = render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape every few seconds would drown the mail log

        self._http = ThreadingHTTPServer((host, port), Handler)
        self._http.daemon_threads = True
        self.host, self.port = host, int(self._http.server_address[1])
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close_inherited(self) -> None:
        """In a forked worker: let go of the supervisor's listening socket (no thread here)."""
        self._http.socket.close()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()


def server_context(cert: str, key: str | None) -> ssl.SSLContext:
    """A server's TLS context holding this certificate and key. Raises OSError or
    ssl.SSLError if either cannot be read or the key does not belong to the certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


class Reloader:
    """SIGHUP: load the certificate and the auth file again.

    The certificate goes into a NEW context, which replaces the served one only once it loaded
    whole: ``load_cert_chain`` on the live context would install a new certificate before
    finding that its key does not match, and every handshake after that would fail. The
    servers keep the context they were given; its ``sni_callback`` (which OpenSSL calls early
    in every handshake, with or without SNI) hands each new connection the current context,
    the standard way to serve another certificate. Open connections keep theirs; the auth
    policy swaps its user table, checked whole. A file that cannot be used is logged and the
    old one kept, so a typo never takes the server down.
    """

    def __init__(
        self,
        context: ssl.SSLContext | None,
        cert: str | None,
        key: str | None,
        policy: object,
        auth_file: str | None,
    ) -> None:
        self.context, self.cert, self.key = context, cert, key
        self.policy, self.auth_file = policy, auth_file
        self.current = context  #: the context new handshakes get
        if context is not None and cert:
            context.sni_callback = self._hand_over

    def _hand_over(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: object
    ) -> None:
        current = self.current
        if current is not None and current is not connection.context:
            connection.context = current

    def serving(self, servers: list[Any]) -> None:
        """The servers this process runs (a reload of the whole configuration swaps their
        router and policy; this one reloads only what the servers share)."""

    def reload(self) -> None:
        if self.context is not None and self.cert:
            try:
                fresh = server_context(self.cert, self.key)
            except (OSError, ssl.SSLError) as exc:
                log.error("kept the old TLS certificate: cannot load %s: %s", self.cert, exc)
            else:
                self.current = fresh
                log.info("reloaded the TLS certificate from %s", self.cert)
        if self.auth_file and isinstance(self.policy, AuthFilePolicy):
            try:
                self.policy.users = load_auth_file(self.auth_file)
                log.info("reloaded %d users from %s", len(self.policy.users), self.auth_file)
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                log.error("kept the old users: cannot read %s: %s", self.auth_file, exc)
