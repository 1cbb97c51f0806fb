"""RFC 5321 §4.1.2 paths: ``<local@domain>``, ``<>``, quoted local parts, address literals.

One regular expression per grammar, built once; the common ``<user@example.com>`` is matched by
a single ``re.match`` and nothing else runs for it. RFC 6531 (SMTPUTF8) widens atext, qtext and
domain labels to any non-ASCII character, which is what ``utf8=True`` selects.
"""

from __future__ import annotations

import ipaddress
import re

from ._events import Reply

__all__ = ["AddressError", "parse_path", "split_address"]

MAX_LOCAL_PART = 64  #: octets, RFC 5321 §4.5.3.1.1
MAX_DOMAIN = 255  #: octets, §4.5.3.1.2
MAX_PATH = 256  #: octets including the angle brackets, §4.5.3.1.3


class AddressError(Exception):
    """A path that breaks the grammar or a limit; ``reply`` is the RFC's answer."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


def _grammar(utf8: bool) -> re.Pattern[str]:
    wide = "\u0080-\U0010ffff" if utf8 else ""
    atom = f"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~{wide}-]+"
    quoted = f'"(?:[\\x20\\x21\\x23-\\x5b\\x5d-\\x7e{wide}]|\\\\[\\x20-\\x7e])*"'
    label = f"[A-Za-z0-9{wide}](?:[A-Za-z0-9{wide}-]*[A-Za-z0-9{wide}])?"
    domain = f"{label}(?:\\.{label})*"
    literal = r"\[[\x21-\x5a\x5e-\x7e]+\]"
    route = f"@{domain}(?:,@{domain})*:"
    return re.compile(
        f" *<(?:{route})?(?P<local>{atom}(?:\\.{atom})*|{quoted})"
        f"@(?P<domain>{domain}|{literal})>(?P<rest>.*)",
        re.DOTALL,
    )


_ASCII = _grammar(False)
# The common case, ``<local@domain>`` with a dot-atom local part and a plain domain, optionally
# followed by parameters: a strict subset of the grammar above, matched without its
# alternatives; whatever it does not match takes the full path.
_ATOM = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_SIMPLE = re.compile(f"<{_ATOM}(?:\\.{_ATOM})*@{_LABEL}(?:\\.{_LABEL})*>")
_UTF8 = _grammar(True)
_NULL = re.compile(r" *<>(?P<rest>.*)", re.DOTALL)
_POSTMASTER = re.compile(r" *<(?P<local>postmaster)>(?P<rest>.*)", re.DOTALL | re.IGNORECASE)
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+")


def _error(sender: bool, text: str) -> AddressError:
    if sender:
        return AddressError(Reply(501, text, "5.1.7"))
    return AddressError(Reply(501, text, "5.1.3"))


def _valid_literal(literal: str) -> bool:
    body = literal[1:-1]
    if body[:5].lower() == "ipv6:":
        try:
            ipaddress.IPv6Address(body[5:])
        except ValueError:
            return False
        return True
    if body[:1].isdigit():
        try:
            ipaddress.IPv4Address(body)
        except ValueError:
            return False
        return True
    return _GENERAL_LITERAL.fullmatch(body) is not None  # RFC 5321 General-address-literal


def parse_path(text: str, *, sender: bool, utf8: bool) -> tuple[str, str]:
    """Split ``text`` (what follows ``FROM:`` or ``TO:``) into the address and its parameters.

    The address comes back without brackets and without any source route (RFC 5321 §4.1.1.3
    says to ignore it); a quoted local part is kept as written. ``<>`` is only a sender;
    ``<Postmaster>`` only a recipient. Non-ASCII is allowed only when ``utf8`` is true.
    """
    simple = _SIMPLE.match(text)
    if simple is not None:
        end = simple.end()
        rest = text[end:]
        if end <= MAX_PATH and text.find("@") <= MAX_LOCAL_PART + 1 and rest[:1] in ("", " "):
            return text[1 : end - 1], rest.strip(" ")
    match = (_UTF8 if utf8 else _ASCII).match(text)
    if match is None:
        null = _NULL.match(text) if sender else _POSTMASTER.match(text)
        if null is not None:
            rest = null.group("rest")
            if rest and rest[0] != " ":
                raise _error(sender, "Syntax error in parameters after the address")
            return ("" if sender else null.group("local")), rest.strip(" ")
        if not utf8 and not text.isascii() and _UTF8.match(text) is not None:
            raise AddressError(Reply(553, "Non-ASCII address needs SMTPUTF8", "5.6.7"))
        what = "sender" if sender else "recipient"
        raise _error(sender, f"Syntax error in {what} address")
    local, domain, rest = match.group("local", "domain", "rest")
    if rest and rest[0] != " ":
        raise _error(sender, "Syntax error in parameters after the address")
    if len(local.encode()) > MAX_LOCAL_PART:
        raise _error(sender, "Local part too long")
    if len(domain.encode()) > MAX_DOMAIN:
        raise _error(sender, "Domain too long")
    if len(text[: match.start("rest")].lstrip(" ").encode()) > MAX_PATH:
        raise _error(sender, "Path too long")
    if domain[0] == "[" and not _valid_literal(domain):
        raise _error(sender, "Invalid address literal")
    return f"{local}@{domain}", rest.strip(" ")


def split_address(address: str) -> tuple[str, str]:
    """``"bob@example.com"`` -> ``("bob", "example.com")``; the split is at the last ``@``.

    A quoted local part may itself hold ``@``; the domain never does. An address without ``@``
    (``Postmaster``) has an empty domain.
    """
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain
