"""ESMTP parameters of MAIL and RCPT (RFC 5321 §4.1.2), parsed into MailParams and RcptParams.

Each parameter is accepted only when its extension was offered; the replies follow RFC 5321
§4.1.1.11 (555: not recognised or not implemented; 501: syntax) and each extension's RFC.
"""

from __future__ import annotations

import re
from typing import Any, Literal, cast

from ._config import ServerConfig
from ._events import MailParams, RcptParams, Reply

__all__ = ["ParamError", "parse_mail_params", "parse_rcpt_params", "xtext_decode", "xtext_encode"]

MAX_ENVID = 100  #: RFC 3461 §4.4, in xtext-encoded characters

_PARAM = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([^\x00-\x20=\x7f]+))?")
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
_XTEXT_CHAR = re.compile(r"\+([0-9A-F]{2})")
_XTEXT_NEEDS = re.compile(r"[^\x21-\x2a\x2c-\x3c\x3e-\x7e]")
_SIZE = re.compile(r"[0-9]{1,20}")
_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})
_NO_MAIL_PARAMS = MailParams()  # frozen values: one shared instance for "no parameters"
_NO_RCPT_PARAMS = RcptParams()


class ParamError(Exception):
    """A MAIL or RCPT parameter that cannot be accepted; ``reply`` is the RFC's answer."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


def _unknown(name: str) -> ParamError:
    return ParamError(Reply(555, f"{name} parameter not recognized", "5.5.4"))


def _syntax(name: str) -> ParamError:
    return ParamError(Reply(501, f"Syntax error in {name} parameter", "5.5.4"))


def xtext_decode(text: str) -> str:
    """Decode RFC 3461 §4 xtext (``+2B`` is ``+``); raise ValueError when it is malformed."""
    if _XTEXT.fullmatch(text) is None:
        raise ValueError(f"not xtext: {text!r}")
    if "+" not in text:
        return text
    raw = _XTEXT_CHAR.sub(lambda m: chr(int(m.group(1), 16)), text)
    return raw.encode("latin-1").decode("utf-8", "surrogateescape")


def xtext_encode(text: str) -> str:
    """Encode ``text`` as xtext: ``+``, ``=``, controls, space and non-ASCII octets as ``+XX``."""
    if _XTEXT_NEEDS.search(text) is None:
        return text
    return "".join(
        chr(b) if 0x21 <= b <= 0x7E and b not in (0x2B, 0x3D) else f"+{b:02X}"
        for b in text.encode("utf-8", "surrogateescape")
    )


def _split(text: str, extended: bool) -> list[tuple[str, str | None]]:
    """``"SIZE=10 BODY=8BITMIME"`` -> ``[("SIZE", "10"), ("BODY", "8BITMIME")]``, checked."""
    if not text:
        return []
    if not extended:
        raise ParamError(Reply(555, "Parameters need EHLO", "5.5.4"))
    seen: set[str] = set()
    params: list[tuple[str, str | None]] = []
    for word in text.split(" "):
        if not word:
            continue
        match = _PARAM.fullmatch(word)
        if match is None:
            raise ParamError(Reply(501, "Syntax error in parameters", "5.5.4"))
        name = match.group(1).upper()
        if name in seen:
            raise ParamError(Reply(501, f"Duplicate {name} parameter", "5.5.4"))
        seen.add(name)
        params.append((name, match.group(2)))
    return params


def _xtext(name: str, value: str | None) -> str:
    if value is None:
        raise _syntax(name)
    try:
        return xtext_decode(value)
    except ValueError:
        raise _syntax(name) from None


def _flag(name: str, value: str | None) -> bool:
    if value is not None:
        raise _syntax(name)
    return True


def parse_mail_params(
    text: str, config: ServerConfig, *, extended: bool, tls_active: bool
) -> MailParams:
    """Parse what follows ``MAIL FROM:<...>``; raise ParamError with the reply to send."""
    if not text:
        return _NO_MAIL_PARAMS
    fields: dict[str, Any] = {}
    extra: list[tuple[str, str | None]] = []
    # RFC 4954 §5: AUTH= only where EHLO listed AUTH (not over plaintext when TLS is required)
    auth_offered = bool(config.auth_mechanisms) and (tls_active or not config.auth_require_tls)
    for name, value in _split(text, extended):
        if name == "SIZE":
            if value is None or _SIZE.fullmatch(value) is None:
                raise _syntax(name)
            size = int(value)
            limit = config.max_message_size
            if limit is not None and size > limit:
                raise ParamError(Reply(552, "Message size exceeds fixed maximum", "5.3.4"))
            fields["size"] = size
        elif name == "BODY":
            body = (value or "").upper()
            if (
                body == "7BIT"
                or (body == "8BITMIME" and config.eightbitmime)
                or (body == "BINARYMIME" and config.binarymime and config.chunking)
            ):
                fields["body"] = body
            elif body in ("8BITMIME", "BINARYMIME"):
                raise _unknown(f"BODY={body}")
            else:
                raise _syntax(name)
        elif name == "SMTPUTF8" and config.smtputf8:
            fields["smtputf8"] = _flag(name, value)
        elif name == "RET" and config.dsn:
            ret = (value or "").upper()
            if ret not in ("FULL", "HDRS"):
                raise _syntax(name)
            fields["ret"] = cast(Literal["FULL", "HDRS"], ret)
        elif name == "ENVID" and config.dsn:
            if value is not None and len(value) > MAX_ENVID:
                raise _syntax(name)
            fields["envid"] = _xtext(name, value)
        elif name == "AUTH" and auth_offered:
            fields["auth"] = "<>" if value == "<>" else _xtext(name, value)
        elif name == "REQUIRETLS" and config.requiretls:
            _flag(name, value)
            if not tls_active:
                raise ParamError(Reply(530, "REQUIRETLS needs a TLS session", "5.7.10"))
            fields["requiretls"] = True
        elif name in config.extra_mail_params:
            extra.append((name, value))
        else:
            raise _unknown(name)
    return MailParams(**fields, extra=tuple(extra))


def parse_rcpt_params(text: str, config: ServerConfig, *, extended: bool) -> RcptParams:
    """Parse what follows ``RCPT TO:<...>``; raise ParamError with the reply to send."""
    if not text:
        return _NO_RCPT_PARAMS
    notify: tuple[str, ...] | None = None
    orcpt: tuple[str, str] | None = None
    extra: list[tuple[str, str | None]] = []
    for name, value in _split(text, extended):
        if name == "NOTIFY" and config.dsn:
            words = tuple((value or "").upper().split(","))
            if words != ("NEVER",) and not (
                set(words) <= _NOTIFY and len(set(words)) == len(words)
            ):
                raise _syntax(name)
            notify = words
        elif name == "ORCPT" and config.dsn:
            kind, semicolon, address = (value or "").partition(";")
            if not semicolon or _PARAM.fullmatch(kind) is None or not address:
                raise _syntax(name)
            orcpt = (kind, _xtext(name, address))
        elif name in config.extra_rcpt_params:
            extra.append((name, value))
        else:
            raise _unknown(name)
    return RcptParams(
        notify=cast("tuple[Literal['NEVER', 'SUCCESS', 'FAILURE', 'DELAY'], ...] | None", notify),
        orcpt=orcpt,
        extra=tuple(extra),
    )
