"""The ``pipe:COMMAND ARGS`` delivery target: run a program per message, as Postfix's pipe(8).

The message (our Received line first) is streamed to the program's stdin; the envelope is in
its environment (SENDER, RECIPIENTS, CLIENT_ADDRESS, ...). The command is split the way a shell
would split it (shlex) but no shell runs unless the command is ``sh -c '...'``. Leading
``NAME=VALUE`` words are our options: ``pipe:timeout=30 /usr/local/bin/deliver``.

Outcome: exit 0 accepted; 75 (EX_TEMPFAIL, sysexits.h), death by a signal, a failure to start,
and a timeout (the program's whole process group is killed) 451 4.3.0 (the sender retries);
any other status 550 5.3.0 with the first line the program wrote to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from typing import IO

from smtp_core import Envelope

from ._delivery import (
    message_chunks,
    message_id,
    message_size,
    permanent,
    reply_text,
    seconds,
    temporary,
)

__all__ = ["EX_TEMPFAIL", "Pipe", "pipe_target", "program_environment"]

log = logging.getLogger("smtpmux.delivery")

EX_TEMPFAIL = 75  #: sysexits.h: "temporary failure, try again later"
DEFAULT_TIMEOUT = 60.0  #: seconds a program may run, stdin included
_STDERR_KEPT = 4096  #: octets of stderr kept for the reply; the rest is read and dropped
#: What the program inherits from our environment; nothing else (no secrets meant for other
#: targets, such as a webhook's secret_env): ``pipe:env NAME=VALUE cmd`` sets more.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME")


def program_environment(envelope: Envelope) -> dict[str, str]:
    """The envelope as environment variables, in Postfix pipe(8)'s names where it has one."""
    env = {name: os.environ[name] for name in _INHERITED if name in os.environ}
    env.setdefault("PATH", os.defpath)
    env["SENDER"] = envelope.mail_from
    env["RECIPIENTS"] = "\n".join(envelope.rcpt_tos)  # a quoted local part may hold spaces
    if len(envelope.rcpt_tos) == 1:
        env["RECIPIENT"] = envelope.rcpt_tos[0]
        orcpt = envelope.rcpt_params[0].orcpt if envelope.rcpt_params else None
        env["ORIGINAL_RECIPIENT"] = orcpt[1] if orcpt else envelope.rcpt_tos[0]
    if envelope.peer is not None:
        env["CLIENT_ADDRESS"], env["CLIENT_PORT"] = envelope.peer[0], str(envelope.peer[1])
    if envelope.helo is not None:
        env["CLIENT_HELO"] = envelope.helo
    env["CLIENT_PROTOCOL"] = envelope.protocol()
    if envelope.tls is not None:
        env["CLIENT_TLS"] = " ".join(p for p in (envelope.tls.version, envelope.tls.cipher) if p)
    if envelope.auth_identity is not None:
        env["SASL_USERNAME"] = envelope.auth_identity
    env["SIZE"] = str(message_size(envelope))
    env["SMTPMUX_TRANSACTION_ID"] = envelope.transaction_id
    found = message_id(envelope)
    if found is not None:
        env["MESSAGE_ID"] = found
    # No NUL can reach execve (addresses cannot hold one, but a header might).
    return {name: value.replace("\0", "") for name, value in env.items()}


class _Drain(threading.Thread):
    """Read a pipe to its end, keeping only its first octets: a chatty program never blocks
    on a full stderr pipe while we are writing its stdin."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__(name="smtpmux-pipe-stderr", daemon=True)
        self.stream = stream
        self.kept = b""

    def run(self) -> None:
        # The thread closes the pipe itself: closing it from another thread while this one
        # reads it could close a descriptor number that has been reused meanwhile.
        with self.stream, contextlib.suppress(OSError, ValueError):
            while chunk := os.read(self.stream.fileno(), 65536):
                if len(self.kept) < _STDERR_KEPT:
                    self.kept += chunk[: _STDERR_KEPT - len(self.kept)]


class Pipe:
    """Run ``argv`` for each message: a blocking handler (smtp_anyio calls it in a thread)."""

    def __init__(self, argv: list[str], *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.argv = argv
        self.timeout = timeout

    def __repr__(self) -> str:
        options = f"timeout={self.timeout:g} " if self.timeout != DEFAULT_TIMEOUT else ""
        return f"pipe:{options}{shlex.join(self.argv)}"

    def __call__(self, envelope: Envelope) -> None:
        name = self.argv[0]
        head = envelope.received_header()
        env = program_environment(envelope)
        try:
            # A session of its own: its process group is the program and all it starts, so a
            # timeout kills them all (a shell's children too).
            process = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            log.warning("pipe %r: cannot start %s: %s", self, name, exc)
            raise temporary("Delivery program failed to start", "4.3.0") from exc
        assert process.stdin is not None and process.stderr is not None
        stderr = _Drain(process.stderr)
        stderr.start()
        expired = threading.Event()

        def kill() -> None:
            expired.set()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

        timer = threading.Timer(self.timeout, kill)
        timer.daemon = True
        timer.start()
        try:
            _feed(process.stdin, message_chunks(envelope, head))
            status = process.wait()
        finally:
            timer.cancel()
            if process.poll() is None:  # only if _feed raised (e.g. the spool failed)
                kill()
                process.wait()
        stderr.join(timeout=2)  # a grandchild holding stderr open does not hold us here
        _outcome(self, envelope, status, expired.is_set(), stderr.kept)


def _feed(stdin: IO[bytes], chunks: Iterator[bytes]) -> None:
    """Write the message; a program that stops reading (EPIPE) is judged by its exit."""
    try:
        for chunk in chunks:
            stdin.write(chunk)
    except BrokenPipeError:
        pass
    finally:
        with contextlib.suppress(BrokenPipeError):
            stdin.close()


def _outcome(pipe: Pipe, envelope: Envelope, status: int, expired: bool, stderr: bytes) -> None:
    said = reply_text(stderr.decode("utf-8", "replace"), 160)
    tid = envelope.transaction_id
    if expired:
        log.warning("pipe %r: message %s: killed after %g s", pipe, tid, pipe.timeout)
        raise temporary(f"Delivery program timed out after {pipe.timeout:g} s", "4.3.0")
    if status == 0:
        log.info("pipe %r: message %s delivered", pipe, tid)
        return
    what = f"signal {-status}" if status < 0 else f"status {status}"
    log.warning("pipe %r: message %s: exited with %s: %s", pipe, tid, what, said)
    text = f"Delivery program exited with {what}" + (f": {said}" if said else "")
    if status == EX_TEMPFAIL or status < 0:
        raise temporary(f"{text}, try again later", "4.3.0")
    raise permanent(text, "5.3.0")


def pipe_target(text: str) -> Pipe:
    """Build the handler for ``pipe:[timeout=SECONDS] COMMAND ARGS``; the program must exist
    now (on PATH, or a path to an executable file)."""
    if not text.startswith("pipe:"):
        raise ValueError(f"{text}: a pipe target starts with pipe:, e.g. pipe:/usr/bin/deliver")
    try:
        words = shlex.split(text[len("pipe:") :])
    except ValueError as exc:
        raise ValueError(f"{text}: cannot split the command: {exc}") from None
    timeout = DEFAULT_TIMEOUT
    while words and "=" in words[0] and not words[0].startswith(("/", ".")):
        name, _, value = words.pop(0).partition("=")
        if name != "timeout":
            raise ValueError(
                f"{text}: unknown option {name!r} (the only one is timeout=SECONDS); "
                f"to set a variable for the program write pipe:env {name}=... COMMAND"
            )
        given = seconds(value)
        if given is None:
            raise ValueError(f"{text}: timeout must be a number of seconds above 0")
        timeout = given
    if not words:
        raise ValueError(f"{text}: no command; write e.g. pipe:/usr/bin/deliver --to list")
    program = words[0]
    if shutil.which(program) is None:
        where = "is not an executable file" if os.sep in program else "is not found on PATH"
        raise ValueError(f"{text}: the program {program} {where}")
    return Pipe(words, timeout=timeout)
