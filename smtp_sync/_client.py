"""The blocking client: ``with connect(host, port) as client: client.send_message(message)``.

The same API as smtp_anyio's client over ``socket`` and ``ssl``. Every SMTP decision lives in
smtp_core.ClientSession; this module only carries out its steps (write, read, wrap in TLS), each
with the socket timeout the step names.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterable, Mapping
from email.message import Message
from types import TracebackType
from typing import TypeVar

from smtp_core import (
    ClientAuth,
    MailParams,
    RcptParams,
    Reply,
    SendResult,
    SMTPConnectionError,
    SMTPError,
    SMTPTimeout,
    TLSMode,
)
from smtp_core.adapter import ClientBase, ClientStep, Read, Steps, WrapTLS, Write, address_literal

__all__ = ["Client", "connect"]

_T = TypeVar("_T")
_READ_SIZE = 64 * 1024


class Client(ClientBase):
    """One SMTP (or LMTP) connection; messages are sent one after the other over it (a lock
    keeps threads that share the client from interleaving)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: TLSMode = "opportunistic",
        ssl_context: ssl.SSLContext | None = None,
        auth: ClientAuth | None = None,
        timeout: float | None = 60.0,
        local_hostname: str | None = None,
        lmtp: bool = False,
    ) -> None:
        super().__init__(
            host,
            port,
            tls=tls,
            ssl_context=ssl_context,
            auth=auth,
            timeout=timeout,
            local_hostname=local_hostname,
            lmtp=lmtp,
        )
        self._ssl_context = ssl_context
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Client:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None or issubclass(exc_type, Exception):
            self.quit()
        else:  # KeyboardInterrupt and the like: no more conversation
            self.close()

    def open(self) -> None:
        """Connect (with TLS from the start for ``tls="implicit"``), then greeting, EHLO,
        STARTTLS and AUTH as configured."""
        session = self._session
        try:
            self._sock = self._connect()
        except TimeoutError:
            raise session.abort(
                SMTPTimeout(f"cannot connect to {session.server}: no answer in time")
            ) from None
        except OSError as exc:
            raise session.abort(
                SMTPConnectionError(f"cannot connect to {session.server}: {exc.strerror or exc}")
            ) from exc
        try:
            local = self._sock.getsockname()
            if session.tls == "implicit":
                self._carry_out(WrapTLS(session.io_timeout))
            # a unix socket has no address to name us by: localhost, unless local_hostname says
            name = "localhost" if isinstance(local, str) else address_literal(str(local[0]))
            self._run(session.open(name))
        except BaseException:
            self.quit()
            raise

    def _connect(self) -> socket.socket:
        """The connected socket (smtp_sync._forward connects to an LMTP unix socket instead)."""
        return socket.create_connection((self.host, self.port), self._session.io_timeout)

    def send_message(
        self,
        message: Message | bytes,
        *,
        mail_from: str | None = None,
        rcpt_tos: Iterable[str] | None = None,
        mail_params: MailParams | None = None,
        rcpt_params: RcptParams | Mapping[str, RcptParams] | None = None,
    ) -> SendResult:
        """Send one message; the envelope comes from its headers unless given (Bcc is never
        sent). Returns each recipient's outcome; raises ``SenderRefused``,
        ``RecipientsRefused`` or ``MessageRefused`` when nobody got it."""
        steps = self._send_steps(message, mail_from, rcpt_tos, mail_params, rcpt_params)
        with self._lock:
            return self._run(steps)

    # One transaction in step, for a proxy (smtp_sync._forward): see ClientSession.mail.

    def mail(self, address: str, params: MailParams | None = None) -> Reply:
        with self._lock:
            return self._run(self._session.mail(address, params))

    def rcpt(self, address: str, params: RcptParams | None = None) -> Reply:
        with self._lock:
            return self._run(self._session.rcpt(address, params))

    def data(self, chunks: Iterable[bytes]) -> list[Reply]:
        """Stream the content (BDAT when offered, else DATA); the reply, or one per recipient."""
        with self._lock:
            return self._run(self._session.data(chunks))

    def reset(self) -> Reply:
        with self._lock:
            return self._run(self._session.reset())

    def noop(self) -> Reply:
        with self._lock:
            return self._run(self._session.noop())

    def quit(self) -> None:
        """QUIT (when the connection can still say it) and close."""
        try:
            if self._sock is not None:
                self._run(self._session.quit())
        except SMTPError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Close the connection without QUIT."""
        self._session.abort(SMTPConnectionError("the client is closed"))
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _run(self, steps: Steps[_T]) -> _T:
        value: bytes | None = None
        while True:
            try:
                step = steps.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            try:
                value = self._carry_out(step)
            except BaseException:
                steps.close()
                raise

    def _carry_out(self, step: ClientStep) -> bytes | None:
        sock = self._sock
        if sock is None:
            raise self._session.abort(SMTPConnectionError("the client is closed"))
        try:
            sock.settimeout(step.timeout)
            if isinstance(step, Write):
                sock.sendall(step.data)
            elif isinstance(step, Read):
                return sock.recv(_READ_SIZE)
            else:
                context = self._ssl_context or ssl.create_default_context()
                self._sock = context.wrap_socket(sock, server_hostname=self.host)
        except OSError as exc:  # TimeoutError and ssl.SSLError too
            raise self._session.io_error(step, exc) from exc
        except BaseException:  # interrupted in the middle of a step: the session cannot go on
            self._session.abort()
            raise
        return None


#: ``connect(host, port, ...)``: a Client, which connects when its block is entered.
connect = Client
