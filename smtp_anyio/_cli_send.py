"""``smtpmux send``: a message from a file or standard input to a server, one line per
recipient (its options are parsed in _cli.py)."""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from typing import Any

import anyio

from smtp_core import (
    MessageRefused,
    OutgoingMessage,
    RecipientsRefused,
    SenderRefused,
    SendResult,
    SMTPError,
    SMTPNotSupported,
    format_reply,
    prepare_message,
)

from ._cli import UsageError
from ._client import connect

__all__ = ["_send"]


_SEND_REFUSED = 1  #: a recipient (or the whole message) was refused
_SEND_FAILED = 3  #: connection, TLS, greeting, EHLO or AUTH failed; the connection broke


def _send_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of connect(); a bad value is a UsageError."""
    host, port = args.server
    if port == 0:
        raise UsageError("--server needs a port other than 0")
    context = None
    if args.cafile:
        if args.tls == "none":
            raise UsageError("--cafile needs --tls starttls, implicit or opportunistic")
        try:
            context = ssl.create_default_context(cafile=args.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load --cafile {args.cafile}: {exc}") from None
    auth = None
    if args.auth is not None:
        user, colon, password = args.auth.partition(":")
        if not colon:
            password = os.environ.get("SMTPMUX_PASSWORD", "")
            if not password:
                raise UsageError("--auth USER needs :PASSWORD or $SMTPMUX_PASSWORD")
        if not user:
            raise UsageError("--auth needs a user name")
        auth = (user, password)
    if args.helo is not None and (not args.helo or any(c.isspace() for c in args.helo)):
        raise UsageError(f"--helo must be one word, not {args.helo!r}")
    return {
        "host": host,
        "port": port,
        "tls": args.tls,
        "ssl_context": context,
        "auth": auth,
        "timeout": args.timeout,
        "local_hostname": args.helo,
        "lmtp": args.lmtp,
    }


async def _deliver(options: dict[str, Any], envelope: OutgoingMessage) -> object:
    """Send; the transaction's own refusals come back as values, session failures raise."""
    async with connect(**options) as client:
        try:
            return await client.send_message(
                envelope.content, mail_from=envelope.mail_from, rcpt_tos=envelope.rcpt_tos
            )
        except (SenderRefused, RecipientsRefused, MessageRefused, SMTPNotSupported) as exc:
            return exc


def _send(args: argparse.Namespace) -> int:
    """Print one line per recipient: accepted or refused, with the server's reply."""
    try:
        options = _send_options(args)
        try:
            if args.file == "-":
                content = sys.stdin.buffer.read()
            else:
                with open(args.file, "rb") as file:
                    content = file.read()
        except OSError as exc:
            raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from None
        try:
            envelope = prepare_message(content, mail_from=args.mail_from, rcpt_tos=args.rcpt_tos)
        except ValueError as exc:
            raise UsageError(f"{exc}: see --from and --to") from None
    except UsageError as exc:
        print(f"smtpmux: {exc}", file=sys.stderr)
        return 2
    try:
        outcome = anyio.run(_deliver, options, envelope)
    except SMTPError as exc:
        print(f"smtpmux: {exc}", file=sys.stderr)
        return _SEND_FAILED
    except KeyboardInterrupt:
        return 130
    if isinstance(outcome, SMTPNotSupported):
        print(f"smtpmux: not sent: {outcome}", file=sys.stderr)
        return _SEND_REFUSED
    if isinstance(outcome, SenderRefused):
        replies = {address: outcome.reply for address in envelope.rcpt_tos}
        accepted: set[str] = set()
    else:
        if isinstance(outcome, RecipientsRefused | MessageRefused):
            outcome = outcome.result
        assert isinstance(outcome, SendResult)
        replies = {r.address: r.reply for r in outcome.recipients}
        accepted = set(outcome.accepted)
    for address, reply in replies.items():
        status = "accepted" if address in accepted else "refused"
        print(f"{status} <{address}> {format_reply(reply)}")
    return 0 if len(accepted) == len(replies) else _SEND_REFUSED
