"""The anyio client: ``async with connect(host, port) as client: await client.send_message(m)``.

Runs on asyncio and trio. Every SMTP decision lives in smtp_core.ClientSession; this module only
carries out its steps over an anyio stream (connect, write, read, wrap in TLS), each under
``anyio.fail_after``, and turns I/O failures into the session's errors.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable, Mapping
from email.message import Message
from types import TracebackType
from typing import TypeVar

import anyio
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.tls import TLSStream

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
_IO_ERRORS = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError)


class Client(ClientBase):
    """One SMTP (or LMTP) connection; messages are sent one after the other over it."""

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
        self._stream: ByteStream | None = None
        self._lock = anyio.Lock()

    async def __aenter__(self) -> Client:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None or issubclass(exc_type, Exception):
            await self.quit()
        else:  # cancelled: no more conversation
            await self.aclose()

    async def open(self) -> None:
        """Connect (with TLS from the start for ``tls="implicit"``), then greeting, EHLO,
        STARTTLS and AUTH as configured."""
        session = self._session
        try:
            with anyio.fail_after(session.io_timeout):
                self._stream = await anyio.connect_tcp(self.host, self.port)
        except TimeoutError:
            raise session.abort(
                SMTPTimeout(f"cannot connect to {session.server}: no answer in time")
            ) from None
        except OSError as exc:  # anyio says "All connection attempts failed"; the cause, why
            cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
            errno = cause.errno if isinstance(cause.errno, int) else 0
            detail = os.strerror(errno) if errno > 0 else cause.strerror or str(cause)
            raise session.abort(
                SMTPConnectionError(f"cannot connect to {session.server}: {detail}")
            ) from exc
        try:
            local = self._stream.extra(SocketAttribute.local_address)
            if session.tls == "implicit":
                await self._carry_out(WrapTLS(session.io_timeout))
            await self._run(session.open(address_literal(str(local[0]))))
        except BaseException:
            await self.quit()
            raise

    async def send_message(
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
        async with self._lock:
            return await self._run(steps)

    async def noop(self) -> Reply:
        async with self._lock:
            return await self._run(self._session.noop())

    async def quit(self) -> None:
        """QUIT (when the connection can still say it) and close."""
        try:
            if self._stream is not None:
                await self._run(self._session.quit())
        except SMTPError:
            pass
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the connection without QUIT."""
        self._session.abort(SMTPConnectionError("the client is closed"))
        stream, self._stream = self._stream, None
        if stream is not None:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _run(self, steps: Steps[_T]) -> _T:
        value: bytes | None = None
        while True:
            try:
                step = steps.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            try:
                value = await self._carry_out(step)
            except BaseException:
                steps.close()
                raise

    async def _carry_out(self, step: ClientStep) -> bytes | None:
        stream = self._stream
        if stream is None:
            raise self._session.abort(SMTPConnectionError("the client is closed"))
        try:
            with anyio.fail_after(step.timeout):
                if isinstance(step, Write):
                    await stream.send(step.data)
                elif isinstance(step, Read):
                    try:
                        return await stream.receive()
                    except anyio.EndOfStream:
                        return b""
                else:
                    self._stream = await TLSStream.wrap(
                        stream,
                        hostname=self.host,
                        ssl_context=self._ssl_context or ssl.create_default_context(),
                        standard_compatible=False,
                    )
        except (TimeoutError, *_IO_ERRORS) as exc:
            raise self._session.io_error(step, exc) from exc
        except BaseException:  # cancelled in the middle of a step: the session cannot go on
            self._session.abort()
            raise
        return None


#: ``connect(host, port, ...)``: a Client, which connects when its block is entered.
connect = Client
