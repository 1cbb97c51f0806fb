"""What a client sends: a message turned into an envelope and wire-ready content (pure).

``prepare_message`` takes an ``email.message.Message`` (``EmailMessage`` included) or bytes and
returns an ``OutgoingMessage``: the reverse-path, the recipients and the content with CRLF line
ends and a final CRLF. Both client adapters use it, so the rules live here once:

- The envelope comes from the headers when not given, as ``smtplib.send_message`` does: the
  sender from ``Sender`` (else the first ``From`` address), the recipients from every ``To``,
  ``Cc`` and ``Bcc``; when the message carries one ``Resent-Date`` block, from the ``Resent-``
  fields instead (RFC 5322 §3.6.6). Groups and empty addresses are skipped, duplicates dropped.
- ``Bcc`` and ``Resent-Bcc`` fields are never sent: they are removed from the content whatever
  the envelope, for bytes too (the rest of the bytes is left as it is).
- A message object is written with its own policy and CRLF; when an address is not ASCII the
  policy gets ``utf8=True`` (RFC 6532 headers: the server must then offer SMTPUTF8).

The ``email`` package is imported inside the functions that use it: ``email.utils`` imports
``socket`` (for ``make_msgid``), and ``import smtp_core`` loads no networking module.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from email.message import Message

__all__ = ["OutgoingMessage", "prepare_message"]

_BCC = re.compile(rb"^(?:resent-)?bcc[ \t]*:", re.IGNORECASE | re.MULTILINE)


def _check_address(address: str, what: str) -> None:
    if any(c in address for c in "\r\n\0") or address.startswith("<") or address.endswith(">"):
        raise ValueError(f"{what} must be an address without brackets or line breaks: {address!r}")


def _check_sender(_inst: object, _attribute: object, address: str) -> None:
    _check_address(address, "the sender")


def _check_recipients(_inst: object, _attribute: object, addresses: tuple[str, ...]) -> None:
    if not addresses:
        raise ValueError("no recipients")
    for address in addresses:
        if not address:
            raise ValueError("an empty recipient address")
        _check_address(address, "a recipient")


@attrs.frozen
class OutgoingMessage:
    """One message ready for a transaction: ``content`` has CRLF line ends and no Bcc field.
    The addresses are checked: no brackets, no line breaks, at least one recipient."""

    mail_from: str = attrs.field(validator=_check_sender)  #: "" is the null sender ``<>``
    rcpt_tos: tuple[str, ...] = attrs.field(validator=_check_recipients)
    content: bytes = attrs.field(repr=lambda c: f"<{len(c)} octets>")

    @property
    def international(self) -> bool:
        """An address is not ASCII: the transaction needs SMTPUTF8 (RFC 6531)."""
        return not all(a.isascii() for a in (self.mail_from, *self.rcpt_tos))

    @property
    def utf8_headers(self) -> bool:
        """The header section holds non-ASCII octets (RFC 6532 style headers)."""
        end = self.content.find(b"\r\n\r\n")
        return not self.content[: end if end >= 0 else len(self.content)].isascii()


def prepare_message(
    message: Message | bytes | bytearray,
    *,
    mail_from: str | None = None,
    rcpt_tos: Iterable[str] | None = None,
    binary: bool = False,
) -> OutgoingMessage:
    """The envelope and content of ``message`` (see the module docstring). ``binary`` leaves
    the line ends of bytes as they are (for ``BODY=BINARYMIME``, sent with BDAT).

    Raises ``ValueError`` when no sender or no recipient can be found, when ``rcpt_tos`` is a
    single string, or when the message has more than one ``Resent-`` block.
    """
    if isinstance(rcpt_tos, str):
        raise ValueError("rcpt_tos is a list of addresses, not one string")
    headers: Message | None = None
    raw = b""
    if not isinstance(message, bytes | bytearray):
        headers = message
    else:
        raw = bytes(message) if binary else normalize_line_ends(bytes(message))
        if mail_from is None or rcpt_tos is None:
            import email.parser
            import email.policy

            end = raw.find(b"\r\n\r\n")
            head = raw if end < 0 else raw[: end + 4]
            headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(head)
    if headers is not None:
        found_from, found_tos = _envelope_from_headers(headers)
        if mail_from is None:
            if found_from is None:
                raise ValueError("no sender (the message has no From or Sender address)")
            mail_from = found_from
        if rcpt_tos is None:
            rcpt_tos = found_tos
    assert mail_from is not None and rcpt_tos is not None
    sender = _bare(mail_from)
    recipients = tuple(dict.fromkeys(_bare(a) for a in rcpt_tos))
    if not recipients and headers is not None:
        raise ValueError("no recipients (the message has no To, Cc or Bcc address)")
    if not isinstance(message, bytes | bytearray):
        international = not all(a.isascii() for a in (sender, *recipients))
        content = _serialize(message, utf8=international)
    else:
        content = _strip_bcc(raw)
    return OutgoingMessage(sender, recipients, content)


def normalize_line_ends(content: bytes) -> bytes:
    """CRLF for every line end (bare CR and bare LF too) and a final CRLF, with three
    whole-buffer replaces. Content that is already so comes back unchanged."""
    pairs = content.count(b"\r\n")
    if content.count(b"\r") == pairs == content.count(b"\n"):
        data = content
    else:
        data = content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def _bare(address: str) -> str:
    """``" <bob@example.com> "`` -> ``"bob@example.com"``; ``"<>"`` -> ``""``: one pair of
    enclosing angle brackets is dropped, as smtplib does. A bracket left after that is an
    error (the command line would be malformed), named with the address as given."""
    bare = address.strip()
    if bare.startswith("<") and bare.endswith(">"):
        bare = bare[1:-1]
    if bare.startswith("<") or bare.endswith(">"):
        raise ValueError(f"an address takes one pair of angle brackets at most: {address!r}")
    return bare


def _field_values(message: Message, name: str) -> list[str]:
    """The values of every ``name`` field as text. Parsed bytes keep non-ASCII octets as
    surrogates (the email package's way); they are read back as UTF-8."""
    values = []
    for key, value in message.raw_items():
        if key.lower() == name.lower():
            text = str(value)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            values.append(text)
    return values


def _addresses(message: Message, *names: str) -> list[str]:
    import email.utils

    values = [v for name in names for v in _field_values(message, name)]
    return [address for _, address in email.utils.getaddresses(values) if address]


def _envelope_from_headers(message: Message) -> tuple[str | None, list[str]]:
    resent = message.get_all("Resent-Date")
    if resent is not None and len(resent) > 1:
        raise ValueError("the message has more than one Resent- block: give the envelope")
    prefix = "Resent-" if resent else ""
    senders = _addresses(message, prefix + "Sender") or _addresses(message, prefix + "From")
    recipients = _addresses(message, prefix + "To", prefix + "Cc", prefix + "Bcc")
    return (senders[0] if senders else None), recipients


def _serialize(message: Message, *, utf8: bool) -> bytes:
    without_bcc = copy.copy(message)  # __delitem__ builds a new header list: the caller's stays
    del without_bcc["Bcc"]
    del without_bcc["Resent-Bcc"]
    import email.policy

    policy = message.policy.clone(linesep="\r\n")
    if utf8:
        if isinstance(policy, email.policy.EmailPolicy):
            policy = policy.clone(utf8=True)
        else:  # compat32 knows no utf8
            policy = email.policy.SMTPUTF8
    return normalize_line_ends(without_bcc.as_bytes(policy=policy))


def _strip_bcc(content: bytes) -> bytes:
    """Remove Bcc and Resent-Bcc fields (with their continuation lines) from the header
    section; everything else stays byte for byte."""
    end = content.find(b"\r\n\r\n")
    head_end = len(content) if end < 0 else end + 2
    if content.startswith(b"\r\n") or not _BCC.search(content, 0, head_end):
        return content
    kept: list[bytes] = []
    skipping = False
    for line in content[:head_end].split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = _BCC.match(line) is not None
        if not skipping:
            kept.append(line)
    return b"".join(line + b"\r\n" for line in kept) + content[head_end:]
